"""``polyqueue transfer`` between every pair of SQLite, PostgreSQL and MariaDB, killed with SIGKILL and rerun.

Each test seeds the source with jobs in every movable state (due, scheduled,
retried with an error history, dead, done, cancelled; priorities, attempt
limits, dedupe keys with and without holds, two queues), kills a transfer
half-way with SIGKILL, reruns it with the real ``polyqueue`` command, and
then requires exactly the source's jobs in the target -- every one once,
every field equal -- and none left in the source.

Sizes: moving 100,000 jobs takes this loaded two-core machine about half a
minute per pair, so six pairs at that size would take most of the suite's
budget. The showcase pair, SQLite to PostgreSQL (the move the feature exists
for), runs at 100,000 jobs and is killed twice (once from outside at a third,
once from inside right after a page was committed in the target and before it
left the source, the one moment a naive transfer doubles). The other five
pairs run the same protocol at 4,000 jobs, with pages of 250, so each still
crosses many pages and hits the same moment. The memory plugin is in-process
(another process cannot reach its jobs), so its pairs are interrupted by an
exception at that moment instead of a SIGKILL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import polyqueue
from polyqueue.backends.base import ExportQuery
from polyqueue.job import JobRecord
from polyqueue.moving import MOVABLE_STATUSES, TransferStep
from polyqueue.testing import drop_schema, require_server, unique_prefix

ALL = ",".join(MOVABLE_STATUSES)
STORED = frozenset({"pending", "dead", "done", "cancelled"})
POLYQUEUE = str(Path(sys.executable).with_name("polyqueue"))


# ----------------------------------------------------------------------------
# Seeding and comparing
# ----------------------------------------------------------------------------
def seed(q: polyqueue.Queue, count: int) -> None:
    """``count`` jobs in every movable state; each payload carries its number ``n``."""
    special = max(10, count // 200)  # jobs that get claimed and settled, of each kind
    for start in range(0, count, 5000):
        batch = []
        for n in range(start, min(count, start + 5000)):
            job: dict[str, Any] = {
                "job_type": ("retried", "dead", "done", "cancelled")[n % 4] if n < 4 * special else f"type-{n % 3}",
                "payload": {"n": n, "text": "é😀 \"'" if n % 11 == 0 else "x" * (n % 40)},
                "queue": "mail" if n % 5 == 0 else "default",
                "priority": n % 7 - 3,
                "max_attempts": n % 9 + 2,
            }
            if n % 10 == 3:
                job["delay"] = 3600 + n
            if n % 50 == 7:
                job["dedupe_key"] = f"key-{n}"
                if n % 100 == 7:
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
    while page := q.backend.export_jobs(ExportQuery(STORED, None, after, 5000)):
        for record in page:
            n = json.loads(record.payload_json)["n"]
            assert n not in jobs, f"job {n} is stored twice"
            jobs[n] = record
        after = page[-1].id
    return jobs


def close(a: datetime | None, b: datetime | None) -> bool:
    """Times within a millisecond (SQLite keeps REAL epoch seconds, the servers microseconds)."""
    return (a is None) == (b is None) and (a is None or b is None or abs((a - b).total_seconds()) < 0.001)


def assert_same_jobs(before: dict[int, JobRecord], after: dict[int, JobRecord]) -> None:
    assert len(after) == len(before), f"{len(before)} jobs before, {len(after)} after"
    assert after.keys() == before.keys()
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


# ----------------------------------------------------------------------------
# Transfers run in processes of their own
# ----------------------------------------------------------------------------
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


def kill_after_write(src_url: str, dst_url: str, batch: int, after: int) -> None:
    """Run a transfer that SIGKILLs itself once ``after`` jobs moved, between a page's write and its delete."""
    done = subprocess.run(
        [sys.executable, "-c", KILLER, src_url, dst_url, ALL, str(batch), str(after)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def kill_from_outside(src_url: str, dst_url: str, target: polyqueue.Queue, at: int, batch: int, log: Path) -> None:
    """Start ``polyqueue transfer`` and SIGKILL it once the target holds ``at`` jobs or more."""
    with open(log, "wb") as errors:
        proc = subprocess.Popen(
            [POLYQUEUE, "transfer", src_url, dst_url, "--status", ALL, "--batch", str(batch)],
            stdout=subprocess.DEVNULL, stderr=errors,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if total(target) >= at:
                    break
            except polyqueue.SchemaMissing:
                pass  # the transfer has not created the target's tables yet
            time.sleep(0.5)
        assert proc.poll() is None, f"the transfer ended before it could be killed: {log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)


def finish(src_url: str, dst_url: str, batch: int) -> str:
    """Rerun ``polyqueue transfer`` to the end; its output."""
    done = subprocess.run(
        [POLYQUEUE, "transfer", src_url, dst_url, "--status", ALL, "--batch", str(batch)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# ----------------------------------------------------------------------------
# The pairs
# ----------------------------------------------------------------------------
def url_of(kind: str, tmp_path: Path, name: str) -> str:
    if kind == "sqlite":
        # NORMAL durability: seeding settles thousands of jobs one transaction each.
        return f"sqlite:///{tmp_path / name}.db?sqlite_synchronous=NORMAL"
    return require_server("postgresql" if kind == "postgresql" else "mysql")


@pytest.fixture
def opened() -> Iterator[Callable[[str], tuple[polyqueue.Queue, str]]]:
    """``opened(url)``: a queue on a fresh table prefix and the URL that reaches it from another process."""
    queues: list[polyqueue.Queue] = []

    def make(url: str) -> tuple[polyqueue.Queue, str]:
        prefix = unique_prefix()
        full = f"{url}{'&' if '?' in url else '?'}table_prefix={prefix}"
        q = polyqueue.connect(full)
        queues.append(q)
        return q, full

    yield make
    for q in queues:
        try:
            drop_schema(q)
        finally:
            q.close()


def run_killed_transfer(
    src_kind: str, dst_kind: str, count: int, batch: int, tmp_path: Path, opened: Any, *, outside: bool
) -> None:
    source, src_url = opened(url_of(src_kind, tmp_path, "source"))
    target, dst_url = opened(url_of(dst_kind, tmp_path, "target"))
    source.migrate()
    seed(source, count)
    before = snapshot(source)
    assert len(before) == count
    if outside:
        kill_from_outside(src_url, dst_url, target, count // 3, batch, tmp_path / "transfer.log")
        kill_after_write(src_url, dst_url, batch, count // 3)
    else:
        kill_after_write(src_url, dst_url, batch, count // 2)
    left = total(source)
    assert 0 < left < count, "the kill came too early or too late"
    output = finish(src_url, dst_url, batch)
    assert "had been written by an earlier, interrupted run" in output, output
    assert total(source) == 0, f"jobs left in the source: {source.stats()}"
    assert_same_jobs(before, snapshot(target))


PAIRS = [
    ("sqlite", "mysql"),
    ("postgresql", "sqlite"),
    ("postgresql", "mysql"),
    ("mysql", "sqlite"),
    ("mysql", "postgresql"),
]


@pytest.mark.slow
def test_100k_jobs_from_sqlite_to_postgresql_survive_two_sigkills(tmp_path: Path, opened: Any) -> None:
    run_killed_transfer("sqlite", "postgresql", 100_000, 1000, tmp_path, opened, outside=True)


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_a_transfer_killed_half_way_and_rerun_moves_every_job_once(
    src_kind: str, dst_kind: str, tmp_path: Path, opened: Any
) -> None:
    run_killed_transfer(src_kind, dst_kind, 4000, 250, tmp_path, opened, outside=False)


class Crash(Exception):
    """Stands for a crash in-process, right after a page was written to the target."""


@pytest.mark.parametrize("direction", ["memory-to-sqlite", "sqlite-to-memory"])
def test_the_memory_plugin_moves_both_ways_and_resumes(direction: str, tmp_path: Path, opened: Any) -> None:
    store = f"memory://transfer{unique_prefix()}"
    sqlite = url_of("sqlite", tmp_path, "queue")
    src_url, dst_url = (store, sqlite) if direction == "memory-to-sqlite" else (sqlite, store)
    source, _ = opened(src_url)
    target, _ = opened(dst_url)
    source.migrate()
    target.migrate()
    seed(source, 3000)
    before = snapshot(source)

    def crash(step: TransferStep) -> None:
        if step.phase == "written" and step.result.moved + step.page >= 1500:
            raise Crash

    with pytest.raises(Crash):
        polyqueue.transfer(source, target, statuses=MOVABLE_STATUSES, batch_size=200, on_step=crash)
    assert 0 < total(source) < 3000
    result = polyqueue.transfer(source, target, statuses=MOVABLE_STATUSES, batch_size=200)
    assert result.resumed == 200, "the page written before the crash is found, not written again"
    assert total(source) == 0
    assert_same_jobs(before, snapshot(target))


# ----------------------------------------------------------------------------
# Processing jobs, held keys, the command line
# ----------------------------------------------------------------------------
def test_processing_jobs_are_left_or_waited_for(tmp_path: Path, opened: Any) -> None:
    source, _ = opened(url_of("sqlite", tmp_path, "source"))
    target, _ = opened(url_of("sqlite", tmp_path, "target"))
    source.migrate()
    target.migrate()
    source.enqueue_many([{"job_type": "t", "payload": {"n": n}} for n in range(5)])
    running = source.claim(limit=2, lease=600)
    left = polyqueue.transfer(source, target)
    assert (left.moved, left.processing) == (3, 2)
    assert source.stats()["processing"] == 2

    def finish_them() -> None:
        time.sleep(1.0)
        source.fail(running[0], "retry me", retry_in=3600)  # back to pending (scheduled): moved
        source.complete(running[1])  # done: not chosen, stays

    helper = threading.Thread(target=finish_them)
    helper.start()
    waited = polyqueue.transfer(source, target, wait=True, wait_timeout=60)
    helper.join()
    assert (waited.moved, waited.processing) == (1, 0)
    moved = {j.payload["n"]: j for j in (target.get(i) for i in range(1, 10)) if j is not None}
    assert moved[running[0].payload["n"]].errors[-1]["error"] == "retry me"
    assert source.stats()["done"] == 1


def test_a_key_held_in_the_target_leaves_its_job_in_the_source(tmp_path: Path, opened: Any) -> None:
    source, _ = opened(url_of("sqlite", tmp_path, "source"))
    target, _ = opened(require_server("postgresql"))
    source.migrate()
    target.migrate()
    mine = source.enqueue("t", dedupe_key="shared")
    source.enqueue("t", dedupe_key="free")
    target.enqueue("t", dedupe_key="shared")
    result = polyqueue.transfer(source, target)
    assert result.moved == 1 and list(result.skipped) == [mine]
    assert "held here by another job" in result.skipped[mine]
    assert source.require(mine).status == "pending"


def test_the_command_masks_passwords_counts_on_dry_runs_and_refuses_bad_input(tmp_path: Path, opened: Any) -> None:
    source, src_url = opened(url_of("sqlite", tmp_path, "source"))
    source.migrate()
    source.enqueue_many([{"job_type": "t"}, {"job_type": "t", "delay": 600}])
    pg = require_server("postgresql").replace("root@", "root:s3cret-pw@")  # trust auth ignores the password
    _, dst_url = opened(pg)
    dry = subprocess.run([POLYQUEUE, "transfer", src_url, dst_url, "--dry-run"], capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "would move 2 job(s) (1 pending, 1 scheduled)" in dry.stdout
    assert "s3cret-pw" not in dry.stdout + dry.stderr and "***" in dry.stderr
    assert source.stats()["pending"] == 2
    moved = subprocess.run([POLYQUEUE, "transfer", src_url, dst_url, "--status", "scheduled"], capture_output=True,
                           text=True, timeout=120, check=False)  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert "moved 1 job(s) (1 scheduled)" in moved.stdout and "s3cret-pw" not in moved.stdout + moved.stderr
    for bad in (["--status", "processing"], ["--batch", "0"]):
        done = subprocess.run([POLYQUEUE, "transfer", src_url, dst_url, *bad], capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("error:") and "s3cret-pw" not in done.stderr
    same = subprocess.run([POLYQUEUE, "transfer", src_url, src_url], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert same.returncode == 1 and "same queue database" in same.stderr
    assert source.stats()["pending"] == 1
