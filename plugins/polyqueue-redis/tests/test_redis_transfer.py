"""``polyqueue transfer`` between SQLite and Redis (the cluster and one node), both ways, killed and rerun.

Each test seeds the source with jobs in every movable state (due,
scheduled, retried with an error history, dead, done, cancelled; priorities,
attempt limits, dedupe keys with and without holds, two queues), SIGKILLs a
transfer right after a page was committed in the target and before it left
the source (the one moment a naive transfer doubles), reruns it with the
real ``polyqueue`` command, and then requires exactly the source's jobs in
the target -- every one once, every field equal -- and none in the source.
3,000 jobs in pages of 200: many pages, a few seconds per direction here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from redis_urls import cluster_url, single_node_url

import polyqueue
from polyqueue.backends.base import ExportQuery
from polyqueue.job import JobRecord
from polyqueue.moving import MOVABLE_STATUSES
from polyqueue.testing import drop_schema, unique_prefix

ALL = ",".join(MOVABLE_STATUSES)
STORED = frozenset({"pending", "dead", "done", "cancelled"})
POLYQUEUE = str(Path(sys.executable).with_name("polyqueue"))
Opened = Callable[[str], tuple[polyqueue.Queue, str]]


@pytest.fixture
def opened() -> Iterator[Opened]:
    """``opened(url)``: a queue on a fresh key or table prefix, and the URL that reaches it from another process."""
    queues: list[polyqueue.Queue] = []

    def make(url: str) -> tuple[polyqueue.Queue, str]:
        full = f"{url}{'&' if '?' in url else '?'}table_prefix={unique_prefix()}"
        q = polyqueue.connect(full)
        queues.append(q)
        return q, full

    yield make
    for q in queues:
        try:
            drop_schema(q)
        finally:
            q.close()


def redis_url(kind: str) -> str:
    return cluster_url() if kind == "cluster" else single_node_url()


def sqlite_url(tmp_path: Path) -> str:
    # NORMAL durability: seeding settles hundreds of jobs, one transaction each.
    return f"sqlite:///{tmp_path / 'queue.db'}?sqlite_synchronous=NORMAL"


def seed(q: polyqueue.Queue, count: int) -> None:
    """``count`` jobs in every movable state; each payload carries its number ``n``."""
    special = max(10, count // 100)  # jobs that get claimed and settled, of each kind
    batch = []
    for n in range(count):
        job: dict[str, Any] = {
            "job_type": ("retried", "dead", "done", "cancelled")[n % 4] if n < 4 * special else f"type-{n % 3}",
            "payload": {"n": n, "text": "é😀 \"'" if n % 11 == 0 else "x" * (n % 40)},
            "queue": "mail" if n % 5 == 0 else "default",
            "priority": n % 7 - 3,
            "max_attempts": n % 9 + 2,
        }
        if n % 10 == 3:
            job["delay"] = 3600 + n
        if n % 25 == 7:
            job["dedupe_key"] = f"key-{n}"
            if n % 50 == 7:
                job["dedupe_for"] = 7200
        batch.append(job)
    q.enqueue_many(batch)
    for kind in ("retried", "dead", "done", "cancelled"):
        for job in q.claim(["default", "mail"], job_types=[kind], limit=special):
            if kind == "retried":
                q.fail(job, f"attempt failed: {job.payload['n']}", retry_in=3600)
            elif kind == "dead":
                q.fail(job, RuntimeError(f"gave up on {job.payload['n']}"), dead=True)
            elif kind == "done":
                q.complete(job, {"n": job.payload["n"], "ok": True})
            else:
                q.release(job)
                q.cancel(job.id)


def snapshot(q: polyqueue.Queue) -> dict[int, JobRecord]:
    """Every job of ``q`` by its payload number; fails on a number seen twice (a doubled job)."""
    jobs: dict[int, JobRecord] = {}
    after = None
    while page := q.backend.export_jobs(ExportQuery(STORED, None, after, 1000)):
        for record in page:
            n = json.loads(record.payload_json)["n"]
            assert n not in jobs, f"job {n} is stored twice"
            jobs[n] = record
        after = page[-1].id
    return jobs


def close(a: datetime | None, b: datetime | None) -> bool:
    """Times within a millisecond (SQLite keeps REAL epoch seconds, Redis microseconds)."""
    return (a is None) == (b is None) and (a is None or b is None or abs((a - b).total_seconds()) < 0.001)


def assert_same_jobs(before: dict[int, JobRecord], after: dict[int, JobRecord]) -> None:
    assert after.keys() == before.keys(), f"{len(before)} jobs before, {len(after)} after"
    for n, old in before.items():
        new = after[n]
        for name in ("queue", "job_type", "priority", "status", "attempts", "max_attempts", "last_error",
                     "dedupe_key", "dedupe_for"):  # fmt: skip
            assert getattr(new, name) == getattr(old, name), (n, name, getattr(old, name), getattr(new, name))
        for name in ("payload_json", "result_json", "errors_json"):
            a, b = getattr(old, name), getattr(new, name)
            assert (a is None) == (b is None) and (a is None or json.loads(a) == json.loads(b)), (n, name)
        for name in ("run_at", "created_at", "finished_at", "dedupe_held_until"):
            assert close(getattr(old, name), getattr(new, name)), (n, name, getattr(old, name), getattr(new, name))


def total(q: polyqueue.Queue) -> int:
    return sum(v for k, v in q.stats().items() if k != "scheduled")


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import polyqueue

    src_url, dst_url, statuses, batch, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

    def step(s):
        # SIGKILL right after a page is committed in the target, before it leaves the source.
        if s.phase == "written" and s.result.moved + s.page >= after:
            os.kill(os.getpid(), signal.SIGKILL)

    source, target = polyqueue.connect(src_url), polyqueue.connect(dst_url)
    target.migrate()
    polyqueue.transfer(source, target, statuses=statuses.split(","), batch_size=batch, on_step=step)
    sys.exit(3)  # never reached: the kill comes first
    """
)


