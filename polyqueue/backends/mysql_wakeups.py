"""Wake-ups on MySQL/MariaDB without another server: one long poll per process, inside the database.

MySQL has no LISTEN/NOTIFY. Polling from the worker costs a statement per
look, so a fast wake-up would cost tens of statements a second per idle
worker. Instead ``migrate`` creates a small stored procedure,
``<prefix>await_jobs_v1(seen, looks, step)``, that looks at the newest job id
every ``step`` seconds *inside the server* and returns as soon as it differs
from ``seen`` (or after ``looks`` looks). One thread per process and
``(server, database, prefix)`` keeps one such call running on a dedicated
connection for every idle worker of that process, and wakes them all through
a condition variable when the newest id moves: one client statement per
:data:`LONG_POLL` seconds per process, whatever the number of idle workers,
and a wake-up within about :data:`STEP` seconds of the enqueue's commit.

The newest id catches every enqueue. It can miss a job whose transaction
took its id before another's and committed after that other was already
seen; such a job waits for the worker's safety poll (or the next enqueue).
Retries and delayed jobs are found by the worker's own due-time probe.
When the procedure is missing (a database user without ``CREATE ROUTINE``
when it migrated), :func:`procedure_available` says so and the worker
polls with back-off as before.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, cast

from .. import policy
from .base import ChangeWatcher

if TYPE_CHECKING:
    from .mysql import MySQLBackend

__all__ = ["LONG_POLL", "STEP", "MySQLWakeups", "create_procedure_sql", "procedure_name"]

log = logging.getLogger("polyqueue.mysql")

#: Seconds between two looks at the newest job id, inside the server.
STEP = 0.02
#: Seconds one call of the procedure lasts at most: one client statement per this, per process.
LONG_POLL = 5.0
#: MySQL error numbers: the procedure does not exist; the query was interrupted (KILL).
_NO_PROCEDURE, _INTERRUPTED = 1305, 1317


def procedure_name(prefix: str) -> str:
    """The procedure of this table prefix (versioned: a new body gets a new name, so old workers keep theirs)."""
    return f"{prefix}await_jobs_v1"


def create_procedure_sql(prefix: str, jobs_table: str) -> str:
    """``CREATE PROCEDURE``: look at ``MAX(id)`` every ``step`` s until it differs from ``seen`` or ``looks`` ran out.

    Each look is one statement that sleeps ``step`` and then reads (the
    server counts it as one ``SELECT``; the read names the sleep's result, so
    the server cannot read before it slept), a statement of its own (autocommit,
    READ COMMITTED), so it sees the jobs committed by then. ``MAX(id)`` is
    read from the end of the primary key: one index descent, whatever the
    table holds.
    """
    return (
        f"CREATE PROCEDURE `{procedure_name(prefix)}`(IN seen BIGINT, IN looks INT, IN step DOUBLE)\n"
        "BEGIN\n"
        "  DECLARE latest BIGINT DEFAULT 0;\n"
        "  DECLARE n INT DEFAULT 0;\n"
        f"  SELECT COALESCE(MAX(id), 0) INTO latest FROM `{jobs_table}`;\n"
        "  looking: WHILE latest = seen AND n < looks DO\n"
        "    SET n = n + 1;\n"
        f"    SELECT (SELECT COALESCE(MAX(id), 0) FROM `{jobs_table}` WHERE pause.slept = 0) INTO latest\n"
        "      FROM (SELECT SLEEP(step) AS slept) AS pause;\n"
        "  END WHILE;\n"
        "  SELECT latest;\n"
        "END"
    )


class _Watch:
    """The process's one long poll for a (server, database, prefix): a thread, a connection, its subscribers."""

    _registry: dict[Hashable, _Watch] = {}
    _registry_lock = threading.Lock()

    def __init__(self, backend: MySQLBackend, key: Hashable) -> None:
        self.backend = backend
        self.key = key
        self.subscribers = 0
        self.pid = os.getpid()
        #: Counts the changes seen (and reconnects, after which changes may have been missed).
        self.generation = 0
        #: Calls of the procedure made so far (what the server counts as client statements).
        self.calls = 0
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._conn: Any = None
        self._connection_id: int | None = None
        self._thread = threading.Thread(target=self._run, name=f"polyqueue-mysql-wakeups-{backend.prefix}", daemon=True)

    # --- subscribers ---------------------------------------------------------------------------
    @classmethod
    def subscribe(cls, backend: MySQLBackend) -> _Watch:
        """The running watch for ``backend``'s server and prefix, started when it is the first subscriber."""
        url = backend.engine.url
        key = (url.host, url.port, url.database, url.username, backend.prefix)
        with cls._registry_lock:
            watch = cls._registry.get(key)
            if watch is None or watch.pid != os.getpid():  # a forked child has no copy of the parent's thread
                watch = cls._registry[key] = _Watch(backend, key)
                watch._thread.start()
            watch.subscribers += 1
            return watch

    def unsubscribe(self) -> None:
        """One subscriber fewer; the last one stops the thread (interrupting its call at once)."""
        with self._registry_lock:
            self.subscribers -= 1
            if self.subscribers > 0:
                return
            del self._registry[self.key]
            self._stop.set()
        self._interrupt()

    def wait_for_change(self, seen: int, timeout: float) -> None:
        """Block up to ``timeout`` s until the generation is no longer ``seen``."""
        with self.changed:
            self.changed.wait_for(lambda: self.generation != seen or self._stop.is_set(), timeout)

    # --- the long poll -------------------------------------------------------------------------
    def _run(self) -> None:
        failures, latest = 0, -1
        call = f"CALL `{procedure_name(self.backend.prefix)}`(%s, %s, %s)"
        looks = max(1, round(LONG_POLL / STEP))
        while not self._stop.is_set():
            try:
                if self._conn is None:
                    self._open()
                    if latest >= 0:
                        self._bump()  # changes while the connection was away went unseen: one look for everyone
                    failures = 0
                with self._conn.cursor() as cursor:
                    self.calls += 1
                    cursor.execute(call, (latest, looks, STEP))
                    row = cursor.fetchone()
                    while cursor.nextset():
                        pass
                now = int(row[0]) if row else 0
                if now != latest:
                    # Also the first answer (latest -1): a job enqueued while the first call was on its
                    # way would otherwise be taken as the starting point and never reported.
                    self._bump()
                latest = now
            except Exception as exc:  # driver errors of any kind: reconnect with back-off
                if self._stop.is_set():
                    break
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
                failures += 1
                if failures == 1 and code != _INTERRUPTED:
                    log.warning("MySQL wake-up poll failed (%s); workers poll until it is back", exc)
                self._close_quietly()
                self._stop.wait(policy.LISTEN_RECONNECT.delay(failures) if code != _NO_PROCEDURE else LONG_POLL)
        self._close_quietly()

    def _bump(self) -> None:
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def _open(self) -> None:
        import pymysql

        engine = self.backend.engine
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        kwargs = {"connect_timeout": 10, "charset": "utf8mb4", **kwargs, "autocommit": True}
        conn = pymysql.connect(*args, **kwargs)
        with conn.cursor() as cursor:
            # Each look inside the procedure must see what committed since the last one.
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cursor.execute("SELECT CONNECTION_ID()")
            self._connection_id = int(cursor.fetchone()[0])
        self._conn = conn

    def _interrupt(self) -> None:
        """End the running call now (else the thread and its connection linger up to :data:`LONG_POLL` s)."""
        if self._connection_id is None:
            return
        try:
            kill = f"KILL CONNECTION {int(self._connection_id)}"
            self.backend._run_single(lambda conn: conn.exec_driver_sql(kill))
        except Exception as exc:  # the call ends by itself within LONG_POLL s
            log.debug("could not interrupt the wake-up poll: %s", exc)

    def _close_quietly(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken; nothing to release
                pass


class MySQLWakeups(ChangeWatcher):
    """A worker's subscription to its process's long poll: wakes when a job was enqueued since it last woke."""

    def __init__(self, backend: MySQLBackend) -> None:
        self._watch = _Watch.subscribe(backend)
        self._closed = False
        super().__init__()

    def observe(self) -> Hashable:
        """The watch's generation: it moves each time the newest job id did."""
        return self._watch.generation

    def pause(self, seconds: float) -> None:
        """Wait for the watch to see a change, up to ``seconds``."""
        self._watch.wait_for_change(cast(int, self._seen), seconds)

    def stopped(self) -> bool:
        """True once closed."""
        return self._closed

    def close(self) -> None:
        """Leave the watch (the last subscriber of the process stops it). Idempotent."""
        if not self._closed:
            self._closed = True
            self._watch.unsubscribe()
