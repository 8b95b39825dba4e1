"""A master killed mid-drain: with WAIT on, no acknowledged job is lost and duplicates stay within the jobs in flight.

This test starts a cluster of its own (3 masters, 3 replicas, a 1 s node
timeout) on free ports, so the shared cluster stays healthy. It enqueues
20,000 jobs over 12 queues (every enqueue acknowledged by a replica), starts
4 worker processes on all 12 queues, SIGKILLs the master serving a third of
them once a fifth of the jobs are done, lets its replica take over, brings the
killed node back (it rejoins as the new master's replica, as a supervisor
would restart it) and waits for the drain to finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_cluster import PrivateCluster, ServerUnavailable

import polyqueue
from polyqueue.testing import backends_required

JOBS = 20_000
QUEUES = [f"q{i}" for i in range(12)]
WORKERS = 4
#: Most jobs one drain_worker holds at once: claimed and running (concurrency 8, batch 8), plus finished ones
#: waiting to be recorded (the worker stops claiming at two capacities of those).
HELD_PER_WORKER = 8 + 2 * 8


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    try:
        private = PrivateCluster(3, 1, node_timeout_ms=1000).start()
    except ServerUnavailable as exc:
        if backends_required():
            pytest.fail(f"private Redis Cluster unavailable: {exc}", pytrace=False)
        pytest.skip(f"private Redis Cluster unavailable: {exc}")
    try:
        yield private
    finally:
        private.close()


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_master_killed_mid_drain_loses_no_acknowledged_job(cluster: PrivateCluster, tmp_path: Path) -> None:
    q = polyqueue.connect(cluster.url)
    q.migrate()
    acknowledged: list[object] = []
    for start in range(0, JOBS, 1000):
        batch = [{"job_type": "record", "queue": QUEUES[i % len(QUEUES)]} for i in range(start, start + 1000)]
        acknowledged.extend(q.enqueue_many(batch))  # returns only once a replica has acknowledged (WAIT)
    assert len(set(acknowledged)) == JOBS

    out = tmp_path / "runs.txt"
    env = {**os.environ, "POLYQUEUE_URL": cluster.url}
    script = Path(__file__).with_name("drain_worker.py")
    workers = [
        subprocess.Popen([sys.executable, str(script), str(out), ",".join(QUEUES)], env=env) for _ in range(WORKERS)
    ]
    try:
        _wait(lambda: q.stats()["done"] >= JOBS // 5, 300, "a fifth of the jobs to be done")
        in_flight = q.stats()["processing"]
        victim = cluster.kill_master_of(q.backend.layout.meta("q0"))  # type: ignore[attr-defined]
        killed_at = time.monotonic()
        cluster.wait_for_failover(120)
        failover = time.monotonic() - killed_at
        victim.start()  # back as the new master's replica
        cluster.wait_until_ok(120)
        _wait(lambda: q.stats()["done"] == JOBS, 600, "every job to be done")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)

    runs = Counter(out.read_text().split())
    stats = q.stats()
    missing = [job_id for job_id in acknowledged if str(job_id) not in runs]
    duplicates = sum(n - 1 for n in runs.values() if n > 1)
    print(
        f"\nfailover {failover:.1f}s; processing when killed {in_flight}; runs {sum(runs.values())}; "
        f"duplicate runs {duplicates}; bound {WORKERS * HELD_PER_WORKER}; stats {stats}"
    )
    assert missing == [], f"{len(missing)} acknowledged jobs never ran, e.g. {missing[:5]}"
    assert stats == {**stats, "done": JOBS, "pending": 0, "processing": 0, "dead": 0}
    assert all(q.get(job_id).status == "done" for job_id in acknowledged)  # type: ignore[union-attr]
    assert set(runs) == {str(job_id) for job_id in acknowledged}
    assert duplicates <= WORKERS * HELD_PER_WORKER, f"{duplicates} duplicate runs: more than the jobs in flight"
    q.close()