def command(*args: str) -> subprocess.CompletedProcess[str]:
    """``polyqueue ARGS`` in a process of its own."""
    return subprocess.run([POLYQUEUE, *args], capture_output=True, text=True, timeout=600, check=False)


DIRECTIONS = ["sqlite-to-cluster", "cluster-to-sqlite", "sqlite-to-one-node", "one-node-to-sqlite"]


@pytest.mark.slow
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_transfer_killed_half_way_and_rerun_moves_every_job_once(
    direction: str, tmp_path: Path, opened: Opened
) -> None:
    first, _, second = direction.partition("-to-")
    src_kind, dst_kind = first, second
    urls = {kind: sqlite_url(tmp_path) if kind == "sqlite" else redis_url(kind) for kind in (src_kind, dst_kind)}
    source, src_url = opened(urls[src_kind])
    target, dst_url = opened(urls[dst_kind])
    source.migrate()
    count, batch = 3000, 200
    seed(source, count)
    before = snapshot(source)
    assert len(before) == count
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, src_url, dst_url, ALL, str(batch), str(count // 2)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert 0 < total(source) < count, "the kill came too early or too late"
    done = command("transfer", src_url, dst_url, "--status", ALL, "--batch", str(batch))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{batch} of them had been written by an earlier, interrupted run" in done.stdout, done.stdout
    assert total(source) == 0, f"jobs left in the source: {source.stats()}"
    assert_same_jobs(before, snapshot(target))


@pytest.mark.parametrize("kind", ["cluster", "one-node"])
def test_the_command_moves_jobs_from_sqlite_to_redis_and_back(kind: str, tmp_path: Path, opened: Opened) -> None:
    lite, lite_url = opened(sqlite_url(tmp_path))
    redis, redis_at = opened(redis_url(kind))
    lite.migrate()
    lite.enqueue_many([
        {"job_type": "t", "payload": {"n": 1}, "dedupe_key": "once", "dedupe_for": 600},
        {"job_type": "t", "payload": {"n": 2}, "delay": 600, "priority": 5},
    ])  # fmt: skip
    dry = command("transfer", lite_url, redis_at, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would move 2 job(s) (1 pending, 1 scheduled)" in dry.stdout
    there = command("transfer", lite_url, redis_at)
    assert there.returncode == 0, there.stderr
    assert "moved 2 job(s) (1 pending, 1 scheduled)" in there.stdout
    assert total(lite) == 0 and redis.stats()["pending"] == 2
    (job,) = redis.claim()
    assert job.payload == {"n": 1} and job.dedupe_key == "once" and job.dedupe_for == 600
    redis.complete(job)
    assert redis.enqueue("t", {"n": 3}, dedupe_key="once") == job.id, "the moved job holds its key after done"
    back = command("transfer", redis_at, lite_url, "--status", "scheduled,done")
    assert back.returncode == 0, back.stderr
    assert "moved 2 job(s) (1 done, 1 scheduled)" in back.stdout
    assert total(redis) == 0
    held = lite.enqueue("t", {"n": 4}, dedupe_key="once")
    assert lite.require(held).status == "done", "the hold came back with the done job"
    assert {j.payload["n"] for j in lite.dead_jobs()} == set()
    assert lite.stats()["scheduled"] == 1
