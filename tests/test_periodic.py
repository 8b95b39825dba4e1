"""Periodic schedules: slot arithmetic across DST, catch-up rules, validation, and the idle cost of a schedule.

The conformance suite (TestPeriodic) proves the exactly-once firing on every
backend; this module tests the rules once, fast, and what only a real worker
shows: a schedule costs no statements between its fires.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import polyqueue
from polyqueue import InvalidArgument
from polyqueue.periodic import CatchUp, Schedule


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def keys(schedule: Schedule, start: datetime, count: int) -> list[tuple[str, datetime]]:
    slots = schedule.slots_after(start)
    return [(slot.key, slot.at) for slot in (next(slots) for _ in range(count))]


@pytest.mark.parametrize(
    ("zone", "gap_day", "jump_utc"),
    [
        ("Europe/Berlin", (2026, 3, 29), at(2026, 3, 29, 1, 0)),
        ("America/New_York", (2026, 3, 8), at(2026, 3, 8, 7, 0)),
        ("Australia/Lord_Howe", (2026, 10, 4), at(2026, 10, 3, 15, 30)),  # a half-hour shift
    ],
)
def test_a_skipped_wall_time_fires_once_at_the_jump(zone: str, gap_day: tuple[int, ...], jump_utc: datetime) -> None:
    daily = Schedule.build("30 2 * * *", "t", timezone=zone)
    start = datetime(*gap_day, tzinfo=UTC) - timedelta(days=2)
    slots = dict(keys(daily, start, 4))
    skipped = datetime(*gap_day).strftime("%Y-%m-%dT02:30:00")
    assert slots[skipped] == jump_utc
    assert len(set(slots.values())) == 4, "one fire per day"


def test_a_fast_schedule_does_not_burst_after_a_skipped_hour() -> None:
    every_ten = Schedule.build("*/10 * * * *", "t", timezone="Europe/Berlin")
    slots = keys(every_ten, at(2026, 3, 29, 0, 30), 6)
    assert [k for k, _ in slots] == [
        "2026-03-29T01:40:00", "2026-03-29T01:50:00", "2026-03-29T03:00:00",
        "2026-03-29T03:10:00", "2026-03-29T03:20:00", "2026-03-29T03:30:00",
    ]  # fmt: skip
    assert slots[2][1] == at(2026, 3, 29, 1, 0)


def test_a_repeated_wall_time_fires_once_at_its_first_occurrence() -> None:
    daily = Schedule.build("30 1 * * *", "t", timezone="America/New_York")  # 2026-11-01 01:30 happens twice
    (slot,) = [s for s in keys(daily, at(2026, 10, 30), 4) if s[0] == "2026-11-01T01:30:00"]
    assert slot[1] == at(2026, 11, 1, 5, 30)  # EDT, the first 01:30
    every_minute = Schedule.build("* * * * *", "t", timezone="America/New_York")
    repeated = [k for k, _ in keys(every_minute, at(2026, 11, 1, 5, 58), 5)]
    assert repeated == ["2026-11-01T01:59:00", "2026-11-01T02:00:00", "2026-11-01T02:01:00", "2026-11-01T02:02:00",
                        "2026-11-01T02:03:00"]  # fmt: skip


def test_six_fields_put_seconds_first_and_nicknames_work() -> None:
    every_ten_seconds = Schedule.build("*/10 * * * * *", "t")
    assert [k for k, _ in keys(every_ten_seconds, at(2026, 1, 1, 0, 0, 5), 3)] == [
        "2026-01-01T00:00:10", "2026-01-01T00:00:20", "2026-01-01T00:00:30",
    ]  # fmt: skip
    assert keys(Schedule.build("@daily", "t"), at(2026, 1, 1, 12), 1) == [("2026-01-02T00:00:00", at(2026, 1, 2))]
    assert Schedule.build("@hourly", "t").next_slot(at(2026, 1, 1, 12, 5)).at == at(2026, 1, 1, 13)


def test_catch_up_rules_and_a_long_outage_cost_little() -> None:
    minutely = {mode: Schedule.build("* * * * *", "t", catch_up=mode, catch_up_limit=5) for mode in CatchUp}
    last, now = at(2026, 1, 1, 0, 0), at(2026, 1, 1, 0, 3, 30)
    assert minutely[CatchUp.NONE].due_slots(last, now, first_run=True) == []
    assert [s.key for s in minutely[CatchUp.LATEST].due_slots(last, now, first_run=True)] == ["2026-01-01T00:03:00"]
    assert len(minutely[CatchUp.ALL].due_slots(last, now, first_run=True)) == 3
    assert len(minutely[CatchUp.NONE].due_slots(last, now, first_run=False)) == 3, "a running worker skips nothing"
    every_second = Schedule.build("* * * * * *", "t", catch_up="all", catch_up_limit=10)
    started = time.perf_counter()
    due = every_second.due_slots(at(2026, 1, 1), at(2026, 2, 1), first_run=True)
    assert len(due) == 10 and due[-1].at == at(2026, 2, 1)
    assert time.perf_counter() - started < 5, "a month of missed seconds is walked back, not forward"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cron": "* * * *"},
        {"cron": "60 * * * *"},
        {"cron": 5},
        {"cron": "* * * * *", "timezone": "Nowhere/City"},
        {"cron": "* * * * *", "timezone": ""},
        {"cron": "* * * * *", "catch_up": "sometimes"},
        {"cron": "* * * * *", "catch_up_limit": 0},
        {"cron": "* * * * *", "name": ""},
        {"cron": "* * * * *", "queue": "x" * 256},
        {"cron": "* * * * *", "priority": "high"},
    ],
)
def test_bad_schedules_are_invalid_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        Schedule.build(kwargs.pop("cron"), "t", **kwargs)


def _statements(q: polyqueue.Queue, seconds: float, worker: polyqueue.Worker) -> int:
    """Statements the queue's engines send while ``worker`` runs for ``seconds`` (after it has started)."""
    backend: Any = q.backend
    backend._run_single(lambda conn: None)  # both pools exist, so both are counted
    engines = {id(e): e for e in (backend.engine, backend._autocommit_engine)}.values()
    sent: list[str] = []

    def count(*args: Any) -> None:
        sent.append(args[2])

    runner = threading.Thread(target=worker.run)
    runner.start()
    time.sleep(2.0)  # start-up: declaration and the first probe are not idle cost
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", count)
    try:
        time.sleep(seconds)
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", count)
        worker.stop()
        runner.join(30)
    return len(sent)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_schedule_sends_no_statements_between_its_fires(backend: str, sqlite_url: str, fresh_queue: Any,
                                                          request: pytest.FixtureRequest) -> None:  # fmt: skip
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("pg_url")
    q = fresh_queue(url)
    plain = polyqueue.Worker(q, safety_poll=60)
    plain.register("noop", lambda job: None)
    baseline = _statements(q, 4.0, plain)
    scheduled = polyqueue.Worker(q, safety_poll=60)
    scheduled.register("noop", lambda job: None)
    scheduled.periodic("@yearly", "noop")  # declared, never due during the test
    assert _statements(q, 4.0, scheduled) <= baseline
