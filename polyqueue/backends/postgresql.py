"""PostgreSQL: one-statement ``FOR UPDATE SKIP LOCKED`` claims, partial indexes, LISTEN/NOTIFY wake-ups.

What differs from the shared SQL layer:

* A claim is one statement, sent outside an explicit transaction (one round
  trip): it rescues expired leases (pending again, or dead on the final
  attempt), takes the best ready jobs queue by queue through the partial
  ``jobs_ready`` index, and returns them.
* Enqueue sends one tiny ``pg_notify`` per batch inside its own transaction,
  so the notification is delivered exactly when the jobs become visible.
  The enqueue token rides in the same statement (``+token`` on the first
  row, ``-token`` on the rest, from the row's ordinal), and a retry after a
  lost connection waits on the marker's unique index entry, so a COMMIT
  still in flight is seen before anything is inserted again.
  Idle workers block on a dedicated ``LISTEN`` connection (:class:`PgListener`).
* ``connection=`` accepts the caller's SQLAlchemy ``Connection`` or a raw
  psycopg 3 connection; the jobs are written inside that transaction.
* Errors are classified by SQLSTATE; ``migrate`` holds an advisory lock and
  tunes autovacuum for a table whose rows churn quickly.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from .. import policy
from ..errors import ConfigurationError
from ..job import Job, JobRecord, JobStatus, NewJob
from .base import Capability, ClaimRequest, ClaimResult, EnqueueBatch, WakeupRequest, WakeupSource
from .sql import PENDING_SQL, PROCESSING_SQL, SQL_CAPABILITIES, ZERO, ErrorKind, SQLBackend

_BIGINT_ARRAY = pg.ARRAY(sa.BigInteger())

__all__ = ["PgListener", "PostgreSQLBackend"]

log = logging.getLogger("polyqueue.postgresql")
#: serialization_failure, deadlock_detected, lock_not_available: run the transaction again.
_TRANSIENT = {"40001", "40P01", "55P03"}
#: connection_exception (08...), operator intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 starting up).
_DISCONNECT_PREFIXES = ("08", "57P")
#: undefined_column: the table is not the shape this polyqueue writes (an older schema, or not ours).
_SCHEMA_MISMATCH = {"42703"}
#: What the server answers a connection it refuses for good -- wrong password, unknown role or database,
#: no pg_hba.conf entry. libpq reports these without a SQLSTATE, so the message is all there is.
_REFUSED_LOGIN = re.compile(
    r"authentication failed|no password supplied|no pg_hba\.conf entry|(role|database) \"[^\"]*\" does not exist|"
    r"permission denied for database",
    re.IGNORECASE,
)
#: Notification payloads longer than this are sent empty ("look at every queue") rather than truncated.
_MAX_NOTIFY_QUEUE_BYTES = 200
#: Detect a silently dead connection (host gone, network cut) within about a minute, at no cost to the server.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
#: Schema version that introduced the autovacuum settings.
_TUNED_SINCE = 1

_PENDING, _PROCESSING, _DEAD = (f"'{s}'" for s in (JobStatus.PENDING, JobStatus.PROCESSING, JobStatus.DEAD))


def _sql(expression: sa.ColumnElement[Any]) -> str:
    """A policy expression as PostgreSQL text, for the claim statement (its values are constants, never input)."""
    return str(expression.compile(dialect=pg.dialect(), compile_kwargs={"literal_binds": True}))


def _columns(prefix: str = "") -> dict[str, Any]:
    return {name: sa.literal_column(prefix + name) for name in ("priority", "run_at", "id")}


_CLAIM_ORDER = ", ".join(_sql(clause) for clause in policy.claim_order_sql(_columns()))
_MERGE_ORDER = ", ".join(_sql(clause) for clause in policy.claim_order_sql(_columns("c.")))
_CANCEL_FLAG = sa.literal_column("j.cancel_requested", sa.Boolean())
_FINAL = _sql(
    sa.or_(
        policy.final_attempt_sql(sa.literal_column("j.attempts"), sa.literal_column("j.max_attempts")),
        sa.true() == _CANCEL_FLAG,
    )
)
_EXPIRED_STATUS = _sql(
    policy.expired_lease_status_sql(sa.literal_column("j.attempts"), sa.literal_column("j.max_attempts"), _CANCEL_FLAG)
)
_EXPIRED_ERROR = _sql(policy.expired_lease_error_sql(sa.literal_column("j.locked_by")))
_CAPPED = _sql(
    policy.capped_max_attempts_sql(sa.literal_column("j.max_attempts"), sa.literal_column("CAST(:cap AS integer)"))
)
# An expired lease is claimed again at once only where the policy would send it back to pending.
_CLAIMABLE_EXPIRED = _sql(
    policy.expired_lease_status_sql(
        sa.literal_column("attempts"), sa.literal_column("max_attempts"),
        sa.literal_column("cancel_requested", sa.Boolean()),
    )
    == JobStatus.PENDING
)  # fmt: skip
_EXPIRED_HOLD = _sql(
    policy.dedupe_hold_sql(
        policy.expired_lease_status_sql(
            sa.literal_column("j.attempts"), sa.literal_column("j.max_attempts"), _CANCEL_FLAG
        ),
        sa.literal_column("now() + j.dedupe_for * interval '1 second'"),
    )
)

_JSONB = pg.JSONB()
_ENTRY_TIME = sa.func.to_char(
    sa.func.timezone(sa.literal_column("'UTC'"), sa.func.now()),
    sa.literal_column("""'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"""),
    type_=sa.Text(),
)


