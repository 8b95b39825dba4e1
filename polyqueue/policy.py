"""Every decision about a job's life, made once; backends only store what it decides.

This module owns the rules:

* **claim order** -- higher priority first, then oldest ``run_at``, then id;
* **the final-attempt rule** -- an attempt is the last when ``attempts >= max_attempts``;
* **lease expiry** -- an expired lease goes back to pending, or dead on the final attempt,
  with ``last_error`` naming the worker that held it;
* **the fence** -- a claim may change its job only while the job is processing, still
  carries the claim's token, and its lease has not expired;
* **transitions** -- completed, failed (retry at t or dead), released, as
  :class:`~polyqueue.backends.base.Settlement` values for the backend to write;
* **back-off** -- one exponential schedule with jitter, for job retries and for
  every wait on an outage (database, Redis, a dropped LISTEN connection);
* **storable error text** -- what a failure records, whatever the exception held;
* **dedupe holds** -- which endings keep a job's dedupe key held for its ``dedupe_for`` seconds;
* **pacing** -- the steady timetable of a paced redrive (``replay(..., rate=R)``), and the
  batches of a purge: short, each followed by a rest that leaves room for claims.
* **claim sizing** -- how many jobs a worker holds when no ``batch_size`` is given
  (:class:`ClaimSizer`: large batches for a backlog of short jobs, small for long jobs or a short queue);
* **runtime control** -- which timeout an attempt runs under and when it is up, what a
  timeout records, and that a cancel requested while a job runs ends it ``cancelled``
  and never retried (a failure, a release or an expired lease of such a job included);
* **store errors** -- what each kind of error a store reports does: retried at
  once, reconnected with back-off then ``BackendUnavailable``, or a
  ``ConfigurationError`` at once for a wrong URL (authentication, unknown
  database or host name). Backends only say which kind an error is.
* **flow control** -- how many jobs a claim may take from a limited queue (concurrency,
  a rate allowance on the database clock, per-key limits) and the fair order across keys.

Where SQL must apply a rule inside one statement (the PostgreSQL claim
rescues expired leases as it claims), it takes the expression from the
``*_sql`` function beside the Python form here; the test suite proves each
pair agrees on every backend. (Those functions import SQLAlchemy themselves:
``import polyqueue`` does not load it until a SQL backend is opened.) A store
that applies a rule inside a server-side Lua script (the Redis Cluster
plugin) takes it from the ``*_lua`` function beside it, rendered as Lua
source text; the test suite proves those agree on a real Redis too.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .backends.base import Settlement
from .errors import BackendUnavailable, ConfigurationError, PolyqueueError, SchemaMismatch, SchemaMissing
from .job import Job, JobStatus, QueueLimits

if TYPE_CHECKING:
    import sqlalchemy as sa

T = TypeVar("T")

__all__ = [
    "CACHE_OUTAGE",
    "CANCELLED_ERROR",
    "CLAIM_HORIZON",
    "CLAIM_ORDER",
    "DEDUPE_HELD_AFTER",
    "ERROR_HISTORY_LIMIT",
    "ERROR_TIME_FORMAT",
    "LISTEN_RECONNECT",
    "MAX_CLAIM_CAPACITY",
    "MAX_ERROR_LENGTH",
    "OUTAGE",
    "PACE_STEP",
    "PURGE_BATCH_SECONDS",
    "RATE_BURST_SECONDS",
    "RECONNECT",
    "RECORD_RETRY",
    "RESCUE_BATCH",
    "SETTINGS_REFRESH",
    "TRANSIENT",
    "Backoff",
    "ClaimSizer",
    "ErrorKind",
    "Jitter",
    "Outage",
    "Pace",
    "PurgePace",
    "appended_entry",
    "attempt_deadline",
    "attempt_timeout",
    "cancelled",
    "capped_max_attempts",
    "capped_max_attempts_lua",
    "capped_max_attempts_sql",
    "claim_allowance",
    "claim_allowance_sql",
    "claim_order_key",
    "claim_order_lua",
    "claim_order_sql",
    "completed",
    "dedupe_hold_sql",
    "error_entry",
    "error_for",
    "error_history",
    "error_text",
    "error_time",
    "expired_lease_entry",
    "expired_lease_entry_lua",
    "expired_lease_entry_sql",
    "expired_lease_error",
    "expired_lease_error_lua",
    "expired_lease_error_sql",
    "expired_lease_status",
    "expired_lease_status_lua",
    "expired_lease_status_sql",
    "failed",
    "fair_order_key",
    "fair_order_sql",
    "final_attempt_lua",
    "final_attempt_sql",
    "holds_claim",
    "holds_claim_lua",
    "holds_claim_sql",
    "host_name_unknown",
    "is_final_attempt",
    "is_retried",
    "job_claim_key",
    "keeps_dedupe_key",
    "key_has_room",
    "key_has_room_sql",
    "key_slot",
    "lua_literal",
    "new_enqueue_token",
    "new_token",
    "rate_allowance",
    "rate_allowance_sql",
    "released",
    "settled_status",
    "settled_status_sql",
    "stamp_newest_entry",
    "storable_text",
    "timeout_error",
]

#: How many expired leases one claim rescues at most (the rest wait for the next claim).
RESCUE_BATCH = 100
#: Longest error text stored per failure.
MAX_ERROR_LENGTH = 16_384
#: How many failures of a job's error history are kept (newest last).
ERROR_HISTORY_LIMIT = 20


# --- back-off ----------------------------------------------------------------------------------------
class Jitter(enum.StrEnum):
    """How a back-off delay is spread below its ceiling."""

    NONE = "none"  #: exactly the ceiling
    EQUAL = "equal"  #: uniform between half the ceiling and the ceiling
    FULL = "full"  #: uniform between zero and the ceiling


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off: ``base * 2**(attempt-1)``, capped at ``cap``, spread by ``jitter``."""

    base: float
    cap: float
    jitter: Jitter = Jitter.EQUAL

    def ceiling(self, attempt: int) -> float:
        """The undisturbed delay before try number ``attempt`` (1 is the first retry)."""
        return min(self.cap, self.base * 2 ** min(max(attempt - 1, 0), 60))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before try number ``attempt``."""
        ceiling = self.ceiling(attempt)
        if self.jitter is Jitter.NONE:
            return ceiling
        uniform = (rng or random).uniform
        return uniform(ceiling / 2, ceiling) if self.jitter is Jitter.EQUAL else uniform(0.0, ceiling)


#: A worker whose claims meet a database outage.
OUTAGE = Backoff(0.2, 5.0)
#: Recording a failure or completion while the database is unavailable.
RECORD_RETRY = Backoff(0.05, 2.0)
#: A deadlock, serialization failure or busy database: run the transaction again soon.
TRANSIENT = Backoff(0.004, 0.2, Jitter.FULL)
#: A lost connection, inside one call's reconnect window.
RECONNECT = Backoff(0.1, 0.4, Jitter.NONE)
#: Redis (the depth cache) unreachable: pause before trying it again.
CACHE_OUTAGE = Backoff(0.5, 5.0, Jitter.NONE)
#: A dropped LISTEN connection.
LISTEN_RECONNECT = Backoff(0.1, 0.8, Jitter.NONE)


class Outage:
    """A run of failed attempts at one activity while the database is away: warn once, back off, carry on.

    ``failed`` counts a failure, logs the first of a run, and waits the
    back-off (or until ``stop`` is set); ``recovered`` ends the run.
    """

    def __init__(self, activity: str, logger: logging.Logger, backoff: Backoff = OUTAGE) -> None:
        self.activity = activity
        self.logger = logger
        self.backoff = backoff
        self.failures = 0

    def failed(self, error: BaseException, stop: threading.Event) -> None:
        """Count ``error``, log the first of a run, and wait the back-off (returns early when ``stop`` is set)."""
        self.failures += 1
        if self.failures == 1:
            self.logger.warning("%s: database unavailable, retrying: %s", self.activity, error)
        stop.wait(self.backoff.delay(self.failures))

    def recovered(self) -> None:
        """The activity succeeded: the next failure starts a new run."""
        self.failures = 0


def new_token() -> int:
    """A fencing token: random, positive, 62 bits, so no two claims or settlements share one."""
    return (int.from_bytes(os.urandom(8)) >> 2) + 1


#: Seconds since the epoch at which enqueue tokens start counting (2024-01-01 UTC).
_TOKEN_EPOCH = 1_704_067_200


def new_enqueue_token(now: Callable[[], float] = time.time) -> int:
    """An enqueue call's client token: positive, below 2**62, the second it was made in its high 32 bits.

    The 30 low bits are random. Time first keeps the stores' unique index of
    tokens growing at its end, like a sequence, instead of at random places
    (a random key costs a random page per enqueue once the index outgrows
    memory). Two calls in one second share a token once in about 10**9 pairs;
    a backend that meets its token already taken draws another.
    """
    seconds = max(0, int(now()) - _TOKEN_EPOCH) & 0xFFFF_FFFF
    return (seconds << 30) | ((int.from_bytes(os.urandom(4)) >> 2) or 1)


# --- store errors ------------------------------------------------------------------------------------
class ErrorKind(enum.StrEnum):
    """What an error a store reports means. A backend classifies its driver's errors into these; this module decides.

    * ``TRANSIENT`` -- deadlock, serialization failure, busy: the call runs
      its transaction again at once (:data:`TRANSIENT` back-off), a few times.
    * ``DISCONNECT`` -- the connection was refused, timed out or lost: the call
      reconnects with :data:`RECONNECT` back-off for its reconnect window, then
      raises :class:`BackendUnavailable` (which a worker waits out).
    * ``CONFIGURATION`` -- the URL is wrong: authentication failed, the
      database or role does not exist, the host name is unknown. Retrying
      cannot help: :class:`ConfigurationError` at once.
    * ``MISSING_SCHEMA`` -- a polyqueue table does not exist: :class:`SchemaMissing`.
    * ``SCHEMA_MISMATCH`` -- a table lacks a column polyqueue uses (an older or
      foreign schema): :class:`SchemaMismatch` saying to migrate.
    * ``DUPLICATE`` -- a unique key was violated (callers that expect it retry).
    * ``OTHER`` -- the store refused this one operation.
    """

    TRANSIENT = "transient"
    DISCONNECT = "disconnect"
    CONFIGURATION = "configuration"
    MISSING_SCHEMA = "missing_schema"
    SCHEMA_MISMATCH = "schema_mismatch"
    DUPLICATE = "duplicate"
    OTHER = "other"


def is_retried(kind: str) -> bool:
    """Whether a call retries an error of this kind (at once or after reconnecting) before giving up."""
    return kind in (ErrorKind.TRANSIENT, ErrorKind.DISCONNECT)


def error_for(kind: str, where: str, detail: str, *, outage: bool = False) -> PolyqueueError:
    """The polyqueue error a call raises for a store error of ``kind`` it did not (or no longer) retry.

    ``where`` names the store with its password masked; ``detail`` is the
    driver's one-line reason, already scrubbed of secrets (for
    ``MISSING_SCHEMA``: the tables that are missing). ``outage`` makes an
    unclassified error an outage (a DBAPI ``OperationalError``: the database,
    not the operation, is in trouble).
    """
    if kind == ErrorKind.CONFIGURATION:
        return ConfigurationError(f"{where} refused the connection: {detail} (check the URL)")
    if kind == ErrorKind.MISSING_SCHEMA:
        return SchemaMissing(
            f"the polyqueue tables ({detail}) do not exist in {where}: run `polyqueue migrate` (or Queue.migrate())"
        )
    if kind == ErrorKind.SCHEMA_MISMATCH:
        return SchemaMismatch(
            f"the polyqueue tables in {where} do not match this polyqueue ({detail}): run `polyqueue migrate`"
        )
    if is_retried(kind) or (outage and kind == ErrorKind.OTHER):
        return BackendUnavailable(f"{where} is unavailable: {detail}")
    return PolyqueueError(f"{where} rejected the operation: {detail}")


def host_name_unknown(host: str | None) -> bool:
    """Whether DNS says ``host`` does not exist (a typo in the URL), as opposed to "cannot answer now".

    A store whose connection failed asks this before retrying: an unknown
    name is a :data:`ErrorKind.CONFIGURATION` error, a DNS outage
    (``EAI_AGAIN``) or an unreachable address an outage. Needs no driver.
    """
    if not host or host.startswith("/"):
        return False
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        return exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
    except (OSError, UnicodeError):
        return False
    return False


# --- claim order -------------------------------------------------------------------------------------
#: Claim order as (column, descending) pairs, best first.
CLAIM_ORDER: tuple[tuple[str, bool], ...] = (("priority", True), ("run_at", False), ("id", False))


def claim_order_key(priority: int, run_at: Any, job_id: Any) -> tuple[Any, ...]:
    """Sort key of claim order (smaller claims first): priority descending, then run_at, then id."""
    return (-priority, run_at, job_id)


def job_claim_key(job: Job) -> tuple[Any, ...]:
    """:func:`claim_order_key` of a :class:`Job`."""
    return claim_order_key(job.priority, job.run_at, job.id)


def claim_order_sql(
    columns: Mapping[str, Any] | Any, *, negated: Mapping[str, Any] | None = None
) -> list[sa.ColumnElement[Any]]:
    """ORDER BY clauses (or index columns) of claim order over ``columns`` (a dict, or a table's ``c``, by name).

    ``negated`` maps a descending key to a column holding its negation,
    ordered ascending instead: for an index on a server that ignores DESC in
    index definitions (MariaDB before 10.8).
    """
    clauses: list[sa.ColumnElement[Any]] = []
    for name, descending in CLAIM_ORDER:
        if descending and negated is not None and name in negated:
            clauses.append(negated[name].asc())
        else:
            clauses.append(columns[name].desc() if descending else columns[name].asc())
    return clauses


def claim_order_lua(a: Mapping[str, str], b: Mapping[str, str]) -> str:
    """A Lua expression that is true when job ``a`` claims before job ``b`` (a ``table.sort`` comparator body).

    ``a`` and ``b`` map each name of :data:`CLAIM_ORDER` to a Lua expression
    holding that value as a number (``{"priority": "x.p", "run_at": "x.r", "id": "x.i"}``).
    """
    expression = "false"
    for name, descending in reversed(CLAIM_ORDER):
        before = ">" if descending else "<"
        expression = f"({a[name]} {before} {b[name]} or ({a[name]} == {b[name]} and {expression}))"
    return expression


# --- attempts and lease expiry ------------------------------------------------------------------------
def is_final_attempt(attempts: int, max_attempts: int) -> bool:
    """Whether the attempt numbered ``attempts`` is the job's last."""
    return attempts >= max_attempts


def final_attempt_sql(attempts: Any, max_attempts: Any) -> sa.ColumnElement[bool]:
    """:func:`is_final_attempt` as SQL."""
    return attempts >= max_attempts  # type: ignore[no-any-return]


def final_attempt_lua(attempts: str, max_attempts: str) -> str:
    """:func:`is_final_attempt` as a Lua expression over two Lua number expressions."""
    return f"(({attempts}) >= ({max_attempts}))"


def capped_max_attempts(stored: int, cap: int | None) -> int:
    """The attempt limit a claim writes: the stored one, lowered to a worker's ``cap``."""
    return stored if cap is None or stored <= cap else cap


def capped_max_attempts_sql(stored: Any, cap: Any) -> sa.ColumnElement[int]:
    """:func:`capped_max_attempts` as SQL, ``cap`` a bound integer (a NULL cap keeps the stored limit)."""
    from sqlalchemy import case

    return case((stored > cap, cap), else_=stored)


def capped_max_attempts_lua(stored: str, cap: str) -> str:
    """:func:`capped_max_attempts` as Lua; ``cap`` is a Lua number, or ``nil``/``false`` for no cap."""
    return f"((({cap}) and ({stored}) > ({cap})) and ({cap}) or ({stored}))"


def expired_lease_status(attempts: int, max_attempts: int, cancel_requested: bool = False) -> str:
    """Where a job goes when its lease expires: pending again, or dead when that was its final attempt.

    A job whose cancel was requested while it ran ends ``cancelled`` instead (its worker is gone).
    """
    if cancel_requested:
        return JobStatus.CANCELLED
    return JobStatus.DEAD if is_final_attempt(attempts, max_attempts) else JobStatus.PENDING


def expired_lease_status_sql(
    attempts: Any, max_attempts: Any, cancel_requested: Any | None = None
) -> sa.ColumnElement[str]:
    """:func:`expired_lease_status` as SQL (``cancel_requested`` the flag column, where the store keeps one)."""
    from sqlalchemy import case, true

    arms: list[Any] = [] if cancel_requested is None else [(cancel_requested == true(), JobStatus.CANCELLED)]
    return case(*arms, (final_attempt_sql(attempts, max_attempts), JobStatus.DEAD), else_=JobStatus.PENDING)


def expired_lease_status_lua(attempts: str, max_attempts: str) -> str:
    """:func:`expired_lease_status` as a Lua expression over two Lua number expressions."""
    dead, pending = lua_literal(JobStatus.DEAD), lua_literal(JobStatus.PENDING)
    return f"({final_attempt_lua(attempts, max_attempts)} and {dead} or {pending})"


_EXPIRED_PREFIX = "lease expired while held by "


def expired_lease_error(locked_by: str | None) -> str:
    """The ``last_error`` of a job whose lease expired."""
    return _EXPIRED_PREFIX + (locked_by or "?")


def expired_lease_error_sql(locked_by: Any) -> sa.ColumnElement[str]:
    """:func:`expired_lease_error` as SQL (set it before ``locked_by`` is cleared: MySQL assigns left to right)."""
    from sqlalchemy import String, func, literal

    return literal(_EXPIRED_PREFIX, String()) + func.coalesce(locked_by, "?")


def expired_lease_error_lua(locked_by: str) -> str:
    """:func:`expired_lease_error` as Lua; ``locked_by`` is a side-effect-free expression: a string, nil or false.

    As in Python, a missing or empty holder reads ``?``.
    """
    holder = f"((({locked_by}) and ({locked_by}) ~= '') and ({locked_by}) or '?')"
    return f"({lua_literal(_EXPIRED_PREFIX)} .. {holder})"


def expired_lease_entry(attempts: int, locked_by: str | None, at: str) -> dict[str, Any]:
    """The error history entry a lease expiry appends (``at`` is :func:`error_time` of the store's clock)."""
    return error_entry(attempts, expired_lease_error(locked_by), locked_by, at)


def expired_lease_entry_sql(attempts: Any, locked_by: Any, at: Any) -> dict[str, Any]:
    """:func:`expired_lease_entry` as SQL values by key, for a dialect to build its JSON object from."""
    return error_entry(attempts, expired_lease_error_sql(locked_by), locked_by, at)


def expired_lease_entry_lua(attempts: str, locked_by: str, at: str) -> str:
    """:func:`expired_lease_entry` as a Lua table constructor for ``cjson.encode`` (a missing holder is JSON null)."""
    fields = error_entry(attempts, expired_lease_error_lua(locked_by), f"(({locked_by}) or cjson.null)", at)
    return "{" + ", ".join(f"[{lua_literal(key)}] = {value}" for key, value in fields.items()) + "}"


# --- error history entries ---------------------------------------------------------------------------
#: The ``at`` of an error history entry, the same text on every backend: ISO 8601 UTC to the millisecond.
ERROR_TIME_FORMAT = "YYYY-MM-DDTHH:MM:SS.mmmZ"


def error_entry(attempt: Any, error: Any, worker: Any, at: Any = None) -> dict[str, Any]:
    """One entry of a job's error history; the one place that names its keys.

    ``at`` is left out when not known yet: a failure's entry is built
    here and stamped with the store's clock when the store writes it
    (see :func:`stamp_newest_entry`).
    """
    entry = {"attempt": attempt, "error": error, "worker": worker}
    if at is not None:
        entry["at"] = at
    return entry


def error_time(epoch_us: int) -> str:
    """A store's clock reading (microseconds since the epoch) as an entry's ``at`` (:data:`ERROR_TIME_FORMAT`)."""
    moment = _EPOCH + timedelta(microseconds=epoch_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stamp_newest_entry(history_json: str, at: str) -> str:
    """``history_json`` (as :func:`error_history` made it) with ``at`` on its newest entry (stores without JSON SQL)."""
    from . import json_codec

    history = json_codec.loads(history_json)
    if history:
        history[-1]["at"] = at
    return json_codec.dumps(history)


def appended_entry(history_json: str | None, entry: dict[str, Any]) -> str:
    """``history_json`` with ``entry`` appended, keeping the newest :data:`ERROR_HISTORY_LIMIT`."""
    from . import json_codec

    history = json_codec.loads(history_json) if history_json else []
    return json_codec.dumps([*history, entry][-ERROR_HISTORY_LIMIT:])


# --- the fence ---------------------------------------------------------------------------------------
def holds_claim(status: str, stored_token: int, lease_expires_at: Any, claim_token: int, now: Any) -> bool:
    """Whether a claim with ``claim_token`` still holds a job stored with these values at ``now``."""
    return (
        status == JobStatus.PROCESSING
        and stored_token == claim_token
        and lease_expires_at is not None
        and lease_expires_at > now
    )


def holds_claim_sql(
    status: Any, lease_expires_at: Any, now: Any, token_matches: sa.ColumnElement[bool]
) -> sa.ColumnElement[bool]:
    """:func:`holds_claim` as SQL; ``token_matches`` says the stored token is the claim's (per backend form)."""
    from sqlalchemy import and_

    return and_(token_matches, status == JobStatus.PROCESSING, lease_expires_at > now)


def holds_claim_lua(status: str, stored_token: str, lease_expires_at: str, claim_token: str, now: str) -> str:
    """:func:`holds_claim` as a Lua expression (side-effect-free operands).

    Tokens are compared as their decimal text (Lua numbers cannot hold 62
    bits); ``lease_expires_at`` and ``now`` are numbers on one scale, the
    lease ``nil`` or ``false`` when there is none.
    """
    return (
        f"({status} == {lua_literal(JobStatus.PROCESSING)} and {stored_token} == {claim_token}"
        f" and ({lease_expires_at}) and ({lease_expires_at}) > ({now}))"
    )


def lua_literal(text: str) -> str:
    """``text`` as a Lua string literal: printable ASCII as is, every other byte of its UTF-8 as a decimal escape."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        out.append(char if 32 <= byte < 127 and char not in '\\"' else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


# --- dedupe holds ------------------------------------------------------------------------------------
#: Endings after which a job keeps its dedupe key held for its ``dedupe_for`` seconds: the job ran.
#: A cancelled job releases its key at once: cancelling says "not this one", so a new enqueue may take it.
DEDUPE_HELD_AFTER: tuple[str, ...] = (JobStatus.DONE, JobStatus.DEAD)


def keeps_dedupe_key(status: str) -> bool:
    """Whether a job that ends in ``status`` keeps its dedupe key held for its ``dedupe_for`` seconds."""
    return status in DEDUPE_HELD_AFTER


def dedupe_hold_sql(status: Any, held_until: Any) -> sa.ColumnElement[Any]:
    """:func:`keeps_dedupe_key` as SQL: ``held_until`` (DB-now + the job's ``dedupe_for``) when ``status`` keeps it."""
    from sqlalchemy import case, literal_column

    held: list[sa.ColumnElement[str]] = [literal_column(f"'{s}'") for s in DEDUPE_HELD_AFTER]
    return case((status.in_(held), held_until), else_=None)


# --- transitions -------------------------------------------------------------------------------------
def completed(job: Job, result_json: str | None = None) -> Settlement:
    """The handler succeeded: done, with its result (the dedupe key held for the job's ``dedupe_for``)."""
    return Settlement(
        job, JobStatus.DONE, finished=True, result_json=result_json, hold_dedupe=keeps_dedupe_key(JobStatus.DONE)
    )


def cancelled(job: Job) -> Settlement:
    """A cancel was requested while the job ran: cancelled, finished, its dedupe key released, never retried."""
    return Settlement(job, JobStatus.CANCELLED, finished=True, last_error=CANCELLED_ERROR)


#: The ``last_error`` of a job cancelled while it ran.
CANCELLED_ERROR = "JobCancelled: cancelled while running"


def settled_status(status: str, cancel_requested: bool) -> str:
    """What a settlement to ``status`` writes: back to pending becomes cancelled once a cancel was requested."""
    return JobStatus.CANCELLED if cancel_requested and status == JobStatus.PENDING else status


def settled_status_sql(status: str, cancel_requested: Any) -> Any:
    """:func:`settled_status` as SQL over the stored flag (a plain value when ``status`` is not pending)."""
    from sqlalchemy import case, true

    if status != JobStatus.PENDING:
        return status
    return case((cancel_requested == true(), JobStatus.CANCELLED), else_=JobStatus.PENDING)


def released(job: Job) -> Settlement:
    """Given back unrun (graceful shutdown): pending at once, the attempt not charged."""
    return Settlement(job, JobStatus.PENDING, run_in=0.0, refund_attempt=True)


def failed(
    job: Job, error: str, *, backoff: Backoff, retry_in: float | None = None, dead: bool = False
) -> Settlement:
    """A failed attempt: pending again after ``retry_in`` (else the back-off) while attempts remain, else dead.

    ``error`` is the storable text (:func:`error_text`); it becomes
    ``last_error`` and the newest entry of the kept error history.
    """
    history = error_history(job, error)
    if dead or is_final_attempt(job.attempts, job.max_attempts):
        return Settlement(
            job, JobStatus.DEAD, finished=True, last_error=error, errors_json=history,
            hold_dedupe=keeps_dedupe_key(JobStatus.DEAD),
        )  # fmt: skip
    delay = backoff.delay(job.attempts) if retry_in is None else retry_in
    return Settlement(job, JobStatus.PENDING, run_in=delay, last_error=error, errors_json=history)


def error_history(job: Job, error: str) -> str:
    """The job's error history with this failure appended, as the JSON text to store.

    The new entry has no ``at`` yet: the store stamps its own clock on the
    newest entry as it writes the settlement.
    """
    from . import json_codec

    entry = error_entry(job.attempts, error, job.locked_by)
    return json_codec.dumps([*job.errors, entry][-ERROR_HISTORY_LIMIT:])


def storable_text(text: str) -> str:
    """``text`` as every database can store it: lone surrogates and NULs escaped (``\\ud800``, ``\\x00``)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def error_text(error: BaseException | str | None, *, with_traceback: bool = False) -> str:
    """What a failure records: ``Type: message`` of an exception (and its traceback), or the text given.

    Always storable (see :func:`storable_text`) and at most :data:`MAX_ERROR_LENGTH` characters.
    """
    if isinstance(error, BaseException):
        try:
            text = f"{type(error).__name__}: {error}"
        except Exception:  # a broken __str__ must not hide the failure itself
            text = f"{type(error).__name__}: <unprintable error>"
        if with_traceback and error.__traceback__ is not None:
            try:
                text += "\n\n" + "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=20))
            except Exception:  # the same broken __str__, met again while formatting
                pass
    elif error is None:
        text = "failed"
    else:
        text = str(error)
    return storable_text(text[:MAX_ERROR_LENGTH])


# --- runtime control ---------------------------------------------------------------------------------
def attempt_timeout(job_timeout: float | None, worker_timeout: float | None) -> float | None:
    """The timeout an attempt runs under: the job's own (``enqueue(..., timeout=)``), else the worker's; None: none."""
    return job_timeout if job_timeout is not None else worker_timeout


def attempt_deadline(started: float, timeout: float | None) -> float | None:
    """When (on the ``time.monotonic()`` scale) an attempt started at ``started`` is up; None without a timeout."""
    return None if timeout is None else started + timeout


def timeout_error(timeout: float) -> str:
    """What a timed-out attempt records as its error (then retried or dead as any failure is)."""
    return f"JobTimeout: the attempt ran longer than its timeout of {timeout:g}s"


# --- pacing ------------------------------------------------------------------------------------------
#: Seconds between two steps of a paced redrive: short enough to look steady, long enough to batch.
PACE_STEP = 0.1


@dataclass(frozen=True, slots=True)
class Pace:
    """A steady rate of ``rate`` items per second, sent in small steps on a fixed timetable.

    Item number ``k`` may go ``k / rate`` seconds after the start. A step
    that runs late (a slow database call) is followed at once by the next,
    but the timetable never lets more than one step's worth of lost time be
    made up: after a stall the pace resumes, it does not burst. So over any
    window the rate is at most ``rate`` (plus one step), and without stalls
    it is ``rate``.
    """

    rate: float

    @property
    def step(self) -> int:
        """Items per step: what ``rate`` sends in :data:`PACE_STEP` seconds, at least one."""
        return max(1, int(self.rate * PACE_STEP))

    def batches(
        self,
        items: Iterable[T],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[list[T]]:
        """Yield ``items`` in steps of :attr:`step`, each when the timetable says it may go."""
        pending = list(items)
        interval = self.step / self.rate
        next_at = clock()
        for start in range(0, len(pending), self.step):
            now = clock()
            if next_at > now:
                sleep(next_at - now)
            elif now - next_at > interval:
                next_at = now - interval  # fell behind: make up at most one step, never burst
            yield pending[start : start + self.step]
            next_at += interval


# --- purge pacing ------------------------------------------------------------------------------------
#: How long one purge batch should hold its locks: short enough that a claim waiting behind it barely notices.
PURGE_BATCH_SECONDS = 0.01
#: The first batch of a purge, before any has been timed (never more than the caller's batch size).
PURGE_FIRST_BATCH = 100
#: The longest rest between two purge batches, however slow the last batch was.
PURGE_REST_CAP = 1.0


class PurgePace:
    """The batches of a purge: sized to take about :data:`PURGE_BATCH_SECONDS`, each followed by a rest.

    A purge deletes in batches, each its own short transaction; between two
    it rests at least as long as the last batch took, so a purge takes at
    most half of the store's time and a claim waiting behind a batch gets in
    during the rest. ``rest_floor`` is the least rest the store needs for
    that (a SQLite writer blocked on the file lock sleeps in its busy
    handler and looks again only every few milliseconds; servers that queue
    lock waiters need none). Each batch is resized from the last one's
    timing, toward :data:`PURGE_BATCH_SECONDS`, at most doubling, never
    over ``limit`` (the caller's batch size) nor under the first batch.

    The time a batch takes is what it held the store for: a caller that
    first waited for a lock (a claim had it) reports the part after the wait
    with :meth:`held`; otherwise the wall time of its loop body counts.
    Iterate :meth:`sizes` and stop when the store has nothing left::

        pace = policy.PurgePace(request.batch_size, floor, backend.pause)
        for size in pace.sizes():
            if delete_one_batch(size, report=pace.held) == 0:
                break
    """

    def __init__(
        self,
        limit: int,
        rest_floor: float = 0.0,
        pause: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = max(1, limit)
        self.rest_floor = rest_floor
        self.pause = pause
        self.clock = clock
        self._held: float | None = None

    def held(self, seconds: float) -> None:
        """Report how long the current batch held the store (its time after any wait for a lock)."""
        self._held = seconds

    def next_size(self, size: int, elapsed: float) -> int:
        """The size of the batch after one of ``size`` rows that took ``elapsed`` seconds."""
        if elapsed <= 0:
            wanted = size * 2
        else:
            wanted = int(size * PURGE_BATCH_SECONDS / elapsed)
        # Never below the first batch: a batch's round trips cost the same for one row as for a hundred, so on a
        # slow moment smaller batches would only make the purge crawl without holding the store any shorter.
        return max(min(self.limit, PURGE_FIRST_BATCH), min(self.limit, size * 2, wanted))

    def rest(self, elapsed: float) -> float:
        """Seconds to rest after a batch that took ``elapsed``: as long as it took, at least the floor, capped."""
        return min(PURGE_REST_CAP, max(elapsed, self.rest_floor))

    def sizes(self) -> Iterator[int]:
        """Batch sizes without end; each next one comes after the rest that follows the batch before it.

        The caller's loop body runs one batch; stopping the loop (the store
        had nothing left) skips the rest a further batch would have needed.
        """
        size = min(self.limit, PURGE_FIRST_BATCH)
        while True:
            self._held = None
            started = self.clock()
            yield size
            elapsed = self.clock() - started if self._held is None else self._held
            self.pause(self.rest(elapsed))
            size = self.next_size(size, elapsed)


# --- flow control ------------------------------------------------------------------------------------
#: Seconds of unused rate a limited queue may save up: at most ``rate * RATE_BURST_SECONDS`` starts (at
#: least one) can go at once after a quiet spell. One second keeps "R per second" true over any window
#: of a few seconds while letting a batch claim take several jobs.
RATE_BURST_SECONDS = 1.0
#: How long a process trusts its list of controlled (paused or limited) queues before reading it again.
#: Claims never depend on it for safety -- the claim statement itself refuses a controlled queue's jobs
#: unless it went through that queue's settings -- so a stale list only delays a newly limited queue's
#: jobs by up to this long.
SETTINGS_REFRESH = 1.0


def rate_allowance(saved: float, elapsed: float, rate: float) -> float:
    """Starts a rate-limited queue may make now: what it saved plus what ``elapsed`` seconds earned, capped.

    ``elapsed`` is database-clock seconds since the allowance was last counted
    (a negative value -- two transactions' clocks read out of order -- earns nothing).
    """
    return min(max(1.0, rate * RATE_BURST_SECONDS), saved + max(0.0, elapsed) * rate)


def rate_allowance_sql(saved: Any, elapsed: Any, rate: Any) -> sa.ColumnElement[float]:
    """:func:`rate_allowance` as SQL (NULL when ``rate`` is NULL)."""
    import sqlalchemy as sa

    cap = sa.func.greatest(1.0, rate * RATE_BURST_SECONDS)
    earned = sa.func.least(cap, saved + sa.func.greatest(0.0, elapsed) * rate)
    # GREATEST and LEAST skip NULLs on PostgreSQL (and return NULL on MySQL): say "no rate" explicitly.
    return sa.case((rate.is_(None), sa.null()), else_=earned)  # type: ignore[no-any-return]


def claim_allowance(limit: int, limits: QueueLimits, processing: int, allowance: float | None) -> int:
    """How many jobs one claim may take from a limited queue: ``limit``, cut by each limit that binds.

    ``processing`` is how many of the queue's jobs are processing now;
    ``allowance`` what :func:`rate_allowance` says (None: no rate limit).
    Per-key limits apply job by job (:func:`key_has_room`).
    """
    allowed = limit
    if limits.concurrency is not None:
        allowed = min(allowed, limits.concurrency - processing)
    if allowance is not None:
        allowed = min(allowed, int(allowance + 1e-9))  # whole starts only; the float error of a sum is not one
    return max(0, allowed)


def claim_allowance_sql(limit: int, concurrency: Any, processing: Any, allowance: Any) -> sa.ColumnElement[int]:
    """:func:`claim_allowance` as SQL: a NULL ``concurrency`` or ``allowance`` is no such limit."""
    import sqlalchemy as sa

    by_rate = sa.cast(sa.func.floor(allowance + 1e-9), sa.Integer)
    allowed = sa.func.least(limit, sa.func.coalesce(concurrency - processing, limit), sa.func.coalesce(by_rate, limit))
    return sa.func.greatest(0, allowed)  # type: ignore[no-any-return]


def key_slot(rank: int, running: int) -> int:
    """The slot of its key a ready job would take: ``running`` of the key run, and it is the key's ``rank``-th.

    ``rank`` is 1-based, in claim order among the key's ready jobs.
    """
    return rank + running


def key_has_room(slot: int, per_key: int) -> bool:
    """Whether a job whose :func:`key_slot` is ``slot`` may start under a ``per_key`` limit."""
    return slot <= per_key


def key_has_room_sql(slot: Any, per_key: int) -> sa.ColumnElement[bool]:
    """:func:`key_has_room` as SQL."""
    return slot <= per_key  # type: ignore[no-any-return]


def fair_order_key(slot: int, priority: int, run_at: Any, job_id: Any) -> tuple[Any, ...]:
    """Claim order across concurrency keys: the lowest :func:`key_slot` first, then ordinary claim order.

    A key with nothing running goes before a key already running jobs, and
    each key's second job after every key's first: so a key with 10,000
    ready jobs never starves a key with one, however much older its jobs are.
    """
    return (slot, *claim_order_key(priority, run_at, job_id))


def fair_order_sql(slot: Any, columns: Mapping[str, Any] | Any) -> list[sa.ColumnElement[Any]]:
    """:func:`fair_order_key` as ORDER BY clauses."""
    return [slot.asc(), *claim_order_sql(columns)]


# --- claim sizing ------------------------------------------------------------------------------------
#: Seconds of work a worker may hold beyond what it is running (the buffer of claimed, unstarted jobs).
CLAIM_HORIZON = 0.1
#: The most jobs an adaptive worker holds at once (it claims again at half of it, so ~100 per claim).
MAX_CLAIM_CAPACITY = 200
#: Weight of the newest handler duration in the running mean.
_DURATION_WEIGHT = 0.05


class ClaimSizer:
    """How many jobs a worker without a fixed ``batch_size`` holds: its capacity, adapted as it runs.

    Two rules, the smaller wins, never below ``concurrency`` nor above
    ``maximum``:

    * **handler speed** -- hold at most :data:`CLAIM_HORIZON` seconds of
      work: ``concurrency * horizon / mean handler duration``. Until a handler
      has finished the duration is unknown and the worker holds only what it
      can run, so long jobs are never hoarded in a buffer while another worker
      idles;
    * **backlog** -- a ramp, clocked by completions as TCP's slow start is by
      acknowledgements: after a claim came back full (the queue has more) it
      doubles once as many jobs have finished as that claim took; after a
      claim came back short it falls back to ``concurrency`` (or twice what
      came). So a short queue that just arrived is shared out among the
      workers in small claims, jobs that block do not earn a larger one, and
      only a deep backlog of jobs that finish earns large ones.

    Thread-safe: handlers report from many threads.
    """

    def __init__(
        self, concurrency: int, *, maximum: int = MAX_CLAIM_CAPACITY, horizon: float = CLAIM_HORIZON
    ) -> None:
        self.concurrency = concurrency
        self.maximum = max(concurrency, maximum)
        self.horizon = horizon
        self.mean_duration: float | None = None
        self.ramp = concurrency
        self._lock = threading.Lock()
        self._growth_due = 0  # completions that double the ramp; 0: no growth earned by the last claim

    @property
    def capacity(self) -> int:
        """Jobs the worker may hold now (running, buffered, or finished and not yet recorded)."""
        if self.mean_duration is None:
            return self.concurrency
        by_speed = self.concurrency * self.horizon / max(self.mean_duration, 1e-6)
        return int(max(self.concurrency, min(self.maximum, self.ramp, by_speed)))

    def claimed(self, asked: int, got: int) -> None:
        """A claim for ``asked`` jobs returned ``got``: a full one may widen the ramp, a short one narrows it."""
        with self._lock:
            if asked > 0 and got >= asked:
                self._growth_due = got
            else:
                self._growth_due = 0
                self.ramp = max(self.concurrency, 2 * got)

    def finished(self, seconds: float) -> None:
        """A handler ran ``seconds``: fold it into the mean duration, and count it towards the ramp's growth."""
        seconds = max(seconds, 0.0)
        with self._lock:
            mean = self.mean_duration
            self.mean_duration = seconds if mean is None else mean + _DURATION_WEIGHT * (seconds - mean)
            if self._growth_due > 0:
                self._growth_due -= 1
                if self._growth_due == 0:
                    self.ramp = min(self.maximum, self.ramp * 2)
