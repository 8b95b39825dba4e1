"""The Job record handed to handlers, and the small value types the backends exchange."""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

__all__ = [
    "FINISHED_STATUSES",
    "LIVE_STATUSES",
    "MAX_INT_ID",
    "STATUSES",
    "STORED_FIELDS",
    "Job",
    "JobRecord",
    "JobStatus",
    "NewJob",
    "QueueLimits",
    "QueueSettings",
    "ReplayResult",
    "int_job_id",
]


class JobStatus:
    """The five states a job moves through."""

    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    DEAD = "dead"
    CANCELLED = "cancelled"


STATUSES = (JobStatus.PENDING, JobStatus.PROCESSING, JobStatus.DONE, JobStatus.DEAD, JobStatus.CANCELLED)
#: Statuses that hold a dedupe key.
LIVE_STATUSES = (JobStatus.PENDING, JobStatus.PROCESSING)
#: Statuses ``purge`` may delete.
FINISHED_STATUSES = (JobStatus.DONE, JobStatus.DEAD, JobStatus.CANCELLED)


@dataclass(slots=True)
class Job:
    """One job as the database holds it; times are timezone-aware UTC from the database clock.

    ``lease_token`` fences a claim: it changes on every claim, so a worker
    whose lease was taken over cannot complete, fail or extend the new run.
    ``errors`` is the error history (newest last), kept across replays.
    """

    id: Hashable
    queue: str
    job_type: str
    payload: Any
    priority: int
    status: str
    attempts: int
    max_attempts: int
    run_at: datetime | None
    created_at: datetime | None
    finished_at: datetime | None = None
    locked_by: str | None = None
    lease_expires_at: datetime | None = None
    last_error: str | None = None
    dedupe_key: str | None = None
    result: Any = None
    lease_token: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Seconds the dedupe key stays held after the job is done or dead (``enqueue(..., dedupe_for=)``); None: released.
    dedupe_for: float | None = None
    #: Small str->str metadata set at enqueue (trace context, tenant, request id); kept through retries and replay.
    headers: dict[str, str] = field(default_factory=dict)
    #: Longest run of one attempt in seconds (``enqueue(..., timeout=)``); None: the worker's ``timeout`` applies.
    timeout: float | None = None
    #: ``cancel(id)`` was called while the job was processing: the handler should stop (see :meth:`check`).
    cancel_requested: bool = False
    #: The flow-control key (``enqueue(..., concurrency_key=)``): a queue's ``per_key`` limit counts jobs per key.
    concurrency_key: str | None = None
    #: When (``time.monotonic()``) the running attempt's time is up; set by the worker, never stored.
    deadline: float | None = field(default=None, repr=False, compare=False, metadata={"stored": False})

    def check(self) -> None:
        """Raise if the running attempt should stop: :class:`JobCancelled` or :class:`JobTimeout`.

        Long sync handlers call this between steps (a loop over rows, a
        batch of requests): the worker sets ``cancel_requested`` within a
        heartbeat of ``cancel(id)`` and the attempt's ``deadline`` when it
        starts. Cheap: no database call.
        """
        from .errors import JobCancelled, JobTimeout

        if self.cancel_requested:
            raise JobCancelled(f"job {self.id} was cancelled while running")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise JobTimeout(f"job {self.id} ran past its timeout")

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id!r}, queue={self.queue!r}, job_type={self.job_type!r}, "
            f"status={self.status!r}, attempts={self.attempts}/{self.max_attempts})"
        )


