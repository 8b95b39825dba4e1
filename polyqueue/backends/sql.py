"""The shared SQL implementation behind the SQLite, PostgreSQL and MySQL backends.

One SQLAlchemy-Core implementation of the backend interface. A dialect
subclass supplies only what differs per database, as class attributes and
small overridable methods: the column type for times, the database clock,
how a transaction begins, how locked rows are updated (one ``UPDATE ...
RETURNING`` or ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE``), the
indexes, how a duplicate dedupe key is ignored, and how driver errors are
classified. Nothing here asks which database it is talking to.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql as mysql_types
from sqlalchemy.engine import URL, Connection, Engine

from .. import json_codec
from ..errors import BackendUnavailable, ConfigurationError, PolyqueueError, SchemaMissing
from ..job import FINISHED_STATUSES, LIVE_STATUSES, Job, JobStatus, NewJob, ReplayResult
from .base import Backend, BackendOptions

__all__ = ["LONG_TEXT", "SCHEMA_VERSION", "ErrorKind", "SQLBackend"]

log = logging.getLogger("polyqueue.sql")
T = TypeVar("T")

def status_literal(status: str) -> sa.ColumnElement[str]:
    """A status as an inline SQL literal, so planners can match partial indexes even in prepared plans."""
    assert status.isalpha()
    return sa.literal_column(f"'{status}'", sa.String())


PENDING_SQL = status_literal(JobStatus.PENDING)
PROCESSING_SQL = status_literal(JobStatus.PROCESSING)
LIVE_SQL = [status_literal(s) for s in LIVE_STATUSES]
FINISHED_SQL = [status_literal(s) for s in FINISHED_STATUSES]

#: Bumped whenever ``migrate`` has new work to do.
SCHEMA_VERSION = 2

#: Job's fields in declaration order: rows are read in this order and passed to Job positionally.
_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job))
_DECODED_FIELDS = tuple(_JOB_FIELDS.index(name) for name in ("payload", "result", "errors"))

#: Payloads, results and error histories: unbounded text (MySQL's TEXT stops at 64 KB, below ``max_payload_bytes``).
LONG_TEXT = sa.Text().with_variant(mysql_types.LONGTEXT(), "mysql", "mariadb")
#: How many rescued (lease-expired) jobs one claim handles at most.
RESCUE_BATCH = 100
#: Most jobs one fenced UPDATE names (a power of two: see ``_claim_pairs``).
FENCE_CHUNK = 512
#: How many errors of a job's history are kept.
ERROR_HISTORY_LIMIT = 20


class ErrorKind:
    """How the shared layer reacts to a driver error, as classified by the dialect."""

    TRANSIENT = "transient"  #: deadlock, serialization failure, busy: retry the transaction
    DISCONNECT = "disconnect"  #: the connection or server went away: reconnect and retry
    MISSING_SCHEMA = "missing_schema"  #: a polyqueue table does not exist
    DUPLICATE = "duplicate"  #: a unique constraint was violated
    OTHER = "other"


class SQLBackend(Backend):
    """A backend on any SQLAlchemy dialect; subclasses fill in the dialect knobs."""

    name = "sql"
    capabilities = frozenset()
    #: The SQLAlchemy driver used when the URL names none (``postgresql`` -> ``postgresql+psycopg``).
    default_driver: ClassVar[str] = ""
    #: The pip extra that installs the driver, named in the missing-driver error.
    driver_extra: ClassVar[str] = ""
    #: Whether ``UPDATE/INSERT ... RETURNING`` is available.
    supports_returning: ClassVar[bool] = True

    def __init__(self, url: URL, options: BackendOptions) -> None:
        self.url = url
        self.options = options
        self.prefix: str = options["table_prefix"]
        self.reconnect_seconds: float = float(options.get("reconnect_seconds", 10.0))
        self.transient_retries: int = int(options.get("transient_retries", 10))
        self.metadata = sa.MetaData()
        self.jobs = self._build_jobs_table()
        self.schema_table = sa.Table(
            f"{self.prefix}schema",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("version", sa.Integer, nullable=False),
        )
        for index in self._indexes(self.jobs):
            index._set_parent(self.jobs)
        self._columns = list(self.jobs.c)
        names = [c.name for c in self._columns]
        self._job_field_positions = tuple(names.index(name) for name in _JOB_FIELDS)
        self.engine = self._create_engine()

    # ------------------------------------------------------------------
    # Dialect knobs: override in subclasses.
    # ------------------------------------------------------------------
    def time_type(self) -> sa.types.TypeEngine[datetime]:
        """The column type for timestamps; must read back aware UTC datetimes."""
        raise NotImplementedError

    def now(self) -> sa.ColumnElement[Any]:
        """The database clock as an expression of ``time_type``."""
        raise NotImplementedError

    def seconds_from_now(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """DB-now plus ``seconds`` (a float expression)."""
        raise NotImplementedError

    def seconds_before_now(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """DB-now minus ``seconds``."""
        return self.seconds_from_now(-seconds)

    def engine_options(self) -> dict[str, Any]:
        """Extra ``create_engine`` keyword arguments."""
        return {}

    def on_connect(self, dbapi_connection: Any) -> None:
        """Session set-up run once per new DBAPI connection."""

    def begin_transaction(self, connection: Connection) -> None:
        """Run at the start of each transaction this backend opens (``BEGIN IMMEDIATE`` on SQLite)."""

    def classify(self, error: sa_exc.DBAPIError) -> str:
        """Return an :class:`ErrorKind` for a driver error."""
        if error.connection_invalidated:
            return ErrorKind.DISCONNECT
        if isinstance(error, sa_exc.IntegrityError):
            return ErrorKind.DUPLICATE
        return ErrorKind.OTHER

    def extra_columns(self) -> list[sa.Column[Any]]:
        """Columns a dialect adds to the jobs table (MySQL's generated dedupe column)."""
        return []

    #: The ``Index`` keyword for a partial-index predicate (``postgresql_where``), or "" if none.
    partial_index_keyword: ClassVar[str] = ""

    def _indexes(self, jobs: sa.Table) -> list[sa.Index]:
        """Indexes for ready-job lookups, lease rescue, dedupe and purge.

        The default uses partial indexes, so finished rows never enter the
        indexes that claims, rescues and dedupe checks read.
        """
        p, c = self.prefix, jobs.c

        def where(predicate: sa.ColumnElement[bool]) -> dict[str, Any]:
            return {self.partial_index_keyword: predicate}

        return [
            sa.Index(f"{p}jobs_ready", c.queue, c.priority.desc(), c.run_at, c.id, **where(c.status == PENDING_SQL)),
            sa.Index(f"{p}jobs_leases", c.lease_expires_at, **where(c.status == PROCESSING_SQL)),
            sa.Index(
                f"{p}jobs_dedupe",
                c.queue,
                c.dedupe_key,
                unique=True,
                **where(sa.and_(c.dedupe_key.is_not(None), c.status.in_(LIVE_SQL))),
            ),
            sa.Index(f"{p}jobs_finished", c.status, c.finished_at, **where(c.status.in_(FINISHED_SQL))),
        ]

    @contextmanager
    def migration_lock(self, connection: Connection) -> Iterator[None]:
        """Serialise concurrent ``migrate`` calls (advisory lock, GET_LOCK, BEGIN IMMEDIATE)."""
        yield

    def insert_ignoring_live_duplicate(self, connection: Connection, row: dict[str, Any]) -> Hashable | None:
        """Insert one job that has a dedupe key; return its new id, or None if a live duplicate exists."""
        raise NotImplementedError

    def insert_rows(self, connection: Connection, rows: list[dict[str, Any]]) -> list[Hashable]:
        """Insert jobs without dedupe keys in one round trip per page; ids in input order.

        Each row holds the plain column values plus ``delay`` (seconds from DB-now).
        """
        return [r[0] for r in connection.execute(self._insert_returning_ids, rows)]

    @functools.cached_property
    def _insert_returning_ids(self) -> sa.Insert:
        # Built once: constructing and cache-keying this statement costs more than a SQLite insert.
        return self.plain_insert().returning(self.jobs.c.id, sort_by_parameter_order=True)

    def plain_insert(self) -> sa.Insert:
        """The INSERT for rows given as plain values plus a ``delay`` bind parameter."""
        return sa.insert(self.jobs).values(
            created_at=self.now(), run_at=self.seconds_from_now(sa.bindparam("delay", type_=sa.Float()))
        )

    def update_locked(
        self,
        connection: Connection,
        candidates: sa.Select[Any],
        values: dict[str, Any],
        returning: bool,
    ) -> list[Any]:
        """Update the rows ``candidates`` selects, skipping rows other transactions hold.

        Returns the updated rows (all columns) when ``returning``, else []. The
        default is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
        LOCKED) RETURNING``; dialects without RETURNING or without LIMIT in
        ``IN`` subqueries override this.
        """
        stmt = (
            sa.update(self.jobs)
            .where(self.jobs.c.id.in_(candidates.with_for_update(skip_locked=True).scalar_subquery()))
            .values(**values)
        )
        if returning:
            return list(connection.execute(stmt.returning(*self._columns)))
        connection.execute(stmt)
        return []

    def claim_ready(
        self, connection: Connection, queues: Sequence[str], limit: int, values: dict[str, Any]
    ) -> list[Any]:
        """Apply the claim ``values`` to up to ``limit`` ready jobs of ``queues`` no other transaction holds.

        Returns the claimed rows (all columns), in any order. The default is
        one :meth:`update_locked` over ``_ready``; MySQL locks queue by queue.
        """
        return self.update_locked(connection, self._ready(queues, limit), values, returning=True)

    def describe(self) -> str:
        """The URL with its password masked."""
        return self.url.render_as_string(hide_password=True)

    def server_version(self) -> str:
        """``major.minor...`` as SQLAlchemy reports it after connecting."""
        with self._connect() as conn:
            info = conn.dialect.server_version_info or ()
        return ".".join(str(part) for part in info)

    # ------------------------------------------------------------------
    # Schema
    # ------------------------------------------------------------------
    def _build_jobs_table(self) -> sa.Table:
        when = self.time_type
        return sa.Table(
            f"{self.prefix}jobs",
            self.metadata,
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
            sa.Column("queue", sa.String(255), nullable=False),
            sa.Column("job_type", sa.String(255), nullable=False),
            sa.Column("payload", LONG_TEXT, nullable=False),
            sa.Column("priority", sa.Integer, nullable=False, default=0),
            sa.Column("status", sa.String(16), nullable=False, default=JobStatus.PENDING),
            sa.Column("attempts", sa.Integer, nullable=False, default=0),
            sa.Column("max_attempts", sa.Integer, nullable=False),
            sa.Column("run_at", when(), nullable=False),
            sa.Column("created_at", when(), nullable=False),
            sa.Column("finished_at", when(), nullable=True),
            sa.Column("locked_by", sa.String(255), nullable=True),
            sa.Column("lease_expires_at", when(), nullable=True),
            sa.Column("lease_token", sa.BigInteger, nullable=False, default=0),
            sa.Column("last_error", LONG_TEXT, nullable=True),
            sa.Column("errors", LONG_TEXT, nullable=True),
            sa.Column("dedupe_key", sa.String(255), nullable=True),
            sa.Column("result", LONG_TEXT, nullable=True),
            *self.extra_columns(),
        )

    def migrate(self) -> None:
        """Create the tables and indexes if missing and record the schema version."""

        def work(conn: Connection) -> None:
            with self.migration_lock(conn):
                self.metadata.create_all(conn, checkfirst=True)
                current = conn.execute(sa.select(self.schema_table.c.version)).scalar()
                if current is None or current < SCHEMA_VERSION:
                    self.upgrade_schema(conn, current)
                if current is None:
                    conn.execute(sa.insert(self.schema_table).values(id=1, version=SCHEMA_VERSION))
                elif current < SCHEMA_VERSION:
                    conn.execute(sa.update(self.schema_table).values(version=SCHEMA_VERSION))

        self._run(work, retry_duplicates=True)

    def upgrade_schema(self, connection: Connection, from_version: int | None) -> None:
        """Dialect-specific schema work, inside ``migrate``'s lock, when the schema is new (None) or older."""

    def caller_transaction(self) -> Any:
        """``engine.begin()``: a SQLAlchemy Connection in a transaction, as an application would hold."""
        return self.engine.begin()

    def drop_schema(self) -> None:
        """Drop the tables and indexes of this prefix."""
        self._run(lambda conn: self.metadata.drop_all(conn, checkfirst=True))

    # ------------------------------------------------------------------
    # Engine, transactions and error translation
    # ------------------------------------------------------------------
    def _create_engine(self, *, autocommit: bool = False) -> Engine:
        url = self.url
        if "+" not in url.drivername and self.default_driver:
            url = url.set(drivername=self.default_driver)
        options: dict[str, Any] = {"pool_reset_on_return": None}
        options.update(self.engine_options())
        if autocommit:
            # A pool of its own whose connections stay in autocommit: switching a pooled
            # connection back and forth costs a SET statement per checkout on some drivers.
            # As large as the transactional pool: a worker's handlers, completer and heartbeat all use it.
            options.update(isolation_level="AUTOCOMMIT")
        try:
            engine = sa.create_engine(url, **options)
        except (ImportError, sa_exc.NoSuchModuleError) as exc:
            raise ConfigurationError(
                f"the driver for {url.drivername!r} is not installed: pip install 'polyqueue[{self.driver_extra}]'"
            ) from exc
        except sa_exc.ArgumentError as exc:
            raise ConfigurationError(f"invalid options for {self.describe()}: {exc}") from exc
        sa.event.listen(engine, "connect", lambda dbapi_conn, _record: self.on_connect(dbapi_conn))
        if not autocommit:
            sa.event.listen(engine, "begin", self.begin_transaction)
        sa.event.listen(engine, "handle_error", self._agree_on_disconnects)
        return engine

    def _agree_on_disconnects(self, context: Any) -> None:
        # Drivers' own disconnect checks can miss errors the dialect knows to be fatal (PostgreSQL's
        # 57P01 admin shutdown); invalidating here keeps a dead connection from going back to the pool.
        exc = context.sqlalchemy_exception
        known_dead = isinstance(exc, sa_exc.DBAPIError) and self.classify(exc) == ErrorKind.DISCONNECT
        if known_dead and not context.is_disconnect:
            context.is_disconnect = True

    def close(self) -> None:
        """Dispose of the connection pools."""
        self.engine.dispose()
        if self._autocommit_engine is not None and self._autocommit_engine is not self.engine:
            self._autocommit_engine.dispose()

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa_exc.DBAPIError as exc:
            raise self._translate(exc) from exc

    def _run(self, work: Callable[[Connection], T], *, retry_duplicates: bool = False) -> T:
        """Run ``work`` in its own transaction, retrying transient errors and reconnecting.

        Transient errors are retried ``transient_retries`` times; a lost
        connection is retried with back-off for ``reconnect_seconds``; then
        the error surfaces as a polyqueue error. Nothing is committed unless
        ``work`` returns.
        """
        return self._retrying(self.engine.begin, work, retry_duplicates)

    def _run_single(self, work: Callable[[Connection], T]) -> T:
        """Like :meth:`_run` for ``work`` that sends ONE statement: autocommit, so no BEGIN/COMMIT round trips."""
        if self._autocommit_engine is None:
            self._autocommit_engine = self.autocommit_engine()
        return self._retrying(self._autocommit_engine.begin, work, False)

    def autocommit_engine(self) -> Engine:
        """The engine for single-statement work; a dialect may return ``self.engine`` (in-memory SQLite)."""
        return self._create_engine(autocommit=True)

    _autocommit_engine: Engine | None = None

    def _retrying(
        self, begin: Callable[[], Any], work: Callable[[Connection], T], retry_duplicates: bool
    ) -> T:
        deadline: float | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                with begin() as conn:
                    return work(conn)
            except sa_exc.TimeoutError as exc:  # the pool had no connection to lend within pool_timeout
                raise BackendUnavailable(f"{self.describe()} is unavailable: no free connection ({exc})") from exc
            except sa_exc.DBAPIError as exc:
                kind = self.classify(exc)
                if kind == ErrorKind.TRANSIENT or (kind == ErrorKind.DUPLICATE and retry_duplicates):
                    if attempt <= self.transient_retries:
                        time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
                        continue
                elif kind == ErrorKind.DISCONNECT:
                    now = time.monotonic()
                    deadline = deadline or now + self.reconnect_seconds
                    if now < deadline:
                        time.sleep(min(0.05 * 2 ** min(attempt, 3), max(0.0, deadline - now)))
                        continue
                raise self._translate(exc) from exc

    def _translate(self, exc: sa_exc.DBAPIError) -> PolyqueueError:
        kind = self.classify(exc)
        if kind == ErrorKind.MISSING_SCHEMA:
            return SchemaMissing(
                f"the polyqueue tables ({self.prefix}jobs) do not exist in {self.describe()}: "
                "run `polyqueue migrate` (or Queue.migrate())"
            )
        detail = self._scrub(str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__)
        if kind in (ErrorKind.DISCONNECT, ErrorKind.TRANSIENT) or isinstance(exc, sa_exc.OperationalError):
            return BackendUnavailable(f"{self.describe()} is unavailable: {detail}")
        return PolyqueueError(f"{self.describe()} rejected the operation: {detail}")

    def _scrub(self, text: str) -> str:
        password = self.url.password
        if password:
            text = text.replace(str(password), "***")
        return text

    # ------------------------------------------------------------------
    # Row <-> Job
    # ------------------------------------------------------------------
    def _job_from_row(self, row: Any) -> Job:
        """A :class:`Job` from a row selecting ``self._columns`` (positional: this runs once per claimed job)."""
        values = [row[i] for i in self._job_field_positions]
        payload, result, errors = _DECODED_FIELDS
        values[payload] = json_codec.loads(values[payload])
        values[result] = json_codec.loads(values[result]) if values[result] is not None else None
        values[errors] = json_codec.loads(values[errors]) if values[errors] else []
        return Job(*values)

    @staticmethod
    def _claim_order(job: Job) -> tuple[int, datetime, Any]:
        return (-job.priority, job.run_at or datetime.min.replace(tzinfo=UTC), job.id)

    # ------------------------------------------------------------------
    # Producing
    # ------------------------------------------------------------------
    @staticmethod
    def _column_values(job: NewJob) -> dict[str, Any]:
        """The plain column values of a new job (times are added as SQL expressions)."""
        return {
            "queue": job.queue,
            "job_type": job.job_type,
            "payload": job.payload_json,
            "priority": job.priority,
            "status": JobStatus.PENDING,
            "attempts": 0,
            "max_attempts": job.max_attempts,
            "lease_token": 0,
            "dedupe_key": job.dedupe_key,
        }

    def _row_values(self, job: NewJob) -> dict[str, Any]:
        """Values for a single-row INSERT, times from the database clock."""
        run_at = (
            sa.literal(job.run_at, self.time_type())
            if job.run_at is not None
            else self.seconds_from_now(sa.literal(float(job.delay_seconds), sa.Float()))
        )
        return {**self._column_values(job), "created_at": self.now(), "run_at": run_at}

    def _plain_insert_params(self, job: NewJob) -> dict[str, Any]:
        """Parameters for :meth:`plain_insert` (no dedupe key, no absolute run_at)."""
        return {**self._column_values(job), "delay": float(job.delay_seconds)}

    def _enqueue_in(self, conn: Connection, jobs: Sequence[NewJob]) -> list[Hashable]:
        ids: list[Hashable | None] = [None] * len(jobs)
        plain = [i for i, j in enumerate(jobs) if j.dedupe_key is None and j.run_at is None]
        if plain:
            rows = [self._plain_insert_params(jobs[i]) for i in plain]
            for i, new_id in zip(plain, self.insert_rows(conn, rows), strict=True):
                ids[i] = new_id
        seen: dict[tuple[str, str], Hashable] = {}
        for i, job in enumerate(jobs):
            if ids[i] is not None:
                continue
            if job.dedupe_key is None:
                inserted = conn.execute(sa.insert(self.jobs).values(**self._row_values(job))).inserted_primary_key
                ids[i] = inserted[0] if inserted is not None else None
                continue
            key = (job.queue, job.dedupe_key)
            if key in seen:
                ids[i] = seen[key]
                continue
            ids[i] = seen[key] = self._insert_or_find_live(conn, job)
        return ids  # type: ignore[return-value]

    def _insert_or_find_live(self, conn: Connection, job: NewJob) -> Hashable:
        row = self._row_values(job)
        for _ in range(10):
            new_id = self.insert_ignoring_live_duplicate(conn, row)
            if new_id is not None:
                return new_id
            existing = conn.execute(
                sa.select(self.jobs.c.id).where(
                    self.jobs.c.queue == job.queue,
                    self.jobs.c.dedupe_key == job.dedupe_key,
                    self.jobs.c.status.in_(LIVE_SQL),
                )
            ).scalar()
            if existing is not None:
                return existing  # type: ignore[no-any-return]
        raise BackendUnavailable("could not settle a dedupe key race after 10 tries")

    def enqueue_many(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[Hashable]:
        """Insert the batch in one transaction (or the caller's); see :class:`Backend`."""
        if not jobs:
            return []
        if connection is not None:
            try:
                with self.caller_connection(connection) as conn:
                    ids = self._enqueue_in(conn, jobs)
                    self.after_enqueue(conn, {j.queue for j in jobs})
            except sa_exc.DBAPIError as exc:
                raise self._translate(exc) from exc
            return ids

        (only,) = jobs if len(jobs) == 1 else (None,)
        no_follow_up = type(self).after_enqueue is SQLBackend.after_enqueue
        if only is not None and only.dedupe_key is None and only.run_at is None and no_follow_up:
            # One plain job is one INSERT: autocommit, no BEGIN/COMMIT round trips.
            row = [self._plain_insert_params(only)]
            return self._run_single(lambda conn: self.insert_rows(conn, row))

        def work(conn: Connection) -> list[Hashable]:
            ids = self._enqueue_in(conn, jobs)
            self.after_enqueue(conn, {j.queue for j in jobs})
            return ids

        return self._run(work)

    def after_enqueue(self, connection: Connection, queues: set[str]) -> None:
        """Run inside the enqueue transaction after the inserts (PostgreSQL sends NOTIFY here)."""

    @contextmanager
    def caller_connection(self, connection: Any) -> Iterator[Connection]:
        """The caller's open transaction as a SQLAlchemy ``Connection``; dialects may also take driver connections."""
        if isinstance(connection, Connection):
            if not connection.in_transaction():
                raise ConfigurationError("connection= must be inside a transaction (use `with conn.begin():`)")
            yield connection
            return
        raise ConfigurationError(
            f"connection= must be a SQLAlchemy Connection for {self.name}, got {type(connection).__name__}"
        )

    # ------------------------------------------------------------------
    # Consuming
    # ------------------------------------------------------------------
    def _ready(self, queues: Sequence[str], limit: int) -> sa.Select[Any]:
        j = self.jobs
        return (
            sa.select(j.c.id)
            .where(j.c.status == PENDING_SQL, j.c.queue.in_(list(queues)), j.c.run_at <= self.now())
            .order_by(j.c.priority.desc(), j.c.run_at, j.c.id)
            .limit(limit)
        )

    def _rescue_expired(self, conn: Connection) -> None:
        j = self.jobs
        expired = (
            sa.select(j.c.id)
            .where(j.c.status == PROCESSING_SQL, j.c.lease_expires_at <= self.now())
            .order_by(j.c.lease_expires_at)
            .limit(RESCUE_BATCH)
        )
        final = j.c.attempts >= j.c.max_attempts
        self.update_locked(
            conn,
            expired,
            {
                "status": sa.case((final, JobStatus.DEAD), else_=JobStatus.PENDING),
                "finished_at": sa.case((final, self.now()), else_=None),
                "last_error": sa.literal("lease expired while held by ") + sa.func.coalesce(j.c.locked_by, "?"),
                "locked_by": None,
                "lease_expires_at": None,
            },
            returning=False,
        )

    def claim(self, queues: Sequence[str], limit: int, lease: float, worker_id: str) -> list[Job]:
        """Rescue expired leases, then claim up to ``limit`` ready jobs; see :class:`Backend`."""
        j = self.jobs

        def work(conn: Connection) -> list[Job]:
            self._rescue_expired(conn)
            rows = self.claim_ready(
                conn,
                queues,
                limit,
                {
                    "status": JobStatus.PROCESSING,
                    "attempts": j.c.attempts + 1,
                    "lease_token": j.c.lease_token + 1,
                    "locked_by": worker_id,
                    "lease_expires_at": self.seconds_from_now(sa.literal(float(lease), sa.Float())),
                },
            )
            return rows

        jobs = [self._job_from_row(r) for r in self._run(work)]
        jobs.sort(key=self._claim_order)
        return jobs

    @staticmethod
    def _claim_pairs(jobs: Sequence[Job]) -> list[tuple[Any, int]]:
        """``(id, lease_token)`` of ``jobs``, padded to a power of two by repeating the last pair.

        Repeats change nothing in an ``IN`` list, and the padding keeps the
        number of distinct statement texts small, so drivers' prepared
        statement caches are reused instead of filling with one statement per
        batch size.
        """
        pairs = [(job.id, job.lease_token) for job in jobs]
        size = 1 << max(0, len(pairs) - 1).bit_length()
        return pairs + [pairs[-1]] * (size - len(pairs)) if pairs else pairs

    def held_by_claim(self, jobs: Sequence[Job]) -> sa.ColumnElement[bool]:
        """True for the rows of ``jobs`` still carrying the lease token their claim gave them.

        The portable form is a row-value ``IN`` list; a dialect with array
        parameters overrides it with one short statement whatever the batch size.
        """
        return sa.tuple_(self.jobs.c.id, self.jobs.c.lease_token).in_(self._claim_pairs(jobs))

    def _fence(self, jobs: Sequence[Job]) -> sa.ColumnElement[bool]:
        j = self.jobs
        return sa.and_(self.held_by_claim(jobs), j.c.status == PROCESSING_SQL, j.c.lease_expires_at > self.now())

    def _update_fenced(
        self, conn: Connection, jobs: Sequence[Job], values: dict[str, Any], landed_status: str
    ) -> set[Hashable]:
        """Apply ``values`` to the jobs this worker still holds; return the ids it no longer held.

        Large batches go in chunks of :data:`FENCE_CHUNK` (same transaction): a
        completer that fell behind may hand over thousands of jobs, and one
        ``IN`` list that long overflows PostgreSQL's parser stack and the
        drivers' 65,535-parameter limit.
        """
        if len(jobs) > FENCE_CHUNK:
            # In id order, so that a chunked heartbeat and a completion of overlapping rows take their
            # row locks in the same order more often than not (PostgreSQL retries a deadlock after 1 s).
            jobs = sorted(jobs, key=lambda job: int(job.id))  # type: ignore[call-overload]
            lost: set[Hashable] = set()
            for start in range(0, len(jobs), FENCE_CHUNK):
                lost |= self._update_fenced(conn, jobs[start : start + FENCE_CHUNK], values, landed_status)
            return lost
        j = self.jobs
        wanted = {job.id for job in jobs}
        stmt = sa.update(j).where(self._fence(jobs)).values(**values)
        if self.supports_returning:
            done = {r[0] for r in conn.execute(stmt.returning(j.c.id))}
        elif conn.execute(stmt).rowcount == len(wanted):
            done = wanted  # rowcount counts matched rows: every job was still held
        else:
            done = {
                r[0]
                for r in conn.execute(
                    sa.select(j.c.id).where(self.held_by_claim(jobs), j.c.status == landed_status)
                )
            }
        return wanted - done

    def _run_fenced(self, jobs: Sequence[Job], values: dict[str, Any], landed_status: str) -> set[Hashable]:
        """:meth:`_update_fenced` on its own: one autocommit statement when the batch fits one chunk.

        The fence makes each row's update all-or-nothing on its own, so a
        single statement needs no BEGIN/COMMIT round trips; bigger batches keep
        one transaction across their chunks.
        """

        def work(conn: Connection) -> set[Hashable]:
            return self._update_fenced(conn, jobs, values, landed_status)

        return self._run_single(work) if len(jobs) <= FENCE_CHUNK else self._run(work)

    def complete_many(self, jobs: Sequence[tuple[Job, str | None]]) -> set[Hashable]:
        """Mark held jobs done, grouped so jobs without a result share one statement."""
        if not jobs:
            return set()
        done_values = {
            "status": JobStatus.DONE,
            "finished_at": self.now(),
            "locked_by": None,
            "lease_expires_at": None,
        }

        plain = [job for job, result in jobs if result is None]
        if len(plain) == len(jobs):  # the common case: no results to store, one statement
            return self._run_fenced(plain, done_values, JobStatus.DONE)

        def work(conn: Connection) -> set[Hashable]:
            lost: set[Hashable] = set()
            if plain:
                lost |= self._update_fenced(conn, plain, done_values, JobStatus.DONE)
            for job, result in jobs:
                if result is not None:
                    lost |= self._update_fenced(conn, [job], {**done_values, "result": result}, JobStatus.DONE)
            return lost

        return self._run(work)

    def fail(self, job: Job, *, error: str, errors_json: str, retry_in: float | None) -> bool:
        """Record a failed attempt: pending again after ``retry_in`` seconds, or dead."""
        values: dict[str, Any] = {
            "last_error": error,
            "errors": errors_json,
            "locked_by": None,
            "lease_expires_at": None,
        }
        if retry_in is None:
            values.update(status=JobStatus.DEAD, finished_at=self.now())
            landed = JobStatus.DEAD
        else:
            values.update(
                status=JobStatus.PENDING, run_at=self.seconds_from_now(sa.literal(float(retry_in), sa.Float()))
            )
            landed = JobStatus.PENDING
        return not self._run_fenced([job], values, landed)

    def extend_many(self, jobs: Sequence[Job], lease: float) -> set[Hashable]:
        """Push held leases out to DB-now + ``lease``."""
        if not jobs:
            return set()
        values = {"lease_expires_at": self.seconds_from_now(sa.literal(float(lease), sa.Float()))}
        return self._run_fenced(jobs, values, JobStatus.PROCESSING)

    def release_many(self, jobs: Sequence[Job]) -> set[Hashable]:
        """Return held jobs to pending without charging the attempt."""
        if not jobs:
            return set()
        j = self.jobs
        values = {
            "status": JobStatus.PENDING,
            "attempts": j.c.attempts - 1,
            "locked_by": None,
            "lease_expires_at": None,
        }
        return self._run_fenced(jobs, values, JobStatus.PENDING)

    # ------------------------------------------------------------------
    # Inspecting and managing
    # ------------------------------------------------------------------
    @staticmethod
    def _as_int_id(job_id: Hashable) -> int | None:
        if isinstance(job_id, bool):
            return None
        if isinstance(job_id, int):
            return job_id
        if isinstance(job_id, str) and job_id.strip().isdigit():
            return int(job_id)
        return None

    def get(self, job_id: Hashable) -> Job | None:
        """The job row with this id, or None."""
        key = self._as_int_id(job_id)
        if key is None:
            return None
        row = self._run(lambda conn: conn.execute(sa.select(*self._columns).where(self.jobs.c.id == key)).first())
        return self._job_from_row(row) if row is not None else None

    def cancel(self, job_id: Hashable) -> bool:
        """Cancel a pending job; False when it is not pending (or does not exist)."""
        key = self._as_int_id(job_id)
        if key is None:
            return False
        j = self.jobs
        stmt = (
            sa.update(j)
            .where(j.c.id == key, j.c.status == JobStatus.PENDING)
            .values(status=JobStatus.CANCELLED, finished_at=self.now())
        )
        return bool(self._run(lambda conn: conn.execute(stmt).rowcount))

    def stats(self, queue: str | None = None) -> dict[str, dict[str, int]]:
        """Counts per queue and status, plus ``scheduled`` (pending, not yet due)."""
        j = self.jobs
        not_due = sa.and_(j.c.status == JobStatus.PENDING, j.c.run_at > self.now())
        scheduled = sa.func.sum(sa.case((not_due, 1), else_=0))
        stmt = sa.select(j.c.queue, j.c.status, sa.func.count(), scheduled).group_by(j.c.queue, j.c.status)
        if queue is not None:
            stmt = stmt.where(j.c.queue == queue)
        out: dict[str, dict[str, int]] = {}
        for q, status, count, sched in self._run(lambda conn: list(conn.execute(stmt))):
            counts = out.setdefault(q, {s: 0 for s in (*STATUS_KEYS, "scheduled")})
            counts[status] = int(count)
            if status == JobStatus.PENDING:
                counts["scheduled"] = int(sched or 0)
        return out

    def count_ready(self, queue: str) -> int:
        """Exact count of due pending jobs in ``queue``."""
        j = self.jobs
        stmt = sa.select(sa.func.count()).where(
            j.c.status == PENDING_SQL, j.c.queue == queue, j.c.run_at <= self.now()
        )
        return int(self._run(lambda conn: conn.execute(stmt).scalar() or 0))

    def seconds_until_due(self, queues: Sequence[str]) -> float | None:
        """Earliest pending ``run_at`` of ``queues`` minus DB-now, both read in one statement."""
        j = self.jobs
        names = list(queues)
        due = sa.select(sa.func.min(j.c.run_at)).where(j.c.status == PENDING_SQL, j.c.queue.in_(names))
        expiry = sa.select(sa.func.min(j.c.lease_expires_at)).where(
            j.c.status == PROCESSING_SQL, j.c.queue.in_(names)
        )
        stmt = sa.select(due.scalar_subquery(), expiry.scalar_subquery(), self.now())
        next_due, next_expiry, now = self._run_single(lambda conn: conn.execute(stmt).one())
        moments = [m for m in (next_due, next_expiry) if m is not None]
        return (min(moments) - now).total_seconds() if moments else None

    def db_now(self) -> datetime:
        """The database clock."""
        now: datetime = self._run(lambda conn: conn.execute(sa.select(self.now())).scalar_one())
        return now

    def dead_jobs(self, queue: str | None, limit: int) -> list[Job]:
        """Dead jobs, newest first."""
        j = self.jobs
        stmt = sa.select(*self._columns).where(j.c.status == JobStatus.DEAD)
        if queue is not None:
            stmt = stmt.where(j.c.queue == queue)
        stmt = stmt.order_by(j.c.finished_at.desc(), j.c.id.desc()).limit(limit)
        return [self._job_from_row(r) for r in self._run(lambda conn: list(conn.execute(stmt)))]

    def replay(self, ids: Iterable[Hashable] | None, queue: str | None) -> ReplayResult:
        """Dead jobs back to pending, one short transaction per job so a held dedupe key only skips that job."""
        j = self.jobs
        stmt = sa.select(j.c.id, j.c.queue, j.c.dedupe_key).where(j.c.status == JobStatus.DEAD)
        if queue is not None:
            stmt = stmt.where(j.c.queue == queue)
        if ids is not None:
            wanted = [k for k in (self._as_int_id(i) for i in ids) if k is not None]
            if not wanted:
                return ReplayResult(0)
            stmt = stmt.where(j.c.id.in_(wanted))
        candidates = self._run(lambda conn: list(conn.execute(stmt.order_by(j.c.id))))
        result = ReplayResult(0)
        revive = {
            "status": JobStatus.PENDING,
            "attempts": 0,
            "finished_at": None,
            "run_at": self.now(),
            "locked_by": None,
            "lease_expires_at": None,
        }
        plain = [r.id for r in candidates if r.dedupe_key is None]
        for start in range(0, len(plain), 500):
            chunk = plain[start : start + 500]
            revive_chunk = sa.update(j).where(j.c.id.in_(chunk), j.c.status == JobStatus.DEAD).values(**revive)
            result.replayed += self._run(self._rowcount_of(revive_chunk))
        for r in candidates:
            if r.dedupe_key is None:
                continue
            upd = sa.update(j).where(j.c.id == r.id, j.c.status == JobStatus.DEAD).values(**revive)
            try:
                result.replayed += self._run(self._rowcount_of(upd))
            except PolyqueueError as exc:
                if not isinstance(exc.__cause__, sa_exc.IntegrityError):
                    raise
                result.skipped[r.id] = f"dedupe key {r.dedupe_key!r} is held by a live job"
        return result

    @staticmethod
    def _rowcount_of(stmt: sa.Executable) -> Callable[[Connection], int]:
        return lambda conn: int(conn.execute(stmt).rowcount)

    def purge(self, status: str, older_than: float, batch_size: int) -> int:
        """Delete finished rows in batches of ``batch_size``, each its own transaction."""
        j = self.jobs
        select_batch = (
            sa.select(j.c.id)
            .where(
                j.c.status == status,
                j.c.finished_at < self.seconds_before_now(sa.literal(float(older_than), sa.Float())),
            )
            .limit(batch_size)
        )
        total = 0
        while True:

            def work(conn: Connection) -> int:
                batch = [r[0] for r in conn.execute(select_batch)]
                if not batch:
                    return 0
                return conn.execute(sa.delete(j).where(j.c.id.in_(batch), j.c.status == status)).rowcount

            deleted = self._run(work)
            total += deleted
            if deleted == 0:
                return total


STATUS_KEYS = (JobStatus.PENDING, JobStatus.PROCESSING, JobStatus.DONE, JobStatus.DEAD, JobStatus.CANCELLED)
assert set(FINISHED_STATUSES) < set(STATUS_KEYS)