def _history_appended(history: sa.ColumnElement[Any], entry: dict[str, Any]) -> sa.ColumnElement[str]:
    """``jsonb || jsonb_build_array(jsonb_build_object(...))``, the oldest entry dropped at the limit."""
    base = sa.cast(sa.func.coalesce(history, sa.literal_column("'[]'")), _JSONB)
    kept = sa.case(
        (sa.func.jsonb_array_length(base) >= policy.ERROR_HISTORY_LIMIT, base.op("-")(sa.literal_column("0"))),
        else_=base,
    )
    parts = (part for key, value in entry.items() for part in (sa.cast(sa.literal(key), sa.Text()), value))
    appended = kept.op("||")(sa.func.jsonb_build_array(sa.func.jsonb_build_object(*parts)))
    return sa.cast(appended, sa.Text())


_EXPIRED_ERRORS = _sql(
    _history_appended(
        sa.literal_column("j.errors"),
        policy.expired_lease_entry_sql(sa.literal_column("j.attempts"), sa.literal_column("j.locked_by"), _ENTRY_TIME),
    )
)

# One statement, one round trip. `expired` and `ready` lock their rows with SKIP LOCKED; `chosen`
# keeps the best `limit` of the ready rows and of the expired rows (of the asked queues and types)
# that still have attempts left; `marked` adds the other expired rows, which the policy's expiry
# rule sends back to pending or, on their final attempt, to dead. A paused or limited queue (one with a
# row in the queues table) gives this statement nothing: its claims go through its settings row
# (SQLBackend._claim_controlled). Ready rows are read pair by pair
# of (queue, job type), each an ordered range of the partial ready index (see `_ready_sql`). The
# rules -- claim order, the final attempt, the expiry outcome and its error, the attempt cap --
# are the policy module's expressions, rendered once.
_CLAIM_SQL = f"""
WITH expired AS MATERIALIZED (
    SELECT id, queue, job_type, priority, run_at, attempts, max_attempts, cancel_requested
    FROM {{jobs}}
    WHERE status = {_PROCESSING} AND lease_expires_at <= now()
    ORDER BY lease_expires_at
    LIMIT {policy.RESCUE_BATCH}
    FOR UPDATE SKIP LOCKED
), ready AS MATERIALIZED (
    {{ready}}
), chosen AS MATERIALIZED (
    SELECT id, was_expired
    FROM (
        SELECT id, priority, run_at, false AS was_expired FROM ready
        UNION ALL
        SELECT id, priority, run_at, true FROM expired
        WHERE queue = ANY(CAST(:queues AS text[])) {{expired_of_types}} AND {_CLAIMABLE_EXPIRED}
            AND queue NOT IN (SELECT name FROM {{queues}})
    ) AS candidates
    ORDER BY {_CLAIM_ORDER}
    LIMIT :limit
), marked AS (
    SELECT id, true AS claimed, was_expired FROM chosen
    UNION ALL
    SELECT id, false, true FROM expired WHERE id NOT IN (SELECT id FROM chosen)
), changed AS (
    UPDATE {{jobs}} AS j SET
        status = CASE WHEN m.claimed THEN {_PROCESSING} ELSE {_EXPIRED_STATUS} END,
        attempts = j.attempts + CASE WHEN m.claimed THEN 1 ELSE 0 END,
        max_attempts = CASE WHEN m.claimed THEN {_CAPPED} ELSE j.max_attempts END,
        lease_token = CASE WHEN m.claimed THEN CAST(:token AS bigint) ELSE j.lease_token END,
        locked_by = CASE WHEN m.claimed THEN CAST(:worker_id AS text) END,
        lease_expires_at = CASE WHEN m.claimed THEN now() + CAST(:lease AS float8) * interval '1 second' END,
        finished_at = CASE WHEN NOT m.claimed AND {_FINAL} THEN now() ELSE j.finished_at END,
        dedupe_held_until = CASE WHEN m.claimed THEN j.dedupe_held_until ELSE {_EXPIRED_HOLD} END,
        last_error = CASE WHEN m.was_expired THEN {_EXPIRED_ERROR} ELSE j.last_error END,
        errors = CASE WHEN m.was_expired THEN {_EXPIRED_ERRORS} ELSE j.errors END
    FROM marked AS m
    WHERE j.id = m.id
    RETURNING j.*, m.claimed
)
SELECT {{columns}}, claimed FROM changed WHERE claimed OR status = {_DEAD}
"""


def _ready_sql(jobs: str, pairs: int, queues: str) -> str:
    """The locking read of the best ``:limit`` ready jobs over ``pairs`` (queue, job type) pairs.

    One pair is one ordered range of the ready index, locked as it is read.
    Several pairs are merged in claim order (a Merge Append of index ranges)
    and each row is locked as the merge yields it: the claim locks at most
    ``:limit`` rows and reads past rows others hold, however many pairs it
    asks for. A queue with a settings row (``queues``) is skipped: a
    one-time check of a constant, not a per-row test.
    """

    def arm(n: int) -> str:
        return (
            f"SELECT id, priority, run_at FROM {jobs} WHERE status = {_PENDING} "
            f"AND queue = CAST(:q{n} AS text) AND job_type = CAST(:t{n} AS text) AND run_at <= now() "
            f"AND NOT EXISTS (SELECT 1 FROM {queues} WHERE name = CAST(:q{n} AS text))"
        )

    if pairs == 0:
        return "SELECT CAST(NULL AS bigint) AS id, CAST(NULL AS integer) AS priority, now() AS run_at WHERE false"
    if pairs == 1:
        return f"{arm(0)} ORDER BY {_CLAIM_ORDER} LIMIT :limit FOR UPDATE SKIP LOCKED"
    # Each arm ordered as the index reads it, so the planner merges them (Merge Append) instead of sorting all.
    arms = " UNION ALL ".join(f"({arm(n)} ORDER BY {_CLAIM_ORDER})" for n in range(pairs))
    return (
        f"SELECT c.id, c.priority, c.run_at FROM (SELECT * FROM ({arms}) AS u ORDER BY {_CLAIM_ORDER}) AS c "
        f"CROSS JOIN LATERAL (SELECT id FROM {jobs} AS l WHERE l.id = c.id AND l.status = {_PENDING}) AS l "
        f"ORDER BY {_MERGE_ORDER} LIMIT :limit FOR UPDATE OF l SKIP LOCKED"
    )


