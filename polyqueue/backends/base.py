"""The backend interface (SPI): what every store provides, as data in and data out.

A backend stores and fetches; it decides nothing. Every decision -- what a
failure, a release or an expired lease does to a job, retry delays, claim
order, the fence -- is made in :mod:`polyqueue.policy` and reaches the backend
as a value to write. Each operation takes ONE parameter object (a frozen
dataclass), so a field added later never breaks a plugin: a backend that
does not know a new field simply never reads it, and a capability says
whether it honours it.

Every method's docstring states its contract: atomic or not, idempotent or
not, what it returns when there is nothing, what it raises. Every method may
raise :class:`~polyqueue.errors.BackendUnavailable` when the store cannot be
reached and :class:`~polyqueue.errors.SchemaMissing` when ``migrate`` has
not run; neither leaves anything half-done.

Operations only the conformance suite needs (dropping a schema, opening a
caller transaction) are not here: see :mod:`polyqueue.conformance.support`.
"""

from __future__ import annotations

import abc
import enum
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from ..job import Job, JobRecord, NewJob, QueueLimits, QueueSettings, ReplayResult

__all__ = [
    "CAPABILITIES",
    "Backend",
    "BackendOptions",
    "CancelCheck",
    "CancelRequest",
    "Capability",
    "ChangeWatcher",
    "ClaimRequest",
    "ClaimResult",
    "DeadJobsQuery",
    "DeclareSchedules",
    "DeleteRequest",
    "DueProbe",
    "EnqueueBatch",
    "ExportQuery",
    "ExtendRequest",
    "FireHistoryQuery",
    "FireRecord",
    "FireRequest",
    "FireResult",
    "ImportBatch",
    "ImportResult",
    "JobLookup",
    "JobRecord",
    "ListQuery",
    "OptionParser",
    "PurgeRequest",
    "QueueControl",
    "QueueLimits",
    "QueueSettings",
    "QueueSettingsQuery",
    "ReadyCount",
    "ReplayRequest",
    "RetryNowRequest",
    "ScheduleQuery",
    "ScheduleRecord",
    "ScheduleSpec",
    "ScheduleState",
    "SettleRequest",
    "Settlement",
    "StatsRequest",
    "Throughput",
    "ThroughputQuery",
    "WakeupRequest",
    "WakeupSource",
]


class Capability(enum.StrEnum):
    """Optional features; a backend lists the ones it has in ``capabilities``.

    Members are strings, so ``"notify" in backend.capabilities`` works too.
    """

    NOTIFY = "notify"  #: push wake-ups for idle workers that see every producer
    DEDUPE = "dedupe"  #: dedupe_key held while the job is live, and dedupe_for seconds after it is done or dead
    PRIORITIES = "priorities"  #: claim honours priority
    DELAYED = "delayed"  #: delay / run_at
    TRANSACTIONAL_ENQUEUE = "transactional_enqueue"  #: enqueue(..., connection=conn)
    MULTI_PROCESS = "multi_process"  #: several processes may share the queue
    DEPTH_CACHE = "depth_cache"  #: depth() answered from a cache
    PERIODIC = "periodic"  #: declare_schedules / fire / schedules: each (schedule, slot) fires once
    TRANSFER = "transfer"  #: export_jobs / import_jobs / delete_jobs: jobs move to and from other backends
    LIST_JOBS = "list_jobs"  #: list_jobs: pages through jobs by queue, status and type, newest first
    THROUGHPUT = "throughput"  #: throughput: jobs finished per minute over the last hour, from the store
    RETRY_NOW = "retry_now"  #: retry_now: a pending job waiting for its time (a retry's back-off) becomes due now
    HEADERS = "headers"  #: Job.headers stored with the job, kept through retries, replay and transfer
    TIMEOUTS = "timeouts"  #: enqueue(..., timeout=S): a per-job attempt timeout stored with the job
    CANCEL_RUNNING = "cancel_running"  #: cancel(id) on a processing job flags it; cancel_requests() reports it
    PAUSE = "pause"  #: control_queue(paused=...): a paused queue's jobs are taken by no claim until resumed
    FLOW_CONTROL = "flow_control"  #: control_queue(limits=...): concurrency, rate and per-key limits in the claim


