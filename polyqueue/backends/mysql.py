"""MySQL 8 and MariaDB 10.6+: MySQL 8 SQL only, ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE``.

MySQL has neither ``RETURNING`` nor partial indexes, so this dialect differs
from the shared layer in four places:

* Claims lock ready ids with one ``SELECT ... FOR UPDATE SKIP LOCKED`` per
  (queue, job type) pair, sent as one ``UNION ALL`` statement, each an
  ordered range of ``jobs_ready``; the best ``limit`` of them are updated
  and read back, in one short READ COMMITTED transaction.
* Indexes lead with ``status``, so finished rows sit in their own part of
  each index and never lengthen a claim's scan. The dedupe key's uniqueness
  among the jobs holding it comes from a generated column that is NULL once
  the job has let it go (unique indexes allow many NULLs). The same column
  carries the enqueue marker and the import key of rows that hold no dedupe
  key, so the markers cost no index of their own (every row of a MySQL
  index pays an entry, NULL or not).
* Bulk inserts learn their ids from ``LAST_INSERT_ID`` when the server hands
  out auto-increment values consecutively, and from a tagged read-back when it
  does not (see :meth:`MySQLBackend.insert_rows`).
* Names compare exactly: the tables use utf8mb4 with the server's binary
  NO PAD collation, so case, accents, trailing spaces and different emoji all
  stay distinct.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from .. import policy
from ..errors import ConfigurationError, PolyqueueError
from ..job import JobRecord, JobStatus, NewJob
from .base import EnqueueBatch, OptionParser, WakeupRequest, WakeupSource
from .sql import (
    LIVE_SQL,
    PENDING_SQL,
    RECORD_CHUNK,
    SQL_CAPABILITIES,
    AwareUTCTime,
    ErrorKind,
    SQLBackend,
    UpdateValues,
)

__all__ = ["MySQLBackend", "UTCDateTime", "check_server_version", "exact_collation"]

#: 1213 deadlock (the server rolled the whole transaction back); 1205 lock wait timeout (only the
#: statement was undone: ``SQLBackend._run`` rolls the rest back explicitly before retrying).
_TRANSIENT = {1213, 1205}
#: Lost or refused connections, server shutdown, connection killed, too many connections.
_DISCONNECT = {1040, 1053, 1077, 1152, 1927, 2002, 2003, 2006, 2013, 2014, 2055, 4031}
#: Access denied (1044, 1045, 1698), unknown database (1049), an authentication method the client cannot
#: speak (1251, 2059): the URL is wrong, and retrying cannot help.
_REFUSED_LOGIN = {1044, 1045, 1049, 1251, 1698, 2059}
#: Unknown column (1054), data too long for a column (1406): the table is not the shape this polyqueue writes.
_SCHEMA_MISMATCH = {1054, 1406}
#: Set per session so the server's global mode cannot change behaviour. Strict, and in particular
#: without NO_BACKSLASH_ESCAPES or ANSI_QUOTES, which would break the driver's quoting.
log = logging.getLogger("polyqueue.mysql")
_SQL_MODE = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
_NOW = "UTC_TIMESTAMP(6)"
#: Exact utf8mb4 collations, best first: binary and NO PAD (trailing spaces count).
#: MySQL >= 8.0.17 has utf8mb4_0900_bin, MariaDB utf8mb4_nopad_bin; older MySQL 8 only utf8mb4_bin (PAD SPACE).
_EXACT_COLLATIONS = ("utf8mb4_0900_bin", "utf8mb4_nopad_bin", "utf8mb4_bin")
#: Rows per multi-row INSERT; more buys little and costs memory for the statement text.
_BULK_ROWS = 1000
#: The columns a bulk INSERT names, and the SQL for one row of values (constants inline, the rest bound).
_BULK_COLUMNS = ("queue", "job_type", "payload", "priority", "max_attempts", "status", "attempts", "lease_token",
                 "run_at", "created_at", "enqueue_token", "headers", "timeout")  # fmt: skip
_BULK_ROW_SQL = f"(%s,%s,%s,%s,%s,'{JobStatus.PENDING}',0,0,TIMESTAMPADD(MICROSECOND,%s,{_NOW}),{_NOW},%s,%s,%s"
#: What ``live_dedupe_key`` holds for a row with no dedupe key to hold: NUL (never in a dedupe key), a kind, the marker.
_TOKEN_SLOT, _IMPORT_SLOT = "CONCAT(CHAR(0 USING utf8mb4), 't', {})", "CONCAT(CHAR(0 USING utf8mb4), 'i', {})"


def check_server_version(version: str) -> None:
    """Raise :class:`ConfigurationError` unless ``SELECT VERSION()`` names a server with SKIP LOCKED.

    MySQL needs 8.0.1, MariaDB 10.6.
    """
    is_mariadb = "mariadb" in version.lower()
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version.removeprefix("5.5.5-") if is_mariadb else version)
    product = "MariaDB" if is_mariadb else "MySQL"
    minimum = (10, 6, 0) if is_mariadb else (8, 0, 1)
    if match is None:
        raise ConfigurationError(f"cannot read the {product} server version {version[:80]!r}")
    numbers = tuple(int(part or 0) for part in match.groups())
    if numbers < minimum:
        raise ConfigurationError(
            f"{product} {version} is too old: polyqueue needs FOR UPDATE SKIP LOCKED, "
            f"which {product} has from {'.'.join(map(str, minimum[:2] if is_mariadb else minimum))} on"
        )


def exact_collation(available: Sequence[str]) -> str:
    """The best exact utf8mb4 collation among the server's ``available`` ones."""
    for name in _EXACT_COLLATIONS:
        if name in available:
            return name
    raise ConfigurationError("the server has no binary utf8mb4 collation (utf8mb4_bin)")


