"""Rich tables of queue state, shared by the command line and the demo."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

__all__ = ["STATUS_COLUMNS", "cron_table", "dead_table", "fires_table", "job_table", "limits_table", "stats_table"]

#: The stats table's columns: "ready" (pending and due) and "scheduled" (pending, not yet due) split the API's
#: "pending", so that no job is counted twice and the total row adds up.
STATUS_COLUMNS = ("ready", "scheduled", "processing", "done", "dead", "cancelled")


def _columns(counts: dict[str, int]) -> dict[str, int]:
    """The table's columns from the API's stats keys (where "pending" includes "scheduled")."""
    columns = {c: counts.get(c, 0) for c in STATUS_COLUMNS}
    columns["ready"] = counts.get("pending", 0) - counts.get("scheduled", 0)
    return columns


def stats_table(by_queue: dict[str, dict[str, int]], title: str = "polyqueue stats") -> Table:
    """A rich table: one row per queue, one column per status, a total row when there are several queues."""
    table = Table(title=title)
    table.add_column("queue", overflow="fold")
    for column in STATUS_COLUMNS:
        table.add_column(column, justify="right")
    totals = dict.fromkeys(STATUS_COLUMNS, 0)
    for name in sorted(by_queue):
        columns = _columns(by_queue[name])
        table.add_row(Text(name), *(str(columns[c]) for c in STATUS_COLUMNS))
        for c in STATUS_COLUMNS:
            totals[c] += columns[c]
    if len(by_queue) > 1:
        table.add_row("[bold]total[/]", *(f"[bold]{totals[c]}[/]" for c in STATUS_COLUMNS))
    return table


def limits_table(settings: list[Any], title: str = "queue limits") -> Table:
    """A rich table of :class:`~polyqueue.QueueSettings`: each queue's limits (``-``: none) and whether it is paused."""
    table = Table(title=title)
    for column in ("queue", "concurrency", "rate /s", "per key", "paused"):
        table.add_column(column, justify="left" if column == "queue" else "right", overflow="fold")

    def shown(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    for item in settings:
        limits, paused = item.limits, "yes" if item.paused else ""
        table.add_row(item.queue, shown(limits.concurrency), shown(limits.rate), shown(limits.per_key), paused)
    return table


def dead_table(jobs: list[Any], title: str = "dead letters") -> Table:
    """A rich table of dead jobs with the first line of each last error, whole (``polyqueue show`` has the rest)."""
    table = Table(title=title)
    for column in ("id", "queue", "job_type", "attempts", "finished_at", "last_error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        error = (job.last_error or "").strip().splitlines()
        table.add_row(
            Text(str(job.id)),
            Text(job.queue),
            Text(job.job_type),
            f"{job.attempts}/{job.max_attempts}",
            job.finished_at.strftime("%Y-%m-%d %H:%M:%S") if job.finished_at else "",
            Text(error[0] if error else ""),
        )
    return table


def _json_text(value: Any) -> str:
    from . import json_codec

    return json_codec.dumps(value)


def job_table(job: Any) -> Table:
    """Every field of one job, one row each (times in UTC; payload and result as JSON; the error history apart)."""
    from dataclasses import fields

    from rich.markup import escape

    table = Table(title=f"job {escape(str(job.id))}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for f in fields(job):
        value = getattr(job, f.name)
        if f.name == "errors":
            text = f"{len(value)} recorded (below)"
        elif f.name == "last_error" and value and job.errors and job.errors[-1].get("error") == value:
            # The newest history entry holds the same text: its first line is enough here.
            text = f"{value.strip().splitlines()[0]} (error {len(job.errors)} below)"
        elif f.name in ("payload", "result"):
            text = "" if value is None and f.name == "result" else _json_text(value)
        elif isinstance(value, datetime):
            text = value.strftime("%Y-%m-%d %H:%M:%S.%f UTC")
        else:
            text = "" if value is None else str(value)
        table.add_row(f.name, Text(text))
    return table


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else ""


def cron_table(records: list[Any], now: datetime, title: str = "periodic schedules") -> Table:
    """A rich table of declared schedules: the last slot fired and its job, the next slot, who declared it.

    Slots are wall times in each schedule's own time zone.
    """
    from rich.markup import escape

    from .periodic import Schedule

    table = Table(title=title)
    for column in ("name", "schedule", "job", "last fire", "next fire", "declared (UTC)"):
        table.add_column(column, overflow="fold")
    for record in records:
        spec, last = record.spec, record.last_fire
        schedule = Schedule.build(spec.cron, spec.job_type, name=spec.name, queue=spec.queue, timezone=spec.timezone)
        after = max(now, last.slot_at) if last is not None else now
        fired = "never" if last is None else f"{last.slot} (job {last.job_id})"
        table.add_row(
            escape(spec.name),
            escape(schedule.describe()),
            escape(f"{spec.job_type} on {spec.queue}"),
            escape(fired),
            schedule.next_slot(after).key,
            f"{_when(record.declared_at)} by {escape(record.declared_by)}",
        )
    return table


def fires_table(fires: list[Any], title: str) -> Table:
    """A rich table of one schedule's fires, newest first."""
    table = Table(title=title)
    for column in ("slot", "due (UTC)", "fired (UTC)", "job id"):
        table.add_column(column)
    for fire in fires:
        job = "" if fire.job_id is None else str(fire.job_id)
        table.add_row(fire.slot, _when(fire.slot_at), _when(fire.fired_at), job)
    return table
