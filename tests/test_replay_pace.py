"""``replay(..., rate=R)`` and ``polyqueue replay --rate``: dead jobs come back at a steady pace, measured.

The pace is measured on the database clock: replay stamps each revived job's
``run_at`` with DB-now, so the spread of those stamps is how long the redrive
took, whatever the test process was doing meanwhile. The run takes about five
seconds and must be within 10 % of the asked rate. Pacing is the Queue's, the
same over every backend, so it is measured on one (PostgreSQL; the command's
test runs on SQLite); the timetable itself is tested exactly, with a fake
clock, in ``test_policy.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import polyqueue

MakeQueue = Callable[..., polyqueue.Queue]


def kill(q: polyqueue.Queue, count: int, job_type: str = "t") -> list[object]:
    ids = q.enqueue_many([{"job_type": job_type, "payload": {"n": n}, "max_attempts": 1} for n in range(count)])
    while jobs := q.claim(limit=500, job_types=[job_type]):
        for job in jobs:
            q.fail(job, "down", dead=True)
    assert q.stats()["dead"] >= count
    return ids


def measured_rate(q: polyqueue.Queue, ids: list[object], step: int) -> float:
    """Jobs per second between the first and the last step, from the revived jobs' ``run_at`` (DB clock)."""
    stamps = sorted(q.require(job_id).run_at for job_id in ids)  # type: ignore[type-var]
    seconds = (stamps[-1] - stamps[0]).total_seconds()  # type: ignore[operator]
    return (len(ids) - step) / seconds  # the first step goes at time zero


def test_replay_at_a_rate_redrives_dead_jobs_within_ten_percent_of_it(fresh_queue: MakeQueue, pg_url: str) -> None:
    q = fresh_queue(pg_url)
    ids = kill(q, 250)
    seen: list[tuple[int, int]] = []
    result = q.replay_detailed(rate="50/s", on_progress=lambda done, total: seen.append((done, total)))
    assert result.replayed == 250 and q.stats()["pending"] == 250
    assert seen[-1] == (250, 250) and len(seen) == 50  # steps of 5 jobs, a tenth of a second apart
    rate = measured_rate(q, ids, step=5)
    assert 45.0 <= rate <= 55.0, f"replayed at {rate:.1f} jobs/s instead of 50"
    replayed = q.require(ids[0])
    assert replayed.attempts == 0 and replayed.errors[-1]["error"] == "down"


def test_a_paced_replay_checks_its_rate_before_touching_anything(fresh_queue: MakeQueue, sqlite_url: str) -> None:
    q = fresh_queue(sqlite_url)
    kill(q, 3)
    for bad in ("0/s", "fast", -5):
        with pytest.raises(polyqueue.InvalidArgument):
            q.replay(rate=bad)
    assert q.stats()["dead"] == 3
    assert q.replay([], rate=10) == 0


def test_the_command_replays_at_a_rate(fresh_queue: MakeQueue, sqlite_url: str, tmp_path: Path) -> None:
    q = fresh_queue(sqlite_url)
    ids = kill(q, 40)
    prefix = q.options["table_prefix"]
    env = {**os.environ, "POLYQUEUE_URL": f"{sqlite_url}?table_prefix={prefix}", "COLUMNS": "200"}
    command = [sys.executable, "-m", "polyqueue.cli", "replay", "--all"]
    bad = subprocess.run([*command, "--rate", "lots"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "'lots' is not a rate" in bad.stderr
    done = subprocess.run([*command, "--rate", "20/s"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "replayed 40 job(s)" in done.stdout
    assert q.stats()["pending"] == 40
    assert 10.0 <= measured_rate(q, ids, step=2) <= 22.0, "paced, not all at once (two seconds: loose bounds)"