class UTCDateTime(AwareUTCTime):
    """``DATETIME(6)`` holding UTC; reads back as aware UTC datetimes, microseconds kept."""

    impl = mysql.DATETIME(fsp=6)
    cache_ok = True

    def to_stored(self, moment: datetime) -> datetime:
        """Naive UTC, as DATETIME holds it."""
        return moment.replace(tzinfo=None)

    def from_stored(self, value: datetime) -> datetime:
        """DATETIME's naive UTC, made aware."""
        return value.replace(tzinfo=UTC)


class MySQLBackend(SQLBackend):
    """MySQL 8.0.1+ and MariaDB 10.6+ through PyMySQL."""

    name = "mysql"
    capabilities = SQL_CAPABILITIES
    default_driver = "mysql+pymysql"
    driver_extra = "mysql"
    async_drivers = {"asyncmy": "mysql+asyncmy", "aiomysql": "mysql+aiomysql"}
    # asyncmy measured fastest for AsyncQueue calls, ahead of the thread bridge and aiomysql (docs/asyncio.md).
    default_async_driver = "asyncmy"
    async_driver_extra = "mysql,asyncio"
    supports_returning = False
    connect_options: ClassVar[dict[str, OptionParser]] = {**SQLBackend.connect_options, "mysql_wakeups": str}

    def __init__(self, url: sa.engine.URL, options: dict[str, Any]) -> None:
        super().__init__(url, options)
        # "server": idle workers wait in a long poll inside the server (fast wake-ups, but the server runs a
        # look every 20 ms per process); "poll" (default): they poll the table, costing the server nothing idle.
        self.wakeups = str(options.get("mysql_wakeups", "poll")).lower()
        if self.wakeups not in ("poll", "server"):
            raise ConfigurationError("mysql_wakeups must be 'poll' or 'server'")
        for table in self.metadata.tables.values():
            table.dialect_kwargs.update(mysql_engine="InnoDB", mysql_charset="utf8mb4")
        self._bulk_sql: dict[tuple[int, bool], str] = {}

    # ------------------------------------------------------------------
    # Types, clock, schema
    # ------------------------------------------------------------------
    def time_type(self) -> sa.types.TypeEngine[datetime]:
        """DATETIME(6) in UTC."""
        return UTCDateTime()

    def now(self) -> sa.ColumnElement[Any]:
        """``UTC_TIMESTAMP(6)``: microseconds, independent of the session time zone, fixed for a statement."""
        return sa.literal_column(_NOW, UTCDateTime())

    def seconds_from_now(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """``TIMESTAMPADD(MICROSECOND, ROUND(:s * 1e6), UTC_TIMESTAMP(6))``."""
        micros = sa.cast(sa.func.round(sa.type_coerce(seconds, sa.Float()) * 1000000), sa.BigInteger())
        return sa.type_coerce(sa.func.timestampadd(sa.literal_column("MICROSECOND"), micros, self.now()), UTCDateTime())

    def now_text(self) -> sa.ColumnElement[str]:
        """``UTC_TIMESTAMP(6)`` formatted, cut to milliseconds."""
        text = sa.func.date_format(self.now(), sa.literal("%Y-%m-%dT%H:%i:%s.%f", sa.Text()))
        return sa.func.concat(sa.func.left(text, 23), "Z", type_=sa.Text())

    def history_appended(self, history: sa.ColumnElement[Any], entry: dict[str, Any]) -> sa.ColumnElement[str]:
        """``JSON_ARRAY_APPEND(..., '$', JSON_OBJECT(...))`` (MySQL 8 syntax), the oldest entry dropped at the limit."""
        base = sa.func.coalesce(history, "[]")
        kept = sa.case(
            (sa.func.json_length(base) >= policy.ERROR_HISTORY_LIMIT, sa.func.json_remove(base, "$[0]")),
            else_=base,
        )
        entry_object = sa.func.json_object(*(part for key, value in entry.items() for part in (sa.literal(key), value)))
        return sa.func.json_array_append(kept, "$", entry_object, type_=sa.Text())

    def history_stamped(self, history: sa.ColumnElement[Any], at: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """``JSON_SET`` on the path of the newest entry's ``at``."""
        newest_at = sa.func.concat("$[", sa.func.json_length(history) - 1, "].at")
        return sa.func.json_set(history, newest_at, at, type_=sa.Text())

    def extra_columns(self) -> list[sa.Column[Any]]:
        """Virtual generated columns for the indexes, and the bulk-insert tag.

        ``live_dedupe_key`` is the dedupe key while the job holds it (live,
        or finished with a hold not yet let go: see ``holds_dedupe_slot``), so
        a unique index on ``(queue, live_dedupe_key)`` holds each key once.
        A row holding no key puts its enqueue marker (``+token``) or its
        import key there instead, NUL-prefixed so it can never equal a
        dedupe key: those markers are unique too, at no index cost.
        ``claim_priority`` is ``-priority``: indexed ascending it gives claim
        order (priority descending, run_at and id ascending) on every server,
        including MariaDB before 10.8, which ignores DESC in index definitions.
        ``insert_tag`` marks the rows of one bulk insert where ids cannot be
        computed (see :meth:`insert_rows`); it means nothing afterwards.
        """
        live = ", ".join(str(s) for s in LIVE_SQL)
        slot = (
            f"CASE WHEN dedupe_key IS NOT NULL AND (status IN ({live}) OR dedupe_held_until IS NOT NULL) "
            f"THEN dedupe_key WHEN enqueue_token > 0 THEN {_TOKEN_SLOT.format('enqueue_token')} "
            f"WHEN import_key IS NOT NULL THEN {_IMPORT_SLOT.format('import_key')} END"
        )
        return [
            sa.Column("live_dedupe_key", sa.String(255), sa.Computed(slot, persisted=False)),
            sa.Column("claim_priority", sa.BigInteger, sa.Computed("0 - priority", persisted=False)),
            sa.Column("insert_tag", sa.BigInteger, nullable=True),
        ]

    def indexes(self, jobs: sa.Table) -> list[sa.Index]:
        """``status`` leads each index, so finished rows never sit among ready or leased ones."""
        p, c = self.prefix, jobs.c
        return [
            sa.Index(f"{p}jobs_ready", c.status, c.queue, c.job_type, *self._claim_order_indexable()),
            sa.Index(f"{p}jobs_leases", c.status, c.lease_expires_at),
            sa.Index(f"{p}jobs_dedupe", c.queue, c.live_dedupe_key, unique=True),
            sa.Index(f"{p}jobs_finished", c.status, c.finished_at),
            sa.Index(f"{p}jobs_running", c.status, c.queue, c.concurrency_key),
            *self.listing_indexes(jobs),
        ]

    def migrate(self) -> None:
        """Create the tables (InnoDB, utf8mb4, the server's exact collation), then as the shared layer does."""
        with self._schema_check_suspended():
            self._migrate_with_exact_collation()

    def _migrate_with_exact_collation(self) -> None:
        available = self._run(
            lambda conn: [
                r[0]
                for r in conn.execute(
                    sa.text(
                        "SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN :names"
                    ).bindparams(sa.bindparam("names", expanding=True)),
                    {"names": list(_EXACT_COLLATIONS)},
                )
            ]
        )
        collation = exact_collation(available)
        for table in self.metadata.tables.values():
            table.dialect_kwargs["mysql_collate"] = collation
        super().migrate()
        self._create_wakeup_procedure()

    # ------------------------------------------------------------------
    # Wake-ups: a long poll inside the server (see mysql_wakeups)
    # ------------------------------------------------------------------
    def _create_wakeup_procedure(self) -> None:
        """Create the wake-up procedure if missing; without ``CREATE ROUTINE`` workers poll instead (logged)."""
        from .mysql_wakeups import create_procedure_sql

        if self._wakeup_procedure_exists():
            return
        ddl = create_procedure_sql(self.prefix, self.jobs.name)
        try:
            self._run_single(lambda conn: conn.exec_driver_sql(ddl))
        except PolyqueueError as exc:
            if not self._wakeup_procedure_exists():  # not a race with another migrate: no privilege, say
                level = logging.WARNING if self.wakeups == "server" else logging.INFO
                log.log(level, "no wake-up procedure (%s): idle workers will poll the jobs table instead", exc)

    def _wakeup_procedure_exists(self) -> bool:
        from .mysql_wakeups import procedure_name

        found = self._run_single(
            lambda conn: conn.execute(
                sa.text(
                    "SELECT 1 FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE() "
                    "AND ROUTINE_TYPE = 'PROCEDURE' AND ROUTINE_NAME = :name"
                ),
                {"name": procedure_name(self.prefix)},
            ).first()
        )
        return found is not None

    def wakeup_source(self, request: WakeupRequest) -> WakeupSource | None:
        """With ``mysql_wakeups="server"``, the process's shared long poll for new jobs; else None (the worker polls).

        None also when the procedure is missing (``migrate`` lacked ``CREATE ROUTINE``).
        """
        from .mysql_wakeups import MySQLWakeups

        if self.wakeups != "server":
            return None
        try:
            if not self._wakeup_procedure_exists():
                return None
        except PolyqueueError:
            return None
        return MySQLWakeups(self)

    def drop_schema(self) -> None:
        """Drop the tables, indexes and wake-up procedure of this prefix (tests and uninstalling)."""
        from .mysql_wakeups import procedure_name

        self._run_single(lambda conn: conn.exec_driver_sql(f"DROP PROCEDURE IF EXISTS `{procedure_name(self.prefix)}`"))
        super().drop_schema()

    def upgrade_schema(self, connection: Connection, from_version: int | None) -> None:
        """Version 2: the text columns become LONGTEXT (TEXT held 64 KB, less than the 1 MiB payload limit)."""
        super().upgrade_schema(connection, from_version)
        if from_version is not None and from_version < 2:
            connection.exec_driver_sql(
                f"ALTER TABLE `{self.jobs.name}` MODIFY payload LONGTEXT NOT NULL, MODIFY last_error LONGTEXT NULL, "
                "MODIFY errors LONGTEXT NULL, MODIFY result LONGTEXT NULL"
            )

    def upgrade_dedupe_index(self, connection: Connection) -> None:
        """Version 5: ``live_dedupe_key`` gets its new expression; the server rebuilds its unique index."""
        column = sa.schema.CreateColumn(self.jobs.c.live_dedupe_key).compile(dialect=connection.dialect)
        connection.exec_driver_sql(f"ALTER TABLE `{self.jobs.name}` MODIFY COLUMN {column}")

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

    # ------------------------------------------------------------------
    # Connections and errors
    # ------------------------------------------------------------------
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
        """Refuse servers without SKIP LOCKED (MySQL < 8.0.1, MariaDB < 10.6) with a ConfigurationError."""
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT VERSION()")
            version = str(cursor.fetchone()[0])
        finally:
            cursor.close()
        check_server_version(version)

    def classify(self, error: sa_exc.DBAPIError) -> str:
        """By MySQL error number: 1213/1205 transient, 1146 missing table, 2003/2006/2013... disconnect.

        Access denied and unknown database are configuration errors; an
        unknown column or a value too long for its column a schema mismatch.
        """
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
        if code in _REFUSED_LOGIN:
            return ErrorKind.CONFIGURATION
        if code in _SCHEMA_MISMATCH:
            return ErrorKind.SCHEMA_MISMATCH
        return super().classify(error)

    # ------------------------------------------------------------------
    # Claims
    # ------------------------------------------------------------------
    def _claim_order_indexable(self) -> list[sa.ColumnElement[Any]]:
        """Claim order with ``claim_priority`` (ascending) standing for ``priority`` descending."""
        c = self.jobs.c
        return policy.claim_order_sql(c, negated={"priority": c.claim_priority})

    def ready_in(self, queue: str, job_type: str, limit: int) -> sa.Select[Any]:
        """The locking read of one (queue, job type)'s ready jobs, in claim order, served by ``jobs_ready``.

        With ``status``, ``queue`` and ``job_type`` fixed, the index yields rows
        already in claim order, so InnoDB stops after ``limit`` unlocked rows
        instead of locking every ready row for a sort. The index is forced so
        a plan change on skewed statistics cannot bring that sort back.
        """
        j = self.jobs
        return (
            sa.select(j.c.id, j.c.priority, j.c.run_at)
            .with_hint(j, f"FORCE INDEX (`{self.prefix}jobs_ready`)", "mysql")
            .where(j.c.status == PENDING_SQL, j.c.queue == queue, j.c.job_type == job_type, j.c.run_at <= self.now())
            .where(self.uncontrolled(queue))
            .order_by(*self._claim_order_indexable())
            .limit(limit)
            .with_for_update(skip_locked=True)
        )

    def claim_ready(
        self, connection: Connection, pairs: Sequence[tuple[str, str]], limit: int, values: UpdateValues
    ) -> list[Any]:
        """Lock ready ids pair by pair in one statement, keep the best ``limit``, update them and read them back.

        One locking read per (queue, job type) pair, because ``IN`` lists
        cannot be read from the index in claim order; they travel as one
        ``UNION ALL`` of parenthesised locking reads. With several pairs the
        surplus rows (at most ``limit`` per extra pair) stay locked, unchanged,
        until this short transaction ends.
        """
        reads = [self.ready_in(queue, job_type, limit) for queue, job_type in pairs]
        statement = reads[0] if len(reads) == 1 else sa.union_all(*reads)
        found = list(connection.execute(statement))
        if len(reads) > 1:
            found.sort(key=lambda r: policy.claim_order_key(r.priority, r.run_at, r.id))
        return self._update_ids(connection, [r.id for r in found[:limit]], values, returning=True)

    def update_locked(
        self, connection: Connection, candidates: sa.Select[Any], values: UpdateValues, returning: bool
    ) -> list[Any]:
        """``SELECT id ... FOR UPDATE SKIP LOCKED``, ``UPDATE ... WHERE id IN``, then read the rows back."""
        ids = [r[0] for r in connection.execute(candidates.with_for_update(skip_locked=True))]
        return self._update_ids(connection, ids, values, returning)

    def _update_ids(self, connection: Connection, ids: list[Any], values: UpdateValues, returning: bool) -> list[Any]:
        if not ids:
            return []
        j = self.jobs
        connection.execute(sa.update(j).where(j.c.id.in_(ids)).ordered_values(*values))
        if not returning:
            return []
        return list(connection.execute(sa.select(*self._columns).where(j.c.id.in_(ids))))

    # ------------------------------------------------------------------
    # Producing
    # ------------------------------------------------------------------
    def enqueue(self, batch: EnqueueBatch) -> list[Hashable]:
        """As the shared layer, but inside a SAVEPOINT when writing a batch into the caller's transaction.

        A failed MySQL statement undoes only itself, so without the savepoint a
        batch that fails half-way would leave its first rows in the caller's
        transaction, to be committed with it.
        """
        connection = batch.connection
        if len(batch.jobs) < 2 or not isinstance(connection, Connection) or not connection.in_transaction():
            return super().enqueue(batch)
        try:
            savepoint = connection.begin_nested()
        except sa_exc.DBAPIError as exc:
            raise self._translate(exc) from exc
        try:
            ids = super().enqueue(batch)
        except BaseException:
            if savepoint.is_active:
                try:
                    savepoint.rollback()
                except sa_exc.DBAPIError:
                    pass  # a deadlock already rolled the caller's whole transaction back
            raise
        try:
            savepoint.commit()
        except sa_exc.DBAPIError as exc:
            raise self._translate(exc) from exc
        return ids

    def insert_rows(self, connection: Connection, rows: list[dict[str, Any]]) -> list[Hashable]:
        """Multi-row INSERTs of up to 1,000 rows, values bound, statement text built without SQLAlchemy's compiler.

        Without RETURNING, an INSERT reports only ``LAST_INSERT_ID()``, the
        first id it generated. The others follow from it only when InnoDB hands
        a multi-row INSERT consecutive values, which it guarantees with
        ``innodb_autoinc_lock_mode`` 0 or 1 (MariaDB's default): ids are then
        computed, spaced by ``auto_increment_increment``. With mode 2 (MySQL
        8's default) concurrent statements may interleave their values, so the
        rows carry a random ``insert_tag`` and their ids are read back in one
        primary-key range read from the first id (ids grow in row order within
        a statement, and each statement starts above the previous one). Both
        settings are read once per call, from the connection that inserts, so
        a caller's connection with its own session settings is handled too.
        """
        if len(rows) == 1:
            result = connection.exec_driver_sql(self._bulk_statement(1, tagged=False), self._bulk_params(rows))
            return [result.lastrowid]
        lock_mode, step, packet = connection.exec_driver_sql(
            "SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment, @@max_allowed_packet"
        ).one()
        consecutive = int(lock_mode) in (0, 1)
        tag = None if consecutive else random.getrandbits(62) + 1
        ids: list[Hashable] = []
        first_id: int | None = None
        for chunk in self._chunks(rows, int(packet) // 2):
            params = self._bulk_params(chunk) if tag is None else self._bulk_params(chunk, tag)
            first = int(connection.exec_driver_sql(self._bulk_statement(len(chunk), tag is not None), params).lastrowid)
            first_id = first if first_id is None else first_id
            if consecutive:
                ids.extend(range(first, first + len(chunk) * int(step), int(step)))
        if tag is not None:
            j = self.jobs
            ids = list(
                connection.execute(
                    sa.select(j.c.id).where(j.c.id >= first_id, j.c.insert_tag == tag).order_by(j.c.id)
                ).scalars()
            )
            if len(ids) != len(rows):
                raise PolyqueueError(f"bulk insert read back {len(ids)} ids for {len(rows)} rows; nothing was stored")
        return ids

    @staticmethod
    def _chunks(rows: list[dict[str, Any]], byte_budget: int) -> Iterator[list[dict[str, Any]]]:
        """Runs of at most ``_BULK_ROWS`` rows whose statement stays under ``byte_budget`` bytes."""
        chunk: list[dict[str, Any]] = []
        size = 0
        for row in rows:
            # Quoting at most doubles a value's UTF-8 bytes; isascii() is O(1), encode() is not.
            row_size = 200 + 2 * sum(
                len(text) if text.isascii() else len(text.encode())
                for text in (row["payload"], row["queue"], row["job_type"], row.get("headers") or "")
            )
            if chunk and (len(chunk) >= _BULK_ROWS or size + row_size > byte_budget):
                yield chunk
                chunk, size = [], 0
            chunk.append(row)
            size += row_size
        if chunk:
            yield chunk

    @staticmethod
    def _bulk_params(rows: list[dict[str, Any]], tag: int | None = None) -> tuple[Any, ...]:
        params: list[Any] = []
        for row in rows:
            if row["status"] != JobStatus.PENDING or row["attempts"] or row["lease_token"] or row["dedupe_key"]:
                raise ValueError("bulk inserts take new pending jobs without a dedupe key")
            params += (row["queue"], row["job_type"], row["payload"], row["priority"], row["max_attempts"],
                       round(row["delay"] * 1_000_000), row.get("enqueue_token"), row.get("headers"),
                       row.get("timeout"))  # fmt: skip
            if tag is not None:
                params.append(tag)
        return tuple(params)

    def _bulk_statement(self, count: int, tagged: bool) -> str:
        """``INSERT ... VALUES (...), (...)`` for ``count`` rows: plain text, never compiled by SQLAlchemy.

        The two sizes nearly every call uses, one row and a full chunk, are kept.
        """
        key = (count, tagged)
        text = self._bulk_sql.get(key)
        if text is None:
            columns = (*_BULK_COLUMNS, "insert_tag") if tagged else _BULK_COLUMNS
            row = _BULK_ROW_SQL + (",%s)" if tagged else ")")
            text = f"INSERT INTO `{self.jobs.name}` ({','.join(columns)}) VALUES {','.join([row] * count)}"
            if count in (1, _BULK_ROWS):
                self._bulk_sql[key] = text
        return text

    def insert_ignoring_duplicates(self, connection: Connection, table: sa.Table, values: dict[str, Any]) -> bool:
        """``INSERT IGNORE``: a duplicate key becomes a warning and no row (0 rows affected)."""
        return connection.execute(sa.insert(table).values(**values).prefix_with("IGNORE")).rowcount == 1

    #: The id reported after a duplicate key is the conflicting row's: the shared layer checks whose it is.
    insert_reports_holder = True

    def insert_ignoring_live_duplicate(self, connection: Connection, row: dict[str, Any]) -> Hashable | None:
        """``ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)`` makes the driver report the holder's id."""
        stmt = mysql.insert(self.jobs).values(**row)
        stmt = stmt.on_duplicate_key_update(id=sa.func.last_insert_id(self.jobs.c.id))
        return connection.execute(stmt).lastrowid  # type: ignore[no-any-return]

    def keeping(self, queue: str, dedupe_key: str) -> sa.ColumnElement[bool]:
        """``(queue, live_dedupe_key)``: the generated column shows a key exactly while its row keeps it."""
        c = self.jobs.c
        return sa.and_(c.queue == queue, c.live_dedupe_key == dedupe_key, c.dedupe_key == dedupe_key)

    def insert_ignoring_conflicts(self, connection: Connection, rows: list[dict[str, Any]]) -> None:
        """``INSERT ... ON DUPLICATE KEY UPDATE id = id``: a row that would break a unique key changes nothing.

        (Not ``INSERT IGNORE``, which would also turn strict-mode errors into warnings.)
        """
        stmt = mysql.insert(self.jobs)
        connection.execute(stmt.on_duplicate_key_update(id=stmt.inserted.id), rows)

    def _slot_rows(self, connection: Connection, slots: set[tuple[str, str]]) -> list[Any]:
        """Rows whose ``(queue, live_dedupe_key)`` is one of ``slots``, read with locks.

        A row another transaction is still inserting is waited for: InnoDB's
        locking read meets that row's implicit lock.
        """
        j = self.jobs
        found: list[Any] = []
        ordered = sorted(slots)
        for start in range(0, len(ordered), RECORD_CHUNK):
            chunk = ordered[start : start + RECORD_CHUNK]
            # Two plain IN lists use the index (a long row-value IN list makes MariaDB scan); pairs are checked here.
            stmt = (
                sa.select(j.c.id, j.c.queue, j.c.live_dedupe_key, j.c.enqueue_token, j.c.import_key)
                .where(j.c.queue.in_({q for q, _ in chunk}), j.c.live_dedupe_key.in_({k for _, k in chunk}))
                .with_for_update()
            )
            wanted = set(chunk)
            found.extend(row for row in connection.execute(stmt) if (row.queue, row.live_dedupe_key) in wanted)
        return found

    def find_enqueue_marker(self, conn: Connection, jobs: Sequence[NewJob], token: int) -> Hashable | None:
        """The ``+token`` row, found through ``live_dedupe_key``, waiting for an attempt still committing.

        The marker is in its own slot, or, when the marked row holds a dedupe
        key, it is the holder of one of the batch's keys.
        """
        slots = {(job.queue, f"\x00t{token}") for job in jobs}
        slots |= {(job.queue, job.dedupe_key) for job in jobs if job.dedupe_key is not None}
        return next((row.id for row in self._slot_rows(conn, slots) if row.enqueue_token == token), None)

    def find_imported(self, conn: Connection, records: Sequence[JobRecord]) -> dict[str, Hashable]:
        """``{import_key: id}`` through ``live_dedupe_key``, waiting for rows still being committed.

        Import keys are in their own slots, except on a row holding its dedupe
        key, which shows the key there: the holders of the records' keys are
        read too.
        """
        keys = {r.import_key for r in records if r.import_key is not None}
        slots = {(r.queue, f"\x00i{r.import_key}") for r in records if r.import_key is not None}
        slots |= {(r.queue, r.dedupe_key) for r in records if r.dedupe_key is not None}
        return {row.import_key: row.id for row in self._slot_rows(conn, slots) if row.import_key in keys}
