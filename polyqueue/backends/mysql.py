"""MySQL 8 and MariaDB 10.6+: MySQL 8 SQL only, ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE``.

MySQL has neither ``UPDATE ... RETURNING`` nor partial indexes, so: claims
select ids under SKIP LOCKED, update them and read them back, all in one
short READ COMMITTED transaction; indexes lead with ``status`` so finished
rows sit apart from ready ones; the dedupe key's uniqueness among live jobs
comes from a generated column that is NULL once the job is finished.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from ..errors import ConfigurationError
from .base import Capability
from .sql import LIVE_SQL, ErrorKind, SQLBackend

__all__ = ["MySQLBackend", "UTCDateTime"]

_TRANSIENT = {1213, 1205}
_DISCONNECT = {2003, 2006, 2013, 2014, 2055, 1053, 1927, 4031, 1077, 1152}
_SQL_MODE = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
_NOW = "UTC_TIMESTAMP(6)"


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """``DATETIME(6)`` holding UTC; reads back as aware UTC datetimes."""

    impl = mysql.DATETIME(fsp=6)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class MySQLBackend(SQLBackend):
    """MySQL 8.0.1+ and MariaDB 10.6+ through PyMySQL."""

    name = "mysql"
    capabilities = frozenset(
        {
            Capability.DEDUPE,
            Capability.PRIORITIES,
            Capability.DELAYED,
            Capability.TRANSACTIONAL_ENQUEUE,
            Capability.MULTI_PROCESS,
        }
    )
    default_driver = "mysql+pymysql"
    driver_extra = "mysql"
    supports_returning = False

    def time_type(self) -> sa.types.TypeEngine[datetime]:
        """DATETIME(6) in UTC."""
        return UTCDateTime()

    def now(self) -> sa.ColumnElement[Any]:
        """``UTC_TIMESTAMP(6)``: microseconds, independent of the session time zone."""
        return sa.literal_column(_NOW, UTCDateTime())

    def seconds_from_now(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """``TIMESTAMPADD(MICROSECOND, ROUND(:s * 1e6), UTC_TIMESTAMP(6))``."""
        micros = sa.cast(sa.func.round(sa.type_coerce(seconds, sa.Float()) * 1000000), sa.BigInteger())
        return sa.type_coerce(sa.func.timestampadd(sa.literal_column("MICROSECOND"), micros, self.now()), UTCDateTime())

    def extra_columns(self) -> list[sa.Column[Any]]:
        """The dedupe key while the job is live, NULL afterwards: unique among live jobs."""
        live = ", ".join(str(s) for s in LIVE_SQL)
        return [
            sa.Column(
                "live_dedupe_key",
                sa.String(255),
                sa.Computed(f"CASE WHEN status IN ({live}) THEN dedupe_key END", persisted=False),
            )
        ]

    def _indexes(self, jobs: sa.Table) -> list[sa.Index]:
        """``status`` leads each index, so finished rows never sit among ready or leased ones."""
        p, c = self.prefix, jobs.c
        return [
            sa.Index(f"{p}jobs_ready", c.status, c.queue, c.priority.desc(), c.run_at, c.id),
            sa.Index(f"{p}jobs_leases", c.status, c.lease_expires_at),
            sa.Index(f"{p}jobs_dedupe", c.queue, c.live_dedupe_key, unique=True),
            sa.Index(f"{p}jobs_finished", c.status, c.finished_at),
        ]

    def engine_options(self) -> dict[str, Any]:
        """utf8mb4, UTC session, explicit sql_mode, READ COMMITTED."""
        return {
            "connect_args": {
                "charset": "utf8mb4",
                "init_command": f"SET time_zone = '+00:00', sql_mode = '{_SQL_MODE}'",
            },
            "isolation_level": "READ COMMITTED",
            "pool_size": 8,
            "max_overflow": 32,
            "pool_recycle": 3600,
        }

    def on_connect(self, dbapi_connection: Any) -> None:
        """Refuse servers without SKIP LOCKED (MySQL < 8.0.1, MariaDB < 10.6)."""
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT VERSION()")
            version = str(cursor.fetchone()[0])
        finally:
            cursor.close()
        numbers = tuple(int(part) for part in version.split("-")[0].split(".")[:3] if part.isdigit())
        is_mariadb = "mariadb" in version.lower()
        minimum = (10, 6) if is_mariadb else (8, 0, 1)
        if numbers < minimum:
            product = "MariaDB" if is_mariadb else "MySQL"
            raise ConfigurationError(
                f"{product} {version} has no SKIP LOCKED; polyqueue needs "
                f"{product} {'.'.join(map(str, minimum))} or newer"
            )

    def classify(self, error: sa_exc.DBAPIError) -> str:
        """By MySQL error number: 1213/1205 transient, 1146 missing table, 2003/2006/2013... disconnect."""
        args = getattr(error.orig, "args", ())
        code = args[0] if args and isinstance(args[0], int) else None
        if code in _TRANSIENT:
            return ErrorKind.TRANSIENT
        if code == 1146:
            return ErrorKind.MISSING_SCHEMA
        if code in _DISCONNECT:
            return ErrorKind.DISCONNECT
        if code == 1062:
            return ErrorKind.DUPLICATE
        return super().classify(error)

    @contextmanager
    def migration_lock(self, connection: Connection) -> Iterator[None]:
        """``GET_LOCK``: MySQL DDL is not transactional, so a named lock serialises migrations."""
        name = f"polyqueue-migrate:{self.prefix}"
        got = connection.execute(sa.select(sa.func.get_lock(name, 60))).scalar()
        if got != 1:
            raise ConfigurationError("another process has held the migration lock for 60 s")
        try:
            yield
        finally:
            connection.execute(sa.select(sa.func.release_lock(name)))

    def update_locked(
        self,
        connection: Connection,
        candidates: sa.Select[Any],
        values: dict[str, Any],
        returning: bool,
    ) -> list[Any]:
        """``SELECT id ... FOR UPDATE SKIP LOCKED``, ``UPDATE ... WHERE id IN``, then read the rows back."""
        ids = [r[0] for r in connection.execute(candidates.with_for_update(skip_locked=True))]
        if not ids:
            return []
        connection.execute(sa.update(self.jobs).where(self.jobs.c.id.in_(ids)).values(**values))
        if not returning:
            return []
        return list(connection.execute(sa.select(*self._columns).where(self.jobs.c.id.in_(ids))))

    def insert_rows(self, connection: Connection, rows: list[dict[str, Any]]) -> list[Hashable]:
        """Row by row: without RETURNING, this is the portable way to learn each id."""
        stmt = self.plain_insert()
        return [connection.execute(stmt, row).inserted_primary_key[0] for row in rows]

    def insert_ignoring_live_duplicate(self, connection: Connection, row: dict[str, Any]) -> Hashable | None:
        """``ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)`` makes the driver report the live job's id."""
        stmt = mysql.insert(self.jobs).values(**row)
        stmt = stmt.on_duplicate_key_update(id=sa.func.last_insert_id(self.jobs.c.id))
        return connection.execute(stmt).lastrowid  # type: ignore[no-any-return]
