"""Child processes for ``Worker(..., execution="process")``: run sync handlers where an overrun can be killed.

A thread cannot be stopped from outside; a process can. Each child runs one
job at a time, handed over a pipe, and stays up for the next one; a child
whose job was timed out or cancelled is killed (SIGTERM, then SIGKILL) and a
fresh one is started when next needed. Children are started with ``spawn``
(never ``fork``: the worker holds database connections and runs threads),
so handlers must be importable by name -- module-level functions.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import threading
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

from .errors import ConfigurationError
from .job import Job

__all__ = ["ChildFailure", "ChildGone", "ProcessPool"]

log = logging.getLogger("polyqueue.worker")

#: How long a killed child gets to exit on SIGTERM before SIGKILL.
_TERM_GRACE = 2.0


class ChildFailure(Exception):
    """A handler raised in a child process; ``text`` is its ``Type: message`` and traceback, as the child saw it."""

    def __init__(self, text: str, summary: str) -> None:
        super().__init__(summary)
        self.text = text


class ChildGone(Exception):
    """The child process running a job exited (killed on a timeout or cancel, or crashed) before answering."""


def _child_main(conn: Connection, handlers: Mapping[str, Callable[[Job], Any]]) -> None:
    """The child's loop: run each job sent, answer ``("ok", result)`` or ``("error", text, summary)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    conn.send(("ready",))  # imports done: an attempt's clock starts only now
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            result = handlers[job.job_type](job)
            reply: tuple[Any, ...] = ("ok", result)
        except BaseException as exc:  # the parent records it as the attempt's failure
            summary = f"{type(exc).__name__}: {exc}"
            text = summary + "\n\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=20))
            reply = ("error", text, summary)
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result: say so as a failure
            conn.send(("error", f"handler result cannot be sent to the worker: {exc}", "unpicklable result"))


class _Child:
    def __init__(self, context: Any, handlers: Mapping[str, Callable[[Job], Any]]) -> None:
        self.conn, child_end = context.Pipe()
        self.process = context.Process(
            target=_child_main, args=(child_end, dict(handlers)), name="polyqueue-child", daemon=True
        )
        self.process.start()
        child_end.close()
        self.ready = False

    def wait_ready(self) -> None:
        """Block until the child has imported its handlers (EOFError if it died first)."""
        if not self.ready:
            self.conn.recv()
            self.ready = True

    def kill(self) -> None:
        """End the process (SIGTERM, then SIGKILL); a thread blocked reading its pipe then reads EOF."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(_TERM_GRACE)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(_TERM_GRACE)

    def close(self) -> None:
        """Kill the process and close the pipe (only the thread that uses the pipe calls this)."""
        self.kill()
        try:
            self.conn.close()
        except OSError:
            pass

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(_TERM_GRACE)
        self.close()


class ProcessPool:
    """Up to ``size`` child processes, each running one job at a time; a job is run with :meth:`run`."""

    def __init__(self, handlers: Mapping[str, Callable[[Job], Any]], size: int) -> None:
        for job_type, fn in handlers.items():
            try:
                pickle.dumps(fn)
            except Exception as exc:
                raise ConfigurationError(
                    f"execution='process' runs handlers in child processes, which import them by name: "
                    f"the handler of {job_type!r} cannot be sent ({exc}); make it a module-level function"
                ) from None
        self._handlers = dict(handlers)
        self._size = size
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._idle: list[_Child] = []
        self._busy: dict[int, _Child] = {}  # by id(job)
        self._closed = False

    def run(self, job: Job, starting: Callable[[], None] = lambda: None) -> Any:
        """Run ``job``'s handler in a child and return its result.

        ``starting`` is called once a child is ready, just before the job is
        handed over (a new child's start-up does not count as the job's run).
        Raises :class:`ChildFailure` when the handler raised, :class:`ChildGone`
        when the child died first (see :meth:`kill`).
        """
        child = self._take(job)
        try:
            child.wait_ready()
            starting()
            child.conn.send(job)
            reply = child.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._discard(job, child)
            raise ChildGone(f"the child process running job {job.id} exited before answering") from None
        except BaseException:
            self._discard(job, child)
            raise
        self._give_back(job, child)
        if reply[0] == "ok":
            return reply[1]
        raise ChildFailure(reply[1], reply[2])

    def kill(self, job: Job) -> bool:
        """Kill the child running ``job`` (its :meth:`run` raises :class:`ChildGone`); False if none runs it."""
        with self._lock:
            child = self._busy.get(id(job))
        if child is None:
            return False
        child.kill()
        return True

    def close(self) -> None:
        """Stop idle children and kill busy ones (their jobs were released or settled by then)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy.values())
        for child in idle:
            child.stop()
        for child in busy:
            child.kill()  # the thread running its job reads EOF and closes the pipe

    def _take(self, job: Job) -> _Child:
        with self._lock:
            child = self._idle.pop() if self._idle else None
        if child is None or not child.process.is_alive():
            if child is not None:
                child.close()
            child = _Child(self._context, self._handlers)
        with self._lock:
            self._busy[id(job)] = child
        return child

    def _give_back(self, job: Job, child: _Child) -> None:
        with self._lock:
            self._busy.pop(id(job), None)
            if not self._closed and len(self._idle) < self._size:
                self._idle.append(child)
                return
        child.stop()

    def _discard(self, job: Job, child: _Child) -> None:
        with self._lock:
            self._busy.pop(id(job), None)
        child.close()
