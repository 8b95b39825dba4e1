"""The public Queue: input validation over a backend, with consumer calls through one fenced session."""

from __future__ import annotations

import copy
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pluggy

from . import json_codec, policy
from .backends.base import (
    Backend,
    CancelRequest,
    Capability,
    DeadJobsQuery,
    EnqueueBatch,
    FireHistoryQuery,
    FireRecord,
    JobLookup,
    ListQuery,
    OptionParser,
    PurgeRequest,
    QueueControl,
    QueueSettingsQuery,
    ReadyCount,
    ReplayRequest,
    RetryNowRequest,
    ScheduleQuery,
    ScheduleRecord,
    StatsRequest,
    Throughput,
    ThroughputQuery,
)
from .errors import ConfigurationError, InvalidArgument, InvalidPayload, JobNotFound
from .job import FINISHED_STATUSES, STATUSES, Job, NewJob, QueueLimits, QueueSettings, ReplayResult
from .plugins import backend_class_for, call_hook, make_plugin_manager, plugin_headers
from .session import ConsumerSession, lease_lost
from .urls import describe_parse_error, mask_url, parse_url
from .validation import (
    check_headers,
    check_int,
    check_job_types,
    check_name,
    check_queue_name,
    check_seconds,
    parse_duration,
    parse_rate,
    queue_list,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["CORE_OPTIONS", "DEFAULT_URL", "Queue", "connect", "parse_duration"]

log = logging.getLogger("polyqueue")

DEFAULT_URL = "sqlite:///polyqueue.db"
MAX_CLAIM_BATCH = 1000
#: Most jobs one ``list_jobs`` page holds.
MAX_LIST_PAGE = 1000
#: Most dead jobs one paced replay of "every dead job" takes on (a paced million takes hours anyway).
MAX_PACED_REPLAY = 1_000_000
_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")

#: Options polyqueue itself understands on every backend (as keywords or URL query parameters), with their parsers.
#: A backend adds its own in ``Backend.connect_options``.
CORE_OPTIONS: dict[str, OptionParser] = {
    "table_prefix": str,
    "max_payload_bytes": int,
    "max_attempts": int,
    "depth_cache": str,
    "depth_cache_ttl": float,
    "backoff_base": float,
    "backoff_max": float,
    "safety_poll": float,
}


def _split_options(
    url: URL, options: dict[str, Any], parsers: Mapping[str, OptionParser]
) -> tuple[URL, dict[str, Any]]:
    """Take the options ``parsers`` knows out of the URL query and parse them; keyword options win."""
    merged: dict[str, Any] = {}
    query = dict(url.query)
    for key in list(query):
        if key in parsers:
            raw = query.pop(key)
            merged[key] = raw[-1] if isinstance(raw, tuple) else raw
    merged.update({k: v for k, v in options.items() if v is not None})
    unknown = set(merged) - set(parsers)
    if unknown:
        raise ConfigurationError(f"unknown option(s) {sorted(unknown)}; known: {sorted(parsers)}")
    for key, parse in parsers.items():
        if key in merged:
            try:
                merged[key] = parse(merged[key])
            except (TypeError, ValueError):
                raise ConfigurationError(f"option {key} has an invalid value") from None
    return url.set(query=query), merged


def connect(url: str | URL | None = None, *, plugins: Iterable[Any] = (), **options: Any) -> Queue:
    """Open a queue on the database named by ``url``.

    ``url`` None reads ``POLYQUEUE_URL``, else uses ``sqlite:///polyqueue.db``.
    Options (also accepted as URL query parameters): ``table_prefix``,
    ``max_payload_bytes``, ``max_attempts``, ``depth_cache`` (a ``redis://``
    URL), ``depth_cache_ttl``, ``backoff_base``, ``backoff_max``,
    ``safety_poll``, plus the backend's own (``Backend.connect_options``:
    ``reconnect_seconds`` and ``transient_retries`` on SQL backends,
    ``sqlite_synchronous`` on SQLite). ``plugins`` are lifecycle plugin
    objects or entry-point names. Raises :class:`ConfigurationError` for an
    unknown scheme or a bad option; never echoes a password.
    """
    from sqlalchemy.engine import URL
    from sqlalchemy.exc import ArgumentError

    raw = url if url is not None else os.environ.get("POLYQUEUE_URL") or DEFAULT_URL
    pm = make_plugin_manager(list(plugins) + _env_plugins())
    if isinstance(raw, URL):
        parsed = raw
    elif isinstance(raw, str):
        try:
            parsed = parse_url(raw)
        except (ArgumentError, ValueError):
            scheme = raw.partition("://")[0] if "://" in raw else ""
            if scheme:
                backend_class_for(pm, scheme.split("+", 1)[0])  # an unknown scheme or a lifecycle plugin says so first
            # Only the scheme is echoed: an unparsable URL's password cannot be told from the rest of it.
            shown = f" (scheme {scheme[:40]!r})" if scheme else ""
            raise ConfigurationError(f"could not parse the queue URL{shown}: {describe_parse_error(raw)}") from None
    else:
        raise ConfigurationError("url must be a string, a SQLAlchemy URL or None")
    backend_cls: type[Backend] = backend_class_for(pm, parsed.drivername.split("+", 1)[0])
    parsed, opts = _split_options(parsed, options, {**CORE_OPTIONS, **backend_cls.connect_options})
    prefix = opts.setdefault("table_prefix", "polyqueue_")
    if not _PREFIX_RE.match(prefix):
        raise ConfigurationError("table_prefix must be a plain identifier: letters, digits and _ (max 40)")
    opts["max_payload_bytes"] = _positive(opts.get("max_payload_bytes", 1 << 20), "max_payload_bytes")
    opts["max_attempts"] = _positive(opts.get("max_attempts", 5), "max_attempts")
    backend: Backend = backend_cls(parsed, opts)
    if opts.get("depth_cache"):
        from .depth_cache import DepthCachedBackend

        backend = DepthCachedBackend(backend, opts["depth_cache"], opts)
        # The cache holds its URL; what the queue shows (q.options, reprs) must not hold its password.
        opts["depth_cache"] = mask_url(opts["depth_cache"])
    queue = Queue(backend, pm, opts)
    queue._url = raw if isinstance(raw, str) else raw.render_as_string(hide_password=False)
    return queue


def _check_statuses(status: str | Iterable[str]) -> frozenset[str]:
    """One job status or several, each one of :data:`~polyqueue.job.STATUSES`."""
    chosen = frozenset([status] if isinstance(status, str) else status)
    unknown = sorted(str(s) for s in chosen - set(STATUSES))
    if not chosen or unknown:
        raise InvalidArgument(f"status must be one or more of {', '.join(STATUSES)}; got {unknown or 'none'}")
    return chosen


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a positive integer")
    return value


def _env_plugins() -> list[str]:
    return [name.strip() for name in os.environ.get("POLYQUEUE_PLUGINS", "").split(",") if name.strip()]


def default_worker_id() -> str:
    """``host:pid:random``: names the process that holds a job (``Job.locked_by``)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _positive_seconds_option(value: Any, what: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(f"{what} must be a positive number of seconds")
    return seconds


class Queue:
    """A job queue on one database. Thread-safe; share one per process.

    Create with :func:`connect`. Methods validate their input and raise a
    :class:`~polyqueue.errors.PolyqueueError` subclass, storing nothing, when
    it is wrong.
    """

    def __init__(self, backend: Backend, plugin_manager: pluggy.PluginManager, options: Mapping[str, Any]) -> None:
        self.backend = backend
        self.plugins = plugin_manager
        self.options = dict(options)
        self.max_payload_bytes: int = self.options["max_payload_bytes"]
        self.max_attempts: int = self.options["max_attempts"]
        #: Retry delays after a failed attempt: exponential with jitter (options ``backoff_base``, ``backoff_max``).
        self.retry_backoff = policy.Backoff(
            _positive_seconds_option(self.options.get("backoff_base", 1.0), "backoff_base"),
            _positive_seconds_option(self.options.get("backoff_max", 3600.0), "backoff_max"),
        )
        self._session = ConsumerSession(self, worker_id=default_worker_id())
        self._closed = threading.Event()
        self._url = ""

    def __repr__(self) -> str:
        return f"<polyqueue.Queue {self.backend.describe()}>"

    def rebound(self, backend: Backend) -> Queue:
        """This queue -- same class, options, plugins and URL -- on another backend of the same store.

        :class:`~polyqueue.AsyncQueue` runs its Queue's methods over the
        backend's :meth:`~polyqueue.backends.base.Backend.asyncio_variant`
        this way. The copy has its own consumer session; closing it closes ``backend``.
        """
        clone = copy.copy(self)
        clone.backend = backend
        clone._session = ConsumerSession(clone, worker_id=default_worker_id())
        clone._closed = threading.Event()
        return clone

    # --- lifecycle ---------------------------------------------------------
    def connect_url(self) -> str:
        """The URL this queue was opened with, password included: for starting worker processes, never for logs."""
        return self._url

    @property
    def capabilities(self) -> frozenset[str]:
        """The backend's optional features (see :class:`~polyqueue.backends.base.Capability`)."""
        return frozenset(self.backend.capabilities)

    def migrate(self) -> None:
        """Create or upgrade the schema. Idempotent and safe when processes race."""
        self.backend.migrate()

    def close(self) -> None:
        """Release connections. Idempotent."""
        if not self._closed.is_set():
            self._closed.set()
            self.backend.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def consumer_session(
        self, worker_id: str | None = None, *, max_attempts: int | None = None, outage_patience: float = 0.0
    ) -> ConsumerSession:
        """A :class:`~polyqueue.session.ConsumerSession` for one consumer (what a Worker uses).

        ``max_attempts`` lowers the attempt limit of every job it claims;
        ``outage_patience`` is how long its settlements and heartbeats wait
        out a database outage before raising.
        """
        worker = default_worker_id() if worker_id is None else check_name(worker_id, "worker_id")
        cap = None if max_attempts is None else check_int(max_attempts, "max_attempts", 1, 10_000)
        patience = check_seconds(outage_patience, "outage_patience")
        return ConsumerSession(self, worker_id=worker, max_attempts=cap, outage_patience=patience)

    # --- producing -----------------------------------------------------------
    def _new_job(self, spec: Mapping[str, Any]) -> NewJob:
        """A validated, encoded job from ``enqueue``'s arguments (a dict with its keyword names)."""
        job_type = check_name(spec.get("job_type"), "job_type")
        queue = check_queue_name(spec.get("queue", "default"))
        priority = check_int(spec.get("priority", 0), "priority", -(2**31), 2**31 - 1)
        max_attempts, dedupe_key = spec.get("max_attempts"), spec.get("dedupe_key")
        attempts = self.max_attempts if max_attempts is None else check_int(max_attempts, "max_attempts", 1, 10_000)
        if dedupe_key is not None:
            dedupe_key = check_name(dedupe_key, "dedupe_key")
        dedupe_for = spec.get("dedupe_for")
        if dedupe_for is not None:
            if dedupe_key is None:
                raise InvalidArgument("dedupe_for needs a dedupe_key: it says how long that key stays held")
            dedupe_for = check_seconds(dedupe_for, "dedupe_for") or None
        delay, run_at = spec.get("delay"), spec.get("run_at")
        if delay is not None and run_at is not None:
            raise InvalidArgument("give delay or run_at, not both")
        delay_seconds = 0.0 if delay is None else check_seconds(delay, "delay")
        if run_at is not None and (not isinstance(run_at, datetime) or run_at.tzinfo is None):
            raise InvalidArgument("run_at must be a timezone-aware datetime")
        concurrency_key = spec.get("concurrency_key")
        if concurrency_key is not None:
            concurrency_key = check_name(concurrency_key, "concurrency_key")
        payload_json = json_codec.encode_payload(spec.get("payload"), self.max_payload_bytes)
        headers_json = check_headers(spec.get("headers"))
        timeout = spec.get("timeout")
        if timeout is not None:
            timeout = check_seconds(timeout, "timeout", positive=True)
        if self.plugins.hook.polyqueue_enqueue_headers.get_hookimpls():  # checked here: enqueue_many's hot path
            headers_json = self._with_plugin_headers(queue, job_type, spec.get("headers"), headers_json)
        return NewJob(
            queue, job_type, payload_json, priority, attempts, delay_seconds, dedupe_key, run_at, dedupe_for,
            headers_json, timeout, concurrency_key,
        )  # fmt: skip

    def _with_plugin_headers(
        self, queue: str, job_type: str, own: Mapping[str, str] | None, own_json: str | None
    ) -> str | None:
        """``own_json`` with the headers plugins add (trace context); the caller's own headers win a clash.

        Runs after the job is otherwise valid, so a plugin never sees an invalid job (though a later
        invalid job of an ``enqueue_many`` batch still rejects the whole batch).
        Headers a plugin adds that would not be valid are logged and dropped, never failing the enqueue;
        a backend without the headers capability is not offered any.
        """
        if Capability.HEADERS not in self.capabilities:
            return own_json
        added = plugin_headers(
            self.plugins, queue=self, job_type=job_type, queue_name=queue, headers=dict(own or {})
        )
        if not added:
            return own_json
        try:
            return check_headers({**added, **(own or {})})
        except InvalidArgument as exc:
            log.error("headers added by a plugin are not valid (%s); the job is stored with its own headers", exc)
            return own_json

    def enqueue(
        self,
        job_type: str,
        payload: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        dedupe_key: str | None = None,
        dedupe_for: float | timedelta | str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | timedelta | str | None = None,
        concurrency_key: str | None = None,
        connection: Any = None,
    ) -> Hashable:
        """Store one job and return its id (or, when its ``dedupe_key`` is held, the holding job's id).

        ``payload`` must be JSON data under ``max_payload_bytes`` (else
        :class:`InvalidPayload` / :class:`PayloadTooLarge`, nothing stored).
        A ``dedupe_key`` is held while its job is live; ``dedupe_for`` keeps
        it held that many seconds more after the job is done or dead (a
        cancelled job lets it go at once). ``headers`` is a small dict of
        str -> str carried with the job (``job.headers``: trace context,
        tenant, request id), kept through retries and replay. ``timeout``
        limits each attempt's run in seconds (over the worker's own
        ``timeout``): an attempt that runs longer fails with a timeout error.
        ``concurrency_key`` names what a queue's ``per_key`` limit counts
        this job under (:meth:`set_limits`).
        ``connection`` writes the job inside the caller's open transaction.
        Every call carries a client token, so the library's own retry after a
        dropped connection never stores the job twice.
        """
        spec = {"job_type": job_type, "payload": payload, "queue": queue, "priority": priority, "delay": delay}
        spec.update(run_at=run_at, max_attempts=max_attempts, dedupe_key=dedupe_key, dedupe_for=dedupe_for)
        spec.update(headers=headers, timeout=timeout, concurrency_key=concurrency_key)
        return self._store([self._new_job(spec)], connection)[0]

    _JOB_KEYS = frozenset(
        {"job_type", "payload", "queue", "priority", "delay", "run_at", "max_attempts", "dedupe_key", "dedupe_for"}
        | {"headers", "timeout", "concurrency_key"}
    )

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]], *, connection: Any = None) -> list[Hashable]:
        """Store many jobs atomically in one round trip per batch; ids in input order.

        Each item is a dict with ``enqueue``'s keyword names (``job_type``
        required). Any invalid item rejects the whole batch before anything is stored.
        """
        if isinstance(jobs, (str, bytes, Mapping)):
            raise InvalidArgument("enqueue_many takes an iterable of dicts")
        batch: list[NewJob] = []
        for index, spec in enumerate(jobs):
            if not isinstance(spec, Mapping):
                raise InvalidArgument(f"job #{index} is a {type(spec).__name__}, not a dict")
            unknown = set(spec) - self._JOB_KEYS
            if unknown:
                raise InvalidArgument(f"job #{index} has unknown keys {sorted(unknown)}")
            if "job_type" not in spec:
                raise InvalidArgument(f"job #{index} has no job_type")
            try:
                batch.append(self._new_job(spec))
            except InvalidPayload as exc:
                raise type(exc)(f"job #{index}: {exc}") from None
            except InvalidArgument as exc:
                raise InvalidArgument(f"job #{index}: {exc}") from None
        return self._store(batch, connection)

    def _store(self, batch: list[NewJob], connection: Any) -> list[Hashable]:
        if connection is not None:
            self.require_capability(Capability.TRANSACTIONAL_ENQUEUE, "transactional enqueue (connection=)")
        if any(job.dedupe_for is not None for job in batch):
            self.require_capability(Capability.DEDUPE, "dedupe keys (dedupe_for=)")
        if any(job.headers_json is not None for job in batch):
            self.require_capability(Capability.HEADERS, "job headers (headers=)")
        if any(job.timeout is not None for job in batch):
            self.require_capability(Capability.TIMEOUTS, "per-job timeouts (timeout=)")
        if any(job.concurrency_key is not None for job in batch):
            self.require_capability(Capability.FLOW_CONTROL, "flow control (concurrency_key=)")
        # One client token per call: a retry of this call after a dropped connection finds its first attempt.
        ids = self.backend.enqueue(EnqueueBatch(batch, connection, policy.new_enqueue_token()))
        if ids:
            # After the commit: a plugin that raises here must not make a stored job look unstored.
            call_hook(
                self.plugins,
                "polyqueue_job_enqueued",
                queue=self,
                job_ids=ids,
                queue_names=sorted({j.queue for j in batch}),
                jobs=batch,
            )
        return ids

    # --- consuming -----------------------------------------------------------
    def claim(
        self,
        queues: str | Sequence[str] = "default",
        *,
        limit: int = 1,
        lease: float = 30.0,
        worker_id: str | None = None,
        job_types: Iterable[str] | None = None,
    ) -> list[Job]:
        """Atomically take up to ``limit`` ready jobs (priority, then oldest run_at, then id).

        Each comes back ``processing`` with ``attempts`` counted and a lease of
        ``lease`` seconds from the database clock. ``job_types`` takes only
        jobs of those types (the others stay pending, untouched). ``[]`` when
        nothing is ready.
        """
        names = queue_list(queues)
        limit = check_int(limit, "limit", 1, MAX_CLAIM_BATCH)
        lease = check_seconds(lease, "lease", positive=True)
        worker = None if worker_id is None else check_name(worker_id, "worker_id")
        types = check_job_types(job_types)
        return self._session.claim(names, limit=limit, lease=lease, job_types=types, worker_id=worker)

    @staticmethod
    def _check_job(job: Any) -> Job:
        if not isinstance(job, Job):
            raise InvalidArgument(f"expected a Job returned by claim(), got {type(job).__name__}")
        return job

    def complete(self, job: Job, result: Any = None) -> None:
        """Mark a claimed job done, storing ``result`` (JSON). Raises :class:`LeaseLost` if no longer held."""
        self._session.complete(self._check_job(job), result)

    def complete_many(self, jobs: Sequence[tuple[Job, str | None]]) -> None:
        """Mark many claimed jobs done in one statement; results are JSON text or None.

        Raises :class:`LeaseLost` naming the jobs no longer held; the others are done.
        """
        for job, _ in jobs:
            self._check_job(job)
        self._raise_if_lost(self._session.complete_many(jobs))

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number ``attempts``: exponential with jitter, capped at ``backoff_max``."""
        return self.retry_backoff.delay(attempts)

    def fail(
        self,
        job: Job,
        error: BaseException | str | None,
        *,
        retry_in: float | timedelta | None = None,
        dead: bool = False,
    ) -> None:
        """Record a failed attempt: pending again after backoff (or ``retry_in``) while attempts remain, else dead.

        Raises :class:`LeaseLost` if this claim no longer holds the job.
        """
        self._check_job(job)
        delay = None if retry_in is None else check_seconds(retry_in, "retry_in")
        self._session.fail(job, error, retry_in=delay, dead=bool(dead))

    def extend(self, job: Job, lease: float) -> None:
        """Heartbeat: push the lease out to DB-now + ``lease``. Raises :class:`LeaseLost`."""
        self._check_job(job)
        lease = check_seconds(lease, "lease", positive=True)
        self._raise_if_lost(self._session.extend([job], lease))

    def release(self, job: Job) -> None:
        """Give a claimed job back unrun; the attempt is not charged. Raises :class:`LeaseLost`."""
        self._raise_if_lost(self._session.release([self._check_job(job)]))

    @staticmethod
    def _raise_if_lost(lost: set[Hashable]) -> None:
        if lost:
            raise lease_lost(lost)

    # --- inspecting and managing -------------------------------------------
    def get(self, job_id: Hashable) -> Job | None:
        """The job with this id, or None."""
        return self.backend.get(JobLookup(job_id))

    def cancel(self, job_id: Hashable) -> bool:
        """Cancel a job: a pending one at once; a processing one is asked to stop. True if either happened.

        On a backend with the ``cancel_running`` capability, a processing
        job's worker learns of the request within a heartbeat
        (``lease / 3``): the handler sees ``job.cancel_requested`` and
        ``job.check()`` raises :class:`~polyqueue.JobCancelled`, and the job
        ends ``cancelled``, never retried. False for a finished or unknown
        job (and for a processing one on a backend without the capability).
        """
        return self.backend.cancel(CancelRequest(job_id))

    def retry_now(self, job_id: Hashable) -> bool:
        """Make a pending job that waits for its time (a retry's back-off, a delay) due now; True if it did.

        False when the job is not pending, is due already, or does not exist.
        Idle workers of its queue are woken as after an enqueue. Needs the
        ``retry_now`` capability (:class:`ConfigurationError` without it).
        """
        self.require_capability(Capability.RETRY_NOW, "retry now")
        return self.backend.retry_now(RetryNowRequest(job_id))

    def stats(self, queue: str | None = None) -> dict[str, int]:
        """Counts by status plus ``scheduled``, for one queue or all queues together.

        Keys: ``pending`` (every pending job, due or not), ``scheduled`` (the
        pending ones not yet due: ``pending - scheduled`` are ready now),
        ``processing``, ``done``, ``dead``, ``cancelled``. A sum over the keys
        counts scheduled jobs twice; the CLI's table shows ready and scheduled
        apart for that reason.
        """
        if queue is not None:
            queue = check_queue_name(queue)
        totals = dict.fromkeys(("pending", "scheduled", "processing", "done", "dead", "cancelled"), 0)
        for counts in self.backend.stats(StatsRequest(queue)).values():
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def stats_by_queue(self, statuses: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """``{queue: counts}`` as :meth:`stats` gives them, for every queue that has jobs.

        ``statuses`` counts only those (with ``scheduled`` when ``pending`` is
        one): every queue holding jobs of them, and a store may skip its
        finished history, so ``("pending", "processing", "dead")`` stays
        cheap however many done jobs there are. A store may count more.
        """
        if statuses is None:
            return self.backend.stats(StatsRequest())
        return self.backend.stats(StatsRequest(statuses=_check_statuses(list(statuses))))

    def stats_by_type(self, queue: str | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """``{queue: {job_type: counts}}``: shows jobs of a type no worker handles (they stay pending)."""
        if queue is not None:
            queue = check_queue_name(queue)
        return self.backend.stats(StatsRequest(queue, by_type=True))

    def depth(self, queue: str = "default", *, exact: bool = False) -> int:
        """Ready jobs in ``queue``: O(1) from the Redis depth cache when configured (a hint), else counted.

        ``exact`` always counts in the database.
        """
        name = check_queue_name(queue)
        cached = None if exact else self.backend.cached_depth(name)
        return cached if cached is not None else self.backend.count_ready(ReadyCount(name))

    def dead_jobs(self, queue: str | None = None, limit: int = 100) -> list[Job]:
        """Dead jobs, most recently finished first."""
        if queue is not None:
            queue = check_queue_name(queue)
        return self.backend.dead_jobs(DeadJobsQuery(queue, check_int(limit, "limit", 1, 1_000_000)))

    def list_jobs(
        self,
        queue: str | None = None,
        status: str | Iterable[str] | None = None,
        job_type: str | None = None,
        after: Hashable | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """One page of jobs, newest first: of ``queue``, ``status`` and ``job_type`` when given.

        ``status`` is one status or several (of ``pending``, ``processing``,
        ``done``, ``dead``, ``cancelled``). ``after`` is the ``id`` of the
        last job of the previous page: the next page holds older jobs only
        (keyset pagination, served by indexes, so the thousandth page costs
        what the first does; jobs added meanwhile never shift a page).
        ``limit`` is 1 to 1000. ``[]`` when nothing is left. Needs the
        ``list_jobs`` capability (:class:`ConfigurationError` without it);
        :class:`InvalidArgument` for a bad filter or an ``after`` that is
        not a job id of this backend.
        """
        name = None if queue is None else check_name(queue, "queue name")
        statuses = None if status is None else _check_statuses(status)
        kind = None if job_type is None else check_name(job_type, "job_type")
        size = check_int(limit, "limit", 1, MAX_LIST_PAGE)
        self.require_capability(Capability.LIST_JOBS, "job listing")
        return self.backend.list_jobs(ListQuery(statuses, name, kind, after, size))

    def throughput(
        self, queue: str | None = None, *, window: float | timedelta | str = 3600.0, buckets: int = 60
    ) -> Throughput:
        """Jobs that ended ``done`` or ``dead`` in each of ``buckets`` slices of the last ``window`` (DB clock).

        ``Throughput.counts`` is ``{queue: {"done": [...], "dead": [...]}}``,
        oldest slice first (a status or queue with none finished is absent).
        Reads only the window's finished jobs, not the history. Needs the
        ``throughput`` capability (:class:`ConfigurationError` without it).
        """
        name = None if queue is None else check_name(queue, "queue name")
        seconds = check_seconds(window, "window", positive=True)
        slices = check_int(buckets, "buckets", 1, 1440)
        self.require_capability(Capability.THROUGHPUT, "throughput counts")
        return self.backend.throughput(ThroughputQuery(name, seconds, slices))

    def replay(
        self, ids: Iterable[Hashable] | None = None, queue: str | None = None, *, rate: float | str | None = None
    ) -> int:
        """Make dead jobs pending again (attempts reset, error history kept); returns how many.

        Jobs whose dedupe key another job holds are skipped with a warning.
        ``rate`` (jobs per second, or text like ``"50/s"``) redrives them at a
        steady pace instead of all at once, so a service that just recovered
        is not flooded: the call returns when the last one went. It replays
        the jobs dead when it starts (of ``ids``, or of ``queue``, or all),
        oldest first.
        """
        return self.replay_detailed(ids, queue, rate=rate).replayed

    def replay_detailed(
        self,
        ids: Iterable[Hashable] | None = None,
        queue: str | None = None,
        *,
        rate: float | str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> ReplayResult:
        """Like :meth:`replay` but also says which jobs were skipped and why.

        With ``rate``, ``on_progress(done, total)`` is called after each step.
        """
        if queue is not None:
            queue = check_queue_name(queue)
        if isinstance(ids, (str, bytes)):
            raise InvalidArgument("ids must be an iterable of job ids")
        wanted = None if ids is None else list(ids)
        if rate is None:
            result = self.backend.replay(ReplayRequest(wanted, queue))
        else:
            result = self._replay_paced(wanted, queue, policy.Pace(parse_rate(rate)), on_progress)
        for job_id, reason in result.skipped.items():
            log.warning("replay skipped job %s: %s", job_id, reason)
        return result

    def _replay_paced(
        self,
        ids: list[Hashable] | None,
        queue: str | None,
        pace: policy.Pace,
        on_progress: Callable[[int, int], None] | None,
    ) -> ReplayResult:
        """Replay the dead jobs ``ids`` names (None: every dead one of ``queue``) in steps on ``pace``'s timetable."""
        if ids is None:
            dead = self.backend.dead_jobs(DeadJobsQuery(queue, MAX_PACED_REPLAY))
            ids = [job.id for job in reversed(dead)]  # oldest dead first
        total = len(ids)
        result = ReplayResult(0)
        done = 0
        for step in pace.batches(ids, sleep=self.backend.pause):
            part = self.backend.replay(ReplayRequest(step, queue))
            result.replayed += part.replayed
            result.skipped.update(part.skipped)
            done += len(step)
            if on_progress is not None:
                on_progress(done, total)
        return result

    def purge(self, status: str = "done", older_than: float | timedelta | str = "7d", batch_size: int = 1000) -> int:
        """Delete finished jobs of ``status`` older than ``older_than``, in small batches; returns the count."""
        if status not in FINISHED_STATUSES:
            raise InvalidArgument(f"purge status must be one of {', '.join(FINISHED_STATUSES)}")
        seconds = parse_duration(older_than, "older_than")
        return self.backend.purge(PurgeRequest(status, seconds, check_int(batch_size, "batch_size", 1, 100_000)))

    def schedules(self, names: Iterable[str] | None = None) -> list[ScheduleRecord]:
        """The periodic schedules workers declared (of ``names``, or all), each with its newest fire.

        Needs the ``periodic`` capability (:class:`ConfigurationError` without it).
        """
        wanted = None if names is None else [check_name(n, "schedule name") for n in names]
        self.require_capability(Capability.PERIODIC, "periodic jobs")
        return self.backend.schedules(ScheduleQuery(wanted))

    def fire_history(self, schedule: str, limit: int = 100) -> list[FireRecord]:
        """The fires of one periodic schedule, newest first: each slot, when it fired and the job it created."""
        name = check_name(schedule, "schedule name")
        self.require_capability(Capability.PERIODIC, "periodic jobs")
        return self.backend.fire_history(FireHistoryQuery(name, check_int(limit, "limit", 1, 1_000_000)))

    # --- runtime control: pause and flow control ---------------------------------------------
    def set_limits(
        self,
        queue: str,
        *,
        concurrency: int | None = None,
        rate: float | str | None = None,
        per_key: int | None = None,
    ) -> QueueLimits:
        """Limit ``queue`` across every worker process and machine; returns the limits now stored.

        At most ``concurrency`` of its jobs processing at once; at most
        ``rate`` starts per second (a number, or text like ``"50/s"``,
        ``"300/m"``; counted on the database clock, at most one second's worth
        in a burst); at most ``per_key`` processing per
        ``enqueue(..., concurrency_key=...)``, other keys flowing fairly
        (each key's first ready job before any key's second). The claim
        enforces them atomically. Each call replaces all three: None (the
        default) removes that limit, so ``set_limits(q)`` removes every one.
        Stored in the database: they survive restarts, and running workers
        honour a change within about a second. Needs ``flow_control``.
        """
        name = check_name(queue, "queue name")
        limits = QueueLimits(
            None if concurrency is None else check_int(concurrency, "concurrency", 1, 1_000_000),
            None if rate is None else parse_rate(rate),
            None if per_key is None else check_int(per_key, "per_key", 1, 1_000_000),
        )
        self.require_capability(Capability.FLOW_CONTROL, "flow control (set_limits)")
        return self.backend.control_queue(QueueControl(name, limits=limits)).limits

    def limits(self, queue: str) -> QueueLimits:
        """The limits stored for ``queue`` (all None when it has none)."""
        name = check_name(queue, "queue name")
        self.require_capability(Capability.FLOW_CONTROL, "flow control (limits)")
        found = self.backend.queue_settings(QueueSettingsQuery([name]))
        return found[0].limits if found else QueueLimits()

    def pause(self, queue: str) -> None:
        """Stop every claim, in every process, from taking ``queue``'s jobs until :meth:`resume`.

        Stored in the database (it survives restarts). Once it returns no
        claim on any worker takes a job of the queue; jobs already running
        finish. Enqueueing still works; ``depth`` reports 0 while paused and
        idle workers are not woken for it. Idempotent. Needs ``pause``.
        """
        name = check_name(queue, "queue name")
        self.require_capability(Capability.PAUSE, "pause and resume")
        self.backend.control_queue(QueueControl(name, paused=True))

    def resume(self, queue: str) -> None:
        """Let claims take ``queue``'s jobs again, and wake its idle workers. Idempotent."""
        name = check_name(queue, "queue name")
        self.require_capability(Capability.PAUSE, "pause and resume")
        self.backend.control_queue(QueueControl(name, paused=False))

    def paused(self) -> list[str]:
        """The paused queues, by name."""
        self.require_capability(Capability.PAUSE, "pause and resume")
        return [s.queue for s in self.backend.queue_settings(QueueSettingsQuery()) if s.paused]

    def queue_settings(self, queues: str | Iterable[str] | None = None) -> list[QueueSettings]:
        """The stored limits and paused flag of ``queues`` (None: every limited or paused queue), by name.

        Queues with neither are left out; ``[]`` on a backend that can do neither.
        """
        names = None if queues is None else queue_list(queues)
        return self.backend.queue_settings(QueueSettingsQuery(names))

    def require_capability(self, capability: Capability, what: str) -> None:
        """Raise :class:`ConfigurationError` naming ``what`` unless the backend has ``capability``."""
        if capability not in self.capabilities:
            raise ConfigurationError(f"{self.backend.name} has no {what} (the {capability.value!r} capability)")

    def require(self, job_id: Hashable) -> Job:
        """Like :meth:`get` but raises :class:`JobNotFound`."""
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job
