"""Worker processes: started with ``spawn``, built and ready before a barrier, so start-up is never timed.

A child runs one role: ``drain`` (burst until nothing is ready), ``serve``
(work until told to stop, answering statement-count marks meanwhile) or
``memory`` (one long-lived worker reporting its RSS as it passes thresholds).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .config import BenchError, Spec
from .systems import WorkerSide, open_system

Pipe = multiprocessing.connection.Connection


def rss_bytes() -> int:
    """This process's resident set size."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


def _drain(side: WorkerSide, params: dict[str, Any], pipe: Pipe) -> dict[str, Any]:
    side.run_burst(int(params.get("expected", 0)))
    return {"end": side.finished_at or time.time(), "handled": side.handled}


def _run_beside(side: WorkerSide, control: Callable[[threading.Event], None]) -> None:
    """Work until ``control``, running in a thread of its own, sets the stop event."""
    stop = threading.Event()
    threading.Thread(target=control, args=(stop,), daemon=True).start()
    side.run_until(stop)


def _serve(side: WorkerSide, params: dict[str, Any], pipe: Pipe) -> dict[str, Any]:
    def answer(stop: threading.Event) -> None:
        while True:
            command = pipe.recv()
            if command == "mark":
                pipe.send(("mark", {"statements": side.statement_count(), "time": time.time()}))
            elif command == "stop":
                stop.set()
                return

    _run_beside(side, answer)
    return {"end": time.time(), "handled": side.handled, "latencies": side.latencies}


def _memory(side: WorkerSide, params: dict[str, Any], pipe: Pipe) -> dict[str, Any]:
    # One long-lived worker; RSS is read the moment the handler count passes each threshold.
    thresholds = list(params["thresholds"])

    def monitor(stop: threading.Event) -> None:
        while thresholds:
            if side.handled >= thresholds[0]:
                pipe.send(("round", {"handled": side.handled, "rss": rss_bytes()}))
                thresholds.pop(0)
            else:
                time.sleep(0.01)
        stop.set()

    _run_beside(side, monitor)
    return {"end": time.time(), "handled": side.handled}


ROLES: dict[str, Callable[[WorkerSide, dict[str, Any], Pipe], dict[str, Any]]] = {
    "drain": _drain,
    "serve": _serve,
    "memory": _memory,
}


def child_main(spec: Spec, role: str, params: dict[str, Any], pipe: Pipe) -> None:
    """Entry point of a worker process: build the worker, report ready, wait for "go", then work."""
    try:
        side = open_system(spec).worker(params)
        if params.get("trace_sqlite"):
            side.trace_sqlite()
        pipe.send(("ready", os.getpid()))
        if pipe.recv() != "go":
            return
        pipe.send(("done", ROLES[role](side, params, pipe)))
        side.close()
    except BaseException as exc:  # report and die: the parent turns it into a BenchError
        with contextlib.suppress(Exception):
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


class Children:
    """A set of worker processes started together and released at one barrier; closes them as a context manager."""

    def __init__(self, spec: Spec, role: str, count: int, params: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.processes: list[Any] = []
        for _ in range(count):
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=child_main, args=(spec, role, params, child_end), daemon=False)
            process.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.processes.append(process)
        for pipe in self.pipes:
            self.expect(pipe, "ready", timeout=120)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def expect(self, pipe: Pipe, what: str, timeout: float = 600) -> Any:
        """The next message of ``pipe``, which must be ``what``."""
        if not pipe.poll(timeout):
            raise BenchError(f"a worker process sent no {what!r} within {timeout:.0f}s")
        kind, data = pipe.recv()
        if kind == "error":
            raise BenchError(f"worker process failed: {data}")
        if kind != what:
            raise BenchError(f"worker process sent {kind!r}, expected {what!r}")
        return data

    def send_all(self, message: str) -> None:
        """Send ``message`` to every process."""
        for pipe in self.pipes:
            pipe.send(message)

    def go(self) -> float:
        """Release the barrier; returns the wall-clock time of the release."""
        started = time.time()
        self.send_all("go")
        return started

    def gather(self, what: str = "done", timeout: float = 900) -> list[Any]:
        """One ``what`` message from every process."""
        return [self.expect(pipe, what, timeout) for pipe in self.pipes]

    def mark(self) -> list[Any]:
        """Every serving process's statement count and clock, now."""
        self.send_all("mark")
        return self.gather("mark")

    def stop(self) -> list[Any]:
        """Stop every serving process; their final reports."""
        self.send_all("stop")
        return self.gather()

    def close(self) -> None:
        """Wait for the processes to exit (kill them after a while)."""
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)