#: The columns a plain bulk insert sends as JSON arrays (``delay`` becomes ``run_at``).
_UNNEST_COLUMNS = (
    "queue", "job_type", "payload", "priority", "status", "attempts", "max_attempts", "lease_token", "delay",
    "headers", "timeout",
)
#: A bulk insert's enqueue tokens: the call's marker on its first row, the rest's value on the others.
_TOKEN_BY_ORD = "CASE WHEN ord = 1 THEN CAST(:first_token AS bigint) ELSE CAST(:next_token AS bigint) END"


class PostgreSQLBackend(SQLBackend):
    """PostgreSQL 12+ through psycopg 3."""

    name = "postgresql"
    capabilities = SQL_CAPABILITIES | {Capability.NOTIFY}
    default_driver = "postgresql+psycopg"
    driver_extra = "postgresql"
    # psycopg 3 is natively async: connect_async runs on its asyncio driver (no extra package to install).
    async_drivers = {"psycopg_async": "postgresql+psycopg_async"}
    default_async_driver = "psycopg_async"
    async_driver_extra = "postgresql,asyncio"
    partial_index_keyword = "postgresql_where"
    include_keyword = "postgresql_include"

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

    def now_text(self) -> sa.ColumnElement[str]:
        """``to_char`` of the transaction time in UTC, to the millisecond."""
        return _ENTRY_TIME

    def history_appended(self, history: sa.ColumnElement[Any], entry: dict[str, Any]) -> sa.ColumnElement[str]:
        """See :func:`_history_appended` (the claim statement's rescue uses it too)."""
        return _history_appended(history, entry)

    def history_stamped(self, history: sa.ColumnElement[Any], at: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """``jsonb_set(history, '{-1,at}', to_jsonb(at))``."""
        path: sa.ColumnElement[Any] = sa.literal_column("CAST('{-1,at}' AS text[])")
        return sa.cast(sa.func.jsonb_set(sa.cast(history, _JSONB), path, sa.func.to_jsonb(at)), sa.Text())

    def engine_options(self) -> dict[str, Any]:
        """UTC sessions, an application name to find our connections by, bounded connects, TCP keepalives.

        Connection parameters given in the URL's query win over these defaults.
        """
        query = self.url.query
        defaults = {"application_name": "polyqueue", "connect_timeout": 10, **_KEEPALIVES}
        connect_args: dict[str, Any] = {k: v for k, v in defaults.items() if k not in query}
        user_options = query.get("options")
        connect_args["options"] = " ".join(
            [*([user_options] if isinstance(user_options, str) else user_options or []), "-c timezone=UTC"]
        )
        return {"connect_args": connect_args, "pool_size": 8, "max_overflow": 32}

    def classify(self, error: sa_exc.DBAPIError) -> str:
        """SQLSTATE-based: 40001/40P01/55P03 transient, classes 08/57P disconnects, 42P01 missing table.

        A connection the server refused for good (class 28, 3D000, or
        libpq's message for them, which carries no SQLSTATE) is a
        configuration error; 42703 (a column is missing) a schema mismatch.
        """
        state = getattr(error.orig, "sqlstate", None)
        if state in _TRANSIENT:
            return ErrorKind.TRANSIENT
        if state == "42P01":
            return ErrorKind.MISSING_SCHEMA
        if state in _SCHEMA_MISMATCH:
            return ErrorKind.SCHEMA_MISMATCH
        if (state is not None and state.startswith(("28", "3D"))) or (
            state is None and error.statement is None and _REFUSED_LOGIN.search(str(error.orig))
        ):
            return ErrorKind.CONFIGURATION
        if state is not None and state.startswith(_DISCONNECT_PREFIXES):
            return ErrorKind.DISCONNECT
        if state is None and isinstance(error, sa_exc.OperationalError):
            return ErrorKind.DISCONNECT  # libpq reports a lost socket without a SQLSTATE
        return super().classify(error)

    # ------------------------------------------------------------------
    # Schema
    # ------------------------------------------------------------------
    @contextmanager
    def migration_lock(self, connection: Connection) -> Iterator[None]:
        """A transaction-scoped advisory lock keyed by the table prefix; DDL is transactional here."""
        key = zlib.crc32(f"polyqueue-migrate:{self.prefix}".encode()) & 0x7FFFFFFF
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
        yield

    def upgrade_schema(self, connection: Connection, from_version: int | None) -> None:
        """Tune autovacuum for a high-churn table: vacuum after 2% dead rows, not the default 20%."""
        super().upgrade_schema(connection, from_version)
        if from_version is None or from_version < _TUNED_SINCE:
            connection.exec_driver_sql(
                f'ALTER TABLE "{self.jobs.name}" SET (autovacuum_vacuum_scale_factor = 0.02, '
                "autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02, "
                "autovacuum_vacuum_cost_limit = 1000, fillfactor = 90)"
            )

    # ------------------------------------------------------------------
    # Producing
    # ------------------------------------------------------------------
    def conflict_insert(self, table: sa.Table) -> Any:
        """PostgreSQL's ``INSERT`` with ``ON CONFLICT``."""
        return pg.insert(table)

    def insert_rows(self, connection: Connection, rows: list[dict[str, Any]]) -> list[Hashable]:
        """One ``INSERT ... SELECT FROM ROWS FROM (json_array_elements_text(...)) ... RETURNING id``.

        A short statement with one JSON array per column: psycopg caches its
        parsing (a multi-row VALUES list is re-parsed client-side on every
        call) and ``json.dumps`` of a list is C code (adapting Python lists to
        PostgreSQL arrays is not). Rows are inserted in input order, so the
        sequence hands out ascending ids in that order and the sorted returned
        ids map back to the input. Enqueue tokens follow the marks' shape
        (one value for the first row, one for the rest) and travel as two
        parameters, not an array.
        """
        if not rows:
            return []
        return self._inserted_ids(connection.execute(self._bulk_insert, self._bulk_params(rows)), rows)

    @staticmethod
    def _bulk_params(rows: list[dict[str, Any]]) -> dict[str, Any]:
        params: dict[str, Any] = {
            c: json.dumps([row[c] for row in rows], ensure_ascii=False) for c in _UNNEST_COLUMNS
        }
        first, rest = rows[0].get("enqueue_token"), rows[-1].get("enqueue_token") if len(rows) > 1 else None
        if any(row.get("enqueue_token") != rest for row in rows[1:]):
            raise ValueError("bulk inserts take one enqueue token for the first row and one for the rest")
        params.update(first_token=first, next_token=rest)
        return params

    @staticmethod
    def _inserted_ids(result: Any, rows: Sequence[Any]) -> list[Hashable]:
        ids = sorted(r[0] for r in result)
        if len(ids) != len(rows):
            raise RuntimeError(f"inserted {len(ids)} rows for {len(rows)} jobs")
        return ids

    def _bulk_insert_sql(self) -> str:
        types = {"priority": "int", "attempts": "int", "max_attempts": "int", "lease_token": "bigint"}
        types["timeout"] = "float8"
        arrays = ", ".join(f"json_array_elements_text(CAST(:{c} AS json))" for c in _UNNEST_COLUMNS)
        stored = [c for c in _UNNEST_COLUMNS if c != "delay"]
        values = ", ".join(f"CAST({c} AS {types[c]})" if c in types else c for c in stored)
        return (
            f'INSERT INTO "{self.jobs.name}" ({", ".join(stored)}, created_at, run_at, enqueue_token) '
            f"SELECT {values}, now(), now() + CAST(delay AS float8) * interval '1 second', {_TOKEN_BY_ORD} "
            f"FROM ROWS FROM ({arrays}) WITH ORDINALITY AS r({', '.join(_UNNEST_COLUMNS)}, ord) "
            "ORDER BY ord RETURNING id"
        )

    @functools.cached_property
    def _bulk_insert(self) -> sa.TextClause:
        return sa.text(self._bulk_insert_sql())

    def _shared_insert_sql(self) -> str:
        # The usual batch: one queue, type, priority, attempt limit and delay for every job, so
        # only the payloads travel as an array (one JSON array to encode and parse, not nine).
        return (
            f'INSERT INTO "{self.jobs.name}" (queue, job_type, payload, priority, status, attempts, max_attempts, '
            "lease_token, created_at, run_at, enqueue_token) "
            "SELECT CAST(:queue AS text), CAST(:job_type AS text), payload, CAST(:priority AS int), "
            f"{_PENDING}, 0, CAST(:max_attempts AS int), 0, now(), "
            f"now() + CAST(:delay AS float8) * interval '1 second', {_TOKEN_BY_ORD} "
            "FROM json_array_elements_text(CAST(:payloads AS json)) WITH ORDINALITY AS r(payload, ord) "
            "ORDER BY ord RETURNING id"
        )

    @staticmethod
    def _and_notify(insert_sql: str) -> sa.TextClause:
        # Data-modifying CTEs always run; the cross join runs pg_notify exactly once.
        return sa.text(
            f"WITH inserted AS ({insert_sql}), "
            "woken AS (SELECT pg_notify(:channel, :notify_payload)) "
            "SELECT inserted.id FROM inserted CROSS JOIN woken"
        )

    @functools.cached_property
    def _bulk_insert_and_notify(self) -> sa.TextClause:
        return self._and_notify(self._bulk_insert_sql())

    @functools.cached_property
    def _shared_insert_and_notify(self) -> sa.TextClause:
        return self._and_notify(self._shared_insert_sql())

    def _enqueue_marked(self, batch: EnqueueBatch) -> list[Hashable]:
        """Plain jobs outside a caller's transaction: ONE autocommit statement inserts them and sends the NOTIFY.

        Jobs with a dedupe key, an absolute ``run_at`` or a concurrency key take the general path
        (one transaction); so do enqueues inside the caller's transaction
        (:meth:`SQLBackend.enqueue` never sends those here).
        """
        jobs, token = batch.jobs, batch.token
        special = not all(j.plain for j in jobs)
        if special:
            return super()._enqueue_marked(batch)
        shared = {(j.queue, j.job_type, j.priority, j.max_attempts, j.delay_seconds) for j in jobs}
        bare = all(j.headers_json is None and j.timeout is None for j in jobs)
        params: dict[str, Any]
        if len(shared) == 1 and bare:
            ((queue, job_type, priority, max_attempts, delay),) = shared
            params = {
                "queue": queue,
                "job_type": job_type,
                "priority": priority,
                "max_attempts": max_attempts,
                "delay": delay,
                "payloads": json.dumps([j.payload_json for j in jobs], ensure_ascii=False),
            }
            statement = self._shared_insert_and_notify
        else:
            params = self._bulk_params([self._plain_insert_params(job, -token if token else None) for job in jobs])
            statement = self._bulk_insert_and_notify
        params.update(first_token=token, next_token=-token if token else None)
        params.update(channel=self.channel, notify_payload=self._notify_payload({j.queue for j in jobs}))
        return self._run_single(
            lambda conn: self._inserted_ids(conn.execute(statement, params), jobs), resume=self._resumer(jobs, token)
        )

    def find_imported(self, conn: Connection, records: Sequence[JobRecord]) -> dict[str, Hashable]:
        """``{import_key: id}`` through ``import_key = ANY(array)``: one array parameter, not a list of them.

        A transfer fills a new table faster than autovacuum analyzes it; the
        generic plan of a long ``IN ($1, ..., $1000)`` list then scans the
        table comparing every row with every key. One array parameter is
        planned as a few index probes whatever the statistics say.
        """
        keys = sorted({r.import_key for r in records if r.import_key is not None})
        if not keys:
            return {}
        c = self.jobs.c
        wanted = sa.cast(sa.bindparam("import_keys", keys), pg.ARRAY(sa.String()))
        stmt = sa.select(c.import_key, c.id).where(c.import_key == sa.func.any(wanted), c.import_key.is_not(None))
        return {key: job_id for key, job_id in conn.execute(stmt)}

    def wait_for_enqueue_marker(self, connection: Connection, jobs: Sequence[NewJob], token: int) -> None:
        """Insert a probe row carrying ``+token`` and roll it back: the unique index makes it wait for an attempt
        still committing that marker (a read would not see it and would not wait)."""
        probe = NewJob(jobs[0].queue, jobs[0].job_type, "null", 0, 1, 0.0, None)
        c = self.jobs.c
        stmt = pg.insert(self.jobs).values(**self._row_values(probe, token))
        stmt = stmt.on_conflict_do_nothing(index_elements=[c.enqueue_token], index_where=c.enqueue_token > ZERO)
        savepoint = connection.begin_nested()
        try:
            connection.execute(stmt)
        finally:
            savepoint.rollback()

    def after_enqueue(self, connection: Connection, queues: set[str]) -> None:
        """One tiny NOTIFY per batch, delivered when (and only if) the enqueue transaction commits.

        The payload names the queue when the batch has just one (so workers of
        other queues stay asleep); otherwise it is empty, meaning "any queue".
        """
        connection.execute(sa.select(sa.func.pg_notify(self.channel, self._notify_payload(queues))))

    @staticmethod
    def _notify_payload(queues: set[str]) -> str:
        if len(queues) == 1:
            (only,) = queues
            if len(only.encode()) <= _MAX_NOTIFY_QUEUE_BYTES:
                return only
        return ""

    @contextmanager
    def caller_connection(self, connection: Any) -> Iterator[Connection]:
        """The caller's transaction: a SQLAlchemy ``Connection``, or a psycopg 3 connection lent to SQLAlchemy.

        A psycopg ``Connection`` on a synchronous backend; a psycopg
        ``AsyncConnection`` on the :meth:`asyncio_variant` (``connect_async``).
        """
        if isinstance(connection, Connection):
            with super().caller_connection(connection) as conn:
                yield conn
            return
        try:
            import psycopg
        except ImportError:  # pragma: no cover - the backend cannot open without it
            psycopg = None  # type: ignore[assignment]
        wanted = psycopg.AsyncConnection if self.asyncio_engine is not None else psycopg.Connection if psycopg else None
        if wanted is None or not isinstance(connection, wanted):
            if psycopg is not None and isinstance(connection, psycopg.AsyncConnection):
                raise ConfigurationError(
                    "a psycopg AsyncConnection needs an AsyncQueue on psycopg's asyncio driver "
                    "(polyqueue.connect_async, without async_driver='threads')"
                )
            raise ConfigurationError(
                f"connection= must be a SQLAlchemy Connection or a psycopg 3 {wanted.__name__ if wanted else ''}, "
                f"got {type(connection).__name__}"
            )
        _check_borrowable(connection)
        with self._borrowing.lend(connection) as conn:
            yield conn

    @functools.cached_property
    def _borrowing(self) -> _BorrowedConnections:
        return _BorrowedConnections(self.engine)

    # ------------------------------------------------------------------
    # Consuming
    # ------------------------------------------------------------------
    def _claim_statement(self, pairs: int, typed: bool) -> sa.TextClause:
        """The claim over ``pairs`` (queue, job type) pairs; built once per shape (a prepared statement each)."""
        key = (pairs, typed)
        if key not in self._claim_statements:
            jobs = f'"{self.jobs.name}"'
            columns = ", ".join(f'"{c.name}"' for c in self._columns)
            of_types = "AND job_type = ANY(CAST(:types AS text[]))" if typed else ""
            queues = f'"{self.queues_table.name}"'
            ready = _ready_sql(jobs, pairs, queues)
            text = _CLAIM_SQL.format(
                jobs=jobs, ready=ready, expired_of_types=of_types, columns=columns, queues=queues
            )
            columns_read = [*self._columns, sa.column("claimed", sa.Boolean())]
            self._claim_statements[key] = sa.text(text).columns(*columns_read)  # type: ignore[assignment]
        return self._claim_statements[key]

    @functools.cached_property
    def _claim_statements(self) -> dict[tuple[int, bool], sa.TextClause]:
        return {}

    def held_by_claim(self, jobs: Sequence[Job]) -> sa.ColumnElement[bool]:
        """``id = ANY(ids) AND (id, lease_token) IN (SELECT * FROM unnest(ids, tokens))``: one short statement.

        A long ``IN`` list is re-parsed client-side by psycopg on every call
        (statements over 4 KB are not cached) and is never prepared; two
        array parameters make one prepared statement for every batch size.
        ``id = ANY`` keeps the plan on the primary key whatever the statistics
        say about how many jobs are processing.
        """
        ids = sa.cast(sa.bindparam("fence_ids", [job.id for job in jobs]), _BIGINT_ARRAY)
        tokens = sa.cast(sa.bindparam("fence_tokens", [job.lease_token for job in jobs]), _BIGINT_ARRAY)
        held = sa.func.unnest(ids, tokens).table_valued("id", "token").render_derived()
        j = self.jobs
        pairs = sa.select(held.c.id, held.c.token)
        return sa.and_(j.c.id == sa.func.any(ids), sa.tuple_(j.c.id, j.c.lease_token).in_(pairs))

    def claim_plain(self, request: ClaimRequest) -> ClaimResult:
        """Rescue expired leases and claim up to ``request.limit`` ready jobs in one statement; see :class:`Backend`.

        Without ``job_types`` the pairs to read are found first (one cheap
        loose index scan), so such a claim is two statements.
        """
        queues = list(dict.fromkeys(request.queues))
        if request.job_types is None:
            pairs = self._run_single(lambda conn: self.pending_pairs(conn, queues))
        else:
            types = sorted(request.job_types)
            pairs = [(q, t) for q in queues for t in types]
        params: dict[str, Any] = {
            "queues": queues,
            "limit": request.limit,
            "worker_id": request.worker_id,
            "lease": float(request.lease),
            "token": request.token,
            "cap": request.max_attempts,
        }
        if request.job_types is not None:
            params["types"] = sorted(request.job_types)
        for n, (queue, job_type) in enumerate(pairs):
            params[f"q{n}"], params[f"t{n}"] = queue, job_type
        statement = self._claim_statement(len(pairs), request.job_types is not None)
        rows = self._run_single(lambda conn: list(conn.execute(statement, params)))
        claimed: list[Job] = []
        dead: list[Job] = []
        for row in rows:
            (claimed if row[-1] else dead).append(self._job_from_row(row))
        claimed.sort(key=policy.job_claim_key)
        return ClaimResult(claimed, dead)

    # ------------------------------------------------------------------
    # Consuming: paused and limited queues
    # ------------------------------------------------------------------
    def _claim_controlled(self, request: ClaimRequest) -> ClaimResult:
        """The controlled claim (see :meth:`SQLBackend._claim_controlled`) in ONE round trip: a psycopg pipeline.

        One transaction of four statements sent together: rescue expired
        leases; lock the queue's settings row; claim what the limits allow,
        counted in SQL (:func:`policy.claim_allowance_sql`); write the rate
        allowance back. PostgreSQL runs them in order and each statement
        takes its snapshot when it starts, so the claim counts the queue's
        processing jobs only once it holds the row: claims of one queue take
        turns as in the shared layer, without a round trip per step. The
        statements are compiled once per shape. A queue whose row has gone
        claims as a plain one.
        """
        if self.asyncio_engine is not None:
            return super()._claim_controlled(request)
        (queue,) = request.queues
        known = self._controlled_queues().get(queue)
        per_key = known is not None and known.limits.per_key is not None
        types = sorted(request.job_types or ())
        shape = (per_key, len(types), request.max_attempts is not None)
        if shape not in self._limited_statements:
            self._limited_statements[shape] = self._compile_limited(*shape)
        params = {
            "q": queue, "limit": request.limit, "token": request.token, "worker_id": request.worker_id,
            "lease": float(request.lease), "cap": request.max_attempts,
            **{f"t{n}": job_type for n, job_type in enumerate(types)},
        }  # fmt: skip
        first, rows = self._pipelined(self._limited_statements[shape], params)
        rescued = [row[1:] for row in first if row[1] is not None]
        dead = [job for job in map(self._job_from_row, rescued) if job.status == JobStatus.DEAD]
        if first[0][0] is None:  # the queue has no settings row any more
            plain = self.claim_plain(request)
            return ClaimResult(plain.jobs, dead + plain.expired_dead)
        return ClaimResult(sorted(map(self._job_from_row, rows), key=policy.job_claim_key), dead)

    @functools.cached_property
    def _limited_statements(self) -> dict[tuple[bool, int, bool], list[tuple[str, dict[str, Any]]]]:
        return {}

    def _compile_limited(self, per_key: bool, types: int, capped: bool) -> list[tuple[str, dict[str, Any]]]:
        """The pipeline's statements for one shape, compiled for psycopg: ``[(sql, constant parameters)]``.

        Per-call values travel as the named parameters ``q``, ``limit``,
        ``token``, ``worker_id``, ``lease``, ``cap`` and ``t0``... (the
        ``types`` job types asked for; one is an ordered range of the ready index).
        """
        s, j = self.queues_table, self.jobs
        queue = sa.bindparam("q", "", type_=sa.String())
        limit = sa.bindparam("limit", 1, type_=sa.Integer())
        token = sa.bindparam("token", 0, type_=sa.BigInteger())
        names = [sa.bindparam(f"t{n}", "", type_=sa.String()) for n in range(types)]
        of_types = [j.c.job_type == names[0]] if types == 1 else [j.c.job_type.in_(names)] if types else []
        rescue = (
            sa.update(j)
            .where(j.c.id.in_(self._expired_leases().with_for_update(skip_locked=True).scalar_subquery()))
            .ordered_values(*self._rescue_values())
            .returning(*self._columns)
        )
        lock = sa.select(s.c.name).where(s.c.name == queue).with_for_update()
        processing = sa.select(sa.func.count()).where(j.c.status == PROCESSING_SQL, j.c.queue == queue)
        elapsed = sa.func.extract("epoch", self.now() - sa.func.coalesce(s.c.rate_counted_at, self.now()))
        allowance = policy.rate_allowance_sql(s.c.rate_allowance, elapsed, s.c.rate)
        allowed = policy.claim_allowance_sql(limit, s.c.concurrency, processing.scalar_subquery(), allowance)  # type: ignore[arg-type]
        allowed_here = sa.select(sa.case((s.c.paused, 0), else_=allowed)).where(s.c.name == queue)
        take = sa.func.coalesce(allowed_here.scalar_subquery(), 0)
        if per_key:
            candidates = self._fair_candidates(queue, of_types, take)
        else:
            candidates = (
                sa.select(j.c.id)
                .where(j.c.status == PENDING_SQL, j.c.queue == queue, j.c.run_at <= self.now(), *of_types)
                .where(sa.select(s.c.per_key).where(s.c.name == queue).scalar_subquery().is_(None))
                .order_by(*self._claim_order())
                .limit(take)
            )
        # An array of ids, computed once: the update then reads the primary key, whatever the statistics
        # of a table that churns faster than ANALYZE runs say (they can make a join a nested loop).
        picked = sa.func.array(candidates.scalar_subquery())
        values: list[tuple[Any, Any]] = [
            (j.c.status, JobStatus.PROCESSING),
            (j.c.attempts, j.c.attempts + 1),
            (j.c.lease_token, token),
            (j.c.locked_by, sa.bindparam("worker_id", "", type_=sa.String())),
            (j.c.lease_expires_at, self.seconds_from_now(sa.bindparam("lease", 1.0, type_=sa.Float()))),
        ]
        if capped:
            cap = sa.bindparam("cap", 1, type_=sa.Integer())
            values.append((j.c.max_attempts, policy.capped_max_attempts_sql(j.c.max_attempts, cap)))
        claimed = (
            sa.update(j)
            # The status re-check (a cancel may have come first) goes through coalesce: a plain
            # `status = 'pending'` lets the planner prefer scanning the partial ready index.
            .where(j.c.id == sa.func.any(picked), sa.func.coalesce(j.c.status, "") == PENDING_SQL)
            .ordered_values(*values)
            .returning(*self._columns)
        )
        mine = sa.select(sa.func.count()).where(
            j.c.status == PROCESSING_SQL, j.c.queue == queue, j.c.lease_token == token
        )
        saved = (
            sa.update(s)
            .where(s.c.name == queue, s.c.rate.is_not(None))
            .values(
                rate_allowance=allowance - mine.scalar_subquery(),
                rate_counted_at=sa.func.greatest(self.now(), sa.func.coalesce(s.c.rate_counted_at, self.now())),
            )
        )
        # Two statements: rescue and lock (one row: the locked name, or NULL, beside each rescued job);
        # then claim and save the allowance. The claim must be a statement of its own: it counts what is
        # processing, which only a snapshot taken once the settings row is held sees right.
        locked, rescued = lock.cte("locked"), rescue.cte("rescued")
        one = sa.select(sa.literal(1).label("one")).subquery("one")
        first = sa.select(locked.c.name, *rescued.c).select_from(
            one.outerjoin(locked, sa.true()).outerjoin(rescued, sa.true())
        )
        taken = claimed.cte("taken")
        saved = saved.values(
            rate_allowance=allowance - sa.select(sa.func.count()).select_from(taken).scalar_subquery()
        )
        second = sa.select(*taken.c).add_cte(saved.cte("saved"))
        compiled = []
        for statement in (first, second):
            query = statement.compile(dialect=self.engine.dialect)
            compiled.append((str(query), dict(query.construct_params())))
        return compiled

    def _fair_candidates(self, queue: Any, of_types: list[Any], take: Any) -> sa.Select[Any]:
        """:meth:`SQLBackend.fair_candidates` with the ``per_key`` limit read from the settings row."""
        s = self.queues_table
        per_key = sa.select(s.c.per_key).where(s.c.name == queue).scalar_subquery()
        return self.fair_candidates(queue, of_types, per_key, take)

    def _pipelined(self, statements: Sequence[tuple[str, dict[str, Any]]], params: dict[str, Any]) -> list[list[Any]]:
        """Run compiled ``statements`` in one transaction in ONE round trip (psycopg's pipeline mode); their rows."""
        import psycopg
        from psycopg.pq import TransactionStatus

        with self._connect() as conn:
            raw: Any = conn.connection.driver_connection
            # Our own BEGIN and COMMIT, sent in the pipeline: psycopg's transaction() syncs (waits) per step.
            raw.autocommit = True
            try:
                cursors = []
                with raw.pipeline():
                    raw.cursor().execute("BEGIN")
                    for sql, constants in statements:
                        cursor = raw.cursor()
                        cursor.execute(sql, {**constants, **{k: v for k, v in params.items() if k in constants}})
                        cursors.append(cursor)
                    raw.cursor().execute("COMMIT")
                return [cursor.fetchall() if cursor.description else [] for cursor in cursors]
            except psycopg.Error as exc:
                error = sa_exc.DBAPIError.instance("claim", None, exc, psycopg.Error)
                assert isinstance(error, sa_exc.DBAPIError)
                if self.classify(error) == ErrorKind.DISCONNECT:
                    conn.invalidate()
                elif raw.info.transaction_status != TransactionStatus.IDLE:
                    raw.execute("ROLLBACK")
                raise self._translate(error) from exc
            finally:
                if not raw.closed:
                    raw.autocommit = False

    # ------------------------------------------------------------------
    # Waiting
    # ------------------------------------------------------------------
    def wakeup_source(self, request: WakeupRequest) -> WakeupSource | None:
        """A dedicated LISTEN connection that wakes for the request's queues."""
        return PgListener(self, request.queues)


def _check_borrowable(raw: Any) -> None:
    """Refuse a psycopg connection whose transaction cannot hold our rows atomically."""
    from psycopg.pq import TransactionStatus

    if raw.closed:
        raise ConfigurationError("connection= is a closed psycopg connection")
    status = raw.info.transaction_status
    if status == TransactionStatus.INERROR:
        raise ConfigurationError("connection='s transaction has already failed; roll it back first")
    if status == TransactionStatus.ACTIVE:
        raise ConfigurationError("connection= is busy running another statement")
    if raw.autocommit and status == TransactionStatus.IDLE:
        raise ConfigurationError(
            "connection= is in autocommit mode outside a transaction; use `with conn.transaction():`"
        )


class _Borrowed:
    """The caller's psycopg connection as SQLAlchemy sees it: it runs statements but never ends or closes anything.

    The caller owns the transaction; SQLAlchemy's end-of-use rollback and
    close therefore do nothing.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        """A cursor yielding tuples, as SQLAlchemy expects, whatever row factory the caller's connection uses."""
        from psycopg.rows import tuple_row

        kwargs.setdefault("row_factory", tuple_row)
        return self._raw.cursor(*args, **kwargs)

    def commit(self) -> None:
        """Never: the caller commits."""

    def rollback(self) -> None:
        """Never: the caller rolls back."""

    def close(self) -> None:
        """Never: the caller closes."""


async def _lend(raw: Any) -> _AsyncBorrowed:
    return _AsyncBorrowed(raw)


class _AsyncBorrowed(_Borrowed):
    """:class:`_Borrowed` for a psycopg ``AsyncConnection``: the ends of the transaction are coroutines, and no-ops."""

    async def commit(self) -> None:  # type: ignore[override]
        """Never: the caller commits."""

    async def rollback(self) -> None:  # type: ignore[override]
        """Never: the caller rolls back."""

    async def close(self) -> None:  # type: ignore[override]
        """Never: the caller closes."""


class _BorrowedConnections:
    """Wraps callers' psycopg connections in SQLAlchemy ``Connection`` objects.

    An engine of its own, with a pool that hands out whichever connection
    the current thread lends, but the main engine's already-initialised
    dialect: so no first-connect queries or session set-up ever run on the
    caller's connection.
    """

    def __init__(self, main: Engine) -> None:
        self.main = main
        self._local = threading.local()
        self._engine: Engine | None = None

    def _build(self) -> Engine:
        with self.main.connect():
            pass  # initialise the shared dialect (server version etc.) on one of our own connections
        dialect = self.main.dialect
        if getattr(dialect, "is_async", False):
            # The asyncio dialect adapts a psycopg AsyncConnection itself and asks for it with a coroutine.
            # The connection is read when the pool calls the creator, before the first switch to the loop:
            # another task on the loop may lend its own connection while this one is being adapted.
            pool = NullPool(
                lambda: dialect.loaded_dbapi.connect(async_creator_fn=functools.partial(_lend, self._local.raw)),
                reset_on_return=None,
            )
        else:
            pool = NullPool(lambda: _Borrowed(self._local.raw), reset_on_return=None)
        return Engine(pool, dialect, self.main.url)

    @contextmanager
    def lend(self, raw: Any) -> Iterator[Connection]:
        if self._engine is None:
            self._engine = self._build()
        self._local.raw = raw
        try:
            with self._engine.connect() as conn:
                yield conn
        finally:
            self._local.raw = None


class PgListener:
    """Blocks on NOTIFY from a dedicated autocommit connection; reconnects when it drops.

    Wakes for notifications naming one of ``queues`` or naming none. After a
    reconnect it reports a wake-up, since notifications sent while it was
    away are lost, so the worker looks at the table once.
    """

    def __init__(self, backend: PostgreSQLBackend, queues: Sequence[str] = ()) -> None:
        self.backend = backend
        self.queues = frozenset(queues)
        self.conn: Any = None
        self._failures = 0

    def _open(self) -> None:
        import psycopg

        args, kwargs = self.backend.engine.dialect.create_connect_args(self.backend.engine.url)
        kwargs = {"connect_timeout": 10, **_KEEPALIVES, **kwargs, "autocommit": True}
        kwargs["application_name"] = "polyqueue-listen"  # how operators (and tests) find this connection
        self.conn = psycopg.connect(*args, **kwargs)
        self.conn.execute(f'LISTEN "{self.backend.channel}"')

    def _wanted(self, payload: str) -> bool:
        return not payload or not self.queues or payload in self.queues

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a notification for our queues; True when woken (or just reconnected)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                if self.conn is None or self.conn.closed:
                    self._open()
                    if self._failures:
                        log.info("LISTEN connection re-established")
                    self._failures = 0
                    return True
                woken = False
                for note in self.conn.notifies(timeout=remaining, stop_after=1):
                    woken = self._wanted(note.payload)
                if woken:
                    # Debounce: one look at the table serves everything that already arrived.
                    for _ in self.conn.notifies(timeout=0.0):
                        pass
                    return True
            except Exception as exc:  # driver errors of any kind: reconnect with back-off
                self._failures += 1
                if self._failures == 1:
                    log.warning("LISTEN connection lost (%s); reconnecting", type(exc).__name__)
                self._close_quietly()
                time.sleep(max(0.0, min(deadline - time.monotonic(), policy.LISTEN_RECONNECT.delay(self._failures))))

    def _close_quietly(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
        except Exception:  # already broken; nothing to release
            pass
        self.conn = None

    def close(self) -> None:
        """Close the LISTEN connection. Idempotent."""
        self._close_quietly()
