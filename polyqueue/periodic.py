"""Periodic jobs: cron schedules whose every slot fires exactly once, across every worker that declares them.

There is no leader. Each worker that declares a schedule tries each slot when
it falls due, and the backend settles the race: a fire stores a
``(schedule name, slot)`` row and the slot's job in one transaction, on the
database clock, so only one attempt per slot ever creates a job.

A slot is identified by its wall-clock time in the schedule's time zone
(``2026-03-29T02:30:00``), which is what makes daylight saving time come out
right: a wall time the clock skips fires once, at the first instant after
the jump (several skipped slots of a fast schedule collapse into that one
fire); a wall time the clock repeats fires once, at its first occurrence.
Slots are computed with croniter on naive wall times, so the library never
does time-zone arithmetic; the mapping to instants is done here.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import json_codec, policy
from .backends.base import DeclareSchedules, FireRequest, ScheduleSpec
from .errors import InvalidArgument, PolyqueueError
from .job import NewJob
from .plugins import call_hook
from .validation import check_int, check_name, check_queue_name

__all__ = ["CatchUp", "Schedule", "Scheduler", "Slot", "slot_key"]

log = logging.getLogger("polyqueue.periodic")

#: Longest accepted cron expression.
_MAX_CRON = 255
#: How many slots one catch-up fires at most when ``catch_up="all"`` has no explicit cap.
DEFAULT_CATCH_UP_LIMIT = 100


class CatchUp(enum.StrEnum):
    """What a schedule does about slots that fell due while no worker declared it."""

    NONE = "none"  #: skip them; fire from the next slot on
    LATEST = "latest"  #: fire the latest missed slot once (the default)
    ALL = "all"  #: fire every missed slot, oldest first, up to a cap


@dataclass(frozen=True, slots=True)
class Slot:
    """One firing of a schedule: its key (wall time in the schedule's zone) and the instant it falls due (UTC)."""

    key: str
    at: datetime


def slot_key(wall: datetime) -> str:
    """The slot key of a naive wall-clock time: ``YYYY-MM-DDTHH:MM:SS``."""
    return wall.replace(microsecond=0).isoformat()


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant a naive wall time of ``zone`` falls due.

    A repeated wall time (clock set back) is its first occurrence; a skipped
    one (clock set forward) is the instant the clock jumped.
    """
    first = wall.replace(tzinfo=zone, fold=0)
    utc = first.astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) == wall:
        return utc
    # Skipped: the jump lies between the wall time read with the offset after it and with the one before.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = utc
    if low > high:
        low, high = high, low
    before = low.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated schedule: which job to enqueue, when, under which name."""

    name: str
    cron: str
    job_type: str
    payload_json: str
    queue: str
    timezone: str
    priority: int
    catch_up: CatchUp
    catch_up_limit: int
    max_attempts: int | None

    @classmethod
    def build(
        cls,
        cron: Any,
        job_type: Any,
        payload: Any = None,
        *,
        name: Any = None,
        queue: Any = "default",
        timezone: Any = "UTC",
        priority: Any = 0,
        catch_up: Any = "latest",
        catch_up_limit: Any = DEFAULT_CATCH_UP_LIMIT,
        max_attempts: Any = None,
        max_payload_bytes: int = 1 << 20,
    ) -> Schedule:
        """Check every argument and build the schedule; :class:`InvalidArgument` names what is wrong."""
        job_type = check_name(job_type, "job_type")
        expression = _check_cron(cron)
        zone_name = _check_zone(timezone)
        try:
            mode = CatchUp(catch_up)
        except ValueError:
            raise InvalidArgument(f"catch_up must be one of {', '.join(m.value for m in CatchUp)}") from None
        return cls(
            name=check_name(job_type if name is None else name, "schedule name"),
            cron=expression,
            job_type=job_type,
            payload_json=json_codec.encode_payload(payload, max_payload_bytes),
            queue=check_queue_name(queue),
            timezone=zone_name,
            priority=check_int(priority, "priority", -(2**31), 2**31 - 1),
            catch_up=mode,
            catch_up_limit=check_int(catch_up_limit, "catch_up_limit", 1, 10_000),
            max_attempts=None if max_attempts is None else check_int(max_attempts, "max_attempts", 1, 10_000),
        )

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return ZoneInfo(self.timezone)

    @property
    def has_seconds(self) -> bool:
        """Whether the expression has six fields (seconds first)."""
        return not self.cron.startswith("@") and len(self.cron.split()) == 6

    def _walls(self, start: datetime) -> Any:
        from croniter import croniter

        return croniter(self.cron, start, second_at_beginning=self.has_seconds)

    def slots_after(self, moment: datetime) -> Iterator[Slot]:
        """The slots falling due strictly after the aware instant ``moment``, in order, forever.

        Wall times the clock skips collapse into one slot at the jump (the
        last of them keeps its key), so a skipped hour never fires a burst.
        """
        zone = self.zone
        walls = self._walls(moment.astimezone(zone).replace(tzinfo=None))
        pending: Slot | None = None
        while True:
            wall = walls.get_next(datetime)
            slot = Slot(slot_key(wall), _instant(wall, zone))
            if slot.at <= moment:
                continue  # the repeated hour's second pass: those wall times fired on the first
            if pending is not None and slot.at != pending.at:
                yield pending
            pending = slot

    def next_slot(self, moment: datetime) -> Slot:
        """The first slot due strictly after ``moment``."""
        return next(self.slots_after(moment))

    def latest_slots(self, after: datetime, now: datetime, limit: int) -> list[Slot]:
        """Up to ``limit`` of the newest slots due in ``(after, now]``, oldest first.

        Walks back from ``now``, so a schedule that missed a month of
        every-second slots costs ``limit`` steps, not millions.
        """
        zone = self.zone
        walls = self._walls(now.astimezone(zone).replace(tzinfo=None) + timedelta(seconds=1))
        found: list[Slot] = []
        while len(found) < limit:
            wall = walls.get_prev(datetime)
            slot = Slot(slot_key(wall), _instant(wall, zone))
            if slot.at > now:
                continue
            if slot.at <= after:
                break
            if found and found[-1].at == slot.at:
                continue  # skipped wall times share the jump's instant: the latest key stands for them
            found.append(slot)
        return found[::-1]

    def due_slots(self, cursor: datetime, now: datetime, *, first_run: bool) -> list[Slot]:
        """The slots to fire now: due in ``(cursor, now]``, where ``cursor`` is the last slot dealt with.

        ``first_run`` (a worker starting) applies the catch-up rule to slots
        missed while nothing ran: none, the latest only, or all up to
        ``catch_up_limit``. A running worker fires every due slot (at most
        ``catch_up_limit`` after a long stall), so nothing is skipped while it runs.
        """
        if first_run and self.catch_up is CatchUp.NONE:
            return []
        limit = 1 if first_run and self.catch_up is CatchUp.LATEST else self.catch_up_limit
        return self.latest_slots(cursor, now, limit)

    def describe(self) -> str:
        """``cron (zone)`` for listings."""
        return self.cron if self.timezone == "UTC" else f"{self.cron} ({self.timezone})"


def _check_cron(cron: Any) -> str:
    from croniter import croniter

    if not isinstance(cron, str) or not cron.strip():
        raise InvalidArgument("cron must be a cron expression such as '*/5 * * * *' or '@hourly'")
    expression = " ".join(cron.split())
    if len(expression) > _MAX_CRON:
        raise InvalidArgument(f"cron expression is longer than {_MAX_CRON} characters")
    fields = len(expression.split())
    seconds = not expression.startswith("@") and fields == 6
    if not expression.startswith("@") and fields not in (5, 6):
        raise InvalidArgument(f"cron {expression!r} has {fields} fields: give five, or six with seconds first")
    if not croniter.is_valid(expression, second_at_beginning=seconds):
        raise InvalidArgument(f"cron {expression!r} is not a valid cron expression")
    return expression


def _check_zone(timezone: Any) -> str:
    if not isinstance(timezone, str) or not timezone:
        raise InvalidArgument("timezone must be an IANA zone name such as 'Europe/Berlin'")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(f"unknown time zone {timezone!r}") from None
    return timezone


def seconds_until(moment: datetime, now: datetime) -> float:
    """Seconds from ``now`` to ``moment`` (0 when past), never NaN."""
    delta = (moment - now).total_seconds()
    return delta if delta > 0 and math.isfinite(delta) else 0.0


class Scheduler:
    """Fires a worker's schedules: one thread, no statements while waiting, one fire per due slot.

    It declares the schedules when it starts (which also reads each one's
    newest fire and the database clock), applies the catch-up rule to slots
    missed while no worker declared them, then sleeps until the next slot of
    any schedule and fires it. Time is the database's: the offset between
    the two clocks is read at every statement, and a fire that arrives early
    by the database's clock stores nothing and is retried when due.
    """

    def __init__(
        self,
        queue: Any,
        schedules: Sequence[Schedule],
        worker_id: str,
        stopping: threading.Event,
    ) -> None:
        self.queue = queue
        self.backend = queue.backend
        self.schedules = list(schedules)
        self.worker_id = worker_id
        self.stopping = stopping
        self.fired = 0
        #: Database clock minus this process's clock, as last measured.
        self._offset = timedelta(0)
        #: Per schedule, the newest slot dealt with (fired here, found fired, or skipped by catch-up).
        self._cursor: dict[str, datetime] = {}

    def _db_now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def _measured(self, db_now: datetime) -> None:
        self._offset = db_now - datetime.now(UTC)

    def start(self) -> None:
        """Declare the schedules and fire what the catch-up rule says is due. Raises on a database error."""
        specs = [
            ScheduleSpec(s.name, s.cron, s.timezone, s.job_type, s.queue, s.priority, s.payload_json, s.catch_up.value)
            for s in self.schedules
        ]
        state = self.backend.declare_schedules(DeclareSchedules(specs, self.worker_id))
        self._measured(state.db_now)
        for schedule in self.schedules:
            last = state.last_fires.get(schedule.name)
            self._cursor[schedule.name] = last.slot_at if last is not None else state.db_now
            if last is not None:
                self._fire_due(schedule, first_run=True)

    def run(self) -> None:
        """Until ``stopping`` is set: sleep to the next slot, fire every due one. Database trouble is waited out."""
        outage = policy.Outage("periodic schedules", log)
        while not self.stopping.is_set():
            try:
                if outage.failures or not self._cursor:
                    self.start()
                if self.stopping.wait(self.seconds_to_next()):
                    return
                for schedule in self.schedules:
                    self._fire_due(schedule, first_run=False)
                outage.recovered()
            except PolyqueueError as exc:
                outage.failed(exc, self.stopping)

    def seconds_to_next(self) -> float:
        """Seconds (by this process's clock) until the next slot of any schedule is due by the database's."""
        upcoming = min(s.next_slot(self._cursor[s.name]).at for s in self.schedules)
        return seconds_until(upcoming, self._db_now())

    def _fire_due(self, schedule: Schedule, *, first_run: bool) -> None:
        cursor = self._cursor[schedule.name]
        due = schedule.due_slots(cursor, self._db_now(), first_run=first_run)
        if first_run and not due:
            # Catch-up "none", or nothing missed: start from the latest slot that has passed.
            passed = schedule.latest_slots(cursor, self._db_now(), 1)
            if passed:
                self._cursor[schedule.name] = passed[-1].at
        for slot in due:
            job = NewJob(
                schedule.queue,
                schedule.job_type,
                schedule.payload_json,
                schedule.priority,
                schedule.max_attempts or self.queue.max_attempts,
                0.0,
                None,
            )
            result = self.backend.fire(FireRequest(schedule.name, slot.key, slot.at, job))
            self._measured(result.db_now)
            if not result.due:
                return  # early by the database's clock: the next wait ends when it is due there
            self._cursor[schedule.name] = slot.at
            if result.fired:
                self.fired += 1
                call_hook(
                    self.queue.plugins,
                    "polyqueue_job_enqueued",
                    queue=self.queue,
                    job_ids=[result.job_id],
                    queue_names=[schedule.queue],
                    jobs=[job],
                )
