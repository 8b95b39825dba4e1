"""The backend interface (SPI): the small set of storage operations every backend provides.

Policy -- retries, backoff, dead-lettering decisions, heartbeats, waiting and
shutdown -- lives in :mod:`polyqueue.queue` and :mod:`polyqueue.worker`, once.
A backend only stores and fetches. Every method states its contract:
atomicity, what it returns when there is nothing, and what it raises.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Iterable, Sequence
from datetime import datetime
from typing import Any, ClassVar, Protocol

from ..job import Job, NewJob, ReplayResult

__all__ = ["CAPABILITIES", "Backend", "BackendOptions", "Capability", "WakeupSource"]


class Capability:
    """Names of optional features; a backend lists the ones it has in ``capabilities``."""

    NOTIFY = "notify"  #: push wake-ups for idle workers (wakeup_source returns a source)
    DEDUPE = "dedupe"  #: dedupe_key held while the job is live
    PRIORITIES = "priorities"  #: claim honours priority
    DELAYED = "delayed"  #: delay / run_at
    TRANSACTIONAL_ENQUEUE = "transactional_enqueue"  #: enqueue(..., connection=conn)
    MULTI_PROCESS = "multi_process"  #: several processes may share the queue
    DEPTH_CACHE = "depth_cache"  #: depth() answered from a cache


CAPABILITIES = frozenset(
    v for k, v in vars(Capability).items() if k.isupper() and isinstance(v, str)
)

#: Options every backend receives (already validated by ``connect``).
BackendOptions = dict[str, Any]


class WakeupSource(Protocol):
    """Something an idle worker can block on until new work may be ready."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if woken by a signal, False on timeout."""

    def close(self) -> None:
        """Release the connection or subscription; idempotent."""


