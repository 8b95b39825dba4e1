"""huey's ``SqliteHuey`` and its consumer, which forks its own worker processes."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from ..config import JOB_TYPE, Spec
from .base import System, WorkerSide


def _make_huey(path: str, counter: Any = None, latencies: Any = None) -> tuple[Any, Any]:
    """A ``SqliteHuey`` at ``path`` and its no-op task, which counts into ``counter`` (shared memory) when given."""
    from huey import SqliteHuey

    huey = SqliteHuey(name="pqbench", filename=path, results=False)

    @huey.task(name=JOB_TYPE)
    def noop(i: int | None = None, t: float | None = None) -> None:
        if counter is not None:
            if t is not None and latencies is not None:
                latencies.put(time.time() - t)
            with counter.get_lock():
                counter.value += 1

    return huey, noop


class HueySystem(System):
    """huey next to the benchmark's SQLite file (``huey.db``), without results."""

    backends = ("sqlite",)
    modules = ("huey",)
    bulk_enqueue = False
    forks_workers = True

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self.path = str(Path(make_url(spec.url).database or "bench.db").with_name("huey.db"))
        self.huey, self.task = _make_huey(self.path)

    def setup(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.huey.flush()

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        self.task(**payload)

    def drained(self, n: int) -> tuple[bool, str]:
        left = self.huey.pending_count()
        return not left, f"{left} tasks left"

    def drop(self) -> None:
        self.huey.flush()
        self.huey.storage.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + suffix)

    def close(self) -> None:
        self.huey.storage.close()

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        return HueyWorkerSide(self.path, int(params.get("processes", 1)))


class HueyWorkerSide(WorkerSide):
    """huey's consumer with ``workers=processes, worker_type='process'``; counts live in shared memory."""

    def __init__(self, path: str, processes: int) -> None:
        super().__init__()
        fork = multiprocessing.get_context("fork")
        self.counter = fork.Value("q", 0)
        self.shared_statements = fork.Value("q", 0)
        self.latency_queue: Any = fork.SimpleQueue()
        self.path = path
        self.processes = processes
        self.huey, _ = _make_huey(path, self.counter, self.latency_queue)

    def trace_sqlite(self) -> None:
        storage = self.huey.storage
        original = storage._create_connection
        shared = self.shared_statements

        def count(_statement: str) -> None:
            with shared.get_lock():
                shared.value += 1

        def traced() -> Any:
            conn = original()
            conn.set_trace_callback(count)
            return conn

        storage._create_connection = traced

    def statement_count(self) -> int:
        """Statements counted in all of the consumer's processes."""
        return int(self.shared_statements.value)

    def _consumer(self) -> Any:
        return self.huey.create_consumer(workers=self.processes, worker_type="process", periodic=False)

    def run_burst(self, expected: int) -> None:
        consumer = self._consumer()
        consumer.start()
        while self.counter.value < expected:
            time.sleep(0.0005)
        self.finished_at = time.time()  # huey deletes a task when it dequeues it: run means done
        self.handled = self.counter.value
        consumer.stop(graceful=True)

    def run_until(self, stop: threading.Event) -> None:
        consumer = self._consumer()
        consumer.start()
        stop.wait()
        consumer.stop(graceful=True)
        self.handled = self.counter.value
        while not self.latency_queue.empty():
            self.latencies.append(self.latency_queue.get())
