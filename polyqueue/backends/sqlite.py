"""SQLite: the embedded default. WAL mode, ``BEGIN IMMEDIATE`` transactions, ``UPDATE ... RETURNING`` claims.

Times are stored as Unix epoch seconds (REAL) taken from SQLite's own clock.
Several processes may share one file: writers queue on the file lock for up to
``busy_timeout`` and any residual ``SQLITE_BUSY`` is retried by the shared layer.
"""

from __future__ import annotations

import contextvars
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from .. import policy
from ..errors import ConfigurationError
from .base import ChangeWatcher, OptionParser, WakeupRequest, WakeupSource
from .sql import SQL_CAPABILITIES, THREADS, AwareUTCTime, ErrorKind, SQLBackend

__all__ = ["CommitWatcher", "EpochTime", "SQLiteBackend"]

T = TypeVar("T")
#: Set while this thread's transactions should poll for the write lock (:meth:`SQLiteBackend.eager_locking`).
_EAGER: contextvars.ContextVar[bool] = contextvars.ContextVar("polyqueue_sqlite_eager", default=False)
_SQLITE_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
#: The database file cannot be opened: its directory is missing or not writable (a wrong path in the URL).
_SQLITE_CANTOPEN = sqlite3.SQLITE_CANTOPEN
#: SQLite's messages for a column the table lacks (it has no error code of their own).
_MISSING_COLUMN = ("no such column", "has no column")
_EPOCH_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


@contextmanager
def _eager_context() -> Iterator[None]:
    token = _EAGER.set(True)
    try:
        yield
    finally:
        _EAGER.reset(token)


class EpochTime(AwareUTCTime):
    """An aware UTC datetime stored as REAL seconds since the Unix epoch."""

    impl = sa.Float
    cache_ok = True

    def to_stored(self, moment: datetime) -> float:
        """Seconds since the epoch."""
        return moment.timestamp()

    def from_stored(self, value: float) -> datetime:
        """Back from seconds since the epoch."""
        return datetime.fromtimestamp(value, UTC)


