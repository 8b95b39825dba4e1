"""Worker behaviour beyond the conformance suite: pickup while partly busy."""

from __future__ import annotations

import threading
import time

import pytest

import polyqueue


def test_a_free_slot_is_used_while_other_jobs_run_long(sqlite_url: str, fresh_queue) -> None:  # type: ignore[no-untyped-def]
    q = fresh_queue(sqlite_url)
    release = threading.Event()
    started: dict[str, float] = {}
    worker = polyqueue.Worker(q, concurrency=4, poll_interval=(0.01, 0.05))

    @worker.handler("long")
    def long(job: polyqueue.Job) -> None:
        started[f"long-{job.id}"] = time.monotonic()
        release.wait(10)

    @worker.handler("quick")
    def quick(job: polyqueue.Job) -> None:
        started["quick"] = time.monotonic()

    q.enqueue_many([{"job_type": "long"} for _ in range(3)])
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while len(started) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(started) == 3
        q.enqueue("quick")
        deadline = time.monotonic() + 2
        while "quick" not in started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "quick" in started, "the fourth slot stayed idle while three long jobs ran"
    finally:
        release.set()
        worker.stop()
        runner.join(10)
    assert q.stats()["done"] == 4


def test_a_slow_completer_holds_back_claims_and_keeps_finished_jobs_leased(  # type: ignore[no-untyped-def]
    sqlite_url: str, fresh_queue
) -> None:
    """Finished jobs waiting to be recorded stay heartbeated, and handlers cannot outrun the completer."""
    q = fresh_queue(sqlite_url)
    backend = q.backend
    record = backend.settle
    backlog_sizes: list[int] = []
    recorded = 0

    def slow_settle(request):  # type: ignore[no-untyped-def]
        # A completer stuck behind a busy database: each flush takes longer than the lease.
        nonlocal recorded
        backlog_sizes.append(sum(runs.values()) - recorded)
        time.sleep(2.5)
        lost = record(request)
        recorded += len(request.settlements)
        return lost

    backend.settle = slow_settle  # type: ignore[method-assign]
    runs: dict[object, int] = {}
    # A 2 s lease is heartbeated every 0.67 s: at load 10 a heartbeat may be over a second late and still hold it.
    worker = polyqueue.Worker(q, concurrency=2, batch_size=4, lease=2.0, poll_interval=(0.01, 0.05))

    @worker.handler("quick")
    def quick(job: polyqueue.Job) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1

    ids = q.enqueue_many([{"job_type": "quick"} for _ in range(12)])
    worker.run(burst=True)
    assert q.stats()["done"] == 12
    assert sorted(runs) == sorted(ids)
    assert set(runs.values()) == {1}, "a finished job's lease ran out before its completion was recorded"
    assert max(backlog_sizes) <= 2 * 4, f"handlers ran {max(backlog_sizes)} jobs ahead of the completer"


def test_a_failing_lifecycle_hook_neither_fails_nor_repeats_the_job(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    class BrokenMetrics:
        @polyqueue.hookimpl
        def polyqueue_job_started(self, queue: polyqueue.Queue, job: polyqueue.Job) -> None:
            raise RuntimeError("metrics backend down")

        @polyqueue.hookimpl
        def polyqueue_job_succeeded(self, queue: polyqueue.Queue, job: polyqueue.Job, duration: float) -> None:
            raise RuntimeError("metrics backend down")

    q = polyqueue.connect(f"sqlite:///{tmp_path / 'hooks.db'}", plugins=[BrokenMetrics()])
    q.migrate()
    runs: list[object] = []
    worker = polyqueue.Worker(q, concurrency=2)
    worker.register("t", lambda job: runs.append(job.id))
    ids = q.enqueue_many([{"job_type": "t"} for _ in range(5)])
    assert worker.run(burst=True) == 5
    assert sorted(runs) == sorted(ids)
    assert q.stats()["done"] == 5
    assert "metrics backend down" in caplog.text
    q.close()


def test_a_completion_the_database_refuses_fails_that_job_and_the_worker_goes_on(  # type: ignore[no-untyped-def]
    sqlite_url: str, fresh_queue
) -> None:
    q = fresh_queue(sqlite_url, max_attempts=1)
    backend = q.backend
    record = backend.settle

    def refusing_settle(request):  # type: ignore[no-untyped-def]
        # As MySQL refuses a value too long for its column: the whole statement fails, not one row.
        if any(s.result_json is not None and "poison" in s.result_json for s in request.settlements):
            raise polyqueue.PolyqueueError("rejected the operation: Data too long for column 'result'")
        return record(request)

    backend.settle = refusing_settle  # type: ignore[method-assign]
    worker = polyqueue.Worker(q, concurrency=2, batch_size=8, completion_interval=0.05)
    worker.register("t", lambda job: "poison" if job.payload == 3 else job.payload)
    ids = q.enqueue_many([{"job_type": "t", "payload": i} for i in range(20)])
    worker.run(burst=True)
    stats = q.stats()
    assert (stats["done"], stats["dead"], stats["processing"]) == (19, 1, 0)
    dead = q.get(ids[3])
    assert dead is not None and "completion could not be recorded" in (dead.last_error or "")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_default_workers_share_a_short_queue_even_after_a_backlog_made_them_claim_big(  # type: ignore[no-untyped-def]
    backend: str, request: pytest.FixtureRequest, fresh_queue
) -> None:
    """Two default Workers: a backlog of instant jobs ramps their claims up; then 20 short jobs reach both."""
    url = request.getfixturevalue({"sqlite": "sqlite_url", "postgresql": "pg_url", "mysql": "mysql_url"}[backend])
    q = fresh_queue(url)
    other = polyqueue.connect(url, table_prefix=q.options["table_prefix"])
    ran: dict[str, set[str]] = {"a": set(), "b": set()}
    both_have_work = threading.Event()
    workers = {
        name: polyqueue.Worker(queue, concurrency=8, poll_interval=(0.01, 0.05), safety_poll=0.5, worker_id=name)
        for name, queue in (("a", q), ("b", other))
    }
    biggest_claim = 0
    for name, worker in workers.items():
        worker.register("instant", lambda job: None)
        claim = worker.session.claim

        def measured_claim(*args, claim=claim, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal biggest_claim
            jobs = claim(*args, **kwargs)
            biggest_claim = max(biggest_claim, len(jobs))
            return jobs

        worker.session.claim = measured_claim  # type: ignore[method-assign]

        def short(job: polyqueue.Job, name: str = name) -> None:
            ran[name].add(str(job.id))
            if ran["a"] and ran["b"]:
                both_have_work.set()
            # Each job holds its slot until the other worker has one too: a worker that claimed the
            # whole short queue would leave the other with nothing, and this wait would run out.
            both_have_work.wait(20)

        worker.register("short", short)
    runners = [threading.Thread(target=w.run) for w in workers.values()]
    try:
        q.enqueue_many([{"job_type": "instant"} for _ in range(3000)])
        for runner in runners:
            runner.start()
        deadline = time.monotonic() + 60
        while q.stats()["done"] < 3000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert q.stats()["done"] == 3000
        assert biggest_claim > 8, "the backlog never ramped a claim up"
        q.enqueue_many([{"job_type": "short"} for _ in range(20)])
        deadline = time.monotonic() + 60
        while q.stats()["done"] < 3020 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert both_have_work.is_set(), f"one worker took the whole short queue: {ran}"
        assert len(ran["a"]) + len(ran["b"]) == 20
    finally:
        both_have_work.set()
        for worker in workers.values():
            worker.stop()
        for runner in runners:
            runner.join(30)
        other.close()
