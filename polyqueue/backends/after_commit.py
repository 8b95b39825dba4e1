"""Actions that must wait until a caller's SQLAlchemy transaction has committed (and vanish if it rolls back).

Used by :meth:`SQLBackend.run_after_commit`: the Redis depth cache counts a
transactional enqueue only once the application's transaction has made it
visible.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AfterCommitWatcher"]

log = logging.getLogger("polyqueue.after_commit")


@dataclass(slots=True)
class _Pending:
    connection: Any
    transaction: Any
    action: Callable[[], None]
    #: When it was added, then when its commit began.
    since: float


class AfterCommitWatcher:
    """Runs actions once a caller's SQLAlchemy transaction has committed; drops them if it rolls back.

    SQLAlchemy's ``commit`` event fires *before* the database commits, so an
    action waits (on a small thread) until the transaction has left its
    connection without a rollback: only then has the commit succeeded. A
    transaction abandoned for :data:`ABANDONED` seconds drops its actions.
    """

    ABANDONED = 600.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: weakref.WeakKeyDictionary[Any, list[_Pending]] = weakref.WeakKeyDictionary()
        self._committing: list[_Pending] = []
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, connection: Any, action: Callable[[], None]) -> bool:
        """Run ``action`` after ``connection``'s current transaction commits; False if that cannot be seen."""
        from sqlalchemy import event
        from sqlalchemy.engine import Connection

        if not isinstance(connection, Connection):
            return False
        transaction = connection.get_transaction()
        if transaction is None:
            return False
        with self._lock:
            pending = self._watched.get(connection)
            if pending is None:
                pending = self._watched[connection] = []
                event.listen(connection, "commit", self._on_commit)
                event.listen(connection, "rollback", self._on_rollback)
            pending[:] = [p for p in pending if time.monotonic() - p.since < self.ABANDONED]
            pending.append(_Pending(connection, transaction, action, time.monotonic()))
        return True

    def _on_commit(self, connection: Any) -> None:
        current = connection.get_transaction()
        with self._lock:
            pending = self._watched.get(connection, [])
            ready = [p for p in pending if p.transaction is current]
            pending[:] = [p for p in pending if p.transaction is not current]
            for p in ready:
                p.since = time.monotonic()
            self._committing.extend(ready)
            if ready and self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="polyqueue-after-commit", daemon=True)
                self._thread.start()
        if ready:
            self._wake.set()

    def _on_rollback(self, connection: Any) -> None:
        current = connection.get_transaction()
        with self._lock:
            pending = self._watched.get(connection, [])
            pending[:] = [p for p in pending if p.transaction is not current]
            # A failed commit is rolled back while its transaction is still the connection's current one.
            self._committing = [p for p in self._committing if p.transaction is not current]

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                done = [p for p in self._committing if p.connection.get_transaction() is not p.transaction]
                expired = [p for p in self._committing if time.monotonic() - p.since > self.ABANDONED]
                finished = {id(p) for p in done + expired}
                self._committing = [p for p in self._committing if id(p) not in finished]
                idle = not self._committing
                # A commit returns within milliseconds; one that failed waits for its rollback, so look less often.
                fresh = any(time.monotonic() - p.since < 1.0 for p in self._committing)
            for p in done:
                try:
                    p.action()
                except Exception:
                    log.exception("an action waiting for a committed transaction failed")
            if idle:
                self._wake.wait(1.0)
                self._wake.clear()
            else:
                time.sleep(0.0002 if fresh else 0.05)

    def close(self) -> None:
        """Stop the thread; actions still waiting for their commit are dropped (reconciles correct the counts)."""
        self._closed = True
        self._wake.set()
