"""The ``memory://`` backend: the whole polyqueue backend interface in Python dicts and heaps, in one process.

It is a real backend, not a test double: it keeps the same promises as the
SQL backends (claim order, exact leases, fencing, rescue of expired leases,
live-job dedupe, delayed jobs, replay, batched purge) and passes the
conformance suite, and moves jobs to and from any other backend
(``polyqueue transfer``). What it cannot do it does not claim: jobs live only as
long as the process, and only threads of that process share them (no
``multi_process``), and there is no caller transaction to enqueue into (no
``transactional_enqueue``).

``memory://NAME`` (default name ``default``) is a database shared by every
queue of the process that opens the same name; ``table_prefix`` separates
queues inside it as it separates table sets in SQL, so tests on unique
prefixes are isolated. As in SQL, ``migrate()`` creates the store and
``drop_schema()`` removes it; using a queue before ``migrate()`` raises
:class:`~polyqueue.SchemaMissing`.

Times come from one process-wide clock: the wall clock read once, advanced
by ``time.monotonic_ns()``, so it never runs backwards and leases expire
exactly when their duration has passed even if the system clock is changed.
Times are kept as integer microseconds, so aware datetimes round-trip exactly.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy.engine import URL

from polyqueue import json_codec, policy
from polyqueue.backends import base as spi
from polyqueue.backends.base import Backend, BackendOptions, Capability, ChangeWatcher
from polyqueue.errors import ConfigurationError, InvalidArgument, SchemaMissing
from polyqueue.job import (
    STATUSES,
    Job,
    JobRecord,
    JobStatus,
    NewJob,
    QueueSettings,
    ReplayResult,
    int_job_id,
)

__all__ = ["MemoryBackend", "MemoryWakeups"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: How many jobs a purge batch looks at, per job it may delete, while holding the store's lock.
_PURGE_SCAN = 8
#: How many jobs one replay step handles while holding the store's lock.
_BATCH = 500


class _Clock:
    """UTC microseconds since the epoch: the wall clock read once, then advanced monotonically."""

    def __init__(self) -> None:
        self._wall_us = time.time_ns() // 1000
        self._mono_ns = time.monotonic_ns()

    def now(self) -> int:
        return self._wall_us + (time.monotonic_ns() - self._mono_ns) // 1000


@functools.cache
def _clock() -> _Clock:
    """The one clock of this process, created on first use (no import-time side effects)."""
    return _Clock()


def _to_datetime(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def _to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _seconds_to_us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _to_us_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else _to_us(moment)


@dataclass(slots=True)
class _Row:
    """One stored job; payload, result and errors are kept as JSON text, as a database keeps them."""

    id: int
    queue: str
    job_type: str
    payload: str
    priority: int
    status: str
    attempts: int
    max_attempts: int
    run_at: int
    created_at: int
    dedupe_key: str | None
    finished_at: int | None = None
    locked_by: str | None = None
    lease_expires_at: int | None = None
    lease_token: int = 0
    last_error: str | None = None
    errors: str | None = None
    result: str | None = None
    dedupe_for: float | None = None
    #: Until when a finished job keeps its dedupe key held (microseconds); None: it holds none.
    dedupe_held_until: int | None = None
    import_key: str | None = None
    #: Headers as JSON text (None: none), the per-job attempt timeout, and the cancel-while-running flag.
    headers: str | None = None
    timeout: float | None = None
    cancel_requested: bool = False
    concurrency_key: str | None = None
    #: Generation of this row's newest heap entry; older entries are stale and skipped.
    entry: int = 0

    def to_job(self) -> Job:
        return Job(
            id=self.id,
            queue=self.queue,
            job_type=self.job_type,
            payload=json_codec.loads(self.payload),
            priority=self.priority,
            status=self.status,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            run_at=_to_datetime(self.run_at),
            created_at=_to_datetime(self.created_at),
            finished_at=_to_datetime(self.finished_at),
            locked_by=self.locked_by,
            lease_expires_at=_to_datetime(self.lease_expires_at),
            last_error=self.last_error,
            dedupe_key=self.dedupe_key,
            result=None if self.result is None else json_codec.loads(self.result),
            lease_token=self.lease_token,
            errors=json_codec.loads(self.errors) if self.errors else [],
            dedupe_for=self.dedupe_for,
            headers=json_codec.loads(self.headers) if self.headers else {},
            timeout=self.timeout,
            cancel_requested=self.cancel_requested,
            concurrency_key=self.concurrency_key,
        )

    def to_record(self) -> JobRecord:
        run_at, created_at = _to_datetime(self.run_at), _to_datetime(self.created_at)
        assert run_at is not None and created_at is not None
        return JobRecord(
            id=self.id, queue=self.queue, job_type=self.job_type, payload_json=self.payload,
            priority=self.priority, status=self.status, attempts=self.attempts, max_attempts=self.max_attempts,
            run_at=run_at, created_at=created_at, finished_at=_to_datetime(self.finished_at),
            last_error=self.last_error, errors_json=self.errors, result_json=self.result,
            dedupe_key=self.dedupe_key, dedupe_for=self.dedupe_for,
            dedupe_held_until=_to_datetime(self.dedupe_held_until), lease_token=self.lease_token,
            import_key=self.import_key, headers_json=self.headers, timeout=self.timeout,
            concurrency_key=self.concurrency_key,
        )  # fmt: skip


_LIVE = frozenset({JobStatus.PENDING, JobStatus.PROCESSING})
#: A (queue, job type) pair: the ready and scheduled heaps are kept per pair, as SQL's ready index is ordered.
Pair = tuple[str, str]


@dataclass(slots=True)
class _QueueRow:
    """A controlled queue's settings, and its rate allowance as of ``counted_at`` (microseconds)."""

    settings: QueueSettings
    allowance: float
    counted_at: int