class CommitWatcher(ChangeWatcher):
    """Wakes an idle worker when any process commits to the database file, without sending SQL.

    Every ``interval`` seconds it stats the ``-wal`` file and the database
    file: a commit appends to (or, after a checkpoint, rewrites) the WAL,
    changing its size or modification time. Nothing reaches SQLite while
    nothing changes, and a new job is seen within ``interval`` rather than
    within the back-off poll. A change may be the worker's own commit: its
    probe then finds nothing due and it waits again.

    It only stats, never opens, those files: closing any descriptor of a file
    drops every POSIX lock the process holds on it, SQLite's included (which
    corrupts the database). Two commits rewriting the same WAL region within
    one tick of a coarse file clock can look like one; the worker's safety
    poll bounds how late the second is then seen (Linux 6.13+ gives a
    fine-grained time to a file that was just looked at).
    """

    def __init__(self, database: str, interval: float = 0.005) -> None:
        self._paths = (database + "-wal", database)
        self._interval = interval
        super().__init__()

    def observe(self) -> tuple[tuple[int, int, int, int] | None, ...]:
        """The identity, size and times of the ``-wal`` and database files."""
        parts: list[tuple[int, int, int, int] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError:
                parts.append(None)
            else:
                parts.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(parts)

    def pause(self, seconds: float) -> None:
        """Sleep one interval (or what is left of the wait)."""
        time.sleep(min(self._interval, seconds))


class SQLiteBackend(SQLBackend):
    """The embedded backend; ``sqlite:///:memory:`` is single-process."""

    name = "sqlite"
    capabilities = SQL_CAPABILITIES
    connect_options: ClassVar[dict[str, OptionParser]] = {**SQLBackend.connect_options, "sqlite_synchronous": str}
    default_driver = "sqlite+pysqlite"
    driver_extra = ""
    async_drivers = {"aiosqlite": "sqlite+aiosqlite"}
    # aiosqlite is itself a thread per connection, awaited once per cursor call: the thread bridge, one hop per
    # Queue call, measured faster (docs/asyncio.md).
    default_async_driver = THREADS
    partial_index_keyword = "sqlite_where"
    # A writer blocked on the file lock sleeps in SQLite's busy handler (1, 2, 5, 10, 15, 20, 25 ms, ...) and
    # looks again only then: a purge rests at least this long between batches so a waiting claim gets in.
    lock_poll_seconds = 0.03

    def __init__(self, url: sa.engine.URL, options: dict[str, Any]) -> None:
        if url.host:
            # sqlite://polyqueue.db reads "polyqueue.db" as a host name; SQLAlchemy's answer is five lines.
            raise ConfigurationError(
                f"a SQLite URL has three slashes before a relative path and four before an absolute one: "
                f"sqlite:///{url.host}{'/' + url.database if url.database else ''} or sqlite:////var/lib/app/queue.db"
            )
        self.in_memory = url.database in (None, "", ":memory:")
        if self.in_memory:
            # One shared connection: serialise transactions across threads ourselves.
            self._memory_lock: threading.RLock | None = threading.RLock()
        else:
            self._memory_lock = None
        self.synchronous = str(options.get("sqlite_synchronous", "FULL")).upper()
        if self.synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError("sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA")
        super().__init__(url, options)

    def asyncio_variant(self) -> SQLiteBackend | None:
        """As the shared layer's, except for ``:memory:``: a second engine would open a second, empty database."""
        return None if self.in_memory else super().asyncio_variant()  # type: ignore[return-value]

    def time_type(self) -> sa.types.TypeEngine[datetime]:
        """REAL epoch seconds."""
        return EpochTime()

    def now(self) -> sa.ColumnElement[Any]:
        """SQLite's clock (millisecond resolution)."""
        return sa.type_coerce(sa.literal_column(_EPOCH_NOW, sa.Float()), EpochTime())

    def seconds_from_now(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """Epoch arithmetic is plain addition."""
        return sa.type_coerce(
            sa.literal_column(_EPOCH_NOW, sa.Float()) + sa.type_coerce(seconds, sa.Float()), EpochTime()
        )

    def now_text(self) -> sa.ColumnElement[str]:
        """``strftime``'s ``%f`` is seconds with milliseconds, as the entry format wants."""
        return sa.func.strftime(
            sa.literal_column("'%Y-%m-%dT%H:%M:%fZ'"), sa.literal_column("julianday('now')"), type_=sa.Text()
        )

    def history_appended(self, history: sa.ColumnElement[Any], entry: dict[str, Any]) -> sa.ColumnElement[str]:
        """``json_insert(..., '$[#]', json_object(...))``, the oldest entry dropped at the limit."""
        base = sa.func.coalesce(history, sa.literal_column("'[]'"))
        kept = sa.case(
            (sa.func.json_array_length(base) >= policy.ERROR_HISTORY_LIMIT, sa.func.json_remove(base, "$[0]")),
            else_=base,
        )
        entry_object = sa.func.json_object(*(part for key, value in entry.items() for part in (sa.literal(key), value)))
        return sa.func.json_insert(kept, "$[#]", entry_object, type_=sa.Text())

    def history_stamped(self, history: sa.ColumnElement[Any], at: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """``json_set(history, '$[#-1].at', at)``."""
        return sa.func.json_set(history, "$[#-1].at", at, type_=sa.Text())

    def engine_options(self) -> dict[str, Any]:
        """Autocommit at the driver level so that ``begin_transaction`` decides how transactions start."""
        connect_args = {"isolation_level": None, "check_same_thread": False, "timeout": 30.0}
        if self.in_memory:
            return {"connect_args": connect_args, "poolclass": StaticPool}
        return {"connect_args": connect_args, "pool_size": 8, "max_overflow": 32}

    def on_connect(self, dbapi_connection: Any) -> None:
        """WAL, a generous busy timeout and the chosen durability."""
        cursor = dbapi_connection.cursor()
        try:
            if not self.in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute(f"PRAGMA synchronous={self.synchronous}")
        finally:
            cursor.close()

    def begin_transaction(self, connection: Connection) -> None:
        """Take the write lock up front: a deferred transaction that upgrades can fail with SQLITE_BUSY at once."""
        if _EAGER.get():
            self._begin_polling(connection)
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    def after_purge_batch(self) -> None:
        """Checkpoint the WAL the batch wrote (PASSIVE: it takes no lock and waits for none).

        Otherwise the deleted pages pile up in the WAL until some commit
        passes the auto-checkpoint size and copies them back itself, inside
        that commit: a claim's, stalled for the whole copy.
        """
        if self.in_memory:
            return
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                cursor.close()
        finally:
            raw.close()

    def eager_locking(self) -> AbstractContextManager[Any]:
        """Transactions begun in this context poll for the write lock every millisecond (see :meth:`_begin_polling`)."""
        return _eager_context()

    def _begin_polling(self, connection: Connection) -> None:
        """``BEGIN IMMEDIATE``, trying again every millisecond while another connection writes (for up to 30 s).

        SQLite's busy handler sleeps ever longer between looks (up to 100 ms),
        so a writer waiting behind a busy worker misses the millisecond gaps
        between its transactions and waits for seconds; a purge batch polls
        instead, and rests after it (``lock_poll_seconds``) so claims get in.
        """
        connection.exec_driver_sql("PRAGMA busy_timeout=0")
        try:
            deadline = time.monotonic() + 30.0
            while True:
                try:
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                    return
                except sa_exc.OperationalError as exc:
                    code = getattr(exc.orig, "sqlite_errorcode", None)
                    if code is None or (code & 0xFF) not in _SQLITE_BUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)
        finally:
            connection.exec_driver_sql("PRAGMA busy_timeout=30000")

    def classify(self, error: sa_exc.DBAPIError) -> str:
        """Busy/locked are transient; a missing table means migrate has not run."""
        orig = error.orig
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) in _SQLITE_BUSY:
            return ErrorKind.TRANSIENT
        if code is not None and (code & 0xFF) == _SQLITE_CANTOPEN:
            return ErrorKind.CONFIGURATION  # the file's directory does not exist or is not writable
        if isinstance(orig, sqlite3.OperationalError) and "no such table" in str(orig):
            return ErrorKind.MISSING_SCHEMA
        if isinstance(orig, sqlite3.OperationalError) and any(text in str(orig) for text in _MISSING_COLUMN):
            return ErrorKind.SCHEMA_MISMATCH
        return super().classify(error)

    def serialized(self) -> AbstractContextManager[Any]:
        """``:memory:`` has one shared connection: its transactions take turns across threads."""
        return self._memory_lock if self._memory_lock is not None else nullcontext()

    def wakeup_source(self, request: WakeupRequest) -> WakeupSource | None:
        """A :class:`CommitWatcher` on the database file (no SQL while idle); None for ``:memory:`` and URIs.

        This is a local wake-up (processes sharing one file), not the
        ``notify`` capability: the Redis depth cache still brings its own.
        """
        database = self.url.database
        if self.in_memory or not database or database.startswith("file:"):
            return None
        return CommitWatcher(os.path.abspath(database))

    def autocommit_engine(self) -> Engine:
        """A second pool on a file; ``:memory:`` has only its one connection."""
        return self.engine if self.in_memory else super().autocommit_engine()

    @contextmanager
    def migration_lock(self, connection: Connection) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` already serialises migrations."""
        yield

    def conflict_insert(self, table: sa.Table) -> Any:
        """SQLite's ``INSERT`` with ``ON CONFLICT``."""
        from sqlalchemy.dialects.sqlite import insert

        return insert(table)
