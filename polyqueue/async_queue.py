"""The AsyncQueue: every :class:`~polyqueue.Queue` method as a coroutine, with the same checks, errors and semantics.

Nothing of the Queue is written again here. An AsyncQueue holds a Queue and
runs *that Queue's own methods* -- input checks, the policy, the consumer
session, the lifecycle hooks, the backend's SQL -- without blocking the event
loop, in one of two ways:

* **natively**, when the backend has an asyncio variant
  (:meth:`~polyqueue.backends.base.Backend.asyncio_variant`: PostgreSQL on
  psycopg's asyncio driver and MySQL on asyncmy by default; SQLite on
  aiosqlite and MySQL on aiomysql when ``async_driver=`` names them). The method runs in a greenlet
  on the loop, over a Queue bound to the variant, and every statement awaits
  the driver (SQLAlchemy's asyncio bridge, :mod:`polyqueue.greenlets`);
* **bridged** otherwise: the method runs on one of the AsyncQueue's threads
  and the coroutine awaits it. This is the default for SQLite, where it
  measured faster than aiosqlite (docs/asyncio.md), and the only way for a
  backend without an asyncio variant (the memory plugin, any queue with the
  Redis depth cache).

A transactional enqueue runs where the caller's connection lives: on a
SQLAlchemy ``AsyncConnection`` through its own ``run_sync`` (a greenlet on the
loop, whatever its driver), on a psycopg ``AsyncConnection`` natively, and on
a synchronous connection in a thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import greenlets
from .backends.base import Backend, Capability, FireRecord, ScheduleRecord, Throughput
from .errors import ConfigurationError, InvalidArgument, PolyqueueError
from .job import Job, QueueLimits, QueueSettings, ReplayResult
from .queue import Queue, connect
from .validation import check_int

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["DEFAULT_THREADS", "AsyncQueue", "connect_async"]

T = TypeVar("T")

#: Threads an AsyncQueue runs bridged calls on (as many as a SQL backend's pool keeps open).
DEFAULT_THREADS = 8


def connect_async(
    url: str | URL | None = None, *, plugins: Iterable[Any] = (), threads: int = DEFAULT_THREADS, **options: Any
) -> AsyncQueue:
    """Open an :class:`AsyncQueue` on the database named by ``url``: :func:`~polyqueue.connect`'s URL and options.

    The URL may be the application's own asyncio URL
    (``postgresql+psycopg://``, ``sqlite+aiosqlite://``,
    ``mysql+asyncmy://``). How calls run is the backend's measured default
    (PostgreSQL: psycopg's asyncio driver; MySQL: asyncmy; SQLite: the thread
    bridge); the option ``async_driver`` (SQL backends) chooses another: an
    asyncio driver name (``"psycopg_async"``, ``"asyncmy"``, ``"aiomysql"``,
    ``"aiosqlite"``) or ``"threads"``. ``threads`` is how many threads
    bridged calls may use at once. Nothing connects until the first
    call. Raises :class:`ConfigurationError` as ``connect`` does, and when the
    asyncio driver or ``greenlet`` is not installed.
    """
    queue = connect(url, plugins=plugins, **options)
    try:
        return AsyncQueue(queue, threads=threads)
    except BaseException:
        queue.close()
        raise


class AsyncQueue:
    """A job queue for asyncio code: :class:`~polyqueue.Queue`'s methods as coroutines. Share one per process.

    Create with :func:`connect_async`, or wrap an open Queue: ``AsyncQueue(queue)``
    (it then owns the Queue: :meth:`close` closes it). Every method validates
    its input and raises the same :class:`~polyqueue.errors.PolyqueueError`
    subclasses as the Queue's, storing nothing when the input is wrong.

    :attr:`sync` is the synchronous Queue on the same store; a
    :class:`~polyqueue.Worker` given an AsyncQueue runs on it.
    """

    def __init__(self, queue: Queue, *, threads: int = DEFAULT_THREADS) -> None:
        if not isinstance(queue, Queue):
            raise InvalidArgument("AsyncQueue wraps a polyqueue.Queue from polyqueue.connect()")
        self._threads = check_int(threads, "threads", 1, 1024)
        #: The synchronous Queue on the same store (bridged calls, workers, synchronous connections).
        self.sync = queue
        variant = queue.backend.asyncio_variant()
        if variant is not None and not greenlets.available():
            variant.close()
            raise ConfigurationError(
                f"{queue.backend.name} runs asyncio natively through SQLAlchemy's asyncio extension, which needs "
                "greenlet: pip install 'polyqueue[asyncio]' (or pass async_driver='threads')"
            )
        self._native: Queue | None = None if variant is None else queue.rebound(variant)
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        how = "native" if self.native else "threads"
        return f"<polyqueue.AsyncQueue {self.sync.backend.describe()} ({how})>"

    # --- how calls run -----------------------------------------------------------------
    @property
    def native(self) -> bool:
        """True when calls run on the backend's asyncio driver, False when they are bridged to threads."""
        return self._native is not None

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``method(queue, *args, **kwargs)`` on the native Queue in a greenlet, else on the Queue in a thread."""
        if self._native is not None:
            self._check_open()
            return await greenlets.spawn(method, self._native, *args, **kwargs)
        return await self._in_thread(method, self.sync, *args, **kwargs)

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on one of this queue's threads, in a copy of the caller's context."""
        self._check_open()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="polyqueue-async")
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _check_open(self) -> None:
        if self._closed:
            raise PolyqueueError("this AsyncQueue is closed")

    async def _with_connection(self, method: Callable[..., T], connection: Any, *args: Any, **kwargs: Any) -> T:
        """Run ``method`` where ``connection`` (the caller's transaction, or None) can be used."""
        if connection is None:
            return await self._call(method, *args, **kwargs)
        from sqlalchemy.ext.asyncio import AsyncConnection

        self._check_open()
        queue = self._native or self.sync
        if isinstance(connection, AsyncConnection):
            # SQLAlchemy's own way to run synchronous code on an AsyncConnection: any driver, any backend.
            return await connection.run_sync(lambda conn: method(queue, *args, connection=conn, **kwargs))
        if inspect.iscoroutinefunction(getattr(connection, "commit", None)):
            # A driver's asyncio connection (psycopg's AsyncConnection) lives on the loop: only the asyncio
            # variant can use it, and a backend without one refuses it (after the same input checks).
            return await greenlets.spawn(method, queue, *args, connection=connection, **kwargs)
        return await self._in_thread(method, self.sync, *args, connection=connection, **kwargs)

    # --- lifecycle ---------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """The synchronous Queue's backend (its name, capabilities and description)."""
        return self.sync.backend

    @property
    def capabilities(self) -> frozenset[str]:
        """The backend's optional features (see :class:`~polyqueue.backends.base.Capability`)."""
        return self.sync.capabilities

    @property
    def options(self) -> dict[str, Any]:
        """The options the queue was opened with."""
        return self.sync.options

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload (and result) accepted, as JSON bytes."""
        return self.sync.max_payload_bytes

    @property
    def max_attempts(self) -> int:
        """The attempt limit of jobs enqueued without their own."""
        return self.sync.max_attempts

    def connect_url(self) -> str:
        """The URL this queue was opened with, password included: for starting worker processes, never for logs."""
        return self.sync.connect_url()

    def require_capability(self, capability: Capability, what: str) -> None:
        """Raise :class:`ConfigurationError` naming ``what`` unless the backend has ``capability``."""
        self.sync.require_capability(capability, what)

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number ``attempts``: exponential with jitter, capped at ``backoff_max``."""
        return self.sync.backoff(attempts)

    async def migrate(self) -> None:
        """Create or upgrade the schema. Idempotent and safe when processes race."""
        await self._call(Queue.migrate)

    async def close(self) -> None:
        """Release connections and threads, of the asyncio driver and of :attr:`sync`. Idempotent."""
        if self._closed:
            return
        try:
            if self._native is not None:
                await greenlets.spawn(self._native.close)
        finally:
            executor = self._executor or ThreadPoolExecutor(1, thread_name_prefix="polyqueue-async")
            try:
                await asyncio.get_running_loop().run_in_executor(executor, self.sync.close)
            finally:
                self._closed = True
                executor.shutdown(wait=False)

    async def __aenter__(self) -> AsyncQueue:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- producing -----------------------------------------------------------------------
    async def enqueue(
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
        """Store one job and return its id; see :meth:`Queue.enqueue <polyqueue.Queue.enqueue>`.

        ``connection`` is the caller's open transaction: a SQLAlchemy
        ``AsyncConnection`` (any SQL backend), a psycopg ``AsyncConnection``
        (PostgreSQL), or a synchronous connection the Queue accepts.
        """
        options = {"queue": queue, "priority": priority, "delay": delay, "run_at": run_at}
        options.update(max_attempts=max_attempts, dedupe_key=dedupe_key, dedupe_for=dedupe_for)
        options.update(headers=headers, timeout=timeout, concurrency_key=concurrency_key)
        return await self._with_connection(Queue.enqueue, connection, job_type, payload, **options)

    async def enqueue_many(self, jobs: Iterable[Mapping[str, Any]], *, connection: Any = None) -> list[Hashable]:
        """Store many jobs atomically, one round trip per batch; see :meth:`Queue.enqueue_many`.

        The jobs are read (and checked) before anything is stored.
        """
        if not isinstance(jobs, (str, bytes, Mapping)):
            jobs = list(jobs)  # a generator is read here, on the caller's side, not in a thread
        return await self._with_connection(Queue.enqueue_many, connection, jobs)

    # --- consuming -----------------------------------------------------------------------
    async def claim(
        self,
        queues: str | Sequence[str] = "default",
        *,
        limit: int = 1,
        lease: float = 30.0,
        worker_id: str | None = None,
        job_types: Iterable[str] | None = None,
    ) -> list[Job]:
        """Atomically take up to ``limit`` ready jobs; see :meth:`Queue.claim`. ``[]`` when nothing is ready."""
        return await self._call(Queue.claim, queues, limit=limit, lease=lease, worker_id=worker_id, job_types=job_types)

    async def complete(self, job: Job, result: Any = None) -> None:
        """Mark a claimed job done with ``result`` (JSON). Raises :class:`LeaseLost` if no longer held."""
        await self._call(Queue.complete, job, result)

    async def complete_many(self, jobs: Sequence[tuple[Job, str | None]]) -> None:
        """Mark many claimed jobs done in one statement; see :meth:`Queue.complete_many`."""
        await self._call(Queue.complete_many, jobs)

    async def fail(
        self,
        job: Job,
        error: BaseException | str | None,
        *,
        retry_in: float | timedelta | None = None,
        dead: bool = False,
    ) -> None:
        """Record a failed attempt as the policy decides (retry after back-off, or dead); see :meth:`Queue.fail`."""
        await self._call(Queue.fail, job, error, retry_in=retry_in, dead=dead)

    async def extend(self, job: Job, lease: float) -> None:
        """Heartbeat: push the lease out to DB-now + ``lease``. Raises :class:`LeaseLost`."""
        await self._call(Queue.extend, job, lease)

    async def release(self, job: Job) -> None:
        """Give a claimed job back unrun; the attempt is not charged. Raises :class:`LeaseLost`."""
        await self._call(Queue.release, job)

    # --- inspecting and managing -----------------------------------------------------------
    async def get(self, job_id: Hashable) -> Job | None:
        """The job with this id, or None."""
        return await self._call(Queue.get, job_id)

    async def require(self, job_id: Hashable) -> Job:
        """Like :meth:`get` but raises :class:`JobNotFound`."""
        return await self._call(Queue.require, job_id)

    async def cancel(self, job_id: Hashable) -> bool:
        """Cancel a pending job, or ask a processing one to stop; see :meth:`Queue.cancel <polyqueue.Queue.cancel>`."""
        return await self._call(Queue.cancel, job_id)

    async def retry_now(self, job_id: Hashable) -> bool:
        """Make a pending job that waits for its time due now; True if it did (see :meth:`Queue.retry_now`)."""
        return await self._call(Queue.retry_now, job_id)

    async def stats(self, queue: str | None = None) -> dict[str, int]:
        """Counts by status plus ``scheduled``, for one queue or all queues together."""
        return await self._call(Queue.stats, queue)

    async def stats_by_queue(self, statuses: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """``{queue: counts}`` as :meth:`stats` gives them (of ``statuses`` only, when given; see the Queue's)."""
        return await self._call(Queue.stats_by_queue, None if statuses is None else _listed(statuses))

    async def stats_by_type(self, queue: str | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """``{queue: {job_type: counts}}``: shows jobs of a type no worker handles (they stay pending)."""
        return await self._call(Queue.stats_by_type, queue)

    async def depth(self, queue: str = "default", *, exact: bool = False) -> int:
        """Ready jobs in ``queue``: from the Redis depth cache when configured (a hint), else counted."""
        return await self._call(Queue.depth, queue, exact=exact)

    async def dead_jobs(self, queue: str | None = None, limit: int = 100) -> list[Job]:
        """Dead jobs, most recently finished first."""
        return await self._call(Queue.dead_jobs, queue, limit)

    async def list_jobs(
        self,
        queue: str | None = None,
        status: str | Iterable[str] | None = None,
        job_type: str | None = None,
        after: Hashable | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """One page of jobs, newest first; ``after`` is the previous page's last id (see :meth:`Queue.list_jobs`)."""
        listed = status if status is None or isinstance(status, str) else _listed(status)
        return await self._call(Queue.list_jobs, queue, listed, job_type, after, limit)

    async def throughput(
        self, queue: str | None = None, *, window: float | timedelta | str = 3600.0, buckets: int = 60
    ) -> Throughput:
        """Jobs finished done or dead per slice of the last ``window`` (see :meth:`Queue.throughput`)."""
        return await self._call(Queue.throughput, queue, window=window, buckets=buckets)

    async def replay(
        self, ids: Iterable[Hashable] | None = None, queue: str | None = None, *, rate: float | str | None = None
    ) -> int:
        """Make dead jobs pending again (attempts reset, error history kept); returns how many.

        ``rate`` paces them (see :meth:`Queue.replay`); the wait never blocks the event loop.
        """
        return await self._call(Queue.replay, None if ids is None else _listed(ids), queue, rate=rate)

    async def replay_detailed(
        self,
        ids: Iterable[Hashable] | None = None,
        queue: str | None = None,
        *,
        rate: float | str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> ReplayResult:
        """Like :meth:`replay` but also says which jobs were skipped and why."""
        listed = None if ids is None else _listed(ids)
        return await self._call(Queue.replay_detailed, listed, queue, rate=rate, on_progress=on_progress)

    async def purge(
        self, status: str = "done", older_than: float | timedelta | str = "7d", batch_size: int = 1000
    ) -> int:
        """Delete finished jobs of ``status`` older than ``older_than``, in small batches; returns the count."""
        return await self._call(Queue.purge, status, older_than, batch_size)

    async def schedules(self, names: Iterable[str] | None = None) -> list[ScheduleRecord]:
        """The periodic schedules workers declared, each with its newest fire; see :meth:`Queue.schedules`."""
        return await self._call(Queue.schedules, None if names is None else _listed(names))

    async def fire_history(self, schedule: str, limit: int = 100) -> list[FireRecord]:
        """The fires of one periodic schedule, newest first."""
        return await self._call(Queue.fire_history, schedule, limit)

    async def set_limits(
        self,
        queue: str,
        *,
        concurrency: int | None = None,
        rate: float | str | None = None,
        per_key: int | None = None,
    ) -> QueueLimits:
        """Limit ``queue`` across every worker; see :meth:`Queue.set_limits`."""
        return await self._call(Queue.set_limits, queue, concurrency=concurrency, rate=rate, per_key=per_key)

    async def limits(self, queue: str) -> QueueLimits:
        """The limits stored for ``queue`` (all None when it has none)."""
        return await self._call(Queue.limits, queue)

    async def pause(self, queue: str) -> None:
        """Stop every claim from taking ``queue``'s jobs until :meth:`resume`; see :meth:`Queue.pause`."""
        await self._call(Queue.pause, queue)

    async def resume(self, queue: str) -> None:
        """Let claims take ``queue``'s jobs again, and wake its idle workers."""
        await self._call(Queue.resume, queue)

    async def paused(self) -> list[str]:
        """The paused queues, by name."""
        return await self._call(Queue.paused)

    async def queue_settings(self, queues: str | Iterable[str] | None = None) -> list[QueueSettings]:
        """The stored limits and paused flag of ``queues`` (None: every limited or paused queue), by name."""
        return await self._call(Queue.queue_settings, queues if queues is None else _listed(queues))


def _listed(values: Iterable[Any]) -> Any:
    """An iterable argument read on the caller's side (text is passed on as is, for the Queue to refuse)."""
    return values if isinstance(values, (str, bytes)) else list(values)
