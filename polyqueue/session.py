"""The consumer session: how the Queue's consumer calls and the Worker take, settle and heartbeat jobs.

One path for both: every claim gets a fresh fencing token; every settlement
(completed, failed, released) is decided by :mod:`polyqueue.policy` and
written by the backend only while the claim still holds the job; a lost
claim is :class:`~polyqueue.errors.LeaseLost` (one job) or a set of lost
ids (a batch); lifecycle hooks are called so that a failing plugin never
fails the job it observes; and, for a worker, a database outage is waited
out with the policy's back-off instead of dropping the settlement.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import pluggy

from . import json_codec, policy
from .backends.base import (
    Backend,
    CancelCheck,
    Capability,
    ClaimRequest,
    DueProbe,
    ExtendRequest,
    Settlement,
    SettleRequest,
    WakeupRequest,
    WakeupSource,
)
from .errors import BackendUnavailable, LeaseLost
from .job import Job, JobStatus
from .plugins import call_hook

__all__ = ["ConsumerSession", "QueueHost", "lease_lost", "log_failure"]

log = logging.getLogger("polyqueue.session")
T = TypeVar("T")


def lease_lost(ids: Iterable[Hashable]) -> LeaseLost:
    """The :class:`LeaseLost` error naming the jobs a claim no longer holds."""
    names = ", ".join(sorted(map(str, ids)))
    return LeaseLost(
        f"lease lost for job(s) {names}: another claim holds them, they expired or they were already settled"
    )


def log_failure(job: Job, error: BaseException | str | None, outcome: str, level: int) -> None:
    """Log one failed attempt: job id, type, attempt, what happens next, the error (and its traceback)."""
    if not log.isEnabledFor(level):
        return
    summary = policy.error_text(error)
    exc_info: BaseException | None = error if isinstance(error, BaseException) else None
    if exc_info is not None:
        # A lone surrogate in the exception's text would break log handlers that write UTF-8:
        # then the escaped traceback goes in the message instead of the record's exc_info.
        try:
            printable = policy.storable_text(str(exc_info)) == str(exc_info)
        except Exception:  # a broken __str__
            printable = False
        if not printable:
            summary, exc_info = policy.error_text(error, with_traceback=True), None
    log.log(
        level, "job %s (%s) attempt %d/%d failed, %s: %s",
        job.id, job.job_type, job.attempts, job.max_attempts, outcome, summary, exc_info=exc_info,
    )  # fmt: skip


class QueueHost(Protocol):
    """What a session needs of its :class:`~polyqueue.Queue`: the store, the plugins, and two of its settings."""

    backend: Backend
    plugins: pluggy.PluginManager
    max_payload_bytes: int
    retry_backoff: policy.Backoff


class ConsumerSession:
    """Claims and settles jobs of one queue for one consumer (a Worker, or the Queue's own consumer calls).

    ``worker_id`` is written on every job it claims. ``max_attempts``, when
    given, lowers the stored attempt limit of every job it claims, so the
    failure path and the lease-expiry path read the same limit.
    ``outage_patience`` is how long a settlement or heartbeat is retried
    while the database is unavailable (0: raise at once).
    """

    def __init__(
        self,
        queue: QueueHost,
        *,
        worker_id: str,
        max_attempts: int | None = None,
        outage_patience: float = 0.0,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.max_attempts = max_attempts
        self.outage_patience = outage_patience
        self._backend = queue.backend

    # --- hooks ---------------------------------------------------------------------------------
    def fire(self, hook: str, **kwargs: Any) -> None:
        """Call a lifecycle hook; a plugin that raises is logged, never propagated."""
        call_hook(self.queue.plugins, hook, queue=self.queue, **kwargs)

    # --- claiming ------------------------------------------------------------------------------
    def claim(
        self,
        queues: Sequence[str],
        *,
        limit: int,
        lease: float,
        job_types: frozenset[str] | None = None,
        worker_id: str | None = None,
    ) -> list[Job]:
        """Take up to ``limit`` ready jobs (of ``job_types`` only, when given), in claim order.

        Jobs whose lease expired on their final attempt while this claim
        rescued them fire the ``dead`` hook.
        """
        request = ClaimRequest(
            queues=queues,
            limit=limit,
            lease=lease,
            worker_id=worker_id or self.worker_id,
            token=policy.new_token(),
            job_types=job_types,
            max_attempts=self.max_attempts,
        )
        result = self._backend.claim(request)
        for job in result.expired_dead:
            self.fire("polyqueue_job_dead", job=job, error=job.last_error or "")
        return result.jobs

    # --- settling ------------------------------------------------------------------------------
    def encode_result(self, result: Any) -> str | None:
        """A handler's return value as the JSON text to store (``InvalidPayload`` if it cannot be)."""
        return None if result is None else json_codec.encode_payload(result, self.queue.max_payload_bytes)

    def complete(self, job: Job, result: Any = None) -> None:
        """Mark one claimed job done with ``result``; :class:`LeaseLost` if this claim no longer holds it."""
        lost = self.complete_many([(job, self.encode_result(result))])
        if lost:
            raise lease_lost(lost)

    def complete_many(self, finished: Sequence[tuple[Job, str | None]]) -> set[Hashable]:
        """Mark claimed jobs done with their JSON results; returns the ids no longer held (the others are done)."""
        lost = self._settle([policy.completed(job, result) for job, result in finished])
        for job, result in finished:
            if job.id not in lost:
                job.status = JobStatus.DONE
                job.result = None if result is None else json_codec.loads(result)
        return lost

    def fail(
        self,
        job: Job,
        error: BaseException | str | None,
        *,
        retry_in: float | None = None,
        dead: bool = False,
        with_traceback: bool = False,
    ) -> Settlement:
        """Record a failed attempt as the policy decides (retry after back-off or ``retry_in``, or dead).

        Returns the settlement written. Raises :class:`LeaseLost` if this
        claim no longer holds the job. Fires the ``failed`` hook, and ``dead``
        when the job is dead. Every failure is logged here, once, on the
        ``polyqueue.session`` logger: a warning while the job will be retried,
        an error when it is dead, with the exception's traceback when
        ``error`` is one (``with_traceback`` also stores that traceback).
        """
        text = policy.error_text(error, with_traceback=with_traceback)
        settlement = policy.failed(job, text, backoff=self.queue.retry_backoff, retry_in=retry_in, dead=dead)
        if self._settle([settlement]):
            log_failure(job, error, "its lease was lost before the failure was recorded", logging.WARNING)
            raise lease_lost([job.id])
        job.status, job.last_error = settlement.status, text
        job.errors = json_codec.loads(settlement.errors_json or "[]")
        retry = settlement.run_in if settlement.status == JobStatus.PENDING else None
        if retry is None:
            log_failure(job, error, "dead", logging.ERROR)
        else:
            log_failure(job, error, f"retry in {retry:.1f}s", logging.WARNING)
        self.fire("polyqueue_job_failed", job=job, error=text, retry_in=retry)
        if settlement.status == JobStatus.DEAD:
            self.fire("polyqueue_job_dead", job=job, error=text)
        return settlement

    def cancel_running(self, job: Job) -> None:
        """Settle a job whose cancel was requested while it ran: ``cancelled``, never retried.

        Raises :class:`LeaseLost` if this claim no longer holds it. Fires the ``cancelled`` hook.
        """
        if self._settle([policy.cancelled(job)]):
            raise lease_lost([job.id])
        job.status, job.last_error = JobStatus.CANCELLED, policy.CANCELLED_ERROR
        self.fire("polyqueue_job_cancelled", job=job)

    def cancel_requests(self, jobs: Sequence[Job]) -> set[Hashable]:
        """The ids of held ``jobs`` whose cancel was requested (empty without the ``cancel_running`` capability)."""
        if not jobs or Capability.CANCEL_RUNNING not in self._backend.capabilities:
            return set()
        return self._backend.cancel_requests(CancelCheck(jobs))

    def release(self, jobs: Sequence[Job]) -> set[Hashable]:
        """Give claimed jobs back unrun, the attempt not charged; returns the ids no longer held."""
        lost = self._settle([policy.released(job) for job in jobs])
        for job in jobs:
            if job.id not in lost:
                job.status = JobStatus.PENDING
        return lost

    def extend(self, jobs: Sequence[Job], lease: float) -> set[Hashable]:
        """Heartbeat: push the leases of ``jobs`` out to DB-now + ``lease``; returns the ids no longer held."""
        if not jobs:
            return set()
        return self._patiently(lambda: self._backend.extend(ExtendRequest(jobs, lease)))

    def _settle(self, settlements: Sequence[Settlement]) -> set[Hashable]:
        if not settlements:
            return set()
        request = SettleRequest(settlements, policy.new_token())
        return self._patiently(lambda: self._backend.settle(request))

    def _patiently(self, call: Callable[[], T]) -> T:
        """``call()``, retried with the policy's back-off while the database is unavailable, up to the patience."""
        if self.outage_patience <= 0:
            return call()
        deadline = time.monotonic() + self.outage_patience
        attempt = 0
        while True:
            try:
                return call()
            except BackendUnavailable as exc:
                attempt += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                if attempt == 1:
                    log.warning("database unavailable, retrying for up to %.0fs: %s", self.outage_patience, exc)
                time.sleep(min(policy.RECORD_RETRY.delay(attempt), remaining))

    # --- waiting -------------------------------------------------------------------------------
    def seconds_until_due(self, queues: Sequence[str], job_types: frozenset[str] | None = None) -> float | None:
        """Seconds until a job of ``queues`` (and ``job_types``) may be claimable; <= 0 now; None: nothing."""
        return self._backend.seconds_until_due(DueProbe(queues, job_types))

    def wakeup_source(self, queues: Sequence[str], job_types: frozenset[str] | None = None) -> WakeupSource | None:
        """The backend's push wake-ups for these queues, or None (then the worker polls)."""
        return self._backend.wakeup_source(WakeupRequest(queues, job_types))
