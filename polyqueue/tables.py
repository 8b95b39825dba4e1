"""Rich tables of queue state, shared by the command line and the demo."""

from __future__ import annotations

from typing import Any

from rich.table import Table

__all__ = ["STATUS_COLUMNS", "dead_table", "stats_table"]

STATUS_COLUMNS = ("pending", "scheduled", "processing", "done", "dead", "cancelled")


def stats_table(by_queue: dict[str, dict[str, int]], title: str = "polyqueue stats") -> Table:
    """A rich table: one row per queue, one column per status."""
    table = Table(title=title)
    table.add_column("queue", overflow="fold")
    for column in STATUS_COLUMNS:
        table.add_column(column, justify="right")
    totals = dict.fromkeys(STATUS_COLUMNS, 0)
    for name in sorted(by_queue):
        counts = by_queue[name]
        table.add_row(name, *(str(counts.get(c, 0)) for c in STATUS_COLUMNS))
        for c in STATUS_COLUMNS:
            totals[c] += counts.get(c, 0)
    if len(by_queue) > 1:
        table.add_row("[bold]total[/]", *(f"[bold]{totals[c]}[/]" for c in STATUS_COLUMNS))
    return table


def dead_table(jobs: list[Any], title: str = "dead letters") -> Table:
    """A rich table of dead jobs."""
    table = Table(title=title)
    for column in ("id", "queue", "job_type", "attempts", "finished_at", "last_error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        error = (job.last_error or "").strip().splitlines()
        table.add_row(
            str(job.id),
            job.queue,
            job.job_type,
            f"{job.attempts}/{job.max_attempts}",
            job.finished_at.strftime("%Y-%m-%d %H:%M:%S") if job.finished_at else "",
            error[0][:80] if error else "",
        )
    return table
