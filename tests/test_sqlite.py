"""SQLite specifics: an idle worker wakes on another process's commit without sending SQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import polyqueue
from polyqueue.backends.sqlite import CommitWatcher


def _commit_from_another_process(url: str, prefix: str, job_type: str = "t") -> None:
    code = (
        "import polyqueue, sys\n"
        "q = polyqueue.connect(sys.argv[1], table_prefix=sys.argv[2])\n"
        "q.enqueue(sys.argv[3])\n"
        "q.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, url, prefix, job_type], check=True, timeout=60)


def test_the_watcher_wakes_on_a_commit_and_not_on_a_read(sqlite_url: str, fresh_queue: Any) -> None:
    q = fresh_queue(sqlite_url)
    watcher = CommitWatcher(str(Path(q.backend.url.database).resolve()))
    try:
        assert not watcher.wait(0.2), "woke with nothing committed"
        q.stats()  # a read changes nothing
        assert not watcher.wait(0.2), "a read woke it"
        _commit_from_another_process(sqlite_url, q.backend.prefix)
        assert watcher.wait(2.0), "another process's commit did not wake it"
        assert not watcher.wait(0.1), "one commit woke it twice"
    finally:
        watcher.close()


def _wait_for_quiet(statements: list[str], quiet: float = 0.5, timeout: float = 30.0) -> None:
    """Wait until no statement has been added for ``quiet`` seconds (a worker's start-up is done, however slow)."""
    deadline = time.monotonic() + timeout
    seen, since = len(statements), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if len(statements) != seen:
            seen, since = len(statements), time.monotonic()
        elif statements and time.monotonic() - since >= quiet:
            return
    raise AssertionError(f"the worker kept sending statements for {timeout:.0f}s: {statements[-5:]}")


def test_an_idle_worker_sends_no_sql_and_starts_a_new_job_within_milliseconds(
    sqlite_url: str, fresh_queue: Any
) -> None:
    q = fresh_queue(sqlite_url)
    statements: list[str] = []
    q.backend._run_single(lambda conn: None)  # the single-statement engine is created on first use
    for engine in (q.backend.engine, q.backend._autocommit_engine):
        sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    started: list[float] = []
    # The safety poll is far away: a job that starts within the bound below was woken by the commit watcher.
    worker = polyqueue.Worker(q, concurrency=1, safety_poll=30.0)
    worker.register("t", lambda job: started.append(time.monotonic()))
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        _wait_for_quiet(statements)  # start-up: one claim finds nothing, one probe says nothing is due
        settled = len(statements)
        time.sleep(1.2)  # long enough for a polling worker to have backed off to its slow polls
        idle = statements[settled:]
        assert not idle, f"an idle worker sent {len(idle)} statements: {idle}"
        committed = time.monotonic()
        _commit_from_another_process(sqlite_url, q.backend.prefix)
        committed_at_most = time.monotonic()
        deadline = committed_at_most + 30
        while not started and time.monotonic() < deadline:
            time.sleep(0.005)
        assert started, "the job never started"
        # Milliseconds on a quiet machine; the bound leaves room for load 10 and is still far below any poll.
        assert started[0] - committed_at_most < 2.0, f"started {started[0] - committed:.3f}s after the enqueue"
    finally:
        worker.stop()
        runner.join(10)


def test_a_watching_worker_and_a_busy_producer_process_leave_the_file_intact(
    sqlite_url: str, fresh_queue: Any
) -> None:
    """The watcher must never open the database's files: closing them would drop SQLite's own locks."""
    q = fresh_queue(sqlite_url)
    runs: dict[object, int] = {}
    worker = polyqueue.Worker(q, concurrency=2)
    worker.register("t", lambda job: runs.__setitem__(job.id, runs.get(job.id, 0) + 1))
    runner = threading.Thread(target=worker.run)
    runner.start()
    jobs = 600
    code = (
        "import polyqueue, sys, time\n"
        "q = polyqueue.connect(sys.argv[1], table_prefix=sys.argv[2])\n"
        f"for i in range({jobs}):\n"
        "    q.enqueue('t', i)\n"
        "    time.sleep(0.001)\n"
        "q.close()\n"
    )
    try:
        subprocess.run([sys.executable, "-c", code, sqlite_url, q.backend.prefix], check=True, timeout=120)
        deadline = time.monotonic() + 60
        while q.stats()["done"] < jobs and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        runner.join(10)
    with q.backend.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    assert q.stats()["done"] == jobs
    assert len(runs) == jobs and set(runs.values()) == {1}
