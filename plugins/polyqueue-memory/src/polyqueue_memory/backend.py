"""The ``memory://`` backend: the whole polyqueue backend interface in Python dicts and heaps, in one process.

It is a real backend, not a test double: it keeps the same promises as the
SQL backends (claim order, exact leases, fencing, rescue of expired leases,
live-job dedupe, delayed jobs, replay, batched purge) and passes the
conformance suite. What it cannot do it does not claim: jobs live only as
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

import functools
import heapq
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy.engine import URL

from polyqueue import json_codec
from polyqueue.backends.base import Backend, BackendOptions, Capability
from polyqueue.errors import ConfigurationError, SchemaMissing
from polyqueue.job import Job, JobStatus, NewJob, ReplayResult

__all__ = ["MemoryBackend", "MemoryWakeups"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: How many jobs one replay or purge step handles while holding the store's lock.
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
        )


_STATUS_KEYS = (JobStatus.PENDING, JobStatus.PROCESSING, JobStatus.DONE, JobStatus.DEAD, JobStatus.CANCELLED)
_LIVE = frozenset({JobStatus.PENDING, JobStatus.PROCESSING})


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
        self.ready: dict[str, list[tuple[int, int, int, int]]] = {}  # queue -> (-priority, run_at, id, entry)
        self.scheduled: dict[str, list[tuple[int, int, int]]] = {}  # queue -> (run_at, id, entry)
        self.leases: dict[str, list[tuple[int, int, int]]] = {}  # queue -> (lease_expires_at, id, lease_token)
        self.live_keys: dict[tuple[str, str], int] = {}
        self.pending: dict[str, set[int]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.generation: dict[str, int] = {}
        self.dropped = False

    # --- bookkeeping ----------------------------------------------------------
    def set_status(self, row: _Row, status: str) -> None:
        """Move ``row`` to ``status``, keeping the counts, the pending sets and the live dedupe keys right."""
        old = row.status
        counts = self.counts.setdefault(row.queue, dict.fromkeys(_STATUS_KEYS, 0))
        counts[old] -= 1
        counts[status] += 1
        row.status = status
        if old == JobStatus.PENDING:
            self.pending[row.queue].discard(row.id)
        if status == JobStatus.PENDING:
            self.pending.setdefault(row.queue, set()).add(row.id)
        if row.dedupe_key is not None and (old in _LIVE) != (status in _LIVE):
            key = (row.queue, row.dedupe_key)
            if status in _LIVE:
                self.live_keys[key] = row.id
            elif self.live_keys.get(key) == row.id:
                del self.live_keys[key]

    def insert(self, row: _Row, now: int) -> None:
        self.rows[row.id] = row
        counts = self.counts.setdefault(row.queue, dict.fromkeys(_STATUS_KEYS, 0))
        counts[row.status] += 1
        self.pending.setdefault(row.queue, set()).add(row.id)
        if row.dedupe_key is not None:
            self.live_keys[(row.queue, row.dedupe_key)] = row.id
        self.index_pending(row, now)

    def delete(self, row: _Row) -> None:
        del self.rows[row.id]
        self.counts[row.queue][row.status] -= 1
        if not any(self.counts[row.queue].values()):
            del self.counts[row.queue]

    def index_pending(self, row: _Row, now: int) -> None:
        """Make a pending row findable: in the ready heap when due, else in the scheduled heap."""
        row.entry += 1
        if row.run_at <= now:
            heapq.heappush(self.ready.setdefault(row.queue, []), (-row.priority, row.run_at, row.id, row.entry))
        else:
            heapq.heappush(self.scheduled.setdefault(row.queue, []), (row.run_at, row.id, row.entry))

    def index_lease(self, row: _Row) -> None:
        assert row.lease_expires_at is not None
        heapq.heappush(self.leases.setdefault(row.queue, []), (row.lease_expires_at, row.id, row.lease_token))

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

    # --- the claim path -------------------------------------------------------------
    def rescue_expired(self, now: int) -> None:
        """Expired leases of every queue: pending again, or dead when the attempt was the last (as in SQL)."""
        for heap in self.leases.values():
            while heap and heap[0][0] <= now:
                expires, row_id, token = heapq.heappop(heap)
                row = self._held_lease(row_id, token, expires)
                if row is not None:
                    self._rescue(row, now)

    def _rescue(self, row: _Row, now: int) -> None:
        row.last_error = f"lease expired while held by {row.locked_by or '?'}"
        row.locked_by = None
        row.lease_expires_at = None
        if row.attempts >= row.max_attempts:
            row.finished_at = now
            self.set_status(row, JobStatus.DEAD)
        else:
            self.set_status(row, JobStatus.PENDING)
            self.index_pending(row, now)

    def promote_due(self, queues: Sequence[str], now: int) -> None:
        """Move scheduled rows that are due now into their queue's ready heap."""
        for name in queues:
            heap = self.scheduled.get(name)
            while heap and heap[0][0] <= now:
                _run_at, row_id, entry = heapq.heappop(heap)
                row = self._indexed(row_id, entry)
                if row is not None:
                    self.index_pending(row, now)

    def top_ready(self, name: str) -> tuple[int, int, int, int] | None:
        """The first valid ready entry of a queue, dropping stale ones on the way."""
        heap = self.ready.get(name)
        while heap:
            if self._indexed(heap[0][2], heap[0][3]) is not None:
                return heap[0]
            heapq.heappop(heap)
        return None

    def top_scheduled(self, name: str) -> tuple[int, int, int] | None:
        heap = self.scheduled.get(name)
        while heap:
            if self._indexed(heap[0][1], heap[0][2]) is not None:
                return heap[0]
            heapq.heappop(heap)
        return None

    def take_ready(self, queues: Sequence[str], limit: int) -> list[_Row]:
        """Pop up to ``limit`` ready rows across ``queues``: priority, then run_at, then id."""
        taken: list[_Row] = []
        while len(taken) < limit:
            best: tuple[tuple[int, int, int, int], str] | None = None
            for name in queues:
                top = self.top_ready(name)
                if top is not None and (best is None or top < best[0]):
                    best = (top, name)
            if best is None:
                break
            heapq.heappop(self.ready[best[1]])
            taken.append(self.rows[best[0][2]])
        return taken

    def next_lease_expiry(self, name: str) -> int | None:
        """When the earliest live lease of a queue expires, dropping stale entries on the way."""
        heap = self.leases.get(name)
        while heap and self._held_lease(heap[0][1], heap[0][2], heap[0][0]) is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None


