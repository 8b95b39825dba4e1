"""What every system under test offers the harness: a producer side (:class:`System`) and a consumer side
(:class:`WorkerSide`), plus the shared plumbing of the systems whose clients are async."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

from ..config import BACKENDS, BenchError, Spec


class Unsupported(Exception):
    """The system has no such operation (huey has no bulk enqueue, for example)."""


class StatementCounter:
    """Counts statements a process sends, for SQLite's trace callback (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self, _statement: str) -> None:
        with self._lock:
            self.count += 1


class System:
    """The producer side, used by the benchmark process. Class attributes say where it runs and what it lacks."""

    #: The backends it runs on.
    backends: tuple[str, ...] = BACKENDS
    #: Modules it needs besides polyqueue's own; a system missing one is skipped, and the skip is reported.
    modules: tuple[str, ...] = ()
    #: Whether it has a batch enqueue API.
    bulk_enqueue = True
    #: Whether the latency scenario measures it (not the naive loop: its latency is its sleep, by construction).
    measures_latency = True
    #: Slow enough that its drains may be given fewer jobs (``slow_drain_jobs``).
    slow = False
    #: True when the system forks its own worker processes (huey's consumer).
    forks_workers = False
    #: Said next to its idle figure, when something about it needs saying.
    idle_note = ""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    @classmethod
    def missing_modules(cls) -> list[str]:
        """The modules of :attr:`modules` that cannot be imported here."""
        return [module for module in cls.modules if importlib.util.find_spec(module) is None]

    def setup(self) -> None:
        """Create the schema if missing and empty it."""

    def clear(self) -> None:
        """Remove every job."""

    def fill(self, n: int) -> None:
        """Enqueue ``n`` jobs, in one batch when the system has a batch API."""
        if self.bulk_enqueue:
            self.enqueue_bulk(n)
        else:
            self.enqueue_single(n)

    def enqueue_bulk(self, n: int) -> None:
        """Enqueue ``n`` jobs through the system's batch API."""
        raise Unsupported(f"{self.spec.system} has no bulk enqueue")

    def enqueue_single(self, n: int) -> None:
        """Enqueue ``n`` jobs one call (one transaction) each."""
        for i in range(n):
            self.enqueue_one({"i": i})

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        """Enqueue one job."""
        raise NotImplementedError

    def drained(self, n: int) -> tuple[bool, str]:
        """Whether the store shows all ``n`` jobs finished and none left, and what it shows."""
        raise NotImplementedError

    def verify_drained(self, n: int, handled: int) -> str:
        """Raise :class:`BenchError` unless all ``n`` jobs finished exactly once; return what was checked."""
        finished, found = self.drained(n)
        if not finished or handled != n:
            raise BenchError(
                f"{self.spec.system} on {self.spec.backend}: {found}, {handled} handler calls, expected {n}"
            )
        return f"{found}, handler calls={handled}"

    def drop(self) -> None:
        """Remove what ``setup`` created."""

    def close(self) -> None:
        """Release connections."""

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        """The consumer side, built inside a worker process."""
        raise NotImplementedError


class WorkerSide:
    """The consumer side of a system, inside one worker process."""

    def __init__(self) -> None:
        self.handled = 0
        #: When the last job finished, for systems that learn it before their run returns (huey).
        self.finished_at: float | None = None
        self.latencies: list[float] = []
        self.statements = StatementCounter()
        self._count_lock = threading.Lock()

    def on_job(self, payload: Any) -> None:
        """What every benchmark handler does: count, and record latency when the producer stamped a time."""
        stamped = payload.get("t") if isinstance(payload, dict) else None
        if stamped is not None:
            self.latencies.append(time.time() - stamped)
        with self._count_lock:
            self.handled += 1

    def trace_sqlite(self) -> None:
        """Count SQLite statements through the trace callback (SQLite systems only)."""

    def statement_count(self) -> int:
        """Statements counted so far by :meth:`trace_sqlite`."""
        return self.statements.count

    def run_burst(self, expected: int) -> None:
        """Process until nothing is ready."""
        raise NotImplementedError

    def run_until(self, stop: threading.Event) -> None:
        """Process (and wait for work) until ``stop`` is set."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


# --- systems whose clients are async (pgqueuer, procrastinate) ------------------------
class AsyncSystem(System):
    """A system with an async client, driven from the benchmark process on an event loop of its own."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self.loop = asyncio.new_event_loop()

    def wait(self, awaitable: Awaitable[Any]) -> Any:
        """Run ``awaitable`` to completion on the system's loop."""
        return self.loop.run_until_complete(awaitable)

    async def close_client(self) -> None:
        """Close the client's connections."""

    def close(self) -> None:
        self.wait(self.close_client())
        self.loop.close()


class AsyncWorkerSide(WorkerSide):
    """A consumer whose worker is a coroutine, run on a fresh event loop per run."""

    async def serve(self, burst: bool, stop: threading.Event | None) -> None:
        """Work until nothing is ready (``burst``) or until ``stop`` is set."""
        raise NotImplementedError

    def run_loop(self, main: Coroutine[Any, Any, None]) -> None:
        """Run the worker's coroutine (asyncio's default loop; pgqueuer uses uvloop)."""
        asyncio.run(main)

    def run_burst(self, expected: int) -> None:
        self.run_loop(self.serve(True, None))

    def run_until(self, stop: threading.Event) -> None:
        self.run_loop(self.serve(False, stop))


async def wait_for(stop: threading.Event) -> None:
    """Wait for a thread's ``stop`` event without blocking the event loop."""
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
