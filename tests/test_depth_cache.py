"""The Redis depth cache on real servers: counts that match the database, no drift, and no outage that stops jobs.

Shared Redis tests use database 15 (never FLUSHed); flushes and outages use a
private ``redis-server`` of their own. Speed is measured in
``benchmarks/polyqueue_bench/depth_cache.py``, not here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest
import redis
import sqlalchemy as sa
from servers import PrivateRedis, ServerUnavailable, free_port

import polyqueue
from polyqueue.backends.base import DueProbe
from polyqueue.depth_cache import DepthCachedBackend

DB_FIXTURES = {"sqlite": "sqlite_url", "mysql": "mysql_url", "postgresql": "pg_url"}


@pytest.fixture(params=sorted(DB_FIXTURES))
def db_url(request: pytest.FixtureRequest) -> str:
    """Each database backend whose server is present."""
    return str(request.getfixturevalue(DB_FIXTURES[request.param]))


@pytest.fixture
def cache_url(redis_url: str) -> str:
    """The shared Redis, database 15 (tests only; never flushed here)."""
    return redis_url.rsplit("/", 1)[0] + "/15"


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, free to flush, kill and restart."""
    try:
        server = PrivateRedis()
        server.start()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.close()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@contextmanager
def running(worker: polyqueue.Worker) -> Iterator[None]:
    """Run ``worker`` on a thread for the duration of the block."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop()
        thread.join(15)
        assert not thread.is_alive(), "worker did not stop"


def recording_worker(q: polyqueue.Queue, **options: Any) -> tuple[polyqueue.Worker, dict[Any, float]]:
    """A worker whose handler notes when each job (by payload) started."""
    worker = polyqueue.Worker(q, concurrency=2, **options)
    started: dict[Any, float] = {}
    worker.register("t", lambda job: started.setdefault(job.payload, time.monotonic()))
    return worker, started


def same_prefix_without_cache(url: str, q: polyqueue.Queue) -> polyqueue.Queue:
    """Another producer on the same tables that knows nothing of the cache."""
    return polyqueue.connect(url, table_prefix=q.options["table_prefix"])


def assert_depth_matches(q: polyqueue.Queue, *queues: str) -> None:
    backend = q.backend
    assert isinstance(backend, DepthCachedBackend)
    for name in queues or ("default",):
        cached = backend.cached_depth(name)
        assert cached is not None, "the cache did not answer"
        assert cached == q.depth(name, exact=True), f"queue {name!r}"


def test_depth_equals_the_database_count_when_idle(db_url: str, cache_url: str, fresh_queue: Any) -> None:
    q = fresh_queue(db_url, depth_cache=cache_url)
    assert "depth_cache" in q.capabilities
    assert q.depth() == 0
    q.enqueue_many([{"job_type": "t"} for _ in range(5)])
    first = q.enqueue("t", dedupe_key="k")
    assert q.enqueue("t", dedupe_key="k") == first
    q.enqueue("t", delay=3600)
    q.enqueue("t", queue="other")
    assert_depth_matches(q, "default", "other")
    assert q.depth() == 6

    jobs = q.claim(limit=3)
    assert q.enqueue("t", dedupe_key="k") == first  # still live while claimed: not counted again
    assert_depth_matches(q)
    q.complete(jobs[0])
    q.fail(jobs[1], "boom", retry_in=0)
    q.release(jobs[2])
    assert_depth_matches(q)
    running = q.claim()[0]
    assert q.cancel(running.id) is True  # a processing job is only flagged: nothing leaves the count yet
    assert_depth_matches(q)
    q.release(running)  # ... and its release ends it cancelled, not ready again
    assert q.require(running.id).status == "cancelled"
    assert_depth_matches(q)
    pending = q.enqueue("t")
    assert q.cancel(pending)
    assert_depth_matches(q)

    doomed = q.claim()[0]
    q.fail(doomed, "fatal", dead=True)
    assert_depth_matches(q)
    assert q.replay([doomed.id]) == 1
    assert_depth_matches(q, "default", "other")

    while claimed := q.claim(limit=10):
        for job in claimed:
            q.complete(job)
    assert q.enqueue("t", dedupe_key="k") != first  # the key was freed: a new job, counted
    assert_depth_matches(q, "default", "other")
    assert q.depth() == 1


def test_rolled_back_transactional_enqueue_causes_no_drift(db_url: str, cache_url: str, fresh_queue: Any) -> None:
    q = fresh_queue(db_url, depth_cache=cache_url)
    assert q.depth() == 0  # the count now lives in Redis, so any drift would show
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            with pytest.raises(RuntimeError), conn.begin():
                q.enqueue("t", connection=conn)
                q.enqueue("t", delay=60, connection=conn)
                raise RuntimeError("roll back")
            with conn.begin():
                q.enqueue("t", connection=conn)
                q.enqueue("t", delay=60, connection=conn)
    finally:
        engine.dispose()
    backend = q.backend
    assert isinstance(backend, DepthCachedBackend)

    def counted() -> bool:
        counts = backend.cached_counts("default")
        return counts is not None and (counts.ready, counts.scheduled) == (1, 1)

    assert wait_until(counted, 5.0), backend.cached_counts("default")
    time.sleep(0.1)
    assert counted()
    assert q.depth(exact=True) == 1


def test_delayed_jobs_become_visible_when_due(db_url: str, cache_url: str, fresh_queue: Any) -> None:
    q = fresh_queue(db_url, depth_cache=cache_url)
    other = same_prefix_without_cache(db_url, q)
    backend = q.backend
    assert isinstance(backend, DepthCachedBackend)
    try:
        # Delays of seconds, not fractions: the checks before each falls due have a margin at load 10.
        q.enqueue("t", delay=2.0)
        other.enqueue("t", delay=6.0)  # unseen by the cache: rebuilds learn from the database when it falls due
        assert q.depth() == 0
        assert wait_until(lambda: backend.cached_depth("default") == 1, 10.0)
        # The cache dates a delayed job from when its enqueue began, so it may call it due a few
        # milliseconds (that enqueue's own round trip) before the database does: never later.
        claimed: list[Any] = []
        assert wait_until(lambda: bool(claimed.extend(q.claim()) or claimed), 1.0)
        assert len(claimed) == 1
        assert backend.cached_depth("default") == 0
        assert wait_until(lambda: backend.cached_depth("default") == 1, 10.0)
        assert q.depth(exact=True) == 1
    finally:
        other.close()


def test_flushed_redis_delays_waiting_jobs_by_at_most_the_safety_bound(
    db_url: str, private_redis: PrivateRedis, fresh_queue: Any
) -> None:
    q = fresh_queue(db_url, depth_cache=private_redis.url, safety_poll=1.0)
    worker, started = recording_worker(q, safety_poll=1.0)
    flush = redis.Redis.from_url(private_redis.url)
    with running(worker):
        time.sleep(0.3)
        for n in range(3):
            q.enqueue("t", n, delay=0.5)
        flush.flushdb()
        began = time.monotonic()
        # Due in 0.5 s; the cache lost them; one safety poll plus one idle check at most.
        assert wait_until(lambda: len(started) == 3, 0.5 + 1.0 + 1.0 + 2.0), started
        assert max(started.values()) - began < 4.5
        for n in range(3, 6):
            q.enqueue("t", n)
        assert wait_until(lambda: len(started) == 6, 5.0)
    flush.flushdb()
    q.enqueue_many([{"job_type": "t", "payload": n} for n in range(4)])
    flush.flushdb()
    assert_depth_matches(q)
    assert q.depth() == 4
    flush.close()


def test_idle_worker_finds_jobs_from_producers_without_the_cache(db_url: str, cache_url: str, fresh_queue: Any) -> None:
    q = fresh_queue(db_url, depth_cache=cache_url, safety_poll=1.0)
    other = same_prefix_without_cache(db_url, q)
    worker, started = recording_worker(q)
    try:
        with running(worker):
            time.sleep(0.5)
            other.enqueue("t", "unseen")
            assert wait_until(lambda: "unseen" in started, 1.0 + 1.0 + 2.0)
    finally:
        other.close()


def test_idle_worker_rescues_an_expired_lease_within_the_safety_bound(
    db_url: str, cache_url: str, fresh_queue: Any
) -> None:
    q = fresh_queue(db_url, depth_cache=cache_url, safety_poll=1.0)
    q.enqueue("t", "orphan")
    assert q.claim(lease=0.5, worker_id="crashed")  # never completed: its lease runs out
    worker, started = recording_worker(q)
    with running(worker):
        # The lease ends after 0.5 s; the shared safety probe sees it within one more second.
        assert wait_until(lambda: "orphan" in started, 0.5 + 1.0 + 1.0 + 2.0)
    assert wait_until(lambda: q.stats()["done"] == 1, 5.0)


def test_queue_works_when_redis_is_unreachable_from_the_start(
    db_url: str, fresh_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="polyqueue.depth_cache")
    q = fresh_queue(db_url, depth_cache=f"redis://127.0.0.1:{free_port()}/0", safety_poll=0.5)
    q.enqueue_many([{"job_type": "t", "payload": n} for n in range(3)])
    q.enqueue("t", 3, delay=0.3)
    assert q.depth() == 3
    job = q.claim()[0]
    q.complete(job)
    worker, started = recording_worker(q)
    with running(worker):
        assert wait_until(lambda: len(started) == 3, 5.0)
    assert q.depth() == 0
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1


def test_redis_stopped_mid_run_then_back(
    db_url: str, private_redis: PrivateRedis, fresh_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="polyqueue.depth_cache")
    q = fresh_queue(db_url, depth_cache=private_redis.url)  # the default safety poll: 5 s
    backend = q.backend
    assert isinstance(backend, DepthCachedBackend)
    worker, started = recording_worker(q)
    with running(worker):
        q.enqueue("t", "before")
        assert wait_until(lambda: "before" in started, 5.0)
        private_redis.stop("immediate")
        q.enqueue("t", "during")
        # Without Redis the idle look is the database's own probe, once a second (PostgreSQL: LISTEN).
        assert wait_until(lambda: "during" in started, 3.0)
        assert q.depth() == q.depth(exact=True) == 0
        private_redis.start()  # same port, empty
        q.enqueue("t", "after")
        assert wait_until(lambda: "after" in started, 8.0)
        assert wait_until(lambda: backend.cached_depth("default") == 0, 8.0), "the cache did not heal"
        q.enqueue("t", delay=30)
        q.enqueue("t", "last")
        assert wait_until(lambda: "last" in started, 5.0)
    assert_depth_matches(q)
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1


def test_configuration_from_the_url_and_errors(sqlite_url: str, cache_url: str) -> None:
    with polyqueue.connect(f"{sqlite_url}?depth_cache={quote(cache_url, safe='')}") as q:
        assert isinstance(q.backend, DepthCachedBackend)
    with pytest.raises(polyqueue.ConfigurationError, match="redis://"):
        polyqueue.connect(sqlite_url, depth_cache="http://127.0.0.1:6379/0")
    with pytest.raises(polyqueue.ConfigurationError, match="depth_cache_ttl"):
        polyqueue.connect(sqlite_url, depth_cache=cache_url, depth_cache_ttl=0)
    secret = cache_url.replace("redis://", "redis://:s3cret-pw@")
    with polyqueue.connect(sqlite_url, depth_cache=secret) as q:
        assert "s3cret-pw" not in repr(q) and "s3cret-pw" not in q.backend.describe()


def test_a_paused_queue_reads_empty_and_a_resume_wakes_its_worker(
    db_url: str, cache_url: str, fresh_queue: Any
) -> None:
    q = fresh_queue(db_url, depth_cache=cache_url)
    q.enqueue_many([{"job_type": "t", "payload": n} for n in range(3)])
    q.pause("default")
    q.enqueue("t", 3)  # counted while paused, not shown
    assert_depth_matches(q)
    assert q.depth() == 0
    assert q.backend.seconds_until_due(DueProbe(["default"])) is None, "idle workers are not told to claim"
    worker, started = recording_worker(q, safety_poll=60)
    with running(worker):
        time.sleep(1.0)
        assert not started, "a paused queue gave a job to a worker"
        q.resume("default")
        assert wait_until(lambda: len(started) == 4, 10), "the resume did not wake the worker"
    assert_depth_matches(q)
