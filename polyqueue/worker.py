"""The Worker: claims in batches, runs sync handlers on threads and async ones on an event loop, heartbeats, retries.

What a job's failure or expiry means is :mod:`polyqueue.policy`'s; the
Worker reaches the database only through its
:class:`~polyqueue.session.ConsumerSession`. What lives here is how a
process runs jobs: claims sized to free slots and only of the job types it
has handlers for, a completer that marks finished jobs done in batches every
few milliseconds, lease heartbeats, push wake-ups when the backend (or the
depth cache) has them and adaptive back-off polling when it does not, and
graceful shutdown on SIGTERM/SIGINT, and runtime control: attempt timeouts
and cancels of running jobs, enforced by the heartbeat thread (the
supervisor), which settles such a job at once and then interrupts its
handler (cancels its task, kills its child process, or -- for a sync
handler on a thread, which cannot be stopped from outside -- lets
``job.check()`` raise).

The database work -- claims, completions, heartbeats, failures -- is done on
the worker's own threads through the one synchronous session, whichever kind
of handler runs; an ``async def`` handler runs as a task on one event loop
(the worker's own in :meth:`Worker.run`, the caller's in
:meth:`Worker.run_async`) and only hands its outcome over, so the loop never
waits on the database.
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue as std_queue
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import policy
from .backends.base import Capability
from .errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidArgument,
    InvalidPayload,
    JobCancelled,
    JobTimeout,
    LeaseLost,
    PolyqueueError,
)
from .job import Job, JobStatus
from .periodic import DEFAULT_CATCH_UP_LIMIT, Schedule, Scheduler
from .processes import ChildFailure, ChildGone, ProcessPool
from .queue import Queue, default_worker_id
from .validation import check_int, check_name, check_seconds, queue_list

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from .async_queue import AsyncQueue

__all__ = ["Handler", "Worker"]

log = logging.getLogger("polyqueue.worker")

Handler = Callable[[Job], Any]
_STOP = object()
_DUE, _WOKEN = "due", "woken"
#: How long a partly free worker waits for more free slots before claiming anyway.
_REFILL_PATIENCE = 0.005
#: Longest uninterrupted wait on a wake-up source, so a stop request is seen within it.
_WAKEUP_SLICE = 0.5
#: How long recording a settlement or heartbeat waits out a database outage before giving up (the lease decides).
_OUTAGE_PATIENCE = 120.0
#: How long async handlers cancelled at shutdown get to unwind (``finally`` blocks) before their jobs are released.
_CANCEL_GRACE = 5.0
#: Threads that record the failures of async handlers (a failure is one fenced statement each).
_FAILURE_THREADS = 4
#: Longest the supervisor (the heartbeat thread) sleeps between looks at running attempts' deadlines.
_SUPERVISE_SLICE = 0.1
#: The ways a Worker runs sync handlers.
EXECUTIONS = ("thread", "process")


def is_async_handler(fn: Any) -> bool:
    """Whether ``fn`` is an ``async def`` function (or a callable whose ``__call__`` is one, or a partial of one)."""
    call = None if inspect.isroutine(fn) else inspect.getattr_static(type(fn), "__call__", None)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


class Worker:
    """Runs handlers for jobs of ``queues``, at most ``concurrency`` at once.

    A handler is a function or an ``async def`` function of the job; both
    kinds may be registered on one worker and ``concurrency`` counts them
    together. Sync handlers run on threads (started as they are needed, at
    most one per running sync job); async handlers run as tasks on one event
    loop per worker -- its own loop thread in :meth:`run`, the caller's loop
    in :meth:`run_async` -- so hundreds of I/O-bound jobs cost no threads.
    Claims, completions, failures and heartbeats are made on the worker's
    threads, never on the loop. A sync handler that returns an awaitable has
    it awaited on the worker's loop.

    It claims only jobs of the types it has handlers for: a job of another
    type stays pending and untouched for a worker that handles it (a rolling
    deploy, or two applications sharing a queue).

    ``lease`` is the claim lease in seconds; leases of running jobs are
    extended every ``lease / 3`` s. ``max_attempts``, when given, lowers the
    stored attempt limit of every job this worker claims, so a failure and an
    expired lease both end the job after that many attempts. ``safety_poll`` bounds how long an
    idle worker with push wake-ups trusts them before looking at the
    database itself; ``poll_interval`` is ``(fastest, slowest)`` back-off
    polling for backends without push wake-ups. ``batch_size`` fixes the most
    jobs the worker holds; by default it adapts (:class:`~polyqueue.policy.ClaimSizer`):
    up to 200 while a backlog of short jobs lasts, ``concurrency`` while jobs
    are long, or a short queue is being shared with other workers. Jobs beyond
    ``concurrency`` wait in a local buffer, leased and heartbeated like running
    ones, and are released on shutdown if they never started. The worker
    claims again once half of that capacity is free, so claims stay large
    instead of one job per finished handler. A finished job
    stays leased (and heartbeated) until the completer has recorded it, and the
    worker stops claiming while two capacities' worth of finished jobs wait to
    be recorded, so a slow database slows the handlers instead of piling up
    completions.

    ``timeout`` limits each attempt's run in seconds (a job's own
    ``enqueue(..., timeout=)`` wins): an attempt that runs longer is failed
    with a timeout error (retried or dead as any failure) within
    :data:`_SUPERVISE_SLICE` of its deadline. A job cancelled while it runs
    (``queue.cancel(id)``) is seen at the next heartbeat and settled
    ``cancelled``. Either way the job is settled first and its handler
    interrupted after: an async handler's task is cancelled; a sync handler
    on a thread sees ``job.check()`` raise (and ``job.cancel_requested``);
    with ``execution="process"``, sync handlers run in child processes and
    the child is killed -- the only way to stop CPU-bound Python. A thread
    whose handler ignores the request keeps its concurrency slot until it
    returns (the worker never runs more than ``concurrency`` handlers), and
    whatever it returns then is discarded: its claim was settled, so the
    fence refuses it (a ``complete`` of that claim raises ``LeaseLost``).
    """

    def __init__(
        self,
        queue: Queue | AsyncQueue,
        queues: str | Iterable[str] = ("default",),
        concurrency: int = 4,
        lease: float = 30.0,
        *,
        max_attempts: int | None = None,
        batch_size: int | None = None,
        poll_interval: tuple[float, float] = (0.05, 1.0),
        safety_poll: float | None = None,
        shutdown_timeout: float = 30.0,
        completion_interval: float = 0.005,
        worker_id: str | None = None,
        timeout: float | None = None,
        execution: str = "thread",
    ) -> None:
        if not isinstance(queue, Queue):
            from .async_queue import AsyncQueue

            if not isinstance(queue, AsyncQueue):
                raise InvalidArgument("Worker needs a polyqueue.Queue or AsyncQueue (polyqueue.connect/connect_async)")
            queue = queue.sync  # the worker's database work runs on its threads, through the synchronous Queue
        self.queue: Queue = queue
        self.queues = queue_list(queues)
        self.concurrency = check_int(concurrency, "concurrency", 1, 1024)
        self.lease = check_seconds(lease, "lease", positive=True)
        self.max_attempts = None if max_attempts is None else check_int(max_attempts, "max_attempts", 1, 10_000)
        #: The fixed claim capacity, or None: the :class:`~polyqueue.policy.ClaimSizer` adapts it.
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size", 1, 1000)
        self.claim_sizer = policy.ClaimSizer(self.concurrency)
        low, high = (check_seconds(v, "poll_interval", positive=True) for v in poll_interval)
        if low > high:
            raise InvalidArgument("poll_interval must be (fastest, slowest)")
        self.poll_interval = (low, high)
        default_safety = float(queue.options.get("safety_poll", 30.0 if "notify" in queue.capabilities else 5.0))
        self.safety_poll = check_seconds(
            safety_poll if safety_poll is not None else default_safety, "safety_poll", positive=True
        )
        self.shutdown_timeout = check_seconds(shutdown_timeout, "shutdown_timeout")
        self.completion_interval = check_seconds(completion_interval, "completion_interval")
        self.worker_id = check_name(worker_id, "worker_id") if worker_id is not None else default_worker_id()
        self.timeout = None if timeout is None else check_seconds(timeout, "timeout", positive=True)
        if execution not in EXECUTIONS:
            raise InvalidArgument(f"execution must be one of {', '.join(map(repr, EXECUTIONS))}, not {execution!r}")
        self.execution = execution
        self._processes: ProcessPool | None = None
        #: Attempts stopped by the supervisor (timed out or cancelled) whose handler has not returned, by id(job).
        self._overrunning: dict[int, Job] = {}
        #: Attempts whose outcome the handler side has taken (the supervisor leaves them alone), by id(job).
        self._decided: set[int] = set()
        self._tasks_by_job: dict[int, asyncio.Task[None]] = {}
        self.timed_out = 0
        self.cancelled = 0
        self.session = queue.consumer_session(
            self.worker_id, max_attempts=self.max_attempts, outage_patience=_OUTAGE_PATIENCE
        )
        self.handlers: dict[str, Handler] = {}
        #: The job types whose handlers are ``async def`` (run as tasks on the worker's event loop).
        self._async_types: set[str] = set()
        #: Periodic schedules this worker declares, by name (see :meth:`periodic`).
        self.schedules: dict[str, Schedule] = {}
        self.processed = 0
        self.failed = 0
        self._stopping = threading.Event()
        # Leases are kept alive until the completer has recorded the last finished job, after _stopping.
        self._heartbeats_end = threading.Event()
        self._handlers_joined = False
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._held: dict[Hashable, Job] = {}  # claimed, not yet finished: heartbeated
        self._buffer: deque[Job] = deque()  # claimed, not started: waits for one of the `concurrency` slots
        self._running: dict[Hashable, Job] = {}  # started: a handler thread or task has it (or is about to)
        self._running_sync: set[Hashable] = set()  # the ones of those on threads
        self._handler_threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_loop: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # async handlers running (touched on the loop only)
        self._failures: ThreadPoolExecutor | None = None
        # Succeeded, waiting for the completer to record it: still leased, so still heartbeated.
        self._completing: dict[Hashable, Job] = {}
        self._lost: set[Hashable] = set()
        self._ready: std_queue.SimpleQueue[Any] = std_queue.SimpleQueue()
        self._done: list[tuple[Job, str | None]] = []
        self._done_lock = threading.Lock()
        self._done_flag = threading.Event()
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        return f"<polyqueue.Worker {self.worker_id} queues={self.queues} concurrency={self.concurrency}>"

    # --- handlers -------------------------------------------------------------
    def register(self, job_type: str, fn: Handler) -> Handler:
        """Run ``fn(job)`` for jobs of ``job_type``; its return value (JSON) becomes ``job.result``.

        ``fn`` may be an ``async def`` function: it is awaited on the
        worker's event loop, many at once.
        """
        check_name(job_type, "job_type")
        if not callable(fn):
            raise InvalidArgument("handler must be callable")
        self.handlers[job_type] = fn
        if is_async_handler(fn):
            self._async_types.add(job_type)
        else:
            self._async_types.discard(job_type)
        return fn

    def handler(self, job_type: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""
        return lambda fn: self.register(job_type, fn)

    def periodic(
        self,
        cron: str,
        job_type: str | None = None,
        payload: Any = None,
        *,
        name: str | None = None,
        queue: str = "default",
        timezone: str = "UTC",
        priority: int = 0,
        catch_up: str = "latest",
        catch_up_limit: int = DEFAULT_CATCH_UP_LIMIT,
        max_attempts: int | None = None,
    ) -> Callable[[Handler], Handler]:
        """Enqueue a ``job_type`` job at every slot of ``cron``; each slot fires once across every worker.

        ``cron`` is five fields (``"*/5 * * * *"``), six with seconds first,
        or ``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly``, in
        ``timezone`` (an IANA name; DST handled: a skipped wall time fires once
        at the jump, a repeated one once). ``name`` (default: the job type)
        identifies the schedule: every worker declaring the same name shares
        its slots. ``catch_up`` says what happens to slots missed while no
        worker ran: ``"latest"`` fires the newest once, ``"none"`` skips them,
        ``"all"`` fires up to ``catch_up_limit`` of them. Used as a decorator
        on a function, it also registers the function as the handler (of
        ``job_type``, or of the function's name). Raises
        :class:`InvalidArgument` for a bad cron expression, zone or payload.
        """
        options: dict[str, Any] = dict(name=name, queue=queue, timezone=timezone, priority=priority,
                                       catch_up=catch_up, catch_up_limit=catch_up_limit, max_attempts=max_attempts,
                                       max_payload_bytes=self.queue.max_payload_bytes)  # fmt: skip

        def declare(kind: str) -> Schedule:
            schedule = Schedule.build(cron, kind, payload, **options)
            if schedule.name in self.schedules:
                raise InvalidArgument(f"a schedule named {schedule.name!r} is already declared on this worker")
            self.schedules[schedule.name] = schedule
            return schedule

        declared = declare(job_type) if job_type is not None else None
        if declared is None:
            Schedule.build(cron, "placeholder", payload, **options)  # check now, not when decorating

        def decorate(fn: Handler) -> Handler:
            kind = declared.job_type if declared is not None else declare(getattr(fn, "__name__", "")).job_type
            return self.register(kind, fn)

        return decorate

    # --- running --------------------------------------------------------------
    def stop(self) -> None:
        """Ask ``run`` (or ``run_async``) to stop claiming, finish or release in-flight jobs, and return.

        Thread-safe; also safe on the event loop.
        """
        self._stopping.set()
        with self._lock:
            self._slot_freed.notify_all()

    def run(self, burst: bool = False) -> int:
        """Process jobs until stopped (SIGTERM/SIGINT or :meth:`stop`); with ``burst``, until nothing is ready.

        Returns the number of jobs whose handler succeeded during this call.
        With periodic schedules it also fires their slots (in burst mode, the
        ones missed while no worker ran). Async handlers run on an event loop
        of the worker's own, in a thread. On shutdown, running jobs get
        ``shutdown_timeout`` seconds to finish; then async ones are cancelled,
        and every job still unfinished is released (the attempt not charged).
        Raises :class:`ConfigurationError` when there is neither a handler nor
        a schedule, or when the backend has no periodic jobs.
        """
        scheduler = self._prepare()
        try:
            return self._run(burst, scheduler, self._start_own_loop() if self._async_types else None)
        finally:
            self._stop_own_loop()

    async def run_async(self, burst: bool = False, *, handle_signals: bool = False) -> int:
        """:meth:`run` for asyncio applications: async handlers run on the running loop, which this never blocks.

        Await it (or run it as a task, as in a FastAPI lifespan) and call
        :meth:`stop` to end it; cancelling it stops the worker the same way
        (in-flight jobs finish within ``shutdown_timeout``, then are cancelled
        and released) and then re-raises the cancellation. Claims, completions,
        heartbeats and periodic schedules run on the worker's threads.
        ``handle_signals`` makes SIGTERM and SIGINT stop the worker (for a
        process the worker owns; leave it off under a server that handles
        signals itself). Returns the number of jobs whose handler succeeded.
        """
        import asyncio

        scheduler = self._prepare()
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[int] = loop.create_future()

        def work() -> None:
            try:
                outcome = self._run(burst, scheduler, loop)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, finished, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, finished, outcome, None)

        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        threading.Thread(target=work, name="polyqueue-worker", daemon=True).start()
        try:
            return await asyncio.shield(finished)
        except asyncio.CancelledError:
            self.stop()
            try:
                await asyncio.shield(finished)
            except asyncio.CancelledError:
                pass  # cancelled again: the shutdown goes on in its thread
            raise
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    def _prepare(self) -> Scheduler | None:
        """Refuse to run without handlers or schedules; the periodic scheduler, when there are schedules."""
        if not self.handlers and not self.schedules:
            raise ConfigurationError("the worker has no handlers: register one with worker.register() first")
        scheduler = self._scheduler()
        if self.execution == "process":
            sync_handlers = {t: fn for t, fn in self.handlers.items() if t not in self._async_types}
            self._processes = ProcessPool(sync_handlers, self.concurrency)  # refuses handlers it cannot send
        return scheduler

    def _run(self, burst: bool, scheduler: Scheduler | None, loop: asyncio.AbstractEventLoop | None) -> int:
        """The run itself, in the calling thread; async handlers go to ``loop`` (which must not be this thread's)."""
        self._loop = loop
        self._stopping.clear()
        succeeded_before = self.processed
        restore = self._install_signal_handlers()
        wakeups = None if burst or not self.handlers else self.session.wakeup_source(self.queues, self.job_types)
        self._start_threads()
        schedule_thread = None
        try:
            if scheduler is not None and burst:
                scheduler.start()
            elif scheduler is not None:
                schedule_thread = threading.Thread(target=scheduler.run, name="polyqueue-periodic", daemon=True)
                schedule_thread.start()
            if self.handlers:
                self._claim_loop(burst, wakeups)
            elif not burst:
                self._stopping.wait()
        finally:
            self._shutdown()
            if schedule_thread is not None:
                schedule_thread.join(self.shutdown_timeout)
            if wakeups is not None:
                wakeups.close()
            if self._processes is not None:
                self._processes.close()
                self._processes = None
            restore()
        return self.processed - succeeded_before

    def _scheduler(self) -> Scheduler | None:
        if not self.schedules:
            return None
        self.queue.require_capability(Capability.PERIODIC, "periodic jobs")
        return Scheduler(self.queue, list(self.schedules.values()), self.worker_id, self._stopping)

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous: dict[int, Any] = {}

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: stopping after in-flight jobs", signal.Signals(signum).name)
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _start_threads(self) -> None:
        # A fresh hand-off queue per run: a handler thread still stuck in a job from an
        # earlier run (past its shutdown timeout) must not pick up this run's jobs.
        self._ready = std_queue.SimpleQueue()
        self._handler_threads = []
        self._heartbeats_end.clear()
        self._handlers_joined = False
        self._threads = [
            threading.Thread(target=self._complete_loop, name="polyqueue-completer", daemon=True),
            threading.Thread(target=self._heartbeat_loop, name="polyqueue-heartbeat", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # --- the event loop of async handlers -------------------------------------------
    def _start_own_loop(self) -> asyncio.AbstractEventLoop:
        """An event loop in a thread of its own, for :meth:`run`'s async handlers."""
        import asyncio

        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        self._own_loop = threading.Thread(target=serve, name="polyqueue-asyncio", daemon=True)
        self._own_loop.start()
        started.wait()
        return loop

    def _stop_own_loop(self) -> None:
        thread, loop = self._own_loop, self._loop
        if thread is None or loop is None:
            return
        self._own_loop = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CANCEL_GRACE)
        if not thread.is_alive():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _loop_for_awaitables(self) -> asyncio.AbstractEventLoop:
        """The loop a sync handler's awaitable result runs on (started now if :meth:`run` had no async handlers)."""
        with self._lock:
            if self._loop is None:
                self._loop = self._start_own_loop()
            return self._loop

    @property
    def job_types(self) -> frozenset[str]:
        """The job types this worker claims: those it has handlers for."""
        return frozenset(self.handlers)

    def _free_slots(self) -> int:
        return self._capacity - len(self._held)

    @property
    def _capacity(self) -> int:
        if self.batch_size is None:
            return self.claim_sizer.capacity
        return max(self.concurrency, self.batch_size)

    def _completion_backlog_full(self) -> bool:
        # Back-pressure: handlers must not outrun the completer by more than two capacities' worth
        # (one batch being recorded, one gathering), or finished jobs pile up in memory and their
        # leases run out before they are recorded.
        return len(self._completing) >= 2 * self._capacity

    def _room_to_claim(self) -> bool:
        # Refill at half capacity (or when nothing is held), so each claim takes a real batch.
        free = self._free_slots()
        if free <= 0 or self._completion_backlog_full():
            return False
        return not self._held or free >= (self._capacity + 1) // 2

    def _wait_for_room(self) -> None:
        """Block (holding ``_lock``'s condition) until a claim is worth making.

        With less than half the capacity free, wait briefly for more so the
        claim is a real batch, but never leave a free slot idle for longer than
        ``_REFILL_PATIENCE``: a few long-running jobs must not stall pickup.
        """
        patience_ends: float | None = None
        while not self._room_to_claim() and not self._stopping.is_set():
            if self._free_slots() <= 0 or self._completion_backlog_full():
                patience_ends = None
                self._slot_freed.wait(1.0)
                continue
            now = time.monotonic()
            patience_ends = patience_ends or now + _REFILL_PATIENCE
            if now >= patience_ends:
                return
            self._slot_freed.wait(patience_ends - now)

    def _claim_loop(self, burst: bool, wakeups: Any) -> None:
        idle_sleep = self.poll_interval[0]
        outage = policy.Outage("claims", log)
        should_claim, probe_said_due = True, False
        while not self._stopping.is_set():
            with self._lock:
                self._wait_for_room()
                free = self._free_slots()
            if self._stopping.is_set():
                return
            if not should_claim:
                # Idle: one cheap read decides whether a claim is worth its transaction.
                reason, idle_sleep = self._wait_for_work(wakeups, idle_sleep)
                should_claim, probe_said_due = reason is not None, reason == _DUE
                continue
            limit = min(free, self.batch_size or free)
            try:
                jobs = self.session.claim(self.queues, limit=limit, lease=self.lease, job_types=self.job_types)
                outage.recovered()
            except BackendUnavailable as exc:
                outage.failed(exc, self._stopping)
                continue
            self.claim_sizer.claimed(limit, len(jobs))
            if jobs:
                # Work flows: neither the back-off nor "the probe's claim came back empty" applies any more.
                idle_sleep, probe_said_due = self.poll_interval[0], False
                with self._lock:
                    for job in jobs:
                        self._held[job.id] = job
                    self._buffer.extend(jobs)
                    self._start_buffered()
                continue
            if burst:
                with self._lock:
                    while self._held and not self._stopping.is_set():
                        self._slot_freed.wait(0.5)
                    if self._held:
                        return
                # Handlers may have scheduled retries that are due now; look once more.
                if not self._anything_due():
                    return
                continue
            if probe_said_due:
                # The probe said "due" but another worker won the race: do not spin.
                self._stopping.wait(self.poll_interval[0])
            should_claim = False

    def _anything_due(self) -> bool:
        try:
            wait = self.session.seconds_until_due(self.queues, self.job_types)
        except BackendUnavailable:
            return True
        return wait is not None and wait <= 0

    def _wait_for_work(self, wakeups: Any, idle_sleep: float) -> tuple[str | None, float]:
        """Wait until work may be ready; returns (why to claim now, or None; next back-off interval).

        Claims only when the probe says a job is due (or a lease has expired) or a
        wake-up arrived; a timed-out wait just probes again, so an idle worker costs
        one small read per safety period (push wake-ups) or per poll interval.
        """
        try:
            until_due = self.session.seconds_until_due(self.queues, self.job_types)
        except BackendUnavailable:
            self._stopping.wait(idle_sleep)
            return _DUE, min(idle_sleep * 2, self.poll_interval[1])
        if until_due is not None and until_due <= 0:
            return _DUE, self.poll_interval[0]
        if wakeups is not None:
            bound = self.safety_poll if until_due is None else min(self.safety_poll, until_due)
            deadline = time.monotonic() + bound
            # Short slices, so stop() and SIGTERM are noticed promptly; a slice costs the database nothing.
            while not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, self.poll_interval[0]
                if wakeups.wait(min(remaining, _WAKEUP_SLICE)):
                    return _WOKEN, self.poll_interval[0]
            return None, self.poll_interval[0]
        bound = idle_sleep if until_due is None else min(idle_sleep, until_due)
        self._stopping.wait(bound)
        return None, min(idle_sleep * 2, self.poll_interval[1])

    # --- starting jobs ----------------------------------------------------------
    def _start_buffered(self) -> None:
        """Start buffered jobs while fewer than ``concurrency`` run (``_lock`` held): async ones as tasks on the
        loop, sync ones on a handler thread (one is started when every thread is busy)."""
        if self._stopping.is_set():
            return  # buffered jobs are released by the shutdown
        for_loop: list[Job] = []
        # An overrunning handler still occupies its slot (and, on a thread, its thread) until it returns.
        while self._buffer and len(self._running) + len(self._overrunning) < self.concurrency:
            job = self._buffer.popleft()
            self._running[job.id] = job
            if job.job_type in self._async_types and self._loop is not None:
                for_loop.append(job)
                continue
            self._running_sync.add(job.id)
            if len(self._running_sync) + len(self._overrunning) > len(self._handler_threads):
                thread = threading.Thread(
                    target=self._run_handlers,
                    args=(self._ready,),
                    name=f"polyqueue-handler-{len(self._handler_threads)}",
                    daemon=True,
                )
                self._handler_threads.append(thread)
                thread.start()
            self._ready.put(job)
        if for_loop and self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_tasks, for_loop)

    def _succeeded(self, job: Job, result_json: str | None, started: float) -> None:
        duration = time.perf_counter() - started
        self.claim_sizer.finished(duration)
        self.session.fire("polyqueue_job_succeeded", job=job, duration=duration)
        # Registered as awaiting completion before the completer can see it, so it never goes unheartbeated.
        self._finish(job, awaiting_completion=True)
        with self._done_lock:
            self._done.append((job, result_json))
            self.processed += 1
            if len(self._done) >= self._capacity or self.completion_interval <= 0:
                self._done_flag.set()

    def _handler_for(self, job: Job) -> Handler:
        fn = self.handlers.get(job.job_type)
        if fn is None:  # unregistered while the job was buffered
            raise LookupError(f"no handler registered for job type {job.job_type!r}")
        return fn

    # --- handler threads -----------------------------------------------------
    def _run_handlers(self, ready: std_queue.SimpleQueue[Any]) -> None:
        while True:
            job = ready.get()
            if job is _STOP:
                return
            if self._stopping.is_set():
                self._release_quietly(job)
                continue
            self._run_sync_job(job)

    def _run_sync_job(self, job: Job) -> None:
        started = time.perf_counter()
        if self._processes is None:
            self._start_clock(job)
        self.session.fire("polyqueue_job_started", job=job)
        try:
            if self._processes is not None:
                result = self._processes.run(job, functools.partial(self._start_clock, job))
            else:
                result = self._handler_for(job)(job)
            if inspect.isawaitable(result):
                result = self._await_on_loop(result)
            result_json = self.session.encode_result(result)
        except BaseException as exc:
            self.claim_sizer.finished(time.perf_counter() - started)
            if not self._take_outcome(job):
                self._late(job, exc)
            else:
                try:
                    self._fail(job, exc)
                finally:
                    self._finish(job)
            if not isinstance(exc, Exception):
                raise
            return
        if not self._take_outcome(job):
            self._late(job, None)
            return
        self._succeeded(job, result_json, started)

    # --- runtime control: timeouts and cancels of running attempts -----------------------
    def _start_clock(self, job: Job) -> None:
        """Give the attempt its deadline (the job's own timeout, else the worker's), as the policy says."""
        timeout = policy.attempt_timeout(job.timeout, self.timeout)
        job.deadline = policy.attempt_deadline(time.monotonic(), timeout)

    def _take_outcome(self, job: Job) -> bool:
        """The handler side claims the right to record ``job``'s outcome; False if the supervisor settled it first."""
        with self._lock:
            if id(job) in self._overrunning:
                return False
            self._decided.add(id(job))
            return True

    def _late(self, job: Job, exc: BaseException | None) -> None:
        """A handler returned after its attempt was settled (timed out or cancelled): its outcome is discarded."""
        outcome = "returned" if exc is None else f"raised {type(exc).__name__}"
        log.info("job %s: handler %s after its attempt was settled; outcome discarded", job.id, outcome)
        with self._lock:
            self._overrunning.pop(id(job), None)
            self._start_buffered()
            self._slot_freed.notify_all()

    def _supervise(self, now: float, cancel_ids: set[Hashable]) -> None:
        """Stop running attempts that are past their deadline or whose cancel was requested."""
        stops: list[tuple[Job, str]] = []
        with self._lock:
            for job in self._running.values():
                if id(job) in self._decided:
                    continue
                if job.id in cancel_ids:
                    job.cancel_requested = True
                    stops.append((job, "cancel"))
                elif job.deadline is not None and now >= job.deadline:
                    stops.append((job, "timeout"))
            for job, _ in stops:
                # Out of the running set (no more heartbeats) but still counted against `concurrency`.
                del self._running[job.id]
                self._running_sync.discard(job.id)
                self._held.pop(job.id, None)
                self._overrunning[id(job)] = job
        for job, why in stops:
            self._settle_stopped(job, why)
            self._interrupt(job)

    def _settle_stopped(self, job: Job, why: str) -> None:
        try:
            if why == "cancel":
                self.session.cancel_running(job)
                self.cancelled += 1
                log.warning("job %s (%s) cancelled while running", job.id, job.job_type)
                return
            timeout = policy.attempt_timeout(job.timeout, self.timeout) or 0.0
            settlement = self.session.fail(job, policy.timeout_error(timeout))
            self.timed_out += 1
            outcome = "dead" if settlement.status == JobStatus.DEAD else f"retry in {settlement.run_in or 0:.1f}s"
            log.warning("job %s (%s) ran past its timeout of %gs, %s", job.id, job.job_type, timeout, outcome)
        except LeaseLost:
            log.warning("job %s: stopped (%s) but its lease was already lost", job.id, why)
        except Exception as exc:  # an outage past patience: the lease expires and the policy decides then
            log.error("job %s: could not record its %s (%s); its lease will expire", job.id, why, exc)

    def _interrupt(self, job: Job) -> None:
        """After settling: cancel the job's task, or kill its child; a thread sees ``job.check()`` raise."""
        with self._lock:
            task = self._tasks_by_job.get(id(job))
        if task is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(task.cancel)
        elif self._processes is not None:
            self._processes.kill(job)

    def _await_on_loop(self, awaitable: Awaitable[Any]) -> Any:
        """A sync handler returned an awaitable (a wrapped ``async def``): await it on the worker's loop."""
        import asyncio

        async def awaited() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(awaited(), self._loop_for_awaitables()).result()

    # --- async handlers (on the loop) -----------------------------------------------
    def _start_tasks(self, jobs: list[Job]) -> None:
        """On the loop: a task per job (none once stopping: the shutdown releases those jobs, never started)."""
        import asyncio

        loop = asyncio.get_running_loop()
        for job in jobs:
            if self._stopping.is_set():
                continue
            task = loop.create_task(self._run_async_job(job), name=f"polyqueue-job-{job.id}")
            self._tasks.add(task)
            with self._lock:
                self._tasks_by_job[id(job)] = task
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(self._forget_task, id(job)))

    async def _run_async_job(self, job: Job) -> None:
        import asyncio

        started = time.perf_counter()
        self._start_clock(job)
        self.session.fire("polyqueue_job_started", job=job)
        try:
            result = self._handler_for(job)(job)
            if inspect.isawaitable(result):
                result = await result
            result_json = self.session.encode_result(result)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if not self._take_outcome(job):
                self._late(job, exc)  # cancelled by the supervisor, after it settled the attempt
                return
            if task is not None and task.cancelling():
                self._decided.discard(id(job))
                return  # cancelled by the shutdown: the job stays held and is released, uncharged
            await self._record_failure(job, exc)  # the handler's own cancellation, not this task's: a failure
        except BaseException as exc:
            if not self._take_outcome(job):
                self._late(job, exc)
                return
            await self._record_failure(job, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not self._take_outcome(job):
                self._late(job, None)
                return
            self._succeeded(job, result_json, started)

    async def _record_failure(self, job: Job, exc: BaseException) -> None:
        """Record an async handler's failure on a thread (a database write), the job heartbeated until then."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        if self._failures is None:
            self._failures = ThreadPoolExecutor(_FAILURE_THREADS, thread_name_prefix="polyqueue-failures")
        recording = asyncio.get_running_loop().run_in_executor(self._failures, self._fail_and_finish, job, exc)
        await asyncio.shield(recording)

    def _forget_task(self, key: int, _task: Any = None) -> None:
        with self._lock:
            self._tasks_by_job.pop(key, None)

    def _fail_and_finish(self, job: Job, exc: BaseException) -> None:
        try:
            self._fail(job, exc)
        finally:
            self._finish(job)

    def _finish(self, job: Job, *, awaiting_completion: bool = False) -> None:
        with self._lock:
            self._decided.discard(id(job))
            # By identity: a job this worker stopped may have been retried and claimed here again.
            if self._running.get(job.id) is job:
                del self._running[job.id]
                self._running_sync.discard(job.id)
            if self._held.get(job.id) is job:
                del self._held[job.id]
            self._lost.discard(job.id)
            if awaiting_completion:
                self._completing[job.id] = job
            self._start_buffered()
            if self._room_to_claim() or not self._held or self._stopping.is_set():
                self._slot_freed.notify_all()

    def _completed(self, batch: list[tuple[Job, str | None]]) -> None:
        with self._lock:
            for job, _ in batch:
                # By identity: after a long outage this worker may hold the same id again, from a new claim.
                if self._completing.get(job.id) is job:
                    del self._completing[job.id]
            self._slot_freed.notify_all()

    def _fail(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, JobCancelled) or (isinstance(exc, ChildGone) and job.cancel_requested):
            self._cancelled_by_handler(job)
            return
        with self._done_lock:
            self.failed += 1
        # The session logs the failure (with its traceback) once it is recorded.
        error: BaseException | str = exc
        if isinstance(exc, InvalidPayload):
            error = f"handler result is not storable: {exc}"
        elif isinstance(exc, JobTimeout):
            error = policy.timeout_error(policy.attempt_timeout(job.timeout, self.timeout) or 0.0)
            self.timed_out += 1
        elif isinstance(exc, ChildFailure):
            error = policy.storable_text(exc.text[: policy.MAX_ERROR_LENGTH])
        try:
            self.session.fail(job, error, with_traceback=True)
        except LeaseLost:
            return
        except Exception as err:  # refused outright or an outage past patience; the thread must live
            log.error(
                "job %s (%s) attempt %d/%d failed: %s; the failure was not recorded (%s): its lease will expire, "
                "then it runs again",
                job.id, job.job_type, job.attempts, job.max_attempts, policy.error_text(exc), err,
                exc_info=exc,
            )  # fmt: skip
            return

    def _cancelled_by_handler(self, job: Job) -> None:
        """The handler stopped on ``job.check()`` after a cancel request: the job ends cancelled."""
        try:
            self.session.cancel_running(job)
            self.cancelled += 1
        except LeaseLost:
            log.warning("job %s: cancelled, but its lease was lost before that was recorded", job.id)
        except Exception as exc:
            log.error("job %s: cancel not recorded (%s); its lease will expire and it ends cancelled", job.id, exc)

    def _release_unstarted(self) -> None:
        """Give back, in one statement, the buffered jobs no handler has taken yet."""
        with self._lock:
            unstarted, self._buffer = list(self._buffer), deque()
        if not unstarted:
            return
        try:
            self.session.release(unstarted)
        except PolyqueueError as exc:
            log.warning("could not release %d unstarted job(s) (%s); their leases will expire", len(unstarted), exc)
        for job in unstarted:
            self._finish(job)

    def _release_quietly(self, job: Job) -> None:
        try:
            self.session.release([job])
        except Exception as exc:
            log.warning("job %s: could not release (%s); its lease will expire", job.id, exc)
        finally:
            self._finish(job)

    # --- completer and heartbeat ---------------------------------------------
    def _complete_loop(self) -> None:
        while True:
            self._done_flag.wait(self.completion_interval if self.completion_interval > 0 else None)
            self._done_flag.clear()
            finished = self._flush_completions()
            if finished and self._stopping.is_set() and self._handlers_joined:
                return

    def _flush_completions(self) -> bool:
        with self._done_lock:
            batch, self._done = self._done, []
        if not batch:
            return True
        try:
            lost = self.session.complete_many(batch)
        except BackendUnavailable as exc:
            log.error("gave up marking %d job(s) done (%s); their leases will expire and they will run again",
                      len(batch), exc)  # fmt: skip
        except Exception as exc:  # the database refused the batch: settle its jobs one by one
            log.error("could not mark %d job(s) done (%s); recording them one by one", len(batch), exc)
            self._complete_one_by_one(batch)
        else:
            for job_id in lost:
                log.warning("job %s finished but its lease was lost; it may run again", job_id)
        finally:
            self._completed(batch)
        return True

    def _complete_one_by_one(self, batch: list[tuple[Job, str | None]]) -> None:
        """Record each job alone; one the database refuses (a result too large for it, say) is failed with why."""
        for job, result in batch:
            try:
                self.session.complete_many([(job, result)])
                continue
            except Exception as exc:
                refusal = exc
            try:
                self.session.fail(job, f"the job succeeded but its completion could not be recorded: {refusal}")
            except Exception as exc:
                log.error(
                    "job %s: neither its completion nor its failure could be recorded (%s); "
                    "its lease will expire and it will run again",
                    job.id,
                    exc,
                )

    def _heartbeat_loop(self) -> None:
        """Heartbeats every ``lease / 3``, asking then for cancel requests; between them, watches deadlines."""
        interval = max(self.lease / 3.0, 0.05)
        next_beat = time.monotonic() + interval
        while not self._heartbeats_end.wait(min(_SUPERVISE_SLICE, max(0.0, next_beat - time.monotonic()))):
            now = time.monotonic()
            if now < next_beat:
                self._supervise(now, set())
                continue
            next_beat = now + interval
            self._beat()

    def _beat(self) -> None:
        """One heartbeat: extend every held lease, stop running jobs whose cancel was requested."""
        with self._lock:
            held = [*self._held.values(), *self._completing.values()]
            running = list(self._running.values())
        if not held:
            self._supervise(time.monotonic(), set())
            return
        try:
            cancels = self.session.cancel_requests(running)
        except Exception as exc:  # the next beat asks again
            log.warning("could not look for cancel requests: %s", exc)
            cancels = set()
        self._supervise(time.monotonic(), cancels)
        if cancels:
            with self._lock:
                held = [*self._held.values(), *self._completing.values()]
        if held:
            try:
                lost = self.session.extend(held, self.lease)
            except Exception as exc:  # never let the heartbeat die: every held lease depends on it
                log.warning("heartbeat failed: %s", exc)
                return
            with self._lock:
                # Only running or buffered jobs are reported here: a job awaiting completion whose lease
                # was lost is reported by the completer, and one completed meanwhile is not lost at all.
                lost = {job_id for job_id in lost if job_id in self._held}
            for job_id in lost:
                if job_id not in self._lost:
                    self._lost.add(job_id)
                    log.warning("job %s: lease lost; another worker may run it", job_id)

    # --- shutdown ----------------------------------------------------------------
    def _shutdown(self) -> None:
        """Release buffered jobs, let running ones finish until the deadline, cancel async ones, release the rest."""
        self._stopping.set()
        deadline = time.monotonic() + self.shutdown_timeout
        self._release_unstarted()
        with self._lock:
            handler_threads = list(self._handler_threads)
        for _ in handler_threads:
            self._ready.put(_STOP)
        for thread in handler_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._end_tasks(deadline)
        if self._failures is not None:
            self._failures.shutdown(wait=True)  # failures being recorded end first: those jobs are not released
            self._failures = None
        with self._lock:
            leftovers = list(self._held.values())
        if leftovers:
            log.warning("releasing %d job(s) still running after %.0fs", len(leftovers), self.shutdown_timeout)
            try:
                self.session.release(leftovers)
            except PolyqueueError as exc:
                log.warning("could not release in-flight jobs (%s); their leases will expire", exc)
            with self._lock:
                for job in leftovers:
                    self._held.pop(job.id, None)
                    self._running.pop(job.id, None)
                    self._running_sync.discard(job.id)
        self._handlers_joined = True
        self._done_flag.set()
        completer, heartbeat = self._threads
        completer.join(self.shutdown_timeout)
        self._flush_completions()
        self._heartbeats_end.set()
        heartbeat.join(5.0)

    def _end_tasks(self, deadline: float) -> None:
        """From the worker's thread: wait for async handlers until ``deadline``, then cancel those still running."""
        import asyncio

        loop = self._loop
        if loop is None or loop.is_closed():
            return
        remaining = max(0.0, deadline - time.monotonic())
        try:
            ending = asyncio.run_coroutine_threadsafe(self._finish_or_cancel_tasks(remaining), loop)
            ending.result(remaining + _CANCEL_GRACE + 1.0)
        except Exception as exc:  # the loop stopped or is stuck: the jobs are released all the same
            log.warning("async handlers did not end cleanly (%s); their jobs are released", type(exc).__name__)

    async def _finish_or_cancel_tasks(self, timeout: float) -> None:
        import asyncio

        tasks = set(self._tasks)
        if not tasks:
            return
        _, running = await asyncio.wait(tasks, timeout=timeout)
        if running:
            log.warning("cancelling %d async job(s) still running after %.0fs", len(running), self.shutdown_timeout)
            for task in running:
                task.cancel()
            await asyncio.wait(running, timeout=_CANCEL_GRACE)


def _settle(future: asyncio.Future[int], result: int | None, error: BaseException | None) -> None:
    """Complete ``future`` (on its loop) with the worker's outcome, unless it was already cancelled."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result or 0)