class _Store:
    """The jobs of one (name, table_prefix): what a set of SQL tables holds, with the indexes as heaps.

    Every method expects ``self.lock`` to be held by the caller.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        #: Notified whenever work may have become ready (enqueue, release, retry, replay, drop).
        self.changed = threading.Condition(self.lock)
        self.rows: dict[int, _Row] = {}
        self.next_id = 1
        # (queue, job_type) -> (claim order key..., entry): the policy's claim order, then the entry generation.
        self.ready: dict[Pair, list[tuple[Any, ...]]] = {}
        self.scheduled: dict[Pair, list[tuple[int, int, int]]] = {}  # (queue, job_type) -> (run_at, id, entry)
        self.leases: dict[str, list[tuple[int, int, int]]] = {}  # queue -> (lease_expires_at, id, lease_token)
        self.live_keys: dict[tuple[str, str], int] = {}
        #: Dedupe keys finished jobs still hold (until their ``dedupe_held_until``), as SQL's dedupe index keeps them.
        self.held_keys: dict[tuple[str, str], int] = {}
        #: Imported jobs by import key: what makes an import idempotent.
        self.import_keys: dict[str, int] = {}
        self.pending: dict[str, set[int]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.generation: dict[str, int] = {}
        self.dropped = False
        #: Declared periodic schedules by name: (spec, declared_at, declared_by).
        self.schedules: dict[str, tuple[spi.ScheduleSpec, int, str]] = {}
        #: Fired slots: (schedule, slot) -> the fire; the key is what makes a slot fire once.
        self.fires: dict[tuple[str, str], spi.FireRecord] = {}
        #: Paused or limited queues by name (what SQL's queues table holds).
        self.queue_rows: dict[str, _QueueRow] = {}
        #: Processing jobs per (queue, concurrency key), as SQL's ``jobs_running`` index counts them.
        self.running_keys: dict[tuple[str, str], int] = {}

    # --- bookkeeping ----------------------------------------------------------
    def set_status(self, row: _Row, status: str) -> None:
        """Move ``row`` to ``status``, keeping the counts, the pending sets and the live dedupe keys right."""
        old = row.status
        counts = self.counts.setdefault(row.queue, dict.fromkeys(STATUSES, 0))
        counts[old] -= 1
        counts[status] += 1
        row.status = status
        if row.concurrency_key is not None and JobStatus.PROCESSING in (old, status) and old != status:
            key = (row.queue, row.concurrency_key)
            self.running_keys[key] = self.running_keys.get(key, 0) + (1 if status == JobStatus.PROCESSING else -1)
            if not self.running_keys[key]:
                del self.running_keys[key]
        if old == JobStatus.PENDING:
            self.pending[row.queue].discard(row.id)
        if status == JobStatus.PENDING:
            self.pending.setdefault(row.queue, set()).add(row.id)
        if row.dedupe_key is not None and (old in _LIVE) != (status in _LIVE):
            key = (row.queue, row.dedupe_key)
            if status in _LIVE:
                self.live_keys[key] = row.id
                row.dedupe_held_until = None
                if self.held_keys.get(key) == row.id:
                    del self.held_keys[key]
            else:
                if self.live_keys.get(key) == row.id:
                    del self.live_keys[key]
                if row.dedupe_held_until is not None:
                    self.held_keys[key] = row.id

    def holder(self, queue: str, dedupe_key: str, now: int) -> int | None:
        """The id of the job holding a dedupe key: live, or finished within its hold (an ended hold is let go)."""
        key = (queue, dedupe_key)
        live = self.live_keys.get(key)
        if live is not None:
            return live
        held = self.held_keys.get(key)
        if held is None:
            return None
        row = self.rows[held]
        if row.dedupe_held_until is not None and row.dedupe_held_until > now:
            return held
        del self.held_keys[key]
        row.dedupe_held_until = None
        return None

    def insert(self, row: _Row, now: int) -> None:
        """Store a new row of any status (enqueued ones are pending; imported ones may be finished)."""
        self.rows[row.id] = row
        counts = self.counts.setdefault(row.queue, dict.fromkeys(STATUSES, 0))
        counts[row.status] += 1
        if row.import_key is not None:
            self.import_keys[row.import_key] = row.id
        if row.dedupe_key is not None:
            key = (row.queue, row.dedupe_key)
            if row.status in _LIVE:
                self.live_keys[key] = row.id
            elif row.dedupe_held_until is not None:
                self.held_keys[key] = row.id
        if row.status == JobStatus.PENDING:
            self.pending.setdefault(row.queue, set()).add(row.id)
            self.index_pending(row, now)

    def delete(self, row: _Row) -> None:
        """Remove a row that no claim holds, with everything that points at it (stale heap entries are skipped)."""
        del self.rows[row.id]
        self.counts[row.queue][row.status] -= 1
        if not any(self.counts[row.queue].values()):
            del self.counts[row.queue]
        if row.status == JobStatus.PENDING:
            self.pending[row.queue].discard(row.id)
        if row.import_key is not None and self.import_keys.get(row.import_key) == row.id:
            del self.import_keys[row.import_key]
        if row.dedupe_key is not None:
            key = (row.queue, row.dedupe_key)
            for keys in (self.live_keys, self.held_keys):
                if keys.get(key) == row.id:
                    del keys[key]

    def index_pending(self, row: _Row, now: int) -> None:
        """Make a pending row findable: in the ready heap when due, else in the scheduled heap."""
        row.entry += 1
        pair = (row.queue, row.job_type)
        if row.run_at <= now:
            key = policy.claim_order_key(row.priority, row.run_at, row.id)
            heapq.heappush(self.ready.setdefault(pair, []), (*key, row.entry))
        else:
            heapq.heappush(self.scheduled.setdefault(pair, []), (row.run_at, row.id, row.entry))

    def index_lease(self, row: _Row) -> None:
        assert row.lease_expires_at is not None
        heapq.heappush(self.leases.setdefault(row.queue, []), (row.lease_expires_at, row.id, row.lease_token))

    def paused(self, queue: str) -> bool:
        held = self.queue_rows.get(queue)
        return held is not None and held.settings.paused

    def signal(self, queues: Iterable[str]) -> None:
        for name in queues:
            self.generation[name] = self.generation.get(name, 0) + 1
        self.changed.notify_all()

    def _indexed(self, row_id: int, entry: int) -> _Row | None:
        row = self.rows.get(row_id)
        if row is None or row.status != JobStatus.PENDING or row.entry != entry:
            return None
        return row

    def _held_lease(self, row_id: int, token: int, expires: int) -> _Row | None:
        row = self.rows.get(row_id)
        if row is None or row.status != JobStatus.PROCESSING:
            return None
        if row.lease_token != token or row.lease_expires_at != expires:
            return None
        return row

    def pairs(self, queues: Sequence[str], job_types: frozenset[str] | None) -> list[Pair]:
        """The (queue, job_type) pairs of ``queues`` (and ``job_types``) that have ever had pending jobs."""
        wanted = set(queues)
        known = set(self.ready) | set(self.scheduled)
        return [p for p in known if p[0] in wanted and (job_types is None or p[1] in job_types)]

    # --- the claim path -------------------------------------------------------------
    def rescue_expired(self, now: int) -> list[_Row]:
        """Expired leases of every queue, as the policy's expiry rule says; returns the rows made dead."""
        dead: list[_Row] = []
        for heap in self.leases.values():
            while heap and heap[0][0] <= now and len(dead) < policy.RESCUE_BATCH:
                expires, row_id, token = heapq.heappop(heap)
                row = self._held_lease(row_id, token, expires)
                if row is not None and self._rescue(row, now) == JobStatus.DEAD:
                    dead.append(row)
        return dead

    def _rescue(self, row: _Row, now: int) -> str:
        row.last_error = policy.expired_lease_error(row.locked_by)
        entry = policy.expired_lease_entry(row.attempts, row.locked_by, policy.error_time(now))
        row.errors = policy.appended_entry(row.errors, entry)
        row.locked_by = None
        row.lease_expires_at = None
        status = policy.expired_lease_status(row.attempts, row.max_attempts, row.cancel_requested)
        if status != JobStatus.PENDING:
            row.finished_at = now
        if policy.keeps_dedupe_key(status) and row.dedupe_for is not None:
            row.dedupe_held_until = now + _seconds_to_us(row.dedupe_for)
        self.set_status(row, status)
        if status == JobStatus.PENDING:
            self.index_pending(row, now)
        return status

    def promote_due(self, pairs: Sequence[Pair], now: int) -> None:
        """Move scheduled rows that are due now into their pair's ready heap."""
        for pair in pairs:
            heap = self.scheduled.get(pair)
            while heap and heap[0][0] <= now:
                _run_at, row_id, entry = heapq.heappop(heap)
                row = self._indexed(row_id, entry)
                if row is not None:
                    self.index_pending(row, now)

    def top_ready(self, pair: Pair) -> tuple[Any, ...] | None:
        """The first valid ready entry of a pair, dropping stale ones on the way."""
        heap = self.ready.get(pair)
        while heap:
            if self._indexed(heap[0][-2], heap[0][-1]) is not None:
                return heap[0]
            heapq.heappop(heap)
        return None

    def top_scheduled(self, pair: Pair) -> tuple[int, int, int] | None:
        heap = self.scheduled.get(pair)
        while heap:
            if self._indexed(heap[0][1], heap[0][2]) is not None:
                return heap[0]
            heapq.heappop(heap)
        return None

    def take_ready(self, pairs: Sequence[Pair], limit: int) -> list[_Row]:
        """Pop up to ``limit`` ready rows across ``pairs``, in claim order (a merge of the pairs' heaps)."""
        taken: list[_Row] = []
        while len(taken) < limit:
            best: tuple[tuple[Any, ...], Pair] | None = None
            for pair in pairs:
                top = self.top_ready(pair)
                if top is not None and (best is None or top < best[0]):
                    best = (top, pair)
            if best is None:
                break
            heapq.heappop(self.ready[best[1]])
            taken.append(self.rows[best[0][-2]])
        return taken

    def fair_ready(
        self, queue: str, job_types: frozenset[str] | None, per_key: int, limit: int, now: int
    ) -> list[_Row]:
        """Up to ``limit`` ready rows of ``queue`` whose key has room under ``per_key``, in the policy's fair order."""
        rows = [self.rows[i] for i in self.pending.get(queue, ())]
        ready = [r for r in rows if r.run_at <= now and (job_types is None or r.job_type in job_types)]
        ready.sort(key=lambda r: policy.claim_order_key(r.priority, r.run_at, r.id))
        ranks: dict[str | None, int] = {}
        ranked: list[tuple[tuple[Any, ...], _Row]] = []
        for row in ready:
            rank = ranks[row.concurrency_key] = ranks.get(row.concurrency_key, 0) + 1
            key = row.concurrency_key
            slot = policy.key_slot(rank, 0 if key is None else self.running_keys.get((queue, key), 0))
            if key is None or policy.key_has_room(slot, per_key):
                ranked.append((policy.fair_order_key(slot, row.priority, row.run_at, row.id), row))
        ranked.sort(key=lambda item: item[0])
        return [row for _, row in ranked[:limit]]

    def take_controlled(self, request: spi.ClaimRequest, queue: str, limit: int, now: int) -> list[_Row]:
        """What one claim may take from a paused or limited queue, taking its rate allowance."""
        held = self.queue_rows[queue]
        if held.settings.paused:
            return []
        limits = held.settings.limits
        processing = self.counts.get(queue, {}).get(JobStatus.PROCESSING, 0)
        allowance = None
        if limits.rate is not None:
            allowance = policy.rate_allowance(held.allowance, (now - held.counted_at) / 1e6, limits.rate)
        take = policy.claim_allowance(limit, limits, processing, allowance)
        rows: list[_Row] = []
        if take > 0:
            if limits.per_key is not None:
                rows = self.fair_ready(queue, request.job_types, limits.per_key, take, now)
            else:
                pairs = self.pairs([queue], request.job_types)
                self.promote_due(pairs, now)
                rows = self.take_ready(pairs, take)
        if allowance is not None:
            held.allowance, held.counted_at = allowance - len(rows), max(now, held.counted_at)
        return rows

    def next_lease_expiry(self, name: str, job_types: frozenset[str] | None) -> int | None:
        """When the earliest live lease of a queue (of ``job_types``) expires, dropping stale entries on the way."""
        heap = self.leases.get(name)
        while heap and self._held_lease(heap[0][1], heap[0][2], heap[0][0]) is None:
            heapq.heappop(heap)
        if not heap:
            return None
        if job_types is None:
            return heap[0][0]
        held = (self._held_lease(row_id, token, expires) for expires, row_id, token in heap)
        moments = [row.lease_expires_at for row in held if row is not None and row.job_type in job_types]
        return min(moments) if moments else None  # type: ignore[type-var]


