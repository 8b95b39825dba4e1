"""PostgreSQL: one-statement ``FOR UPDATE SKIP LOCKED`` claims, partial indexes, LISTEN/NOTIFY wake-ups."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from .base import Capability, WakeupSource
from .sql import ErrorKind, SQLBackend

__all__ = ["PostgreSQLBackend"]

log = logging.getLogger("polyqueue.postgresql")
_TRANSIENT = {"40001", "40P01", "55P03"}
_DISCONNECT_PREFIXES = ("08", "57P")


class PostgreSQLBackend(SQLBackend):
    """PostgreSQL 12+ through psycopg 3."""

    name = "postgresql"
    capabilities = frozenset(
        {
            Capability.NOTIFY,
            Capability.DEDUPE,
            Capability.PRIORITIES,
            Capability.DELAYED,
            Capability.TRANSACTIONAL_ENQUEUE,
            Capability.MULTI_PROCESS,
        }
    )
    default_driver = "postgresql+psycopg"
    driver_extra = "postgresql"
    partial_index_keyword = "postgresql_where"

    @property
    def channel(self) -> str:
        """The NOTIFY channel: the table prefix keeps separate installations apart."""
        return f"{self.prefix}jobs"

    def time_type(self) -> sa.types.TypeEngine[datetime]:
        """TIMESTAMPTZ."""
        return sa.DateTime(timezone=True)

    def now(self) -> sa.ColumnElement[Any]:
        """Transaction start time; every transaction polyqueue opens is short."""
        return sa.func.now(type_=sa.DateTime(timezone=True))

    def seconds_from_now(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """``now() + :s * interval '1 second'``."""
        interval = sa.cast(seconds, sa.Float()).op("*")(sa.literal_column("interval '1 second'"))
        return sa.type_coerce(self.now().op("+")(interval), sa.DateTime(timezone=True))

    def engine_options(self) -> dict[str, Any]:
        """UTC session time zone and an application name that benchmarks can count by."""
        return {
            "connect_args": {"options": "-c timezone=UTC", "application_name": "polyqueue"},
            "pool_size": 8,
            "max_overflow": 32,
        }

    def classify(self, error: sa_exc.DBAPIError) -> str:
        """SQLSTATE-based: 40001/40P01 transient, class 08/57P disconnects, 42P01 missing table."""
        state = getattr(error.orig, "sqlstate", None)
        if state in _TRANSIENT:
            return ErrorKind.TRANSIENT
        if state == "42P01":
            return ErrorKind.MISSING_SCHEMA
        if state is not None and state.startswith(_DISCONNECT_PREFIXES):
            return ErrorKind.DISCONNECT
        if state is None and isinstance(error, sa_exc.OperationalError):
            return ErrorKind.DISCONNECT
        return super().classify(error)

    @contextmanager
    def migration_lock(self, connection: Connection) -> Iterator[None]:
        """A transaction-scoped advisory lock keyed by the table prefix."""
        key = zlib.crc32(f"polyqueue-migrate:{self.prefix}".encode()) & 0x7FFFFFFF
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
        yield

    def migrate(self) -> None:
        """Create the schema, then tune autovacuum for a high-churn table."""
        super().migrate()

        def tune(conn: Connection) -> None:
            conn.exec_driver_sql(
                f'ALTER TABLE "{self.jobs.name}" SET (autovacuum_vacuum_scale_factor = 0.02, '
                "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_limit = 1000, fillfactor = 90)"
            )

        self._run(tune)

    def insert_ignoring_live_duplicate(self, connection: Connection, row: dict[str, Any]) -> Hashable | None:
        """``INSERT ... ON CONFLICT DO NOTHING RETURNING id``."""
        from sqlalchemy.dialects.postgresql import insert

        stmt = insert(self.jobs).values(**row).on_conflict_do_nothing().returning(self.jobs.c.id)
        return connection.execute(stmt).scalar()

    def after_enqueue(self, connection: Connection, queues: set[str]) -> None:
        """One tiny NOTIFY per batch, delivered when the enqueue transaction commits."""
        connection.execute(sa.select(sa.func.pg_notify(self.channel, "")))

    def wakeup_source(self, queues: Sequence[str]) -> WakeupSource | None:
        """A dedicated LISTEN connection."""
        return PgListener(self)


class PgListener:
    """Blocks on NOTIFY from a dedicated autocommit connection; reconnects when it drops."""

    def __init__(self, backend: PostgreSQLBackend) -> None:
        self.backend = backend
        self.conn: Any = None
        self._failures = 0

    def _open(self) -> None:
        import psycopg

        url = self.backend.engine.url
        args, kwargs = self.backend.engine.dialect.create_connect_args(url)
        kwargs = {**kwargs, "autocommit": True}
        kwargs.pop("options", None)
        self.conn = psycopg.connect(*args, **kwargs, application_name="polyqueue-listen")
        self.conn.execute(f'LISTEN "{self.backend.channel}"')

    def wait(self, timeout: float) -> bool:
        """Wait for a notification; after a reconnect report True so the worker polls once."""
        deadline = time.monotonic() + timeout
        reconnected = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return reconnected
            try:
                if self.conn is None or self.conn.closed:
                    self._open()
                    reconnected = True
                    self._failures = 0
                    return True
                got = False
                for _ in self.conn.notifies(timeout=remaining, stop_after=1):
                    got = True
                if got:
                    # Debounce: swallow whatever else already arrived.
                    for _ in self.conn.notifies(timeout=0.0):
                        pass
                return got
            except Exception as exc:  # driver errors of any kind: reconnect with back-off
                self._failures += 1
                if self._failures == 1:
                    log.warning("LISTEN connection lost (%s); reconnecting", type(exc).__name__)
                self._close_quietly()
                time.sleep(min(remaining, 0.1 * 2 ** min(self._failures, 5)))

    def _close_quietly(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
        self.conn = None

    def close(self) -> None:
        """Close the LISTEN connection."""
        self._close_quietly()
