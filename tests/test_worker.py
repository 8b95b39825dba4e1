"""Worker behaviour beyond the conformance suite: pickup while partly busy."""

from __future__ import annotations

import threading
import time

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
