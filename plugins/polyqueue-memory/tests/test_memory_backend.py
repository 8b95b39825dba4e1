"""What the conformance suite does not cover: discovery, URL handling, sharing by name, threads, wake-ups."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from polyqueue_memory import MemoryBackend

import polyqueue
from polyqueue.backends.base import DueProbe, WakeupRequest


@pytest.fixture
def url() -> str:
    """A store name no other test uses."""
    return f"memory://t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def q(url: str) -> Iterator[polyqueue.Queue]:
    queue = polyqueue.connect(url)
    queue.migrate()
    yield queue
    queue.backend.drop_schema()
    queue.close()


def test_the_memory_scheme_is_found_through_the_installed_entry_point(q: polyqueue.Queue) -> None:
    assert isinstance(q.backend, MemoryBackend)
    assert q.plugins.has_plugin("memory")


def test_capabilities_are_declared_honestly(q: polyqueue.Queue) -> None:
    assert q.capabilities == {
        "dedupe", "priorities", "delayed", "notify", "periodic", "transfer", "headers", "timeouts", "cancel_running",
        "list_jobs", "throughput", "retry_now", "pause", "flow_control",
    }  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [
        "memory://user:secret@name",
        "memory://name:5",
        "memory://name/path",
        "memory://name?colour=blue",
        "memory+fast://name",
    ],
)
def test_urls_with_parts_a_memory_store_cannot_have_are_rejected(bad: str) -> None:
    with pytest.raises(polyqueue.ConfigurationError) as info:
        polyqueue.connect(bad)
    assert "secret" not in str(info.value)


def test_queues_opening_one_name_share_its_jobs_and_prefixes_separate_them(url: str, q: polyqueue.Queue) -> None:
    job_id = q.enqueue("t", {"n": 1})
    with polyqueue.connect(url) as other:
        assert other.get(job_id) is not None
        [job] = other.claim()
        assert job.payload == {"n": 1}
    elsewhere = polyqueue.connect(url, table_prefix="elsewhere_")
    elsewhere.migrate()
    try:
        assert elsewhere.stats()["processing"] == 0
        assert elsewhere.get(job_id) is None
    finally:
        elsewhere.backend.drop_schema()


def test_a_store_must_be_migrated_and_is_gone_after_drop_schema(url: str) -> None:
    q = polyqueue.connect(url)
    with pytest.raises(polyqueue.SchemaMissing, match="migrate"):
        q.enqueue("t")
    q.migrate()
    q.migrate()
    q.enqueue("t")
    q.backend.drop_schema()
    with pytest.raises(polyqueue.SchemaMissing):
        q.claim()


def test_connection_argument_is_refused_without_transactional_enqueue(q: polyqueue.Queue) -> None:
    with pytest.raises(polyqueue.ConfigurationError, match="transactional"):
        q.enqueue("t", connection=object())
    assert q.stats()["pending"] == 0


def test_the_clock_never_runs_backwards(q: polyqueue.Queue) -> None:
    readings = [q.backend.db_now() for _ in range(2000)]
    assert readings == sorted(readings)
    assert readings[0].utcoffset() is not None and readings[0].utcoffset().total_seconds() == 0


def test_wakeups_report_an_enqueue_even_one_made_between_two_waits(q: polyqueue.Queue) -> None:
    source = q.backend.wakeup_source(WakeupRequest(["default"]))
    try:
        assert source.wait(0.01) is False
        q.enqueue("t", queue="other")
        assert source.wait(0.01) is False
        q.enqueue("t")
        assert source.wait(5.0) is True
        assert source.wait(0.01) is False
    finally:
        source.close()


def test_a_waiting_worker_is_woken_by_another_thread(q: polyqueue.Queue) -> None:
    source = q.backend.wakeup_source(WakeupRequest(["default"]))
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(source.wait(30.0)))
    waiter.start()
    q.enqueue("t")
    waiter.join(10.0)
    source.close()
    assert woke == [True]


def test_a_worker_runs_jobs_enqueued_while_it_waits(q: polyqueue.Queue) -> None:
    # A safety poll far longer than the test: the jobs can only arrive in time by push.
    worker = polyqueue.Worker(q, concurrency=2, lease=5.0, safety_poll=300)
    done = threading.Event()
    seen: list[int] = []

    @worker.handler("count")
    def count(job: polyqueue.Job) -> int:
        seen.append(job.payload)
        if len(seen) == 3:
            done.set()
        return job.payload * 2

    runner = threading.Thread(target=worker.run)
    runner.start()
    time.sleep(0.3)  # let the worker find the queue empty and start waiting
    try:
        ids = [q.enqueue("count", n) for n in (1, 2, 3)]
        assert done.wait(20.0)
    finally:
        worker.stop()
        runner.join(20.0)
    assert not runner.is_alive()
    assert sorted(seen) == [1, 2, 3]
    assert [q.require(i).result for i in ids] == [2, 4, 6]


def test_seconds_until_due_counts_scheduled_jobs_and_lease_expiries(q: polyqueue.Queue) -> None:
    backend = q.backend
    assert backend.seconds_until_due(DueProbe(["default"])) is None
    q.enqueue("t")
    assert backend.seconds_until_due(DueProbe(["default"])) <= 0
    q.claim(lease=60)
    assert 55 < backend.seconds_until_due(DueProbe(["default"])) <= 60  # the lease: its job is claimable when it ends
    assert backend.seconds_until_due(DueProbe(["other"])) is None
    q.enqueue("t", queue="other", delay=20)
    assert 15 < backend.seconds_until_due(DueProbe(["default", "other"])) <= 20