CAPABILITIES = frozenset(Capability)

#: Options a backend receives: the core's, validated by ``connect``, plus its own ``connect_options``.
BackendOptions = dict[str, Any]
#: Turns an option's raw value (a keyword argument or URL query text) into its value; raises ValueError.
OptionParser = Callable[[Any], Any]


# --- parameter objects ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EnqueueBatch:
    """Jobs to store, already validated and encoded; ``connection`` is the caller's open transaction or None.

    ``token`` is the enqueue call's client token (positive, below 2**62, one
    per call, from :func:`polyqueue.policy.new_enqueue_token`): a backend that
    retries the call's transaction itself (a dropped connection) uses it to
    find the rows a first attempt committed instead of storing them again.
    None when the caller has none.
    """

    jobs: Sequence[NewJob]
    connection: Any = None
    token: int | None = None


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What one claim takes, and what it writes on each job it takes.

    ``job_types`` None means every type; otherwise only jobs of those types
    are taken (the others stay untouched). ``token`` is the fencing token the
    claim writes on every job it takes (chosen by the policy, unique per
    claim). ``max_attempts`` None leaves each job's limit as stored; otherwise
    the claim lowers a larger stored limit to it, so every later decision
    (a failure, an expired lease) reads the same limit.
    """

    queues: Sequence[str]
    limit: int
    lease: float
    worker_id: str
    token: int
    job_types: frozenset[str] | None = None
    max_attempts: int | None = None


@dataclass(slots=True)
class ClaimResult:
    """The jobs a claim took, in claim order, and the jobs its lease rescue made dead (for the ``dead`` hook)."""

    jobs: list[Job]
    expired_dead: list[Job] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Settlement:
    """The end of one claim on one job, as decided by :mod:`polyqueue.policy`: the values to write.

    The backend applies it only while the claim still holds the job (the
    fence: ``job.lease_token`` still stored, status ``processing``, lease not
    expired) and then writes exactly this: ``status``; ``finished_at`` =
    DB-now when ``finished``; ``run_at`` = DB-now + ``run_in`` when
    ``run_in`` is not None; ``attempts - 1`` when ``refund_attempt``;
    ``result``, ``last_error`` and ``errors`` when not None; the dedupe
    hold (``dedupe_held_until`` = DB-now + the job's ``dedupe_for``) when
    ``hold_dedupe``; and always ``locked_by`` and ``lease_expires_at``
    cleared and a lease token no claim holds. One rule of the policy is
    applied by the store because only it knows the stored flag: a
    settlement to ``pending`` of a job whose cancel was requested meanwhile
    writes ``cancelled`` (finished) instead
    (:func:`polyqueue.policy.settled_status_sql`), so a cancelled job is
    never retried. Build one with the named constructors of
    :mod:`polyqueue.policy`.
    """

    job: Job
    status: str
    finished: bool = False
    run_in: float | None = None
    refund_attempt: bool = False
    result_json: str | None = None
    last_error: str | None = None
    errors_json: str | None = None
    #: Keep the job's dedupe key held until DB-now + its ``dedupe_for`` (written as ``dedupe_held_until``).
    hold_dedupe: bool = False

    @property
    def plain(self) -> bool:
        """No per-job value to write: settlements of the same status and ``run_in`` can share one statement."""
        return self.result_json is None and self.last_error is None and self.errors_json is None


@dataclass(frozen=True, slots=True)
class SettleRequest:
    """Settlements to apply, each fenced on its own; ``token`` is written on every settled job."""

    settlements: Sequence[Settlement]
    token: int


@dataclass(frozen=True, slots=True)
class ExtendRequest:
    """Heartbeat: push the leases of ``jobs`` out to DB-now + ``lease``, fenced."""

    jobs: Sequence[Job]
    lease: float


@dataclass(frozen=True, slots=True)
class JobLookup:
    """One job by id (any hashable; the backend answers None for ids it could never have issued)."""

    job_id: Hashable


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel one job: a pending one at once; a processing one is flagged (with ``cancel_running``)."""

    job_id: Hashable


@dataclass(frozen=True, slots=True)
class CancelCheck:
    """A worker's heartbeat question: which of the jobs it holds have had a cancel requested?"""

    jobs: Sequence[Job]


@dataclass(frozen=True, slots=True)
class StatsRequest:
    """Counts for one queue (``queue``) or all; ``by_type`` splits each queue's counts by job type.

    ``statuses`` None counts every status; otherwise only those need
    counting (a hint that lets a store skip its finished history: it may
    count more, and the caller reads only the ones it asked for).
    """

    queue: str | None = None
    by_type: bool = False
    statuses: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class ReadyCount:
    """Pending, due jobs of one queue (of ``job_types`` only, when given)."""

    queue: str
    job_types: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class DueProbe:
    """An idle worker's question: how long until a job of these queues (and types) may be claimable?"""

    queues: Sequence[str]
    job_types: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class DeadJobsQuery:
    """Dead jobs, most recently finished first."""

    queue: str | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class RetryNowRequest:
    """Make one pending job that is not yet due (waiting out a retry's back-off, or delayed) due now."""

    job_id: Hashable


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """Dead jobs to make pending again: ``ids`` None means every dead job (of ``queue`` when given)."""

    ids: Sequence[Hashable] | None = None
    queue: str | None = None


@dataclass(frozen=True, slots=True)
class PurgeRequest:
    """Finished jobs of ``status`` older than ``older_than`` seconds, deleted ``batch_size`` at a time.

    A purge of ``done`` jobs also deletes periodic fire rows as old, keeping
    each schedule's newest (the catch-up rule needs it).
    """

    status: str
    older_than: float
    batch_size: int = 1000


@dataclass(frozen=True, slots=True)
class ExportQuery:
    """One page of jobs to export, in the backend's id order: those with an id after ``after`` (None: from the start).

    Only jobs whose status is in ``statuses`` (never ``processing``: a held
    job cannot be moved) and of ``queue`` when given; at most ``limit``.
    The last record's ``id`` is the ``after`` of the next page (keyset
    pagination: a page costs the same however far in it is).
    """

    statuses: frozenset[str]
    queue: str | None = None
    after: Hashable | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One page of jobs to show, newest (highest id) first: those with an id below ``after`` (None: from the newest).

    Only jobs whose status is in ``statuses`` (None: any), of ``queue`` and
    of ``job_type`` when given; at most ``limit``. The last job's ``id`` is
    the ``after`` of the next page (keyset pagination, as :class:`ExportQuery`
    but in the other direction: a page costs the same however deep it is).
    """

    statuses: frozenset[str] | None = None
    queue: str | None = None
    job_type: str | None = None
    after: Hashable | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class ThroughputQuery:
    """Jobs that ended ``done`` or ``dead`` in each of ``buckets`` equal slices of the last ``window`` seconds."""

    queue: str | None = None
    window: float = 3600.0
    buckets: int = 60


@dataclass(slots=True)
class Throughput:
    """What :meth:`Backend.throughput` counted: per queue, per status (``done``, ``dead``), oldest slice first.

    ``db_now`` is the database clock the slices end at; a queue with no job
    finished in the window is absent.
    """

    db_now: datetime
    bucket_seconds: float
    counts: dict[str, dict[str, list[int]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImportBatch:
    """Jobs to store with every field as given (see :class:`~polyqueue.job.JobRecord`), atomically."""

    records: Sequence[JobRecord]


@dataclass(slots=True)
class ImportResult:
    """What an import stored: each record's id here (None when skipped), in input order.

    ``existing`` holds the positions whose ``import_key`` an earlier import
    had already stored (their id is that job's; nothing was written);
    ``skipped`` the positions not stored and why (their dedupe key is held
    here by another job).
    """

    ids: list[Hashable | None]
    existing: set[int] = field(default_factory=set)
    skipped: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """Exported jobs to delete, each only while unchanged since it was read.

    A record is deleted only if its job still has the record's ``status``
    and ``lease_token`` (a claim, settlement, cancel or replay since the
    export changes one of them); ``id`` names it.
    """

    records: Sequence[JobRecord]


@dataclass(frozen=True, slots=True)
class QueueControl:
    """Change one queue's stored settings: ``limits`` (replacing all three) and/or ``paused``; None leaves it as is."""

    queue: str
    limits: QueueLimits | None = None
    paused: bool | None = None


@dataclass(frozen=True, slots=True)
class QueueSettingsQuery:
    """The stored settings of ``queues`` (None: every queue that has any)."""

    queues: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class WakeupRequest:
    """Which queues (and job types) an idle worker waits for."""

    queues: Sequence[str]
    job_types: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A periodic schedule as a worker declares it (what ``polyqueue cron`` lists)."""

    name: str
    cron: str
    timezone: str
    job_type: str
    queue: str
    priority: int
    payload_json: str
    catch_up: str


@dataclass(frozen=True, slots=True)
class DeclareSchedules:
    """A worker starting with these schedules: record them (upsert by name) and report their last fires."""

    schedules: Sequence[ScheduleSpec]
    worker_id: str


@dataclass(frozen=True, slots=True)
class FireRecord:
    """One slot that fired: the slot key, when it fell due and when it fired (DB clock), and its job."""

    schedule: str
    slot: str
    slot_at: datetime
    fired_at: datetime
    job_id: Hashable | None


@dataclass(slots=True)
class ScheduleState:
    """What a declaration found: the database clock, and each declared schedule's newest fire (if any)."""

    db_now: datetime
    last_fires: dict[str, FireRecord] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FireRequest:
    """Fire one slot of a schedule: store ``(schedule, slot)`` and ``job`` in one transaction, once.

    Nothing is stored when DB-now is before ``slot_at`` (``due`` False) or
    when the slot already fired (``fired`` False).
    """

    schedule: str
    slot: str
    slot_at: datetime
    job: NewJob


@dataclass(slots=True)
class FireResult:
    """What a fire did: ``fired`` (this call created the job), ``due`` (DB-now had reached the slot), the clock."""

    fired: bool
    due: bool
    job_id: Hashable | None
    db_now: datetime


@dataclass(frozen=True, slots=True)
class ScheduleQuery:
    """The declared schedules (of ``names``, or all)."""

    names: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class FireHistoryQuery:
    """The fires of one schedule, newest first, at most ``limit``."""

    schedule: str
    limit: int = 100


@dataclass(slots=True)
class ScheduleRecord:
    """A declared schedule, who declared it last and when, and its newest fire."""

    spec: ScheduleSpec
    declared_at: datetime
    declared_by: str
    last_fire: FireRecord | None


class WakeupSource(Protocol):
    """Something an idle worker can block on until new work may be ready."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if woken by a signal, False on timeout."""

    def close(self) -> None:
        """Release the connection or subscription; idempotent."""


class ChangeWatcher(abc.ABC):
    """A wake-up source that wakes when something it observes differs from what it saw at its last wake-up.

    Comparing with the last value seen, not waiting for an event, means a
    change between two waits is never lost. Subclasses say what to observe
    and how to pause between looks (a sleep, a condition variable).
    """

    def __init__(self) -> None:
        self._seen = self.observe()

    @abc.abstractmethod
    def observe(self) -> Hashable:
        """The current value of what is watched (file signatures, change counters)."""

    @abc.abstractmethod
    def pause(self, seconds: float) -> None:
        """Wait up to ``seconds`` before the next look."""

    def stopped(self) -> bool:
        """True when waiting is pointless (closed, or the store is gone): ``wait`` returns False."""
        return False

    def wait(self, timeout: float) -> bool:
        """True as soon as the observed value has changed since the last wake-up; False after ``timeout``."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not self.stopped():
            now = self.observe()
            if now != self._seen:
                self._seen = now
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.pause(remaining)
        return False

    def close(self) -> None:  # noqa: B027 - most watchers hold nothing to release
        """Nothing to release by default; idempotent."""


# --- the interface ------------------------------------------------------------------------------
class Backend(abc.ABC):
    """Storage for one queue database.

    Subclasses must declare ``capabilities`` themselves (checked when the
    class is created) so that no backend inherits a feature it lacks.
    Job ids are backend-defined, hashable and ``str()``-able.
    """

    #: URL scheme names this class serves (for messages only; registration is by hook).
    name: ClassVar[str] = "abstract"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: Options this backend understands beyond the core's, with their parsers (``{"sqlite_synchronous": str}``).
    #: ``connect`` accepts them as keywords or URL query parameters and passes them in ``options``.
    connect_options: ClassVar[Mapping[str, OptionParser]] = {}
    #: Conformance tests this backend is known to fail, ``{"TestArea::test_name": "why"}``: run as strict xfails.
    known_failures: ClassVar[Mapping[str, str]] = {}
    #: Where ``polyqueue compat`` runs the conformance suite for this backend without configuration, or None.
    conformance_url: ClassVar[str | None] = None
    #: The heading of that compat-matrix column ("" for the URL scheme).
    conformance_label: ClassVar[str] = ""
    #: How long a writer blocked behind another transaction may sleep before it looks at the lock again.
    #: Zero where the store queues lock waiters and wakes them itself; a purge rests at least this long
    #: between batches (:class:`~polyqueue.policy.PurgePace`), so a waiting claim gets its turn.
    lock_poll_seconds: ClassVar[float] = 0.0

    def __init__(self, url: Any, options: BackendOptions) -> None:  # noqa: B027 - the constructor every backend has
        """Open the store a URL names (a SQLAlchemy ``URL``), with the validated ``options``; connect lazily."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "__abstractmethods__", None):
            return
        if "capabilities" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare its own `capabilities` set")
        unknown = {str(c) for c in cls.capabilities} - {str(c) for c in CAPABILITIES}
        if unknown:
            raise TypeError(f"{cls.__name__} declares unknown capabilities {sorted(unknown)}")

    # --- lifecycle -------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema. Idempotent; safe when several processes race."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent."""

    def describe(self) -> str:
        """A one-line description with the password masked (used in reprs and messages)."""
        return self.name

    def server_version(self) -> str:
        """The server's version string, for the compat matrix; '' when not applicable."""
        return ""

    def check_connection(self) -> None:
        """Reach the store once, without retrying, and give the connection back.

        Raises :class:`~polyqueue.errors.ConfigurationError` when the URL is
        wrong (authentication, unknown database or host) and
        :class:`~polyqueue.errors.BackendUnavailable` when the store cannot
        be reached now. The default asks for :meth:`server_version`; a backend
        whose calls retry on their own overrides this to try just once.
        """
        self.server_version()

    def pause(self, seconds: float) -> None:
        """How the library waits between steps on this backend (a paced replay): a sleep.

        A backend opened for :class:`~polyqueue.AsyncQueue` on an asyncio
        driver waits by yielding to the event loop instead.
        """
        time.sleep(seconds)

    # --- producing -------------------------------------------------------
    @abc.abstractmethod
    def enqueue(self, batch: EnqueueBatch) -> list[Hashable]:
        """Store ``batch.jobs`` atomically (all or none) and return their ids in input order.

        A job whose ``(queue, dedupe_key)`` is held -- by a live job, or by a
        done or dead job within its ``dedupe_for`` seconds (``dedupe_held_until``
        after DB-now), stored before or earlier in the same batch -- is not
        stored; the holder's id is returned in its place. A job's own
        ``dedupe_for`` is stored with it. With ``batch.connection`` (only with
        the ``transactional_enqueue`` capability) the rows are written inside
        that caller-owned transaction and nothing is committed here. A backend
        that retries the call itself after a dropped connection must not store
        the batch twice (``batch.token`` finds a committed first attempt). An
        empty batch returns ``[]``.
        """

    def run_after_commit(self, connection: Any, action: Callable[[], None]) -> bool:
        """Run ``action`` once ``connection``'s current transaction has committed; drop it on rollback.

        Returns False when this backend cannot watch that connection (then
        the caller cannot know when its enqueue becomes visible).
        """
        return False

    # --- consuming -------------------------------------------------------
    @abc.abstractmethod
    def claim(self, request: ClaimRequest) -> ClaimResult:
        """Atomically take up to ``request.limit`` ready jobs and return them in claim order.

        Ready: pending, due, of ``request.queues`` (and ``request.job_types``).
        Claim order is :func:`polyqueue.policy.claim_order_key`. Before
        claiming, processing jobs whose lease has expired (DB-now >=
        ``lease_expires_at``) are rescued as :func:`polyqueue.policy.expired_lease_status`
        says, at most :data:`polyqueue.policy.RESCUE_BATCH` per claim, and the
        ones made dead are returned in ``expired_dead``. Each claimed job gets
        status ``processing``, ``attempts + 1``, ``lease_token = request.token``,
        ``locked_by = request.worker_id`` and ``lease_expires_at`` = DB-now +
        ``request.lease`` (and its limit lowered to ``request.max_attempts``).
        Returns no jobs when nothing is ready. Never blocks on rows others hold.
        A backend with ``pause`` takes nothing from a paused queue; one with
        ``flow_control`` takes no more than the queue's limits allow, fairly
        across concurrency keys (see :meth:`control_queue`).
        """

    @abc.abstractmethod
    def settle(self, request: SettleRequest) -> set[Hashable]:
        """Apply each settlement while its claim still holds the job (see :class:`Settlement`).

        Each job is settled or not on its own (a lost claim never blocks the
        others). Returns the ids that were *not* settled because their claim
        no longer held them (empty when all were); a second settlement of the
        same claim is such a loss. Idempotent in effect: a repeated request
        changes nothing and reports every job lost.
        """

    @abc.abstractmethod
    def extend(self, request: ExtendRequest) -> set[Hashable]:
        """Push each lease still held out to DB-now + ``request.lease``; returns the ids whose claim was lost."""

    # --- inspecting and managing -------------------------------------------
    @abc.abstractmethod
    def get(self, lookup: JobLookup) -> Job | None:
        """The job with this id, or None. Ids of the wrong type or form give None, never an error."""

    @abc.abstractmethod
    def cancel(self, request: CancelRequest) -> bool:
        """Cancel a pending job (status ``cancelled``, dedupe key released at once). False if it is not pending.

        With the ``cancel_running`` capability a ``processing`` job is not
        changed but flagged (``cancel_requested``) and True returned: its
        worker learns of it through :meth:`cancel_requests` and settles it
        ``cancelled``; a lease of a flagged job that expires ends it
        ``cancelled`` too. Idempotent.
        """

    def cancel_requests(self, check: CancelCheck) -> set[Hashable]:
        """The ids of ``check.jobs`` whose cancel was requested while processing (``cancel_running`` only).

        One cheap read, no locks; a job no longer held may or may not be
        reported. Without the capability: always empty.
        """
        return set()

    @abc.abstractmethod
    def stats(self, request: StatsRequest) -> dict[str, dict[str, Any]]:
        """Counts per queue: ``{queue: {status: n, ..., "scheduled": n}}``; queues with no jobs absent.

        With ``by_type``: ``{queue: {job_type: {status: n, ..., "scheduled": n}}}``.
        """

    @abc.abstractmethod
    def count_ready(self, request: ReadyCount) -> int:
        """The number of pending jobs in the queue that are due now (exact); 0 while the queue is paused."""

    def cached_depth(self, queue: str) -> int | None:
        """``count_ready`` from a cache in O(1) (a hint), or None when there is no cache to ask."""
        return None

    @abc.abstractmethod
    def seconds_until_due(self, probe: DueProbe) -> float | None:
        """Seconds from DB-now until a job of the probe's queues (and types) may become claimable.

        That is the earliest ``run_at`` of a pending job or ``lease_expires_at``
        of a processing one (an expired lease is claimable again). Zero or
        negative when one is claimable already; None when there is neither.
        Paused queues are left out (their jobs are claimable by no one).
        Idle workers call this instead of claiming, so it must be one cheap
        read that takes no locks.
        """

    @abc.abstractmethod
    def db_now(self) -> datetime:
        """The database clock, aware UTC."""

    @abc.abstractmethod
    def dead_jobs(self, query: DeadJobsQuery) -> list[Job]:
        """Dead jobs, most recently finished first, at most ``query.limit``."""

    @abc.abstractmethod
    def replay(self, request: ReplayRequest) -> ReplayResult:
        """Make dead jobs pending again with ``attempts = 0``, keeping their error history.

        A job whose dedupe key another job holds (live, or within its
        ``dedupe_for`` after finishing) is skipped, and the result says why;
        a dead job's own hold on its key carries over to the revived job.
        """

    @abc.abstractmethod
    def purge(self, request: PurgeRequest) -> int:
        """Delete jobs of ``request.status`` finished more than ``request.older_than`` seconds ago.

        Works in batches of at most ``request.batch_size`` rows, each its own
        short transaction, sized and spaced by :class:`~polyqueue.policy.PurgePace`
        (resting with :meth:`pause`), so it can run online without starving
        claims; returns the number deleted. A job still holding its dedupe key
        (``dedupe_held_until`` after DB-now) is kept until the hold ends.
        """

    # --- runtime control (the ``pause`` and ``flow_control`` capabilities) ---
    def control_queue(self, request: QueueControl) -> QueueSettings:
        """Store a queue's limits and/or paused flag (durably, for every process) and return its settings.

        Atomic and idempotent. Once it returns, every claim that starts --
        in any process -- honours the new settings: a paused queue gives no
        job to any claim; a limited one gives at most what its limits allow
        (see :class:`~polyqueue.job.QueueLimits`), counted atomically by the
        claim itself. New limits reset the rate allowance (the rate counts
        from now). A queue with no limits that is not paused stores nothing.
        Resuming, or loosening a limit, wakes the queue's idle workers.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot pause queues or limit them")

    def queue_settings(self, query: QueueSettingsQuery) -> list[QueueSettings]:
        """The stored settings of the queried queues that have any (limited or paused), by name; ``[]`` if none."""
        return []

    # --- waiting ---------------------------------------------------------
    def wakeup_source(self, request: WakeupRequest) -> WakeupSource | None:
        """A push wake-up source for idle workers, or None (the worker then polls)."""
        return None

    # --- asyncio ---------------------------------------------------------
    def asyncio_variant(self) -> Backend | None:
        """This store opened again on an asyncio driver, for :class:`~polyqueue.AsyncQueue`; None by default.

        :class:`~polyqueue.AsyncQueue` calls the variant's ordinary (synchronous)
        methods inside a greenlet on the event loop, so every wait on the
        store must go through the asyncio driver (``polyqueue.greenlets.await_``)
        and yield to the loop instead of blocking it. The variant shares this
        backend's options and store; the caller closes it. Without a variant,
        :class:`~polyqueue.AsyncQueue` calls this backend from worker threads,
        which is always correct (the memory backend, the Redis depth cache).
        """
        return None

    # --- moving jobs (the ``transfer`` capability) --------------------------
    def export_jobs(self, query: ExportQuery) -> list[JobRecord]:
        """One page of jobs as :class:`~polyqueue.job.JobRecord` values with every stored field, in id order.

        See :class:`ExportQuery`. Reads only: no locks held after it returns.
        ``[]`` when no job is left after ``query.after``.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot export jobs")

    def import_jobs(self, batch: ImportBatch) -> ImportResult:
        """Store each record as a job with every field as given, atomically (all stored or none).

        The backend issues new ids; ``locked_by`` and ``lease_expires_at``
        stay empty (records are never ``processing``). Idempotent per
        ``import_key``: a record whose key a job here already carries is not
        stored again, and that job's id is reported (``existing``); two
        imports racing with one key store it once. A record whose dedupe key
        another job here holds is not stored (``skipped``, with the reason).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot import jobs")

    def delete_jobs(self, request: DeleteRequest) -> set[Hashable]:
        """Delete each record's job if it is unchanged since it was exported; returns the ids deleted.

        Fenced per job (see :class:`DeleteRequest`), all in one short
        transaction; a job that changed, or is gone, is left alone.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot delete jobs")

    # --- seeing jobs (the ``list_jobs`` capability) ---------------------------
    def list_jobs(self, query: ListQuery) -> list[Job]:
        """One page of jobs, newest first (descending id order), after ``query.after``; see :class:`ListQuery`.

        Reads only, no locks held after it returns; ``[]`` when no job is
        left. Served by indexes, so a page costs the same however many
        finished jobs the store holds. Raises
        :class:`~polyqueue.errors.InvalidArgument` for an ``after`` that is
        not an id of this backend.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list jobs")

    def retry_now(self, request: RetryNowRequest) -> bool:
        """Set a pending, not yet due job's ``run_at`` to DB-now, and wake idle workers of its queue.

        True when it did; False when the job is not pending or already due
        (its place in claim order is kept), or does not exist. Atomic and
        idempotent (a second call finds it due). The ``retry_now`` capability.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot make jobs due now")

    def throughput(self, query: ThroughputQuery) -> Throughput:
        """Jobs finished ``done`` and ``dead`` per slice of the last ``query.window`` seconds (DB clock), per queue.

        Reads only the jobs finished in the window (through an index on the
        finish time), so it costs what the window's traffic is, not what the
        history is. The ``throughput`` capability.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot count throughput")

    # --- periodic jobs (the ``periodic`` capability) ----------------------
    def declare_schedules(self, request: DeclareSchedules) -> ScheduleState:
        """Record the schedules (insert or update by name, with the worker and DB-now) and return their last fires.

        Idempotent. One short transaction; the state returned carries DB-now.
        """
        raise NotImplementedError(f"{type(self).__name__} has no periodic jobs")

    def fire(self, request: FireRequest) -> FireResult:
        """Fire one slot, atomically and at most once per ``(schedule, slot)`` across every process.

        In one transaction: read DB-now; if it is before ``slot_at``, store
        nothing (``due`` False); else insert the ``(schedule, slot)`` row,
        ignoring a duplicate (``fired`` False), and when it was new, store
        ``request.job`` (as ``enqueue`` would) and record its id on the row.
        """
        raise NotImplementedError(f"{type(self).__name__} has no periodic jobs")

    def schedules(self, query: ScheduleQuery) -> list[ScheduleRecord]:
        """The declared schedules with their newest fire, by name."""
        raise NotImplementedError(f"{type(self).__name__} has no periodic jobs")

    def fire_history(self, query: FireHistoryQuery) -> list[FireRecord]:
        """The fires of one schedule, newest slot first (``[]`` for an unknown name)."""
        raise NotImplementedError(f"{type(self).__name__} has no periodic jobs")