#: Every store of the process, by (URL scheme, name, table_prefix). Guarded by _REGISTRY_LOCK.
_STORES: dict[tuple[str, str, str], _Store] = {}
_REGISTRY_LOCK = threading.Lock()


class MemoryWakeups:
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
        store = backend._store_or_none()
        self._seen = self._generations(store) if store is not None else None

    def _generations(self, store: _Store) -> tuple[int, ...]:
        return tuple(store.generation.get(name, 0) for name in self._queues)

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if woken because work may be ready."""
        deadline = time.monotonic() + max(0.0, timeout)
        store = self._backend._store_or_none()
        if store is None:
            self._closed.wait(timeout)
            return False
        with store.changed:
            while not self._closed.is_set() and not store.dropped:
                seen = self._generations(store)
                if seen != self._seen:
                    self._seen = seen
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                store.changed.wait(remaining)
        return False

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
    capabilities = frozenset({Capability.DEDUPE, Capability.PRIORITIES, Capability.DELAYED, Capability.NOTIFY})
    #: Conformance tests this backend is known to fail, ``{"TestArea::test_name": "reason"}``: none.
    known_failures: ClassVar[dict[str, str]] = {}
    #: Where ``polyqueue compat`` runs the conformance suite for this backend (it needs no server).
    conformance_url: ClassVar[str] = "memory://conformance"

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
    def enqueue_many(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[Hashable]:
        """Store the batch atomically under the store's lock; live duplicates return the live job's id."""
        if connection is not None:
            raise ConfigurationError("the memory backend has no transactions to enqueue into (connection=)")
        if not jobs:
            return []
        store = self._store()
        absolute = [None if job.run_at is None else _to_us(job.run_at) for job in jobs]
        ids: list[Hashable] = []
        with store.lock:
            now = _clock().now()
            for job, run_at in zip(jobs, absolute, strict=True):
                if job.dedupe_key is not None:
                    live = store.live_keys.get((job.queue, job.dedupe_key))
                    if live is not None:
                        ids.append(live)
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
                )
                store.next_id += 1
                store.insert(row, now)
                ids.append(row.id)
            store.signal({job.queue for job in jobs})
        return ids

    # --- consuming ------------------------------------------------------------------
    def claim(self, queues: Sequence[str], limit: int, lease: float, worker_id: str) -> list[Job]:
        """Rescue expired leases, then take up to ``limit`` ready jobs in claim order; see :class:`Backend`."""
        store = self._store()
        with store.lock:
            now = _clock().now()
            store.rescue_expired(now)
            store.promote_due(queues, now)
            rows = store.take_ready(queues, limit)
            expires = now + _seconds_to_us(lease)
            for row in rows:
                store.set_status(row, JobStatus.PROCESSING)
                row.attempts += 1
                row.lease_token += 1
                row.locked_by = worker_id
                row.lease_expires_at = expires
                store.index_lease(row)
            return [row.to_job() for row in rows]

    @staticmethod
    def _held(store: _Store, job: Job, now: int) -> _Row | None:
        """The row if this claim still holds it: same lease token, processing, lease not expired."""
        row = store.rows.get(job.id) if isinstance(job.id, int) else None
        if row is None or row.status != JobStatus.PROCESSING or row.lease_token != job.lease_token:
            return None
        if row.lease_expires_at is None or row.lease_expires_at <= now:
            return None
        return row

    def complete_many(self, jobs: Sequence[tuple[Job, str | None]]) -> set[Hashable]:
        """Mark held jobs done with their results, atomically for the batch; returns the lost ids."""
        if not jobs:
            return set()
        store = self._store()
        lost: set[Hashable] = set()
        with store.lock:
            now = _clock().now()
            for job, result in jobs:
                row = self._held(store, job, now)
                if row is None:
                    lost.add(job.id)
                    continue
                row.result = result
                row.finished_at = now
                row.locked_by = None
                row.lease_expires_at = None
                store.set_status(row, JobStatus.DONE)
        return lost

    def fail(self, job: Job, *, error: str, errors_json: str, retry_in: float | None) -> bool:
        """Record a failed attempt: dead when ``retry_in`` is None, else pending at now + ``retry_in``."""
        store = self._store()
        with store.lock:
            now = _clock().now()
            row = self._held(store, job, now)
            if row is None:
                return False
            row.last_error = error
            row.errors = errors_json
            row.locked_by = None
            row.lease_expires_at = None
            if retry_in is None:
                row.finished_at = now
                store.set_status(row, JobStatus.DEAD)
            else:
                row.run_at = now + _seconds_to_us(retry_in)
                store.set_status(row, JobStatus.PENDING)
                store.index_pending(row, now)
                store.signal([row.queue])
            return True

    def extend_many(self, jobs: Sequence[Job], lease: float) -> set[Hashable]:
        """Push held leases out to now + ``lease``; returns the lost ids."""
        if not jobs:
            return set()
        store = self._store()
        lost: set[Hashable] = set()
        with store.lock:
            now = _clock().now()
            for job in jobs:
                row = self._held(store, job, now)
                if row is None:
                    lost.add(job.id)
                    continue
                row.lease_expires_at = now + _seconds_to_us(lease)
                store.index_lease(row)
        return lost

    def release_many(self, jobs: Sequence[Job]) -> set[Hashable]:
        """Give held jobs back unrun: pending, attempt not charged; returns the lost ids."""
        if not jobs:
            return set()
        store = self._store()
        lost: set[Hashable] = set()
        with store.lock:
            now = _clock().now()
            for job in jobs:
                row = self._held(store, job, now)
                if row is None:
                    lost.add(job.id)
                    continue
                row.attempts -= 1
                row.locked_by = None
                row.lease_expires_at = None
                store.set_status(row, JobStatus.PENDING)
                store.index_pending(row, now)
            store.signal({job.queue for job in jobs})
        return lost

    # --- inspecting and managing ---------------------------------------------------
    @staticmethod
    def _as_id(job_id: Hashable) -> int | None:
        if isinstance(job_id, bool):
            return None
        if isinstance(job_id, int):
            return job_id
        if isinstance(job_id, str) and job_id.strip().isdigit():
            return int(job_id)
        return None

    def get(self, job_id: Hashable) -> Job | None:
        """The job with this id (an int or its decimal text), or None."""
        key = self._as_id(job_id)
        store = self._store()
        if key is None:
            return None
        with store.lock:
            row = store.rows.get(key)
            return None if row is None else row.to_job()

    def cancel(self, job_id: Hashable) -> bool:
        """Cancel a pending job (due or scheduled), releasing its dedupe key; False if it is not pending."""
        key = self._as_id(job_id)
        store = self._store()
        if key is None:
            return False
        with store.lock:
            row = store.rows.get(key)
            if row is None or row.status != JobStatus.PENDING:
                return False
            row.finished_at = _clock().now()
            store.set_status(row, JobStatus.CANCELLED)
            return True

    def stats(self, queue: str | None = None) -> dict[str, dict[str, int]]:
        """Counts per queue and status plus ``scheduled``; queues without jobs are absent."""
        store = self._store()
        with store.lock:
            now = _clock().now()
            names = [queue] if queue is not None else list(store.counts)
            out: dict[str, dict[str, int]] = {}
            for name in names:
                counts = store.counts.get(name)
                if counts is None:
                    continue
                rows = store.rows
                scheduled = sum(1 for row_id in store.pending.get(name, ()) if rows[row_id].run_at > now)
                out[name] = {**counts, "scheduled": scheduled}
            return out

    def count_ready(self, queue: str) -> int:
        """Pending jobs of ``queue`` that are due now."""
        store = self._store()
        with store.lock:
            now = _clock().now()
            rows = store.rows
            return sum(1 for row_id in store.pending.get(queue, ()) if rows[row_id].run_at <= now)

    def seconds_until_due(self, queues: Sequence[str]) -> float | None:
        """Seconds until a job of ``queues`` may become claimable: a pending job due, or a lease expiring.

        Zero or negative when one is claimable already; None when no job is pending or processing.
        """
        store = self._store()
        with store.lock:
            now = _clock().now()
            store.promote_due(queues, now)
            moments: list[int] = []
            for name in queues:
                ready = store.top_ready(name)
                if ready is not None:
                    return (ready[1] - now) / 1e6
                scheduled = store.top_scheduled(name)
                if scheduled is not None:
                    moments.append(scheduled[0])
                expiry = store.next_lease_expiry(name)
                if expiry is not None:
                    moments.append(expiry)
            return (min(moments) - now) / 1e6 if moments else None

    def db_now(self) -> datetime:
        """The process clock (see the module docstring)."""
        self._store()
        now = _to_datetime(_clock().now())
        assert now is not None
        return now

    def dead_jobs(self, queue: str | None, limit: int) -> list[Job]:
        """Dead jobs, most recently finished first."""
        store = self._store()
        with store.lock:
            dead = [
                row
                for row in store.rows.values()
                if row.status == JobStatus.DEAD and (queue is None or row.queue == queue)
            ]
            dead.sort(key=lambda row: (row.finished_at or 0, row.id), reverse=True)
            return [row.to_job() for row in dead[:limit]]

    def replay(self, ids: Iterable[Hashable] | None, queue: str | None) -> ReplayResult:
        """Dead jobs back to pending with attempts 0, error history kept; held dedupe keys skip their job."""
        store = self._store()
        result = ReplayResult(0)
        with store.lock:
            if ids is None:
                wanted = sorted(row.id for row in store.rows.values() if row.status == JobStatus.DEAD)
            else:
                wanted = sorted({key for key in map(self._as_id, ids) if key is not None})
        for start in range(0, len(wanted), _BATCH):
            with store.lock:
                now = _clock().now()
                revived: set[str] = set()
                for row_id in wanted[start : start + _BATCH]:
                    row = store.rows.get(row_id)
                    if row is None or row.status != JobStatus.DEAD or (queue is not None and row.queue != queue):
                        continue
                    if row.dedupe_key is not None and (row.queue, row.dedupe_key) in store.live_keys:
                        result.skipped[row.id] = f"dedupe key {row.dedupe_key!r} is held by a live job"
                        continue
                    row.attempts = 0
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

    def purge(self, status: str, older_than: float, batch_size: int) -> int:
        """Delete ``status`` jobs finished before now - ``older_than``, ``batch_size`` per lock hold."""
        store = self._store()
        with store.lock:
            cutoff = _clock().now() - _seconds_to_us(older_than)
            doomed = [
                row.id
                for row in store.rows.values()
                if row.status == status and row.finished_at is not None and row.finished_at < cutoff
            ]
        deleted = 0
        for start in range(0, len(doomed), batch_size):
            with store.lock:
                for row_id in doomed[start : start + batch_size]:
                    row = store.rows.get(row_id)
                    if row is not None and row.status == status:
                        store.delete(row)
                        deleted += 1
        return deleted

    # --- waiting --------------------------------------------------------------------
    def wakeup_source(self, queues: Sequence[str]) -> MemoryWakeups:
        """A condition-variable wake-up source for workers of this process."""
        return MemoryWakeups(self, queues)
