"""Claim+complete rate on a table holding many finished rows against an empty table, and their ratio."""

from __future__ import annotations

import sqlalchemy as sa

from ..config import JOB_TYPE, PREFIX, Spec
from ..systems import PolyqueueSystem
from .base import JOBS_PER_SECOND, Metric, Scenario, Trial
from .drain import drain_once

#: Columns copied when the history doubles itself.
HISTORY_COLUMNS = (
    "queue",
    "job_type",
    "payload",
    "priority",
    "status",
    "attempts",
    "max_attempts",
    "run_at",
    "created_at",
    "finished_at",
    "lease_token",
)
ANALYZE = {"postgresql": 'ANALYZE "{table}"', "mysql": "ANALYZE TABLE `{table}`", "sqlite": "ANALYZE"}


class HistoryQueue(PolyqueueSystem):
    """polyqueue on tables of its own whose rows up to id ``keep_below`` are history.

    Emptying it and checking a drain leave the history alone.
    """

    keep_below = 0

    def clear(self) -> None:
        with self.begin() as conn:
            conn.execute(sa.delete(self.jobs).where(self.jobs.c.id > self.keep_below))

    def drained(self, n: int) -> tuple[bool, str]:
        done = self.done_above_history()
        return done == n, f"{done} done"

    def done_above_history(self) -> int:
        """Finished rows above the history (all of them while ``keep_below`` is 0)."""
        jobs = self.jobs
        stmt = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.id > self.keep_below, jobs.c.status == "done")
        with self.begin() as conn:
            return int(conn.execute(stmt).scalar() or 0)

    def make_history(self, rows: int) -> None:
        """Make ``rows`` finished jobs server-side (one job, then doubling INSERT ... SELECT), then ANALYZE."""
        jobs = self.jobs
        self.empty_table()
        self.q.enqueue(JOB_TYPE, {"history": True})
        finished = {"status": "done", "attempts": 1, "finished_at": self.backend.now(), "lease_token": 1}
        with self.begin() as conn:
            conn.execute(sa.update(jobs).values(**finished))
        have = 1
        while have < rows:
            take = min(have, rows - have)
            with self.begin() as conn:
                source = sa.select(*[jobs.c[c] for c in HISTORY_COLUMNS]).where(jobs.c.status == "done").limit(take)
                conn.execute(sa.insert(jobs).from_select(list(HISTORY_COLUMNS), source))
            have += take
        with self.begin() as conn:
            result = conn.exec_driver_sql(ANALYZE[self.spec.backend].format(table=jobs.name))
            if result.returns_rows:
                result.fetchall()

    def top_id(self) -> int:
        """The highest id in the table."""
        with self.begin() as conn:
            return int(conn.execute(sa.select(sa.func.max(self.jobs.c.id))).scalar() or 0)


class History(Scenario):
    """The same drain (1 worker process) on a table full of history and on an empty one."""

    name = "history"

    def trials(self, backend: str) -> list[Trial]:
        url, rows, n = self.bench.urls[backend], self.config.history_rows, self.config.history_jobs
        full = HistoryQueue(Spec("polyqueue", backend, url, name=f"{PREFIX}hist_"))
        empty = HistoryQueue(Spec("polyqueue", backend, url, name=f"{PREFIX}nohist_"))
        full.q.migrate()
        empty.setup()
        self.bench.systems[(backend, "history-full")] = full
        self.bench.systems[(backend, "history-empty")] = empty
        if full.done_above_history() < rows:  # the history is not marked yet: this counts every finished row
            self.bench.console.print(f"  [dim]{backend}: making {rows:,} finished rows for the history scenario...[/]")
            full.make_history(rows)
        full.keep_below = full.top_id()
        rates: dict[str, float] = {}

        def run_one(system: HistoryQueue, which: str) -> dict[str, float]:
            rates[which] = drain_once(system, 1, n, self.bench.worker_params())["1 process"]
            system.clear()
            values = {which: rates[which]}
            if "full" in rates and "empty" in rates:
                values["ratio full/empty"] = rates["full"] / rates["empty"]
                rates.clear()
            return values

        note = f"claim+complete of {n:,} jobs by 1 worker process; 'full' table holds {rows:,} done rows"
        full_metrics: dict[str, Metric] = {"full": JOBS_PER_SECOND, "ratio full/empty": ("x", True)}
        return [
            self.trial(backend, "polyqueue", lambda: run_one(empty, "empty"), {"empty": JOBS_PER_SECOND}, note),
            self.trial(backend, "polyqueue", lambda: run_one(full, "full"), full_metrics, note),
        ]