#: Every store of the process, by (URL scheme, name, table_prefix). Guarded by _REGISTRY_LOCK.
_STORES: dict[tuple[str, str, str], _Store] = {}
_REGISTRY_LOCK = threading.Lock()


class MemoryWakeups(ChangeWatcher):
    """Push wake-ups for idle workers of one process: a condition variable instead of LISTEN/NOTIFY.

    ``wait`` returns True as soon as a job is enqueued, released, retried or
    replayed on one of its queues, and False on timeout. A signal between two
    waits is not lost: each wait compares the store's counters with the ones
    it saw last. (Lease expiries need no signal: the worker bounds its wait
    by :meth:`MemoryBackend.seconds_until_due`, which counts them.)
    """

    def __init__(self, backend: MemoryBackend, queues: Sequence[str]) -> None:
        self._backend = backend
        self._queues = list(queues)
        self._closed = threading.Event()
        super().__init__()

    def observe(self) -> tuple[int, ...] | None:
        """The store's change counters of the watched queues (None when there is no store)."""
        store = self._backend._store_or_none()
        return None if store is None else tuple(store.generation.get(name, 0) for name in self._queues)

    def stopped(self) -> bool:
        """Closed, or the store was dropped."""
        store = self._backend._store_or_none()
        return self._closed.is_set() or store is None or store.dropped

    def pause(self, seconds: float) -> None:
        """Wait on the store's condition (held by :meth:`wait`) until something changes."""
        store = self._backend._store_or_none()
        if store is not None:
            store.changed.wait(seconds)

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if woken because work may be ready."""
        store = self._backend._store_or_none()
        if store is None:
            self._closed.wait(timeout)
            return False
        with store.changed:
            return super().wait(timeout)

    def close(self) -> None:
        """Stop waiting; idempotent."""
        self._closed.set()
        store = self._backend._store_or_none()
        if store is not None:
            with store.changed:
                store.changed.notify_all()


class MemoryBackend(Backend):
    """Jobs in this process's memory: ``memory://`` or ``memory://NAME``. Thread-safe, single-process."""

    name = "memory"
    capabilities = frozenset(
        {
            Capability.DEDUPE,
            Capability.PRIORITIES,
            Capability.DELAYED,
            Capability.NOTIFY,
            Capability.PERIODIC,
            Capability.TRANSFER,
            Capability.LIST_JOBS,
            Capability.THROUGHPUT,
            Capability.RETRY_NOW,
            Capability.HEADERS,
            Capability.TIMEOUTS,
            Capability.CANCEL_RUNNING,
            Capability.PAUSE,
            Capability.FLOW_CONTROL,
        }
    )
    #: Where ``polyqueue compat`` runs the conformance suite for this backend (it needs no server).
    conformance_url: ClassVar[str | None] = "memory://conformance"

    def __init__(self, url: URL, options: BackendOptions) -> None:
        if "+" in url.drivername:
            raise ConfigurationError(f"the memory backend has no drivers to choose: {url.drivername}:// is not valid")
        if url.username or url.password or url.port or url.database:
            raise ConfigurationError("a memory URL is memory:// or memory://NAME: no user, password, port or path")
        if url.query:
            raise ConfigurationError(f"unknown option(s) for memory://: {sorted(url.query)}")
        self.scheme = url.drivername
        self.store_name = url.host or "default"
        self.prefix: str = options["table_prefix"]
        self.options = options

    def describe(self) -> str:
        """``memory://NAME``."""
        return f"{self.scheme}://{self.store_name}"

    def server_version(self) -> str:
        """This package's version: there is no server."""
        from . import __version__

        return f"in-process (polyqueue-memory {__version__})"

    # --- lifecycle ----------------------------------------------------------------
    def _key(self) -> tuple[str, str, str]:
        return (self.scheme, self.store_name, self.prefix)

    def _store_or_none(self) -> _Store | None:
        return _STORES.get(self._key())

    def _store(self) -> _Store:
        store = _STORES.get(self._key())
        if store is None:
            raise SchemaMissing(
                f"the polyqueue store {self.prefix!r} does not exist in {self.describe()}: "
                "run `polyqueue migrate` (or Queue.migrate())"
            )
        return store

    def migrate(self) -> None:
        """Create the store if missing. Idempotent and safe when threads race."""
        with _REGISTRY_LOCK:
            _STORES.setdefault(self._key(), _Store())

    def drop_schema(self) -> None:
        """Remove the store and every job in it; waiting workers are woken."""
        with _REGISTRY_LOCK:
            store = _STORES.pop(self._key(), None)
        if store is not None:
            with store.lock:
                store.dropped = True
                store.changed.notify_all()

    def close(self) -> None:
        """Nothing to release: the jobs stay, as they would in a database, until ``drop_schema``."""

    # --- producing ------------------------------------------------------------------
    def enqueue(self, batch: spi.EnqueueBatch) -> list[Hashable]:
        """Store the batch atomically under the store's lock; live duplicates return the live job's id."""
        if batch.connection is not None:
            raise ConfigurationError("the memory backend has no transactions to enqueue into (connection=)")
        if not batch.jobs:
            return []
        store = self._store()
        with store.lock:
            return self._insert(store, batch.jobs, _clock().now())

    @staticmethod
    def _insert(store: _Store, jobs: Sequence[NewJob], now: int) -> list[Hashable]:
        """Store new jobs (the store's lock held); a held dedupe key returns its holder's id."""
        absolute = [None if job.run_at is None else _to_us(job.run_at) for job in jobs]
        ids: list[Hashable] = []
        for job, run_at in zip(jobs, absolute, strict=True):
            if job.dedupe_key is not None:
                holder = store.holder(job.queue, job.dedupe_key, now)
                if holder is not None:
                    ids.append(holder)
                    continue
            row = _Row(
                id=store.next_id,
                queue=job.queue,
                job_type=job.job_type,
                payload=job.payload_json,
                priority=job.priority,
                status=JobStatus.PENDING,
                attempts=0,
                max_attempts=job.max_attempts,
                run_at=run_at if run_at is not None else now + _seconds_to_us(job.delay_seconds),
                created_at=now,
                dedupe_key=job.dedupe_key,
                dedupe_for=job.dedupe_for,
                headers=job.headers_json,
                timeout=job.timeout,
                concurrency_key=job.concurrency_key,
            )
            store.next_id += 1
            store.insert(row, now)
            ids.append(row.id)
        store.signal({job.queue for job in jobs})
        return ids

    # --- periodic jobs ----------------------------------------------------------------
    def _newest_fire(self, store: _Store, name: str) -> spi.FireRecord | None:
        fires = [f for (schedule, _), f in store.fires.items() if schedule == name]
        return max(fires, key=lambda f: (f.slot_at, f.slot), default=None)

    def declare_schedules(self, request: spi.DeclareSchedules) -> spi.ScheduleState:
        """Record the schedules by name and report the clock and their newest fires."""
        store = self._store()
        with store.lock:
            now = _clock().now()
            for spec in request.schedules:
                store.schedules[spec.name] = (spec, now, request.worker_id)
            newest = {spec.name: self._newest_fire(store, spec.name) for spec in request.schedules}
            clock = _to_datetime(now)
            assert clock is not None
            return spi.ScheduleState(clock, {name: fire for name, fire in newest.items() if fire is not None})

    def fire(self, request: spi.FireRequest) -> spi.FireResult:
        """Store the ``(schedule, slot)`` fire and its job under the store's lock, once, when due by the clock."""
        store = self._store()
        with store.lock:
            now = _clock().now()
            clock = _to_datetime(now)
            assert clock is not None
            if clock < request.slot_at:
                return spi.FireResult(fired=False, due=False, job_id=None, db_now=clock)
            key = (request.schedule, request.slot)
            if key in store.fires:
                return spi.FireResult(fired=False, due=True, job_id=None, db_now=clock)
            (job_id,) = self._insert(store, [request.job], now)
            store.fires[key] = spi.FireRecord(request.schedule, request.slot, request.slot_at, clock, job_id)
            return spi.FireResult(fired=True, due=True, job_id=job_id, db_now=clock)

    def schedules(self, query: spi.ScheduleQuery) -> list[spi.ScheduleRecord]:
        """The declared schedules with their newest fires, by name."""
        store = self._store()
        with store.lock:
            names = sorted(store.schedules if query.names is None else set(query.names) & set(store.schedules))
            records = []
            for name in names:
                spec, declared_at, declared_by = store.schedules[name]
                when = _to_datetime(declared_at)
                assert when is not None
                records.append(spi.ScheduleRecord(spec, when, declared_by, self._newest_fire(store, name)))
            return records

    def fire_history(self, query: spi.FireHistoryQuery) -> list[spi.FireRecord]:
        """The schedule's fires, newest slot first."""
        store = self._store()
        with store.lock:
            fires = [f for (schedule, _), f in store.fires.items() if schedule == query.schedule]
        fires.sort(key=lambda f: (f.slot_at, f.slot), reverse=True)
        return fires[: query.limit]

    # --- consuming ------------------------------------------------------------------
    def claim(self, request: spi.ClaimRequest) -> spi.ClaimResult:
        """Rescue expired leases, then take up to ``limit`` ready jobs in claim order; see :class:`Backend`."""
        store = self._store()
        with store.lock:
            now = _clock().now()
            dead = store.rescue_expired(now)
            rows: list[_Row] = []
            for name in dict.fromkeys(request.queues):
                if name in store.queue_rows and len(rows) < request.limit:
                    rows += store.take_controlled(request, name, request.limit - len(rows), now)
            plain = [name for name in request.queues if name not in store.queue_rows]
            pairs = store.pairs(plain, request.job_types)
            store.promote_due(pairs, now)
            rows += store.take_ready(pairs, request.limit - len(rows))
            rows.sort(key=lambda r: policy.claim_order_key(r.priority, r.run_at, r.id))
            expires = now + _seconds_to_us(request.lease)
            for row in rows:
                store.set_status(row, JobStatus.PROCESSING)
                row.attempts += 1
                row.max_attempts = policy.capped_max_attempts(row.max_attempts, request.max_attempts)
                row.lease_token = request.token
                row.locked_by = request.worker_id
                row.lease_expires_at = expires
                store.index_lease(row)
            return spi.ClaimResult([row.to_job() for row in rows], [row.to_job() for row in dead])

    @staticmethod
    def _held(store: _Store, job: Job, now: int) -> _Row | None:
        """The row if this claim still holds it (the policy's fence)."""
        row = store.rows.get(job.id) if isinstance(job.id, int) else None
        if row is None:
            return None
        held = policy.holds_claim(row.status, row.lease_token, row.lease_expires_at, job.lease_token, now)
        return row if held else None

    def settle(self, request: spi.SettleRequest) -> set[Hashable]:
        """Apply each settlement to the jobs their claims still hold, atomically; returns the lost ids."""
        if not request.settlements:
            return set()
        store = self._store()
        lost: set[Hashable] = set()
        woken: set[str] = set()
        with store.lock:
            now = _clock().now()
            for settlement in request.settlements:
                row = self._held(store, settlement.job, now)
                if row is None:
                    lost.add(settlement.job.id)
                    continue
                status = policy.settled_status(settlement.status, row.cancel_requested)
                row.locked_by = None
                row.lease_expires_at = None
                row.lease_token = request.token
                row.finished_at = now if settlement.finished or status == JobStatus.CANCELLED else None
                if settlement.refund_attempt:
                    row.attempts -= 1
                if settlement.result_json is not None:
                    row.result = settlement.result_json
                if settlement.last_error is not None:
                    row.last_error = settlement.last_error
                if settlement.errors_json is not None:
                    row.errors = policy.stamp_newest_entry(settlement.errors_json, policy.error_time(now))
                if settlement.hold_dedupe and row.dedupe_for is not None:
                    row.dedupe_held_until = now + _seconds_to_us(row.dedupe_for)
                if settlement.run_in is not None and status == JobStatus.PENDING:
                    row.run_at = now + _seconds_to_us(settlement.run_in)
                store.set_status(row, status)
                if status == JobStatus.PENDING:
                    store.index_pending(row, now)
                    woken.add(row.queue)
            if woken:
                store.signal(woken)
        return lost

    def extend(self, request: spi.ExtendRequest) -> set[Hashable]:
        """Push held leases out to now + ``lease``; returns the lost ids."""
        if not request.jobs:
            return set()
        store = self._store()
        lost: set[Hashable] = set()
        with store.lock:
            now = _clock().now()
            for job in request.jobs:
                row = self._held(store, job, now)
                if row is None:
                    lost.add(job.id)
                    continue
                row.lease_expires_at = now + _seconds_to_us(request.lease)
                store.index_lease(row)
        return lost

    # --- inspecting and managing ---------------------------------------------------
    @staticmethod
    def _row(store: _Store, job_id: Hashable) -> _Row | None:
        """The stored row an id (an int or its decimal text) names, or None; hold the store's lock."""
        key = int_job_id(job_id)
        return None if key is None else store.rows.get(key)

    def get(self, lookup: spi.JobLookup) -> Job | None:
        """The job with this id (an int or its decimal text), or None."""
        store = self._store()
        with store.lock:
            row = self._row(store, lookup.job_id)
            return None if row is None else row.to_job()

    def cancel(self, request: spi.CancelRequest) -> bool:
        """Cancel a pending job (due or scheduled), releasing its dedupe key, or flag a processing one.

        False if it is neither pending nor processing.
        """
        store = self._store()
        with store.lock:
            row = self._row(store, request.job_id)
            if row is not None and row.status == JobStatus.PROCESSING:
                row.cancel_requested = True
                return True
            if row is None or row.status != JobStatus.PENDING:
                return False
            row.finished_at = _clock().now()
            store.set_status(row, JobStatus.CANCELLED)
            return True

    def retry_now(self, request: spi.RetryNowRequest) -> bool:
        """A pending job not yet due becomes due now (re-indexed as ready) and its queue's waiters wake."""
        store = self._store()
        with store.lock:
            row = self._row(store, request.job_id)
            now = _clock().now()
            if row is None or row.status != JobStatus.PENDING or row.run_at <= now:
                return False
            row.run_at = now
            store.index_pending(row, now)
            store.signal({row.queue})
            return True

    def cancel_requests(self, check: spi.CancelCheck) -> set[Hashable]:
        """The jobs of ``check`` whose cancel was requested while they ran."""
        store = self._store()
        with store.lock:
            rows = [self._row(store, job.id) for job in check.jobs]
            return {row.id for row in rows if row is not None and row.cancel_requested}

    def stats(self, request: spi.StatsRequest) -> dict[str, dict[str, Any]]:
        """Counts per queue (and job type) and status plus ``scheduled``; queues without jobs are absent."""
        store = self._store()
        with store.lock:
            now = _clock().now()
            if request.by_type:
                return self._stats_by_type(store, request.queue, now)
            names = [request.queue] if request.queue is not None else list(store.counts)
            out: dict[str, dict[str, Any]] = {}
            for name in names:
                counts = store.counts.get(name)
                if counts is None:
                    continue
                rows = store.rows
                scheduled = sum(1 for row_id in store.pending.get(name, ()) if rows[row_id].run_at > now)
                out[name] = {**counts, "scheduled": scheduled}
            return out

    @staticmethod
    def _stats_by_type(store: _Store, queue: str | None, now: int) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for row in store.rows.values():
            if queue is not None and row.queue != queue:
                continue
            by_type = out.setdefault(row.queue, {})
            counts = by_type.setdefault(row.job_type, dict.fromkeys((*STATUSES, "scheduled"), 0))
            counts[row.status] += 1
            if row.status == JobStatus.PENDING and row.run_at > now:
                counts["scheduled"] += 1
        return out

    def count_ready(self, request: spi.ReadyCount) -> int:
        """Pending jobs of the queue (of the request's types) that are due now."""
        store = self._store()
        types = request.job_types
        with store.lock:
            now = _clock().now()
            rows = store.rows
            if store.paused(request.queue):
                return 0
            return sum(
                1
                for row_id in store.pending.get(request.queue, ())
                if rows[row_id].run_at <= now and (types is None or rows[row_id].job_type in types)
            )

    def seconds_until_due(self, probe: spi.DueProbe) -> float | None:
        """Seconds until a job of the probe's queues and types may become claimable: one due, or a lease expiring.

        Zero or negative when one is claimable already; None when no job is pending or processing.
        """
        store = self._store()
        with store.lock:
            now = _clock().now()
            queues = [name for name in probe.queues if not store.paused(name)]
            pairs = store.pairs(queues, probe.job_types)
            store.promote_due(pairs, now)
            moments: list[int] = []
            for pair in pairs:
                ready = store.top_ready(pair)
                if ready is not None:
                    return (ready[1] - now) / 1e6
                scheduled = store.top_scheduled(pair)
                if scheduled is not None:
                    moments.append(scheduled[0])
            for name in queues:
                expiry = store.next_lease_expiry(name, probe.job_types)
                if expiry is not None:
                    moments.append(expiry)
            return (min(moments) - now) / 1e6 if moments else None

    def db_now(self) -> datetime:
        """The process clock (see the module docstring)."""
        self._store()
        now = _to_datetime(_clock().now())
        assert now is not None
        return now

    def dead_jobs(self, query: spi.DeadJobsQuery) -> list[Job]:
        """Dead jobs, most recently finished first."""
        store = self._store()
        with store.lock:
            dead = [
                row
                for row in store.rows.values()
                if row.status == JobStatus.DEAD and (query.queue is None or row.queue == query.queue)
            ]
            dead.sort(key=lambda row: (row.finished_at or 0, row.id), reverse=True)
            return [row.to_job() for row in dead[: query.limit]]

    def replay(self, request: spi.ReplayRequest) -> ReplayResult:
        """Dead jobs back to pending with attempts 0, error history kept; held dedupe keys skip their job."""
        store = self._store()
        result = ReplayResult(0)
        queue = request.queue
        with store.lock:
            if request.ids is None:
                wanted = sorted(row.id for row in store.rows.values() if row.status == JobStatus.DEAD)
            else:
                wanted = sorted({key for key in map(int_job_id, request.ids) if key is not None})
        for start in range(0, len(wanted), _BATCH):
            with store.lock:
                now = _clock().now()
                revived: set[str] = set()
                for row_id in wanted[start : start + _BATCH]:
                    row = store.rows.get(row_id)
                    if row is None or row.status != JobStatus.DEAD or (queue is not None and row.queue != queue):
                        continue
                    holder = None if row.dedupe_key is None else store.holder(row.queue, row.dedupe_key, now)
                    if holder is not None and holder != row.id:
                        result.skipped[row.id] = f"dedupe key {row.dedupe_key!r} is held by another job"
                        continue
                    row.attempts = 0
                    row.cancel_requested = False
                    row.finished_at = None
                    row.run_at = now
                    row.locked_by = None
                    row.lease_expires_at = None
                    store.set_status(row, JobStatus.PENDING)
                    store.index_pending(row, now)
                    revived.add(row.queue)
                    result.replayed += 1
                if revived:
                    store.signal(revived)
        return result

    def purge(self, request: spi.PurgeRequest) -> int:
        """Delete jobs of the request's status finished before now - ``older_than``, a paced batch per lock hold.

        The jobs are walked in id order from a list of the ids taken at the
        start; a batch deletes up to its size and looks at no more than
        :data:`_PURGE_SCAN` times as many jobs, so no lock hold grows with the
        store.
        """
        store = self._store()
        status = request.status
        with store.lock:
            cutoff = _clock().now() - _seconds_to_us(request.older_than)
            ids = list(store.rows)
        position = deleted = 0
        pace = policy.PurgePace(request.batch_size, self.lock_poll_seconds, self.pause)
        for size in pace.sizes():
            if position >= len(ids):
                break
            with store.lock:
                began = time.monotonic()
                now = _clock().now()
                stop, gone = min(len(ids), position + size * _PURGE_SCAN), 0
                while position < stop and gone < size:
                    row = store.rows.get(ids[position])
                    position += 1
                    if (
                        row is not None and row.status == status
                        and row.finished_at is not None and row.finished_at < cutoff
                        and (row.dedupe_held_until is None or row.dedupe_held_until <= now)
                    ):  # fmt: skip
                        store.delete(row)
                        gone += 1
                pace.held(time.monotonic() - began)
            deleted += gone
        if status == JobStatus.DONE:
            self._purge_fires(store, cutoff)
        return deleted

    def _purge_fires(self, store: _Store, cutoff: int) -> None:
        """Fires older than ``cutoff``, each schedule's newest kept."""
        moment = _to_datetime(cutoff)
        with store.lock:
            newest = {self._newest_fire(store, name) for name, _ in store.fires}
            for key, fire in list(store.fires.items()):
                if fire not in newest and moment is not None and fire.fired_at < moment:
                    del store.fires[key]

    # --- moving jobs -----------------------------------------------------------------
    def _page_cursor(self, after: Hashable | None) -> int | None:
        """The integer id a page continues after (None: from the first); InvalidArgument for a foreign id."""
        if after is None:
            return None
        key = int_job_id(after)
        if key is None:
            raise InvalidArgument(f"{after!r} is not a job id of {self.describe()}")
        return key

    def _page_rows(
        self,
        statuses: Iterable[str] | None,
        queue: str | None,
        job_type: str | None,
        after: Hashable | None,
        limit: int,
        *,
        newest_first: bool,
    ) -> list[_Row]:
        """One keyset page of rows in id order (descending when ``newest_first``), what export and listing share.

        The caller holds the store's lock and turns the rows into what it returns.
        """
        store = self._store()
        key = self._page_cursor(after)
        wanted = None if statuses is None else frozenset(statuses)
        ids = list(store.rows)  # insertion order is id order: ids only grow
        if newest_first:
            span = reversed(ids[: len(ids) if key is None else bisect.bisect_left(ids, key)])
        else:
            span = iter(ids[0 if key is None else bisect.bisect_right(ids, key) :])
        rows: list[_Row] = []
        for row_id in span:
            row = store.rows[row_id]
            if (
                (wanted is None or row.status in wanted)
                and (queue is None or row.queue == queue)
                and (job_type is None or row.job_type == job_type)
            ):
                rows.append(row)
                if len(rows) >= limit:
                    break
        return rows

    def export_jobs(self, query: spi.ExportQuery) -> list[JobRecord]:
        """One page of jobs with every stored field, in id order after ``query.after``."""
        store = self._store()
        statuses = set(query.statuses) - {JobStatus.PROCESSING}
        with store.lock:
            rows = self._page_rows(statuses, query.queue, None, query.after, query.limit, newest_first=False)
            return [row.to_record() for row in rows]

    def list_jobs(self, query: spi.ListQuery) -> list[Job]:
        """One page of jobs, newest first, after ``query.after``."""
        store = self._store()
        with store.lock:
            rows = self._page_rows(
                query.statuses, query.queue, query.job_type, query.after, query.limit, newest_first=True
            )
            return [row.to_job() for row in rows]

    def throughput(self, query: spi.ThroughputQuery) -> spi.Throughput:
        """Done and dead jobs per slice of the last window, counted under the store's lock."""
        store = self._store()
        width_us = query.window * 1_000_000 / query.buckets
        with store.lock:
            now = _clock().now()
            result = spi.Throughput(_to_datetime(now) or datetime.now(UTC), query.window / query.buckets)
            for row in store.rows.values():
                if row.status not in (JobStatus.DONE, JobStatus.DEAD) or row.finished_at is None:
                    continue
                if query.queue is not None and row.queue != query.queue:
                    continue
                age = int((now - row.finished_at) // width_us)
                if 0 <= age < query.buckets:
                    slices = result.counts.setdefault(row.queue, {}).setdefault(row.status, [0] * query.buckets)
                    slices[query.buckets - 1 - age] += 1
            return result

    def import_jobs(self, batch: spi.ImportBatch) -> spi.ImportResult:
        """Store the records atomically under the store's lock, once per ``import_key``."""
        for record in batch.records:
            if record.import_key is None:
                raise InvalidArgument("every imported record needs an import_key")
            if record.status not in STATUSES or record.status == JobStatus.PROCESSING:
                raise InvalidArgument(f"cannot import a job with status {record.status!r}")
        store = self._store()
        result = spi.ImportResult([None] * len(batch.records))
        with store.lock:
            now = _clock().now()
            woken: set[str] = set()
            for i, record in enumerate(batch.records):
                assert record.import_key is not None
                known = store.import_keys.get(record.import_key)
                if known is not None:
                    result.ids[i] = known
                    result.existing.add(i)
                    continue
                held = _to_us_or_none(record.dedupe_held_until)
                holds = record.status in _LIVE or (held is not None and held > now)
                key = record.dedupe_key
                if key is not None and holds and store.holder(record.queue, key, now) is not None:
                    result.skipped[i] = f"its dedupe key {key!r} is held here by another job"
                    continue
                row = _Row(
                    id=store.next_id, queue=record.queue, job_type=record.job_type, payload=record.payload_json,
                    priority=record.priority, status=record.status, attempts=record.attempts,
                    max_attempts=record.max_attempts, run_at=_to_us(record.run_at),
                    created_at=_to_us(record.created_at), dedupe_key=record.dedupe_key,
                    finished_at=_to_us_or_none(record.finished_at), lease_token=record.lease_token,
                    last_error=record.last_error, errors=record.errors_json, result=record.result_json,
                    dedupe_for=record.dedupe_for, dedupe_held_until=held if holds else None,
                    import_key=record.import_key, headers=record.headers_json, timeout=record.timeout,
                    concurrency_key=record.concurrency_key,
                )  # fmt: skip
                store.next_id += 1
                store.insert(row, now)
                result.ids[i] = row.id
                if row.status == JobStatus.PENDING:
                    woken.add(row.queue)
            if woken:
                store.signal(woken)
        return result

    def delete_jobs(self, request: spi.DeleteRequest) -> set[Hashable]:
        """Delete each record's job if its status and lease token are still the record's."""
        store = self._store()
        deleted: set[Hashable] = set()
        with store.lock:
            for record in request.records:
                row = self._row(store, record.id)
                if row is None or (row.status, row.lease_token) != (record.status, record.lease_token):
                    continue
                if row.status == JobStatus.PROCESSING:
                    continue
                store.delete(row)
                deleted.add(row.id)
        return deleted

    # --- runtime control --------------------------------------------------------------
    def control_queue(self, request: spi.QueueControl) -> QueueSettings:
        """Store the queue's settings under the store's lock (dropped when nothing is left); wakes its workers."""
        store = self._store()
        with store.lock:
            now = _clock().now()
            held = store.queue_rows.get(request.queue)
            current = held.settings if held is not None else QueueSettings(request.queue)
            limits = current.limits if request.limits is None else request.limits
            paused = current.paused if request.paused is None else request.paused
            wanted = QueueSettings(request.queue, limits, paused)
            if not wanted.controlled:
                store.queue_rows.pop(request.queue, None)
            elif held is None or request.limits is not None:
                store.queue_rows[request.queue] = _QueueRow(wanted, 0.0, now)
            else:
                held.settings = wanted
            if wanted != current:
                store.signal([request.queue])
            return wanted

    def queue_settings(self, query: spi.QueueSettingsQuery) -> list[QueueSettings]:
        """The settings of the queried queues that have any, by name."""
        store = self._store()
        with store.lock:
            names = sorted(store.queue_rows if query.queues is None else set(query.queues) & set(store.queue_rows))
            return [store.queue_rows[name].settings for name in names]

    # --- waiting --------------------------------------------------------------------
    def wakeup_source(self, request: spi.WakeupRequest) -> MemoryWakeups:
        """A condition-variable wake-up source for workers of this process."""
        return MemoryWakeups(self, request.queues)