class Backend(abc.ABC):
    """Storage for one queue database.

    Subclasses must declare ``capabilities`` themselves (checked when the
    class is created) so that no backend inherits a feature it lacks.
    Job ids are backend-defined, hashable and ``str()``-able.
    Every method may raise :class:`~polyqueue.errors.BackendUnavailable` when
    the store cannot be reached and :class:`~polyqueue.errors.SchemaMissing`
    when ``migrate`` has not run; neither leaves anything half-done.
    """

    #: URL scheme names this class serves (for messages only; registration is by hook).
    name: ClassVar[str] = "abstract"
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "__abstractmethods__", None):
            return
        if "capabilities" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare its own `capabilities` set")
        unknown = set(cls.capabilities) - CAPABILITIES
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

    # --- producing -------------------------------------------------------
    @abc.abstractmethod
    def enqueue_many(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[Hashable]:
        """Store ``jobs`` atomically (all or none) and return their ids in input order.

        A job whose ``(queue, dedupe_key)`` matches a live job -- stored before or
        earlier in the same batch -- is not stored; the live job's id is returned
        in its place. With ``connection`` (only with the ``transactional_enqueue``
        capability) the rows are written inside that caller-owned transaction and
        nothing is committed here. An empty list returns ``[]``.
        """

    # --- consuming -------------------------------------------------------
    @abc.abstractmethod
    def claim(self, queues: Sequence[str], limit: int, lease: float, worker_id: str) -> list[Job]:
        """Atomically take up to ``limit`` ready jobs and return them in claim order.

        Claim order: higher priority first, then oldest ``run_at``, then id.
        Before claiming, processing jobs whose lease has expired (DB-now >=
        ``lease_expires_at``) are rescued: made pending again, or ``dead`` with
        ``last_error`` saying the lease expired when ``attempts >= max_attempts``.
        Each claimed job gets status ``processing``, ``attempts + 1``, a new
        ``lease_token`` and ``lease_expires_at`` = DB-now + ``lease``.
        Returns ``[]`` when nothing is ready. Never blocks on rows others hold.
        """

    @abc.abstractmethod
    def complete_many(self, jobs: Sequence[tuple[Job, str | None]]) -> set[Hashable]:
        """Mark each claimed job ``done`` with its JSON result text, atomically for the batch.

        Fenced: a job is completed only while this claim (its ``lease_token``)
        still holds an unexpired lease. Returns the ids that were *not* completed
        because the claim was lost (empty set when all succeeded).
        """

    @abc.abstractmethod
    def fail(self, job: Job, *, error: str, errors_json: str, retry_in: float | None) -> bool:
        """Record a failed attempt. Fenced like ``complete_many``; returns False if the claim was lost.

        ``retry_in`` None: the job becomes ``dead`` (finished). Otherwise it
        becomes ``pending`` with ``run_at`` = DB-now + ``retry_in``.
        ``errors_json`` replaces the stored error history.
        """

    @abc.abstractmethod
    def extend_many(self, jobs: Sequence[Job], lease: float) -> set[Hashable]:
        """Push each lease out to DB-now + ``lease``. Fenced; returns the ids whose claim was lost."""

    @abc.abstractmethod
    def release_many(self, jobs: Sequence[Job]) -> set[Hashable]:
        """Give claimed jobs back unrun: pending, ``attempts - 1``. Fenced; returns lost ids."""

    # --- inspecting and managing -------------------------------------------
    @abc.abstractmethod
    def get(self, job_id: Hashable) -> Job | None:
        """The job with this id, or None. Ids of the wrong type or form give None."""

    @abc.abstractmethod
    def cancel(self, job_id: Hashable) -> bool:
        """Cancel a pending job (status ``cancelled``, dedupe key released). False if not pending."""

    @abc.abstractmethod
    def stats(self, queue: str | None = None) -> dict[str, dict[str, int]]:
        """Counts per queue: ``{queue: {status: n, ..., "scheduled": n}}``; queues with no jobs absent."""

    @abc.abstractmethod
    def count_ready(self, queue: str) -> int:
        """The number of pending jobs in ``queue`` that are due now (exact)."""

    def cached_depth(self, queue: str) -> int | None:
        """``count_ready`` from a cache in O(1) (a hint), or None when there is no cache to ask."""
        return None

    @abc.abstractmethod
    def seconds_until_due(self, queues: Sequence[str]) -> float | None:
        """Seconds from DB-now until a job of ``queues`` may become claimable.

        That is the earliest ``run_at`` of a pending job or ``lease_expires_at``
        of a processing one (an expired lease is claimable again). Zero or
        negative when one is claimable already; None when there is neither.
        Idle workers call this instead of claiming, so it must be one cheap
        read that takes no locks.
        """

    @abc.abstractmethod
    def db_now(self) -> datetime:
        """The database clock, aware UTC."""

    @abc.abstractmethod
    def dead_jobs(self, queue: str | None, limit: int) -> list[Job]:
        """Dead jobs, most recently finished first, at most ``limit``."""

    @abc.abstractmethod
    def replay(self, ids: Iterable[Hashable] | None, queue: str | None) -> ReplayResult:
        """Make dead jobs pending again with ``attempts = 0``, keeping their error history.

        ``ids`` None means every dead job (of ``queue`` when given). A job whose
        dedupe key is held by a live job is skipped, and the result says why.
        """

    @abc.abstractmethod
    def purge(self, status: str, older_than: float, batch_size: int) -> int:
        """Delete ``status`` jobs finished more than ``older_than`` seconds ago.

        Works in batches of ``batch_size`` rows, each its own short transaction,
        so it can run online; returns the number deleted.
        """

    # --- waiting ---------------------------------------------------------
    def wakeup_source(self, queues: Sequence[str]) -> WakeupSource | None:
        """A push wake-up source for idle workers, or None (the worker then polls)."""
        return None

    def caller_transaction(self) -> Any:
        """A context manager opening a transaction of the caller's kind, yielding what ``connection=`` accepts.

        Needed only with the ``transactional_enqueue`` capability (the conformance
        suite uses it to test commit and rollback); it commits on success and
        rolls back on an exception.
        """
        raise NotImplementedError(f"{type(self).__name__} has no caller transactions")

    def drop_schema(self) -> None:
        """Remove everything ``migrate`` created (for tests and uninstalling). Optional."""
        raise NotImplementedError(f"{type(self).__name__} cannot drop its schema")