@dataclass(slots=True)
class NewJob:
    """A validated job on its way into the backend: payload already encoded as JSON text."""

    queue: str
    job_type: str
    payload_json: str
    priority: int
    max_attempts: int
    delay_seconds: float
    dedupe_key: str | None
    #: An absolute start time (aware UTC); when set it wins over ``delay_seconds``.
    run_at: datetime | None = None
    #: Seconds the dedupe key stays held after the job is done or dead; None releases it when the job finishes.
    dedupe_for: float | None = None
    #: The job's headers as JSON text (an object of str -> str), or None for none.
    headers_json: str | None = None
    #: Longest run of one attempt in seconds, or None (the worker's ``timeout``).
    timeout: float | None = None
    #: The key a queue's ``per_key`` limit counts processing jobs by; None: the job is counted under no key.
    concurrency_key: str | None = None

    @property
    def plain(self) -> bool:
        """No dedupe key, absolute start or concurrency key: a row that stores' bulk inserts can take."""
        return self.dedupe_key is None and self.run_at is None and self.concurrency_key is None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job with every field its store keeps, in portable form: what ``polyqueue transfer`` carries.

    ``export_jobs`` fills one per job and ``import_jobs`` stores it as is in
    another backend, so a field added here later (headers, say) travels
    between any two backends that know it without changing the transfer.
    Payloads, results and error histories stay the JSON text they are
    stored as; times are aware UTC. ``id`` is the exporting backend's id and
    ``lease_token`` its fence (unchanged while nothing claimed or settled the
    job); an importing backend ignores ``id`` and issues its own.
    ``import_key`` is the idempotency marker of an import: a backend stores
    at most one job per key and reports the stored one when a key comes again.
    """

    id: Hashable
    queue: str
    job_type: str
    payload_json: str
    priority: int
    status: str
    attempts: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    finished_at: datetime | None = None
    last_error: str | None = None
    errors_json: str | None = None
    result_json: str | None = None
    dedupe_key: str | None = None
    dedupe_for: float | None = None
    #: When a finished job's hold on its dedupe key ends (None: it holds none).
    dedupe_held_until: datetime | None = None
    lease_token: int = 0
    import_key: str | None = None
    #: The job's headers as JSON text, or None.
    headers_json: str | None = None
    #: The job's own attempt timeout in seconds, or None.
    timeout: float | None = None
    concurrency_key: str | None = None


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """A queue's flow control, enforced by the claim itself across every worker (None: no such limit).

    ``concurrency``: at most this many of the queue's jobs processing at once.
    ``rate``: at most this many jobs started per second (database clock).
    ``per_key``: at most this many processing per ``concurrency_key``; jobs
    enqueued without a key are not counted against it.
    """

    concurrency: int | None = None
    rate: float | None = None
    per_key: int | None = None

    @property
    def any(self) -> bool:
        """Whether any limit is set."""
        return self.concurrency is not None or self.rate is not None or self.per_key is not None


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """What the database stores about one queue: its limits and whether it is paused."""

    queue: str
    limits: QueueLimits = field(default_factory=QueueLimits)
    paused: bool = False

    @property
    def controlled(self) -> bool:
        """Whether a claim must read these settings (paused, or limited); otherwise the queue is plain."""
        return self.paused or self.limits.any


@dataclass(slots=True)
class ReplayResult:
    """What ``replay`` did: how many dead jobs became pending, and which were skipped and why."""

    replayed: int
    skipped: dict[Hashable, str] = field(default_factory=dict)


#: The largest id a SQL BIGINT (and so every built-in backend) hands out.
MAX_INT_ID = 2**63 - 1


def int_job_id(job_id: Hashable) -> int | None:
    """The integer id an int or its ASCII decimal text names; None for anything else or out of range.

    Backends with integer ids answer None (``get``) or False (``cancel``)
    for such ids instead of passing them to a driver that would raise.
    """
    if isinstance(job_id, bool):
        return None
    if isinstance(job_id, int):
        value = job_id
    elif isinstance(job_id, str):
        text = job_id.strip()
        if not (0 < len(text) <= 19 and text.isascii() and text.isdigit()):
            return None
        value = int(text)
    else:
        return None
    return value if 0 < value <= MAX_INT_ID else None


#: The :class:`Job` fields a store keeps (in declaration order); the others are the worker's runtime state.
STORED_FIELDS = tuple(f.name for f in fields(Job) if f.metadata.get("stored", True))
