"""The shared SQL store behind the SQLite, PostgreSQL and MySQL backends.

One SQLAlchemy-Core implementation of the backend interface. It decides
nothing: claim order, the lease-expiry rule and the fence come from
:mod:`polyqueue.policy` as SQL expressions, and settlements arrive as values
to write. A dialect subclass supplies only what differs per database, as
class attributes and small overridable methods: the column type for times,
the database clock, how a transaction begins, how locked rows are updated
(one ``UPDATE ... RETURNING`` or ``SELECT ... FOR UPDATE SKIP LOCKED`` then
``UPDATE``), the indexes, how a duplicate dedupe key is ignored, and how
driver errors are classified. Nothing here asks which database it is
talking to.

Two markers make retries safe. Every enqueue call carries a client token:
the first row it inserts stores ``+token`` (under a unique index) and its
other rows ``-token``, so when a dropped connection makes ``_run`` retry the
call, the retry finds a committed first attempt by its marker (waiting for
it if its commit is still in flight) and returns its rows instead of
inserting them again. Every imported job stores its ``import_key`` (unique),
so a transfer rerun after a crash finds what it already wrote.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql as mysql_types
from sqlalchemy.engine import URL, Connection, Engine

from .. import json_codec, policy
from ..errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidArgument,
    PolyqueueError,
    SchemaMismatch,
    SchemaMissing,
)
from ..job import (
    FINISHED_STATUSES,
    LIVE_STATUSES,
    STATUSES,
    STORED_FIELDS,
    Job,
    JobRecord,
    JobStatus,
    NewJob,
    QueueLimits,
    QueueSettings,
    ReplayResult,
    int_job_id,
)
from ..policy import ErrorKind
from ..urls import display_url
from . import base as spi
from .after_commit import AfterCommitWatcher
from .base import Backend, BackendOptions, Capability, OptionParser

__all__ = [
    "LONG_TEXT",
    "SCHEMA_VERSION",
    "SQL_CAPABILITIES",
    "THREADS",
    "AwareUTCTime",
    "ErrorKind",
    "KeysetPage",
    "SQLBackend",
    "UpdateValues",
    "status_literal",
]

log = logging.getLogger("polyqueue.sql")
T = TypeVar("T")
#: Column assignments of an UPDATE, in the order they are written (MySQL assigns left to right).
UpdateValues = list[tuple[sa.Column[Any], Any]]


def status_literal(status: str) -> sa.ColumnElement[str]:
    """A status as an inline SQL literal, so planners can match partial indexes even in prepared plans."""
    assert status.isalpha()
    return sa.literal_column(f"'{status}'", sa.String())


PENDING_SQL = status_literal(JobStatus.PENDING)
PROCESSING_SQL = status_literal(JobStatus.PROCESSING)
LIVE_SQL = [status_literal(s) for s in LIVE_STATUSES]
FINISHED_SQL = [status_literal(s) for s in FINISHED_STATUSES]

#: Bumped whenever ``migrate`` has new work to do. 3: the ready index leads with (queue, job_type);
#: 4: the periodic schedules and fires tables; 5: dedupe holds after finishing (``dedupe_for``,
#: ``dedupe_held_until``), enqueue tokens and import keys; 6: runtime control (``headers``,
#: ``timeout``, ``cancel_requested``); 7: the listing indexes of ``list_jobs``; 8: the per-queue settings
#: table (pause and flow control) and the jobs' ``concurrency_key``.
SCHEMA_VERSION = 8
#: The columns version 5 added, in the order an upgrade adds them.
_V5_COLUMNS = ("dedupe_for", "dedupe_held_until", "enqueue_token", "import_key")
#: The columns version 6 added (runtime control), in the order an upgrade adds them.
_V6_COLUMNS = ("headers", "timeout", "cancel_requested")
#: The jobs columns every polyqueue schema has had: a ``<prefix>jobs`` table lacking one is not polyqueue's.
#: Fixed on purpose: a later version's new columns are added by its upgrade, not required of the table.
_FIRST_SCHEMA_COLUMNS = ("id", "queue", "job_type", "payload", "priority", "status", "attempts", "max_attempts",
                         "run_at", "created_at", "finished_at", "locked_by", "lease_expires_at", "lease_token",
                         "last_error", "errors", "dedupe_key", "result")  # fmt: skip
#: The version ``migrate`` upgrades from when it finds a jobs table of polyqueue's shape but no version row
#: (a MySQL migration interrupted between its DDL and the stamp, or a table from before the schema table).
_UNSTAMPED = 0
#: The columns version 8 added.
_V8_COLUMNS = ("concurrency_key",)
#: JobRecord fields stored under another column name.
_RECORD_COLUMN = {
    "payload_json": "payload", "errors_json": "errors", "result_json": "result", "headers_json": "headers",
}  # fmt: skip

#: Job's fields in declaration order: rows are read in this order and passed to Job positionally.
_JOB_FIELDS = STORED_FIELDS
_DECODED = ("payload", "result", "errors", "headers", "cancel_requested", "timeout")
_DECODED_FIELDS = tuple(_JOB_FIELDS.index(name) for name in _DECODED)

#: Payloads, results and error histories: unbounded text (MySQL's TEXT stops at 64 KB, below ``max_payload_bytes``).
LONG_TEXT = sa.Text().with_variant(mysql_types.LONGTEXT(), "mysql", "mariadb")
#: What every SQL dialect of the shared layer has; a dialect declares these (plus its own) on its class.
SQL_CAPABILITIES = frozenset(
    {
        Capability.DEDUPE,
        Capability.PRIORITIES,
        Capability.DELAYED,
        Capability.TRANSACTIONAL_ENQUEUE,
        Capability.MULTI_PROCESS,
        Capability.PERIODIC,
        Capability.TRANSFER,
        Capability.LIST_JOBS,
        Capability.THROUGHPUT,
        Capability.RETRY_NOW,
        Capability.HEADERS,
        Capability.TIMEOUTS,
        Capability.CANCEL_RUNNING,
        Capability.PAUSE,
        Capability.FLOW_CONTROL,
    }
)
#: Most jobs one fenced UPDATE names (a power of two: see ``_claim_pairs``).
FENCE_CHUNK = 512
#: The ``async_driver`` that calls the backend from worker threads instead of running it on an asyncio driver.
THREADS = "threads"
#: Internal option: the SQLAlchemy asyncio driver of an :meth:`SQLBackend.asyncio_variant`'s engines.
_ASYNCIO_ENGINE = "_asyncio_engine"
#: The module each SQLAlchemy asyncio driver imports.
_DRIVER_MODULES = {"psycopg_async": "psycopg", "asyncmy": "asyncmy", "aiomysql": "aiomysql", "aiosqlite": "aiosqlite"}
#: Most rows one statement of an import, an export read-back or a fenced delete names.
RECORD_CHUNK = 500
#: SQL zero as an inline literal, so partial-index predicates (``enqueue_token > 0``) match in queries too.
ZERO = sa.literal_column("0", sa.BigInteger())


@dataclasses.dataclass(frozen=True, slots=True)
class KeysetPage:
    """One page of jobs in id order, as :meth:`SQLBackend.keyset_page` reads it (export and listing share it).

    ``statuses`` None means any; ``after`` is the integer id the page
    continues after (None: from the first); ``newest_first`` reads ids
    downwards (listing), else upwards (export).
    """

    statuses: frozenset[str] | None
    queue: str | None
    job_type: str | None
    after: int | None
    limit: int
    newest_first: bool = True
def _scalars(stmt: sa.Select[Any], conn: Connection) -> list[Any]:
    return list(conn.execute(stmt).scalars())


def holds_dedupe_slot(c: Any) -> sa.ColumnElement[bool]:
    """Rows that keep their dedupe key in the unique dedupe index: live, or finished with a hold not yet released.

    An expired hold stays in the index until an enqueue (or replay) that
    meets it releases it (``dedupe_held_until`` set to NULL): the index
    cannot read the clock, so the enqueue does.
    """
    return sa.and_(c.dedupe_key.is_not(None), sa.or_(c.status.in_(LIVE_SQL), c.dedupe_held_until.is_not(None)))


class EnqueueTokenTaken(PolyqueueError):
    """Another enqueue call's marker already carries this call's token (about once in 10**9 same-second pairs)."""


class EnqueueMarks:
    """The enqueue token each row of one enqueue call carries: ``+token`` on its first row, ``-token`` on the rest.

    Only the first row enters the unique ``jobs_enqueue_token`` index (it
    holds positive tokens only), so marking costs one index entry per call,
    not per row. ``None`` when the call has no token.
    """

    def __init__(self, token: int | None) -> None:
        self.token = token
        self.marked = token is None

    def peek(self) -> int | None:
        """The token the next inserted row carries."""
        if self.token is None:
            return None
        return -self.token if self.marked else self.token

    def inserted(self) -> None:
        """A row carrying :meth:`peek`'s value was inserted."""
        self.marked = True


class AwareUTCTime(sa.types.TypeDecorator[datetime]):
    """Base of a dialect's time column: binds aware datetimes only, as UTC, and reads back aware UTC.

    A dialect subclass sets ``impl`` and converts with :meth:`to_stored` and :meth:`from_stored`.
    """

    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
        return self.to_stored(value.astimezone(UTC))

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        return None if value is None else self.from_stored(value)

    def to_stored(self, moment: datetime) -> Any:
        """An aware UTC datetime as the column stores it."""
        raise NotImplementedError

    def from_stored(self, value: Any) -> datetime:
        """The stored value as an aware UTC datetime."""
        raise NotImplementedError


class SQLBackend(Backend):
    """A backend on any SQLAlchemy dialect; subclasses fill in the dialect knobs."""

    name = "sql"
    capabilities = frozenset()
    connect_options: ClassVar[dict[str, OptionParser]] = {
        "reconnect_seconds": float,
        "transient_retries": int,
        "async_driver": str,
    }
    #: The SQLAlchemy driver used when the URL names none (``postgresql`` -> ``postgresql+psycopg``).
    default_driver: ClassVar[str] = ""
    #: The SQLAlchemy asyncio drivers ``connect_async`` can run this dialect on, by the name the
    #: ``async_driver`` option gives them: ``{"asyncmy": "mysql+asyncmy"}``. A URL naming one of them
    #: (an application's ``sqlite+aiosqlite://``) is accepted; the synchronous engine uses ``default_driver``.
    async_drivers: ClassVar[Mapping[str, str]] = {}
    #: What ``connect_async`` uses without an ``async_driver`` option: one of :attr:`async_drivers`, or
    #: ``"threads"`` (call this backend from worker threads). Chosen by measurement (docs/asyncio.md).
    default_async_driver: ClassVar[str] = THREADS
    #: The pip extra that installs the asyncio driver, named in the missing-driver error.
    async_driver_extra: ClassVar[str] = "asyncio"
    #: The pip extra that installs the driver, named in the missing-driver error.
    driver_extra: ClassVar[str] = ""
    #: Whether ``UPDATE/INSERT ... RETURNING`` is available.
    supports_returning: ClassVar[bool] = True

    def __init__(self, url: URL, options: BackendOptions) -> None:
        self.url = url
        self.options = options
        self.prefix: str = options["table_prefix"]
        self.async_driver = self._chosen_async_driver(options.get("async_driver"))
        #: The asyncio driver this instance's engines run on (its methods then run inside greenlets), or None.
        self.asyncio_engine: str | None = options.get(_ASYNCIO_ENGINE)
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
        self.schedules_table, self.fires_table = self._build_periodic_tables()
        self.queues_table = self._build_queues_table()
        for index in self.indexes(self.jobs):
            index._set_parent(self.jobs)
        self._columns = list(self.jobs.c)
        names = [c.name for c in self._columns]
        self._job_field_positions = tuple(names.index(name) for name in _JOB_FIELDS)
        self._order_columns = {"priority": self.jobs.c.priority, "run_at": self.jobs.c.run_at, "id": self.jobs.c.id}
        self.engine = self._create_engine()

    # ------------------------------------------------------------------
    # asyncio
    # ------------------------------------------------------------------
    def _chosen_async_driver(self, option: Any) -> str:
        """The ``async_driver`` option, else the measured default (a URL naming an asyncio driver does not choose)."""
        if option is None:
            return self.default_async_driver
        if option != THREADS and option not in self.async_drivers:
            known = ", ".join([THREADS, *self.async_drivers])
            raise ConfigurationError(f"async_driver must be one of {known} for {self.name}")
        return str(option)

    def asyncio_variant(self) -> SQLBackend | None:
        """This store on its asyncio driver (see :meth:`Backend.asyncio_variant`); None with ``"threads"``.

        The same class and options with engines from ``create_async_engine``:
        every statement this code sends then awaits the driver, so the shared
        SQL layer runs unchanged inside a greenlet on the event loop.
        """
        if self.async_driver == THREADS:
            return None
        return type(self)(self.url, {**self.options, _ASYNCIO_ENGINE: self.async_drivers[self.async_driver]})

    def pause(self, seconds: float) -> None:
        """Wait between two tries of a transaction: a sleep, or on an asyncio engine a wait that yields the loop."""
        if self.asyncio_engine is None:
            time.sleep(seconds)
        else:
            import asyncio

            from ..greenlets import await_

            await_(asyncio.sleep(seconds))

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

    def now_text(self) -> sa.ColumnElement[str]:
        """DB-now as an error history entry's ``at``: :data:`polyqueue.policy.ERROR_TIME_FORMAT`."""
        raise NotImplementedError

    def history_appended(self, history: sa.ColumnElement[Any], entry: dict[str, Any]) -> sa.ColumnElement[str]:
        """The JSON array text ``history`` (NULL reads as empty) with ``entry`` appended as an object.

        Keeps the newest :data:`~polyqueue.policy.ERROR_HISTORY_LIMIT`
        entries. ``entry`` maps keys to SQL values (see
        :func:`polyqueue.policy.expired_lease_entry_sql`).
        """
        raise NotImplementedError

    def history_stamped(self, history: sa.ColumnElement[Any], at: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """The JSON array text ``history`` with ``at`` set on its newest entry."""
        raise NotImplementedError

    def engine_options(self) -> dict[str, Any]:
        """Extra ``create_engine`` keyword arguments."""
        return {}

    def on_connect(self, dbapi_connection: Any) -> None:
        """Session set-up run once per new DBAPI connection."""

    def begin_transaction(self, connection: Connection) -> None:
        """Run at the start of each transaction this backend opens (``BEGIN IMMEDIATE`` on SQLite)."""

    def after_purge_batch(self) -> None:
        """Called after each purge batch, before its rest: housekeeping a dialect needs so claims stay quick."""

    def eager_locking(self) -> AbstractContextManager[Any]:
        """A context in which this thread's transactions wait for locks by polling often (purge batches, heartbeats).

        A purge batch must catch the short gaps between a busy worker's
        transactions. Servers queue lock waiters and wake them: nothing to do.
        """
        return nullcontext()

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

    def indexes(self, jobs: sa.Table) -> list[sa.Index]:
        """Indexes for ready-job lookups, lease rescue, dedupe, purge, enqueue markers and import keys.

        The default uses partial indexes, so finished rows never enter the
        indexes that claims, rescues and dedupe checks read. The ready index
        leads with (queue, job_type): a claim reads each pair it asks for in
        claim order and stops after ``limit`` rows, however many jobs of
        other types wait. The dedupe index holds the rows that keep their key
        (:func:`holds_dedupe_slot`); the enqueue-token index only the first
        row of each enqueue call (positive tokens), and the import-key index
        only imported rows, so plain inserts pay nothing for either.
        """
        p, c = self.prefix, jobs.c

        def where(predicate: sa.ColumnElement[bool]) -> dict[str, Any]:
            return {self.partial_index_keyword: predicate}

        return [
            sa.Index(
                f"{p}jobs_ready", c.queue, c.job_type, *policy.claim_order_sql(c), **where(c.status == PENDING_SQL)
            ),
            sa.Index(f"{p}jobs_leases", c.lease_expires_at, **where(c.status == PROCESSING_SQL)),
            sa.Index(f"{p}jobs_dedupe", c.queue, c.dedupe_key, unique=True, **where(holds_dedupe_slot(c))),
            sa.Index(f"{p}jobs_finished", c.status, c.finished_at, **where(c.status.in_(FINISHED_SQL))),
            sa.Index(f"{p}jobs_enqueue_token", c.enqueue_token, unique=True, **where(c.enqueue_token > ZERO)),
            sa.Index(f"{p}jobs_import_key", c.import_key, unique=True, **where(c.import_key.is_not(None))),
            sa.Index(f"{p}jobs_running", c.queue, c.concurrency_key, **where(c.status == PROCESSING_SQL)),
            *self.listing_indexes(jobs),
        ]

    #: The ``Index`` keyword for covering columns (``postgresql_include``), or "" if the dialect has none.
    include_keyword: ClassVar[str] = ""

    def listing_indexes(self, jobs: sa.Table) -> list[sa.Index]:
        """What :meth:`keyset_page` reads: (status, id) and (queue, status, id).

        Where the dialect has covering columns, (status, id) also carries
        queue and run_at, so counting the jobs of a few statuses per queue
        (the dashboard's overview: processing and dead, never the done
        history) reads this index alone, not one heap page per row.

        Where the dialect has partial indexes, pending jobs are left out:
        an enqueue then maintains neither index (measured on PostgreSQL, the
        two cost a quarter of bulk-enqueue throughput), and pending jobs are
        the newest, so a page of them walks the primary key backwards and
        finds them first; pending counts read the ready index.
        """
        p, c = self.prefix, jobs.c
        covering: dict[str, Any] = {self.include_keyword: ["queue", "run_at"]} if self.include_keyword else {}
        partial: dict[str, Any] = (
            {self.partial_index_keyword: c.status != PENDING_SQL} if self.partial_index_keyword else {}
        )
        return [
            sa.Index(f"{p}jobs_by_status", c.status, c.id, **covering, **partial),
            sa.Index(f"{p}jobs_by_queue_status", c.queue, c.status, c.id, **partial),
        ]

    @contextmanager
    def migration_lock(self, connection: Connection) -> Iterator[None]:
        """Serialise concurrent ``migrate`` calls (advisory lock, GET_LOCK, BEGIN IMMEDIATE)."""
        yield

    def conflict_insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT with ``on_conflict_do_nothing()`` (PostgreSQL's and SQLite's constructs)."""
        raise NotImplementedError(f"{type(self).__name__} has no INSERT ... ON CONFLICT")

    def insert_ignoring_live_duplicate(self, connection: Connection, row: dict[str, Any]) -> Hashable | None:
        """Insert one job that has a dedupe key; return its new id, or None if the key is in the dedupe index.

        The default is ``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` on
        :meth:`conflict_insert`. A dialect that reports the conflicting row's
        id instead sets :attr:`insert_reports_holder`; the caller then checks
        whose row it is.
        """
        stmt = self.conflict_insert(self.jobs).values(**row).on_conflict_do_nothing().returning(self.jobs.c.id)
        return connection.execute(stmt).scalar()  # type: ignore[no-any-return]

    def insert_ignoring_duplicates(self, connection: Connection, table: sa.Table, values: dict[str, Any]) -> bool:
        """Insert one row unless a unique key already holds it; True if it was inserted.

        The default is ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` on :meth:`conflict_insert`.
        """
        key = next(iter(table.primary_key))
        stmt = self.conflict_insert(table).values(**values).on_conflict_do_nothing().returning(key)
        return connection.execute(stmt).first() is not None

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
        self, connection: Connection, candidates: sa.Select[Any], values: UpdateValues, returning: bool
    ) -> list[Any]:
        """Update the rows ``candidates`` (a select of ids) names, skipping rows other transactions hold.

        Returns the updated rows (all columns) when ``returning``, else []. The
        default is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
        LOCKED) RETURNING``; dialects without RETURNING override this.
        """
        stmt = (
            sa.update(self.jobs)
            .where(self.jobs.c.id.in_(candidates.with_for_update(skip_locked=True).scalar_subquery()))
            .ordered_values(*values)
        )
        if returning:
            return list(connection.execute(stmt.returning(*self._columns)))
        connection.execute(stmt)
        return []

    def claim_ready(
        self, connection: Connection, pairs: Sequence[tuple[str, str]], limit: int, values: UpdateValues
    ) -> list[Any]:
        """Apply the claim ``values`` to up to ``limit`` ready jobs of ``(queue, job_type)`` ``pairs``.

        Returns the claimed rows (all columns), in any order. The default is
        one :meth:`update_locked` over :meth:`ready_ids`; MySQL locks pair by pair.
        """
        return self.update_locked(connection, self.ready_ids(pairs, limit), values, returning=True)

    def describe(self) -> str:
        """The URL with its password masked, its database as written (``sqlite:///:memory:``)."""
        return display_url(self.url)

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
            sa.Column("dedupe_for", sa.Float, nullable=True),
            sa.Column("dedupe_held_until", when(), nullable=True),
            sa.Column("enqueue_token", sa.BigInteger, nullable=True),
            sa.Column("import_key", sa.String(64), nullable=True),
            sa.Column("headers", LONG_TEXT, nullable=True),
            sa.Column("timeout", sa.Float, nullable=True),
            sa.Column(
                "cancel_requested",
                sa.Boolean(create_constraint=False),
                nullable=False,
                default=False,
                server_default=sa.false(),
            ),
            sa.Column("concurrency_key", sa.String(255), nullable=True),
            *self.extra_columns(),
        )

    def _build_periodic_tables(self) -> tuple[sa.Table, sa.Table]:
        """The declared schedules, and a row per fired ``(schedule, slot)``: its primary key makes a slot fire once."""
        when = self.time_type
        schedules = sa.Table(
            f"{self.prefix}schedules",
            self.metadata,
            sa.Column("name", sa.String(255), primary_key=True),
            sa.Column("cron", sa.String(255), nullable=False),
            sa.Column("timezone", sa.String(64), nullable=False),
            sa.Column("job_type", sa.String(255), nullable=False),
            sa.Column("queue", sa.String(255), nullable=False),
            sa.Column("priority", sa.Integer, nullable=False),
            sa.Column("payload", LONG_TEXT, nullable=False),
            sa.Column("catch_up", sa.String(16), nullable=False),
            sa.Column("declared_at", when(), nullable=False),
            sa.Column("declared_by", sa.String(255), nullable=False),
        )
        fires = sa.Table(
            f"{self.prefix}fires",
            self.metadata,
            sa.Column("name", sa.String(255), primary_key=True),
            sa.Column("slot", sa.String(32), primary_key=True),
            sa.Column("slot_at", when(), nullable=False),
            sa.Column("fired_at", when(), nullable=False),
            sa.Column("job_id", sa.BigInteger, nullable=True),
            sa.Index(f"{self.prefix}fires_newest", "name", "slot_at"),
        )
        return schedules, fires

    def _build_queues_table(self) -> sa.Table:
        """One row per controlled queue (paused or limited): what every claim of that queue reads and locks.

        ``rate_allowance`` is the starts a rate-limited queue has saved up as
        of ``rate_counted_at`` (database clock; see :func:`policy.rate_allowance`).
        A queue with no limits that is not paused has no row, so a plain
        claim's check costs one probe of an empty primary-key range.
        """
        return sa.Table(
            f"{self.prefix}queues",
            self.metadata,
            sa.Column("name", sa.String(255), primary_key=True),
            sa.Column("paused", sa.Boolean(), nullable=False, default=False),
            sa.Column("concurrency", sa.Integer, nullable=True),
            sa.Column("rate", sa.Double(), nullable=True),
            sa.Column("per_key", sa.Integer, nullable=True),
            sa.Column("rate_allowance", sa.Double(), nullable=False, default=0.0),
            sa.Column("rate_counted_at", self.time_type(), nullable=True),
            sa.Column("changed_at", self.time_type(), nullable=False),
        )

    def migrate(self) -> None:
        """Create the tables and indexes if missing and record the schema version.

        Refuses (:class:`SchemaMismatch`, nothing changed) a ``<prefix>jobs``
        table that is not polyqueue's, and a schema newer than this polyqueue.
        A jobs table of polyqueue's shape without a version row is upgraded
        from the oldest version: every upgrade step checks what exists.
        """

        def work(conn: Connection) -> None:
            with self.migration_lock(conn):
                existing = self._existing_jobs_columns(conn)
                if existing is not None:
                    self._refuse_foreign_jobs_table(existing)
                    if sa.inspect(conn).has_table(self.schema_table.name):
                        stamped = conn.execute(sa.select(self.schema_table.c.version)).scalar()
                        if stamped is not None and stamped > SCHEMA_VERSION:
                            raise self._newer_schema(stamped)  # before any DDL: a newer polyqueue owns these tables
                self.metadata.create_all(conn, checkfirst=True)
                current = conn.execute(sa.select(self.schema_table.c.version)).scalar()
                if current is None and existing is not None:
                    self.upgrade_schema(conn, _UNSTAMPED)
                elif current is None or current < SCHEMA_VERSION:
                    self.upgrade_schema(conn, current)
                if current is None:
                    conn.execute(sa.insert(self.schema_table).values(id=1, version=SCHEMA_VERSION))
                elif current < SCHEMA_VERSION:
                    conn.execute(sa.update(self.schema_table).values(version=SCHEMA_VERSION))

        with self._schema_check_suspended():
            self._run(work, retry_duplicates=True)

    def _existing_jobs_columns(self, connection: Connection) -> set[str] | None:
        """The column names of an existing ``<prefix>jobs`` table, or None when there is none."""
        inspector = sa.inspect(connection)
        if not inspector.has_table(self.jobs.name):
            return None
        return {column["name"] for column in inspector.get_columns(self.jobs.name)}

    def _refuse_foreign_jobs_table(self, columns: set[str]) -> None:
        """Raise :class:`SchemaMismatch` naming the table unless it has every column of polyqueue's first schema."""
        missing = [name for name in _FIRST_SCHEMA_COLUMNS if name not in columns]
        if missing:
            raise SchemaMismatch(
                f"table {self.jobs.name} in {self.describe()} is not a polyqueue jobs table "
                f"(it has no {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} column): "
                "choose another table_prefix, or rename that table"
            )

    def _newer_schema(self, version: int) -> SchemaMismatch:
        return SchemaMismatch(
            f"the polyqueue tables ({self.prefix}jobs) in {self.describe()} are schema version {version}, "
            f"newer than this polyqueue's {SCHEMA_VERSION}: upgrade polyqueue"
        )

    _schema_verified = False

    @contextmanager
    def _schema_check_suspended(self) -> Iterator[None]:
        """Within: no first-use version check (``migrate`` and ``drop_schema`` deal with any version themselves).

        After a success the schema counts as checked; after an error, the next call checks again.
        """
        verified, self._schema_verified = self._schema_verified, True
        try:
            yield
        except BaseException:
            self._schema_verified = verified
            raise

    def verify_schema(self) -> None:
        """Check once per backend, on first use, that the tables are the schema this polyqueue uses.

        Raises :class:`SchemaMismatch` when they are older ("run ``polyqueue
        migrate``"), newer ("upgrade polyqueue") or have no version row; the
        next call checks again. With no tables at all it returns: each call
        that needs them raises :class:`SchemaMissing` itself, and calls that
        need none (``db_now``) work before ``migrate``.
        """
        if self._schema_verified:
            return
        self._schema_verified = True  # the read below runs through _retrying too
        try:
            version = self._retrying(
                self.engine.begin, lambda conn: conn.execute(sa.select(self.schema_table.c.version)).scalar(), False
            )
        except SchemaMissing:
            self._schema_verified = False
            return
        except BaseException:
            self._schema_verified = False
            raise
        if version is not None and version == SCHEMA_VERSION:
            return
        self._schema_verified = False
        if version is not None and version > SCHEMA_VERSION:
            raise self._newer_schema(version)
        found = "have no schema version" if version is None else f"are schema version {version}"
        raise SchemaMismatch(
            f"the polyqueue tables ({self.prefix}jobs) in {self.describe()} {found}; this polyqueue "
            f"needs {SCHEMA_VERSION}: run `polyqueue migrate` (or Queue.migrate())"
        )

    def upgrade_schema(self, connection: Connection, from_version: int | None) -> None:
        """Schema work inside ``migrate``'s lock when the schema is new (None) or older.

        Version 3 rebuilds the ready index to lead with (queue, job_type).
        Version 7 creates the listing indexes (:meth:`listing_indexes`).
        Version 8 adds the ``concurrency_key`` column and its ``jobs_running``
        index (the ``queues`` table is created with the others).
        Version 5 adds the ``dedupe_for``, ``dedupe_held_until``,
        ``enqueue_token`` and ``import_key`` columns, lets the dedupe index
        hold finished jobs' keys too (:meth:`upgrade_dedupe_index`) and
        creates the indexes of the new columns. Version 6 adds ``headers``,
        ``timeout`` and ``cancel_requested`` (runtime control; no index:
        they are read only with rows found by id or by the claim). Each step checks what exists,
        so an upgrade interrupted half-way (MySQL DDL is not transactional)
        completes on the next ``migrate``. Dialects add their own steps and call this.
        """
        if from_version is not None and from_version < 3:
            self._index(connection, "jobs_ready", rebuild=True)
        if from_version is not None and from_version < 5:
            self._add_columns(connection, _V5_COLUMNS)
            self.upgrade_dedupe_index(connection)
            for name in ("jobs_enqueue_token", "jobs_import_key"):
                self._index(connection, name, rebuild=False)
        if from_version is not None and from_version < 6:
            self._add_columns(connection, _V6_COLUMNS)
        if from_version is not None and from_version < 7:
            for name in ("jobs_by_status", "jobs_by_queue_status"):
                self._index(connection, name, rebuild=False)
        if from_version is not None and from_version < 8:
            # The queues table is new: create_all made it. Jobs gain their concurrency key and its index.
            self._add_columns(connection, _V8_COLUMNS)
            self._index(connection, "jobs_running", rebuild=False)

    def _add_columns(self, connection: Connection, names: Sequence[str]) -> None:
        """Add the jobs columns ``names`` that are missing (a rerun after an interrupted upgrade adds the rest)."""
        present = {column["name"] for column in sa.inspect(connection).get_columns(self.jobs.name)}
        for name in names:
            if name not in present:
                ddl = sa.schema.CreateColumn(self.jobs.c[name]).compile(dialect=connection.dialect)
                table = connection.dialect.identifier_preparer.quote(self.jobs.name)
                connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {ddl}")

    def upgrade_dedupe_index(self, connection: Connection) -> None:
        """Version 5: the dedupe index also holds finished jobs' keys while held (a new predicate: rebuilt)."""
        self._index(connection, "jobs_dedupe", rebuild=True)

    def _index(self, connection: Connection, name: str, *, rebuild: bool) -> None:
        """Create the jobs index ``name`` (of this prefix) if missing; with ``rebuild``, drop it first."""
        found = [index for index in self.jobs.indexes if index.name == f"{self.prefix}{name}"]
        for index in found:  # none when a dialect keeps this rule elsewhere (MySQL's generated column)
            if rebuild:
                index.drop(connection, checkfirst=True)
            index.create(connection, checkfirst=True)

    def caller_transaction(self) -> Any:
        """``engine.begin()``: a SQLAlchemy Connection in a transaction, as an application would hold (tests)."""
        return self.engine.begin()

    @asynccontextmanager
    async def async_caller_transaction(self) -> AsyncIterator[Any]:
        """An ``AsyncConnection`` in a transaction on an asyncio driver of this dialect, as an app holds (tests).

        Raises NotImplementedError when no asyncio driver of the dialect is installed.
        """
        import importlib.util

        from sqlalchemy.ext.asyncio import create_async_engine

        drivers = [self.async_drivers[self.async_driver]] if self.async_driver != THREADS else []
        drivers += list(self.async_drivers.values())
        for driver in drivers:
            if importlib.util.find_spec(_DRIVER_MODULES.get(driver.partition("+")[2], "")) is None:
                continue
            engine = create_async_engine(self.url.set(drivername=driver))
            try:
                async with engine.begin() as conn:
                    yield conn
            finally:
                await engine.dispose()
            return
        raise NotImplementedError(f"no asyncio driver for {self.name} is installed ({', '.join(self.async_drivers)})")

    def drop_schema(self) -> None:
        """Drop the tables and indexes of this prefix (tests and uninstalling)."""
        with self._schema_check_suspended():
            self._run(lambda conn: self.metadata.drop_all(conn, checkfirst=True))

    # ------------------------------------------------------------------
    # Engine, transactions and error translation
    # ------------------------------------------------------------------
    def _create_engine(self, *, autocommit: bool = False) -> Engine:
        url = self.url
        if self.asyncio_engine is not None:
            url = url.set(drivername=self.asyncio_engine)
        elif self.default_driver and ("+" not in url.drivername or self._names_async_driver(url)):
            url = url.set(drivername=self.default_driver)
        options: dict[str, Any] = {"pool_reset_on_return": None}
        options.update(self.engine_options())
        if autocommit:
            # A pool of its own whose connections stay in autocommit: switching a pooled
            # connection back and forth costs a SET statement per checkout on some drivers.
            # As large as the transactional pool: a worker's handlers, completer and heartbeat all use it.
            options.update(isolation_level="AUTOCOMMIT")
        extra = self.driver_extra if self.asyncio_engine is None else self.async_driver_extra
        try:
            if self.asyncio_engine is None:
                engine = sa.create_engine(url, **options)
            else:
                from sqlalchemy.ext.asyncio import create_async_engine

                engine = create_async_engine(url, **options).sync_engine
        except sa_exc.NoSuchModuleError as exc:
            raise ConfigurationError(
                f"SQLAlchemy has no driver {url.drivername!r}: use {self.name}:// "
                f"(pip install 'polyqueue[{extra}]')"
            ) from exc
        except ImportError as exc:
            raise ConfigurationError(self._missing_driver(url, exc, extra)) from exc
        except sa_exc.ArgumentError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigurationError(f"invalid URL or options for {self.describe()}: {self._scrub(reason)}") from exc
        sa.event.listen(engine, "connect", lambda dbapi_conn, _record: self.on_connect(dbapi_conn))
        sa.event.listen(engine, "do_connect", self._connect_or_explain)
        if not autocommit:
            sa.event.listen(engine, "begin", self.begin_transaction)
        sa.event.listen(engine, "handle_error", self._agree_on_disconnects)
        return engine

    def _missing_driver(self, url: URL, exc: ImportError, extra: str) -> str:
        """What to install: the extra for polyqueue's own driver, or the module another driver a URL names needs."""
        ours = {self.default_driver, *self.async_drivers.values()}
        if url.drivername in ours or not exc.name:
            return f"the driver for {url.drivername!r} is not installed: pip install 'polyqueue[{extra}]'"
        return (
            f"{url.drivername!r} needs the module {exc.name!r}, which is not installed (pip install {exc.name}); "
            f"polyqueue's own driver is {self.default_driver!r}, which {self.name}:// chooses "
            f"(pip install 'polyqueue[{self.driver_extra}]')"
        )

    def _connect_or_explain(self, dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        """Open a DBAPI connection as SQLAlchemy would; a keyword the driver does not take is the URL's fault.

        Drivers raise ``TypeError`` for a URL query parameter they do not know
        (``?foo=1``): that is a :class:`ConfigurationError` naming the
        parameter, not a raw ``TypeError`` from deep in a call.
        """
        try:
            return dialect.connect(*cargs, **cparams)
        except TypeError as exc:
            raise ConfigurationError(
                f"{self.describe()} has a query parameter its driver does not take: {self._scrub(str(exc))}"
            ) from exc

    def _names_async_driver(self, url: URL) -> bool:
        """Whether the URL names one of this dialect's asyncio drivers (the sync engine then uses the default)."""
        return url.drivername in self.async_drivers.values() or url.drivername.partition("+")[2] in self.async_drivers

    def _agree_on_disconnects(self, context: Any) -> None:
        # Drivers' own disconnect checks can miss errors the dialect knows to be fatal (PostgreSQL's
        # 57P01 admin shutdown); invalidating here keeps a dead connection from going back to the pool.
        exc = context.sqlalchemy_exception
        known_dead = isinstance(exc, sa_exc.DBAPIError) and self.classify(exc) == ErrorKind.DISCONNECT
        if known_dead and not context.is_disconnect:
            context.is_disconnect = True

    def close(self) -> None:
        """Dispose of the connection pools and stop watching callers' transactions."""
        if self._after_commit is not None:
            self._after_commit.close()
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

    def _run(
        self,
        work: Callable[[Connection], T],
        *,
        retry_duplicates: bool = False,
        resume: Callable[[Connection], T] | None = None,
    ) -> T:
        """Run ``work`` in its own transaction, retrying transient errors and reconnecting.

        Transient errors are retried ``transient_retries`` times; a lost
        connection is retried with back-off for ``reconnect_seconds``; then
        the error surfaces as a polyqueue error. Nothing is committed unless
        ``work`` returns. A lost connection may have lost only the answer to
        a COMMIT the server carried out: ``resume``, when given, runs instead
        of ``work`` on every attempt after one (in a transaction), to find
        what a committed attempt did rather than doing it twice.
        """
        return self._retrying(self.engine.begin, work, retry_duplicates, resume)

    def _run_single(self, work: Callable[[Connection], T], *, resume: Callable[[Connection], T] | None = None) -> T:
        """Like :meth:`_run` for ``work`` that sends ONE statement: autocommit, so no BEGIN/COMMIT round trips."""
        if self._autocommit_engine is None:
            self._autocommit_engine = self.autocommit_engine()
        return self._retrying(self._autocommit_engine.begin, work, False, resume)

    def autocommit_engine(self) -> Engine:
        """The engine for single-statement work; a dialect may return ``self.engine`` (in-memory SQLite)."""
        return self._create_engine(autocommit=True)

    _autocommit_engine: Engine | None = None
    _after_commit: AfterCommitWatcher | None = None

    def serialized(self) -> AbstractContextManager[Any]:
        """Held around every call's transactions; a dialect whose connection cannot be shared takes turns here."""
        return nullcontext()

    def _retrying(
        self,
        begin: Callable[[], Any],
        work: Callable[[Connection], T],
        retry_duplicates: bool,
        resume: Callable[[Connection], T] | None = None,
    ) -> T:
        self.verify_schema()
        with self.serialized():
            return self._retrying_unserialized(begin, work, retry_duplicates, resume)

    def _retrying_unserialized(
        self,
        begin: Callable[[], Any],
        work: Callable[[Connection], T],
        retry_duplicates: bool,
        resume: Callable[[Connection], T] | None,
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
                kind = self.error_kind(exc)
                if kind == ErrorKind.TRANSIENT or (kind == ErrorKind.DUPLICATE and retry_duplicates):
                    if attempt <= self.transient_retries:
                        self.pause(policy.TRANSIENT.delay(attempt))
                        continue
                elif kind == ErrorKind.DISCONNECT:
                    now = time.monotonic()
                    deadline = deadline or now + self.reconnect_seconds
                    if now < deadline:
                        if resume is not None:
                            # The server may have committed before the connection went: look before redoing.
                            begin, work = self.engine.begin, resume
                        self.pause(min(policy.RECONNECT.delay(attempt), max(0.0, deadline - now)))
                        continue
                raise self._translate(exc) from exc

    def error_kind(self, exc: sa_exc.DBAPIError) -> str:
        """The dialect's :meth:`classify`, with a failed connection to an unknown host name made a configuration error.

        Drivers report a misspelt host like a refused connection; DNS tells
        them apart without parsing any driver's message (see
        :func:`polyqueue.policy.host_name_unknown`).
        """
        kind = self.classify(exc)
        if kind == ErrorKind.DISCONNECT and exc.statement is None and policy.host_name_unknown(self.url.host):
            return ErrorKind.CONFIGURATION
        return kind

    def _translate(self, exc: sa_exc.DBAPIError) -> PolyqueueError:
        """The polyqueue error for a driver error no retry cured (the policy decides which)."""
        kind = self.error_kind(exc)
        if kind == ErrorKind.MISSING_SCHEMA:
            detail = f"{self.prefix}jobs"
        elif kind == ErrorKind.CONFIGURATION and self.classify(exc) == ErrorKind.DISCONNECT:
            detail = f"unknown host name {self.url.host!r}"
        else:
            orig = getattr(exc, "orig", None) or exc
            text = str(orig).strip()
            detail = self._scrub(text.splitlines()[0] if text else type(orig).__name__)
        return policy.error_for(kind, self.describe(), detail, outage=isinstance(exc, sa_exc.OperationalError))

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
        payload, result, errors, headers, cancel_requested, timeout = _DECODED_FIELDS
        values[payload] = json_codec.loads(values[payload])
        values[result] = json_codec.loads(values[result]) if values[result] is not None else None
        values[errors] = json_codec.loads(values[errors]) if values[errors] else []
        values[headers] = json_codec.loads(values[headers]) if values[headers] else {}
        values[cancel_requested] = bool(values[cancel_requested])
        values[timeout] = float(values[timeout]) if values[timeout] is not None else None
        return Job(*values)

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
            "dedupe_for": job.dedupe_for,
            "headers": job.headers_json,
            "timeout": job.timeout,
            "concurrency_key": job.concurrency_key,
        }

    def _row_values(self, job: NewJob, enqueue_token: int | None = None) -> dict[str, Any]:
        """Values for a single-row INSERT, times from the database clock."""
        run_at = (
            sa.literal(job.run_at, self.time_type())
            if job.run_at is not None
            else self.seconds_from_now(sa.literal(float(job.delay_seconds), sa.Float()))
        )
        values = {**self._column_values(job), "created_at": self.now(), "run_at": run_at}
        values["enqueue_token"] = enqueue_token
        return values

    def _plain_insert_params(self, job: NewJob, enqueue_token: int | None = None) -> dict[str, Any]:
        """Parameters for :meth:`plain_insert` (no dedupe key, no absolute run_at)."""
        return {**self._column_values(job), "delay": float(job.delay_seconds), "enqueue_token": enqueue_token}

    def _enqueue_in(self, conn: Connection, jobs: Sequence[NewJob], token: int | None = None) -> list[Hashable]:
        """Insert ``jobs`` in ``conn``'s transaction: plain ones first in one round trip, then the rest in order.

        Rows carry ``token`` as :class:`EnqueueMarks` says. The order is part
        of the contract with :meth:`_ids_committed`, which maps a committed
        first attempt's rows back to the jobs the same way.
        """
        marks = EnqueueMarks(token)
        ids: list[Hashable | None] = [None] * len(jobs)
        plain = [i for i, j in enumerate(jobs) if j.plain]
        if plain:
            rows = [self._plain_insert_params(jobs[i]) for i in plain]
            for row in rows:
                row["enqueue_token"] = marks.peek()
                marks.inserted()
            for i, new_id in zip(plain, self.insert_rows(conn, rows), strict=True):
                ids[i] = new_id
        seen: dict[tuple[str, str], Hashable] = {}
        for i, job in enumerate(jobs):
            if ids[i] is not None:
                continue
            if job.dedupe_key is None:
                ids[i] = self._insert_one(conn, job, marks)
                continue
            key = (job.queue, job.dedupe_key)
            if key in seen:
                ids[i] = seen[key]
                continue
            ids[i] = seen[key] = self._insert_or_find_holder(conn, job, marks)
        return ids  # type: ignore[return-value]

    def _insert_one(self, conn: Connection, job: NewJob, marks: EnqueueMarks) -> Hashable:
        inserted = conn.execute(sa.insert(self.jobs).values(**self._row_values(job, marks.peek()))).inserted_primary_key
        marks.inserted()
        return inserted[0]  # type: ignore[index]

    #: Whether :meth:`insert_ignoring_live_duplicate` reports a conflicting row's id instead of None (MySQL).
    insert_reports_holder: ClassVar[bool] = False

    def _dedupe_holder(self, conn: Connection, job: NewJob, candidate: Hashable | None) -> Any:
        """The row keeping ``job``'s dedupe key in the dedupe index (``candidate`` when given): id, holding, token."""
        c = self.jobs.c
        holding = sa.or_(c.status.in_(LIVE_SQL), c.dedupe_held_until > self.now())
        stmt = sa.select(c.id, sa.case((holding, 1), else_=0).label("holding"), c.enqueue_token).where(
            self.keeping(job.queue, str(job.dedupe_key))
        )
        if candidate is not None:
            stmt = stmt.where(c.id == candidate)
        return conn.execute(stmt).first()

    def keeping(self, queue: str, dedupe_key: str) -> sa.ColumnElement[bool]:
        """The rows keeping ``(queue, dedupe_key)`` in the dedupe index, as a condition the index serves."""
        c = self.jobs.c
        return sa.and_(c.queue == queue, c.dedupe_key == dedupe_key, holds_dedupe_slot(c))

    def _release_expired_hold(self, conn: Connection, where: sa.ColumnElement[bool]) -> None:
        """Let go of finished jobs' dedupe holds that have ended (``dedupe_held_until`` <= DB-now), among ``where``."""
        c = self.jobs.c
        conn.execute(
            sa.update(self.jobs)
            .where(where, c.status.not_in(LIVE_SQL), c.dedupe_held_until <= self.now())
            .values(dedupe_held_until=None)
        )

    def _insert_or_find_holder(self, conn: Connection, job: NewJob, marks: EnqueueMarks) -> Hashable:
        """Insert a job with a dedupe key, or return the job holding that key (live, or finished and held).

        A row left in the dedupe index by a hold that has ended is released
        and the insert tried again.
        """
        row = self._row_values(job, marks.peek())
        for _ in range(10):
            new_id = self.insert_ignoring_live_duplicate(conn, row)
            if new_id is not None and not self.insert_reports_holder:
                marks.inserted()
                return new_id
            holder = self._dedupe_holder(conn, job, new_id)
            if holder is None:
                if self._marker_taken(conn, row["enqueue_token"], new_id):
                    raise EnqueueTokenTaken("this enqueue's token is another call's marker")
                continue  # the holder finished or was released meanwhile: try again
            if holder.holding:
                if new_id is not None and marks.token is not None and holder.enqueue_token == row["enqueue_token"]:
                    marks.inserted()  # MySQL reported the row it just inserted
                return holder.id  # type: ignore[no-any-return]
            self._release_expired_hold(conn, self.jobs.c.id == holder.id)
        raise BackendUnavailable("could not settle a dedupe key race after 10 tries")

    def _marker_taken(self, conn: Connection, value: int | None, candidate: Hashable | None) -> bool:
        """Whether a conflict just met was with another call's marker carrying ``value`` (only ``+token`` can be)."""
        if value is None or value <= 0:
            return False
        c = self.jobs.c
        if candidate is not None:  # the dialect named the conflicting row
            return conn.execute(sa.select(c.enqueue_token).where(c.id == candidate)).scalar() == value
        stmt = sa.select(c.id).where(c.enqueue_token == value, c.enqueue_token > ZERO)
        return conn.execute(stmt).first() is not None

    def find_enqueue_marker(self, conn: Connection, jobs: Sequence[NewJob], token: int) -> Hashable | None:
        """The id of the row an earlier attempt of this enqueue call marked with ``+token``, or None.

        Must not answer None while that attempt's transaction is still
        committing (its answer was lost, not its work): dialects wait for it
        (:meth:`wait_for_enqueue_marker`). ``jobs`` helps dialects that find
        markers through other indexes.
        """
        self.wait_for_enqueue_marker(conn, jobs, token)
        c = self.jobs.c
        stmt = sa.select(c.id).where(c.enqueue_token == token, c.enqueue_token > ZERO)
        return conn.execute(stmt).scalar()  # type: ignore[no-any-return]

    def wait_for_enqueue_marker(self, conn: Connection, jobs: Sequence[NewJob], token: int) -> None:
        """Block until no other transaction is still writing the ``+token`` marker.

        Nothing by default: SQLite's writers take turns, so an earlier attempt
        has always finished. Server databases wait on the marker's index entry.
        """

    def _resume_enqueue(self, conn: Connection, jobs: Sequence[NewJob], token: int) -> list[Hashable]:
        """An enqueue retried after a lost connection: the first attempt's rows if it committed, else insert."""
        marker = self.find_enqueue_marker(conn, jobs, token)
        if marker is None:
            ids = self._enqueue_in(conn, jobs, token)
        else:
            ids = self._ids_committed(conn, jobs, token, marker)
            log.info("an enqueue whose answer was lost had committed; returning its %d job(s)", len(ids))
        self.after_enqueue(conn, {j.queue for j in jobs})
        return ids

    def _ids_committed(self, conn: Connection, jobs: Sequence[NewJob], token: int, marker: Hashable) -> list[Hashable]:
        """Map a committed attempt's rows (``+token`` at ``marker``, ``-token`` after it) back to ``jobs``.

        Rows come in id order, which is :meth:`_enqueue_in`'s insertion order:
        plain jobs first, then the others in input order. A job with a dedupe
        key that has no row of its own was a duplicate then: its holder is
        looked up again (or, if the key was let go meanwhile, it is inserted).
        """
        c = self.jobs.c
        stmt = (
            sa.select(c.id, c.queue, c.dedupe_key)
            .where(c.id >= marker, c.enqueue_token.in_([token, -token]))
            .order_by(c.id)
        )
        rows = list(conn.execute(stmt))
        rows.reverse()  # pop() from the end takes them in id order

        def take(job: NewJob) -> Hashable:
            if not rows or (rows[-1].queue, rows[-1].dedupe_key) != (job.queue, job.dedupe_key):
                raise PolyqueueError("an enqueue retried after a lost connection found rows it cannot account for")
            return rows.pop().id  # type: ignore[no-any-return]

        ids: list[Hashable | None] = [None] * len(jobs)
        for i, job in enumerate(jobs):
            if job.plain:
                ids[i] = take(job)
        seen: dict[tuple[str, str], Hashable] = {}
        later = EnqueueMarks(token)
        later.inserted()
        for i, job in enumerate(jobs):
            if ids[i] is not None:
                continue
            if job.dedupe_key is None:
                ids[i] = take(job)
                continue
            key = (job.queue, job.dedupe_key)
            if key in seen:
                ids[i] = seen[key]
            elif rows and (rows[-1].queue, rows[-1].dedupe_key) == key:
                ids[i] = seen[key] = take(job)
            else:
                ids[i] = seen[key] = self._insert_or_find_holder(conn, job, later)
        if rows:
            raise PolyqueueError("an enqueue retried after a lost connection found rows it cannot account for")
        return ids  # type: ignore[return-value]

    def enqueue(self, batch: spi.EnqueueBatch) -> list[Hashable]:
        """Insert the batch in one transaction (or the caller's); see :class:`Backend`.

        A retry after a lost connection resumes (:meth:`_resume_enqueue`)
        instead of inserting again, when the batch has a token. A token that
        another call's marker already carries is replaced and the batch
        stored again (the failed attempt stored nothing). Inside a caller's
        transaction nothing retries, so its rows carry no marker.
        """
        jobs, connection = batch.jobs, batch.connection
        if not jobs:
            return []
        if connection is not None:
            self.verify_schema()
            try:
                with self.caller_connection(connection) as conn:
                    ids = self._enqueue_in(conn, jobs, None)
                    self.after_enqueue(conn, {j.queue for j in jobs})
            except sa_exc.DBAPIError as exc:
                raise self._translate(exc) from exc
            return ids
        for _ in range(3):
            try:
                return self._enqueue_marked(batch)
            except PolyqueueError as exc:
                # With conflicts on dedupe keys ignored, a marker is all a new row can collide with.
                taken = isinstance(exc, EnqueueTokenTaken) or isinstance(exc.__cause__, sa_exc.IntegrityError)
                if batch.token is None or not taken:
                    raise
                batch = dataclasses.replace(batch, token=policy.new_enqueue_token())
        return self._enqueue_marked(batch)

    def _enqueue_marked(self, batch: spi.EnqueueBatch) -> list[Hashable]:
        """Store a batch outside any caller transaction, its rows marked with ``batch.token``."""
        jobs, token = batch.jobs, batch.token
        resume = self._resumer(jobs, token)
        (only,) = jobs if len(jobs) == 1 else (None,)
        no_follow_up = type(self).after_enqueue is SQLBackend.after_enqueue
        if only is not None and only.plain and no_follow_up:
            # One plain job is one INSERT: autocommit, no BEGIN/COMMIT round trips.
            row = [self._plain_insert_params(only, token)]
            return self._run_single(lambda conn: self.insert_rows(conn, row), resume=resume)

        def work(conn: Connection) -> list[Hashable]:
            ids = self._enqueue_in(conn, jobs, token)
            self.after_enqueue(conn, {j.queue for j in jobs})
            return ids

        return self._run(work, resume=resume)

    def _resumer(self, jobs: Sequence[NewJob], token: int | None) -> Callable[[Connection], list[Hashable]] | None:
        """What a retry of this enqueue runs after a lost connection (None without a token: it just retries)."""
        if token is None:
            return None
        return lambda conn: self._resume_enqueue(conn, jobs, token)

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

    def run_after_commit(self, connection: Any, action: Callable[[], None]) -> bool:
        """Run ``action`` once a caller's SQLAlchemy ``Connection`` has committed its current transaction."""
        if not isinstance(connection, Connection):
            return False
        if self._after_commit is None:
            self._after_commit = AfterCommitWatcher()
        return self._after_commit.add(connection, action)

    # ------------------------------------------------------------------
    # Consuming: claims
    # ------------------------------------------------------------------
    def uncontrolled(self, queue: Any) -> sa.ColumnElement[bool]:
        """True when ``queue`` (a name or a column) has no settings row: not paused, not limited.

        Every plain claim carries this check in its own statement, so a
        paused or limited queue's jobs are only ever taken through
        :meth:`_claim_controlled`, which reads and locks the settings row,
        whatever a process's cached list of controlled queues says.
        """
        s = self.queues_table
        return ~sa.exists().where(s.c.name == queue)

    def not_paused(self, queue: Any) -> sa.ColumnElement[bool]:
        """True when ``queue`` (a name or a column) is not paused."""
        s = self.queues_table
        return ~sa.exists().where(s.c.name == queue, s.c.paused == sa.true())

    def _ready_arm(self, queue: str, job_type: str, guarded: bool = True) -> sa.Select[Any]:
        """Ready jobs of one (queue, job_type): an ordered range of the ``jobs_ready`` index.

        ``guarded`` adds :meth:`uncontrolled` (a plain claim); the controlled
        claim, which holds the queue's settings row, reads without it.
        """
        j = self.jobs
        ready = sa.select(j.c.id, j.c.priority, j.c.run_at).where(
            j.c.status == PENDING_SQL, j.c.queue == queue, j.c.job_type == job_type, j.c.run_at <= self.now()
        )
        return ready.where(self.uncontrolled(queue)) if guarded else ready

    def ready_ids(self, pairs: Sequence[tuple[str, str]], limit: int, guarded: bool = True) -> sa.Select[Any]:
        """The ids of the best ``limit`` ready jobs of ``pairs``, in claim order.

        One ordered index range per pair, merged: the cost depends on
        ``limit`` and the number of pairs, not on how many jobs wait.
        ``guarded``: see :meth:`_ready_arm`.
        """
        if len(pairs) == 1:
            arm = self._ready_arm(*pairs[0], guarded=guarded)
            return arm.with_only_columns(self.jobs.c.id).order_by(*self._claim_order()).limit(limit)
        arms = sa.union_all(*(self._ready_arm(q, t, guarded) for q, t in pairs))
        # ORDER BY and LIMIT on the compound itself, so the planner merges the ordered ranges (SQLite:
        # MERGE (UNION ALL)) and stops after `limit` rows instead of sorting every ready job.
        best = arms.order_by(*policy.claim_order_sql(arms.selected_columns)).limit(limit).subquery("ready")
        return sa.select(best.c.id)

    def _claim_order(self) -> list[sa.ColumnElement[Any]]:
        return policy.claim_order_sql(self._order_columns)

    def pending_pairs(self, connection: Connection, queues: Sequence[str]) -> list[tuple[str, str]]:
        """The (queue, job_type) pairs that have pending jobs, in one statement.

        A loose index scan: each step asks the ready index for the next job
        type of a queue, so the cost is the number of types, not of jobs.
        """
        j = self.jobs
        names = sa.union_all(*(sa.select(sa.literal(q, sa.String()).label("queue")) for q in queues)).subquery("names")

        def first_type_after(queue: Any, after: Any | None) -> sa.ScalarSelect[Any]:
            found = sa.select(sa.func.min(j.c.job_type)).where(j.c.status == PENDING_SQL, j.c.queue == queue)
            return (found.where(j.c.job_type > after) if after is not None else found).scalar_subquery()

        anchor = sa.select(names.c.queue, first_type_after(names.c.queue, None).label("job_type"))
        types = anchor.cte("pending_types", recursive=True)
        step = sa.select(types.c.queue, first_type_after(types.c.queue, types.c.job_type)).where(
            types.c.job_type.is_not(None)
        )
        types = types.union_all(step)
        stmt = sa.select(types.c.queue, types.c.job_type).where(types.c.job_type.is_not(None))
        return [(row[0], row[1]) for row in connection.execute(stmt)]

    def _claim_pairs(self, connection: Connection, request: spi.ClaimRequest) -> list[tuple[str, str]]:
        if request.job_types is None:
            return self.pending_pairs(connection, request.queues)
        return list(itertools.product(request.queues, sorted(request.job_types)))

    def _claim_values(self, request: spi.ClaimRequest) -> UpdateValues:
        """What a claim writes on each job it takes (see :class:`spi.ClaimRequest`)."""
        c = self.jobs.c
        values: UpdateValues = [
            (c.status, JobStatus.PROCESSING),
            (c.attempts, c.attempts + 1),
            (c.lease_token, request.token),
            (c.locked_by, request.worker_id),
            (c.lease_expires_at, self.seconds_from_now(sa.literal(float(request.lease), sa.Float()))),
        ]
        if request.max_attempts is not None:
            values.append((c.max_attempts, policy.capped_max_attempts_sql(c.max_attempts, request.max_attempts)))
        return values

    def _rescue_values(self) -> UpdateValues:
        """What a rescue writes on an expired lease, as the policy decides (set ``locked_by`` last: see MySQL)."""
        c = self.jobs.c
        entry = policy.expired_lease_entry_sql(c.attempts, c.locked_by, self.now_text())
        finishes = sa.or_(policy.final_attempt_sql(c.attempts, c.max_attempts), c.cancel_requested == sa.true())
        status = policy.expired_lease_status_sql(c.attempts, c.max_attempts, c.cancel_requested)
        return [
            (c.last_error, policy.expired_lease_error_sql(c.locked_by)),
            (c.errors, self.history_appended(c.errors, entry)),
            (c.status, status),
            (c.finished_at, sa.case((finishes, self.now()), else_=None)),
            (c.dedupe_held_until, policy.dedupe_hold_sql(status, self.seconds_from_now(c.dedupe_for))),
            (c.locked_by, None),
            (c.lease_expires_at, None),
        ]

    def _expired_leases(self) -> sa.Select[Any]:
        """The ids of up to :data:`policy.RESCUE_BATCH` processing jobs whose lease has expired, oldest first."""
        j = self.jobs
        return (
            sa.select(j.c.id)
            .where(j.c.status == PROCESSING_SQL, j.c.lease_expires_at <= self.now())
            .order_by(j.c.lease_expires_at)
            .limit(policy.RESCUE_BATCH)
        )

    def _rescue_expired(self, conn: Connection) -> list[Job]:
        """Rescue expired leases as the policy says; returns the jobs that became dead."""
        rows = self.update_locked(conn, self._expired_leases(), self._rescue_values(), returning=True)
        rescued = [self._job_from_row(r) for r in rows]
        return [job for job in rescued if job.status == JobStatus.DEAD]

    def claim(self, request: spi.ClaimRequest) -> spi.ClaimResult:
        """Rescue expired leases, then claim up to ``request.limit`` ready jobs; see :class:`Backend`.

        Queues without settings take the plain claim (:meth:`claim_plain`:
        one statement or transaction, as fast as before flow control
        existed); each paused or limited queue takes :meth:`_claim_controlled`
        first, in its own short transaction.
        """
        controlled = self._controlled_queues()
        names = list(dict.fromkeys(request.queues))
        limited = [name for name in names if name in controlled]
        if not limited:
            return self.claim_plain(request)
        jobs: list[Job] = []
        dead: list[Job] = []
        for name in limited:
            if len(jobs) < request.limit:
                one = dataclasses.replace(request, queues=[name], limit=request.limit - len(jobs))
                part = self._claim_controlled(one)
                jobs += part.jobs
                dead += part.expired_dead
        plain = [name for name in names if name not in controlled]
        if plain and len(jobs) < request.limit:
            part = self.claim_plain(dataclasses.replace(request, queues=plain, limit=request.limit - len(jobs)))
            jobs += part.jobs
            dead += part.expired_dead
        return spi.ClaimResult(sorted(jobs, key=policy.job_claim_key), dead)

    def claim_plain(self, request: spi.ClaimRequest) -> spi.ClaimResult:
        """The claim of queues with no settings row (its statements skip any queue that has one)."""

        def work(conn: Connection) -> tuple[list[Job], list[Any]]:
            dead = self._rescue_expired(conn)
            pairs = self._claim_pairs(conn, request)
            rows = self.claim_ready(conn, pairs, request.limit, self._claim_values(request)) if pairs else []
            return dead, rows

        dead, rows = self._run(work)
        return spi.ClaimResult(sorted((self._job_from_row(r) for r in rows), key=policy.job_claim_key), dead)

    # ------------------------------------------------------------------
    # Consuming: paused and limited queues
    # ------------------------------------------------------------------
    _controlled: dict[str, QueueSettings] | None = None
    _controlled_read_at: float = 0.0

    def _controlled_queues(self) -> dict[str, QueueSettings]:
        """The queues that have a settings row, as read at most :data:`policy.SETTINGS_REFRESH` seconds ago.

        Only routes claims (and picks a statement's shape): a queue missing
        here is still refused by the plain claim's own check
        (:meth:`uncontrolled`), and a controlled claim reads the row itself.
        """
        now = time.monotonic()
        if self._controlled is None or now - self._controlled_read_at >= policy.SETTINGS_REFRESH:
            rows = self._run_single(lambda conn: list(conn.execute(sa.select(self.queues_table))))
            self._controlled = {row.name: self._settings_of(row) for row in rows}
            self._controlled_read_at = now
        return self._controlled

    def _claim_controlled(self, request: spi.ClaimRequest) -> spi.ClaimResult:
        """Claim from ONE paused or limited queue, atomically with its limits, in one short transaction.

        Locks the queue's settings row (so claims of this queue take turns,
        in every process), counts what its limits need (jobs processing,
        the rate allowance on the database clock), takes what
        :func:`policy.claim_allowance` allows -- in fair order across
        concurrency keys when ``per_key`` is set -- and writes the allowance
        back. A queue whose row is gone claims as a plain one.
        """
        (queue,) = request.queues
        s, j = self.queues_table, self.jobs
        values = self._claim_values(request)
        settings = sa.select(s, self.now().label("now")).where(s.c.name == queue).with_for_update()

        def work(conn: Connection) -> tuple[list[Job], list[Any]]:
            dead = self._rescue_expired(conn)
            row = conn.execute(settings).first()
            if row is None:
                pairs = self._claim_pairs(conn, request)
                return dead, self.claim_ready(conn, pairs, request.limit, values) if pairs else []
            if row.paused:
                return dead, []
            limits = QueueLimits(row.concurrency, row.rate, row.per_key)
            processing = 0
            if limits.concurrency is not None:
                counted = sa.select(sa.func.count()).where(j.c.status == PROCESSING_SQL, j.c.queue == queue)
                processing = int(conn.execute(counted).scalar() or 0)
            allowance = None
            if limits.rate is not None:
                since = row.rate_counted_at or row.now
                allowance = policy.rate_allowance(row.rate_allowance, (row.now - since).total_seconds(), limits.rate)
            take = policy.claim_allowance(request.limit, limits, processing, allowance)
            rows: list[Any] = []
            if take > 0:
                if limits.per_key is not None:
                    ids = self._fair_ready_ids(conn, request, limits.per_key, take)
                else:
                    pairs = self._claim_pairs(conn, request)
                    ids = [r[0] for r in conn.execute(self.ready_ids(pairs, take, guarded=False))] if pairs else []
                rows = self._take_ids(conn, ids, values, request.token)
            if allowance is not None:
                counted_at = max(row.now, row.rate_counted_at or row.now)
                conn.execute(
                    sa.update(s)
                    .where(s.c.name == queue)
                    .values(rate_allowance=allowance - len(rows), rate_counted_at=counted_at)
                )
            return dead, rows

        dead, rows = self._run(work)
        return spi.ClaimResult(sorted((self._job_from_row(r) for r in rows), key=policy.job_claim_key), dead)

    def _fair_ready_ids(self, conn: Connection, request: spi.ClaimRequest, per_key: int, take: int) -> list[Any]:
        """Up to ``take`` ready ids of the request's queue whose key has room, in fair order (see the policy).

        Ranks each key's ready jobs in claim order (a window function); a
        job's slot is its rank plus its key's processing jobs
        (:func:`policy.key_slot`); it is kept while that is within ``per_key``
        (jobs without a key are not held back) and taken lowest slot first. Reads every ready
        job of the queue: per-key queues pay for fairness with a scan.
        """
        (queue,) = request.queues
        stmt = self.fair_candidates(queue, self._of_types(request.job_types), per_key, take)
        return [r[0] for r in conn.execute(stmt)]

    def fair_candidates(self, queue: Any, of_types: Sequence[Any], per_key: Any, take: Any) -> sa.Select[Any]:
        """Ready ids of ``queue`` whose concurrency key has room under ``per_key``, in fair order, at most ``take``.

        ``per_key`` and ``take`` may be numbers or SQL expressions (PostgreSQL's
        one-round-trip claim reads ``per_key`` from the settings row).
        """
        j = self.jobs
        rank = sa.func.row_number().over(partition_by=j.c.concurrency_key, order_by=self._claim_order())
        ready = (
            sa.select(j.c.id, j.c.priority, j.c.run_at, j.c.concurrency_key, rank.label("rank"))
            .where(j.c.status == PENDING_SQL, j.c.queue == queue, j.c.run_at <= self.now(), *of_types)
            .subquery("ready")
        )
        running = (
            sa.select(j.c.concurrency_key, sa.func.count().label("n"))
            .where(j.c.status == PROCESSING_SQL, j.c.queue == queue, j.c.concurrency_key.is_not(None))
            .group_by(j.c.concurrency_key)
            .subquery("running")
        )
        slot = ready.c.rank + sa.func.coalesce(running.c.n, 0)  # policy.key_slot
        has_room = sa.or_(ready.c.concurrency_key.is_(None), policy.key_has_room_sql(slot, per_key))
        return (
            sa.select(ready.c.id)
            .select_from(ready.outerjoin(running, running.c.concurrency_key == ready.c.concurrency_key))
            .where(has_room)
            .order_by(*policy.fair_order_sql(slot, ready.c))
            .limit(take)
        )

    def _take_ids(self, conn: Connection, ids: list[Any], values: UpdateValues, token: int) -> list[Any]:
        """Apply the claim ``values`` to the rows ``ids`` names that are still pending; the claimed rows.

        No SKIP LOCKED is needed: every claim of a controlled queue holds its
        settings row, so no other claim is after these rows.
        """
        if not ids:
            return []
        j = self.jobs
        stmt = sa.update(j).where(j.c.id.in_(ids), j.c.status == PENDING_SQL).ordered_values(*values)
        if self.supports_returning:
            return list(conn.execute(stmt.returning(*self._columns)))
        conn.execute(stmt)
        mine = sa.select(*self._columns).where(j.c.id.in_(ids), j.c.lease_token == token)
        return list(conn.execute(mine.where(j.c.status == PROCESSING_SQL)))

    def control_queue(self, request: spi.QueueControl) -> QueueSettings:
        """Store the queue's settings row (deleted when nothing is left to store); see :class:`Backend`."""
        s = self.queues_table
        current_row = sa.select(s, self.now().label("now")).where(s.c.name == request.queue).with_for_update()

        def work(conn: Connection) -> QueueSettings:
            row = conn.execute(current_row).first()
            now = row.now if row is not None else conn.execute(sa.select(self.now())).scalar_one()
            current = self._settings_of(row) if row is not None else QueueSettings(request.queue)
            limits = current.limits if request.limits is None else request.limits
            paused = current.paused if request.paused is None else request.paused
            wanted = QueueSettings(request.queue, limits, paused)
            if not wanted.controlled:
                if row is not None:
                    conn.execute(sa.delete(s).where(s.c.name == request.queue))
            else:
                values: dict[str, Any] = {
                    "paused": paused, "concurrency": limits.concurrency, "rate": limits.rate,
                    "per_key": limits.per_key, "changed_at": now,
                }  # fmt: skip
                if request.limits is not None or row is None:
                    values.update(rate_allowance=0.0, rate_counted_at=now)
                if row is None:
                    conn.execute(sa.insert(s).values(name=request.queue, **values))
                else:
                    conn.execute(sa.update(s).where(s.c.name == request.queue).values(**values))
            if wanted != current:
                self.after_enqueue(conn, {request.queue})  # resumed or loosened: wake the queue's idle workers
            return wanted

        settings = self._run(work, retry_duplicates=True)
        self._controlled = None  # this process routes its next claim by the new settings at once
        return settings

    @staticmethod
    def _settings_of(row: Any) -> QueueSettings:
        return QueueSettings(row.name, QueueLimits(row.concurrency, row.rate, row.per_key), bool(row.paused))

    def queue_settings(self, query: spi.QueueSettingsQuery) -> list[QueueSettings]:
        """The settings rows of the queried queues, by name."""
        s = self.queues_table
        stmt = sa.select(s).order_by(s.c.name)
        if query.queues is not None:
            stmt = stmt.where(s.c.name.in_(list(query.queues)))
        return [self._settings_of(r) for r in self._run(lambda conn: list(conn.execute(stmt)))]

    # ------------------------------------------------------------------
    # Consuming: the fence, settling and heartbeats
    # ------------------------------------------------------------------
    @staticmethod
    def _claim_pairs_padded(jobs: Sequence[Job]) -> list[tuple[Any, int]]:
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
        return sa.tuple_(self.jobs.c.id, self.jobs.c.lease_token).in_(self._claim_pairs_padded(jobs))

    def _fence(self, jobs: Sequence[Job]) -> sa.ColumnElement[bool]:
        j = self.jobs
        return policy.holds_claim_sql(j.c.status, j.c.lease_expires_at, self.now(), self.held_by_claim(jobs))

    def _update_fenced(
        self,
        conn: Connection,
        jobs: Sequence[Job],
        values: dict[str, Any],
        changed_here: Callable[[Sequence[Job]], sa.ColumnElement[bool]],
    ) -> set[Hashable]:
        """Apply ``values`` to the jobs their claims still hold; return the ids not held.

        ``changed_here(jobs)`` is true, after the update, exactly for the rows
        this update changed: dialects without RETURNING read it back when the
        matched-row count says some were not held. Large batches go in chunks
        of :data:`FENCE_CHUNK` (same transaction): a completer that fell behind
        may hand over thousands of jobs, and one ``IN`` list that long
        overflows PostgreSQL's parser stack and the drivers' parameter limit.
        """
        if len(jobs) > FENCE_CHUNK:
            # In id order, so that a chunked heartbeat and a completion of overlapping rows take their
            # row locks in the same order more often than not (PostgreSQL retries a deadlock after 1 s).
            jobs = sorted(jobs, key=lambda job: int(job.id))  # type: ignore[call-overload]
            lost: set[Hashable] = set()
            for start in range(0, len(jobs), FENCE_CHUNK):
                lost |= self._update_fenced(conn, jobs[start : start + FENCE_CHUNK], values, changed_here)
            return lost
        j = self.jobs
        wanted = {job.id for job in jobs}
        stmt = sa.update(j).where(self._fence(jobs)).values(**values)
        if self.supports_returning:
            done = {r[0] for r in conn.execute(stmt.returning(j.c.id))}
        elif conn.execute(stmt).rowcount == len(wanted):
            done = wanted  # rowcount counts matched rows: every job was still held
        else:
            ids = sorted(wanted)  # type: ignore[type-var]
            done = {r[0] for r in conn.execute(sa.select(j.c.id).where(j.c.id.in_(ids), changed_here(jobs)))}
        return wanted - done

    def _run_fenced(
        self,
        statements: Sequence[tuple[Sequence[Job], dict[str, Any]]],
        changed_here: Callable[[Sequence[Job]], sa.ColumnElement[bool]],
    ) -> set[Hashable]:
        """Run fenced updates: one autocommit statement when there is one that fits a chunk, else one transaction.

        The fence makes each row's update all-or-nothing on its own, so a
        single statement needs no BEGIN/COMMIT round trips.
        """

        def work(conn: Connection) -> set[Hashable]:
            lost: set[Hashable] = set()
            for jobs, values in statements:
                lost |= self._update_fenced(conn, jobs, values, changed_here)
            return lost

        single = len(statements) == 1 and len(statements[0][0]) <= FENCE_CHUNK
        return self._run_single(work) if single else self._run(work)

    def _settlement_values(self, settlement: spi.Settlement, token: int) -> dict[str, Any]:
        """The columns a settlement writes (see :class:`~polyqueue.backends.base.Settlement`)."""
        c = self.jobs.c
        cancelled = c.cancel_requested == sa.true()
        finished_at: Any = self.now() if settlement.finished else None
        if settlement.status == JobStatus.PENDING:  # a cancel requested meanwhile ends it (the policy's rule)
            finished_at = sa.case((cancelled, self.now()), else_=None)
        values: dict[str, Any] = {
            "status": policy.settled_status_sql(settlement.status, c.cancel_requested),
            "finished_at": finished_at,
            "locked_by": None,
            "lease_expires_at": None,
            "lease_token": token,
        }
        if settlement.run_in is not None:
            values["run_at"] = self.seconds_from_now(sa.literal(float(settlement.run_in), sa.Float()))
            if settlement.status == JobStatus.PENDING:
                values["run_at"] = sa.case((cancelled, c.run_at), else_=values["run_at"])
        if settlement.refund_attempt:
            values["attempts"] = c.attempts - 1
        if settlement.result_json is not None:
            values["result"] = settlement.result_json
        if settlement.last_error is not None:
            values["last_error"] = settlement.last_error
        if settlement.errors_json is not None:
            values["errors"] = self.history_stamped(sa.literal(settlement.errors_json, sa.Text()), self.now_text())
        if settlement.hold_dedupe:
            values["dedupe_held_until"] = self.seconds_from_now(c.dedupe_for)  # NULL without a dedupe_for
        return values

    def settle(self, request: spi.SettleRequest) -> set[Hashable]:
        """Apply settlements, fenced; plain ones of the same kind share one statement. See :class:`Backend`."""
        if not request.settlements:
            return set()
        shared: dict[tuple[Any, ...], list[spi.Settlement]] = defaultdict(list)
        statements: list[tuple[Sequence[Job], dict[str, Any]]] = []
        for settlement in request.settlements:
            if settlement.plain:
                kind = (
                    settlement.status, settlement.finished, settlement.run_in, settlement.refund_attempt,
                    settlement.hold_dedupe,
                )  # fmt: skip
                shared[kind].append(settlement)
            else:
                statements.append(([settlement.job], self._settlement_values(settlement, request.token)))
        for group in shared.values():
            statements.append(([s.job for s in group], self._settlement_values(group[0], request.token)))
        token_column = self.jobs.c.lease_token
        return self._run_fenced(statements, lambda jobs: token_column == request.token)

    def extend(self, request: spi.ExtendRequest) -> set[Hashable]:
        """Push held leases out to DB-now + ``request.lease``.

        Under :meth:`eager_locking`: a heartbeat that waits behind busy
        claimers past the lease loses its jobs, so it must not sleep through
        the gaps between their transactions (SQLite's backing-off busy handler).
        """
        if not request.jobs:
            return set()
        values = {"lease_expires_at": self.seconds_from_now(sa.literal(float(request.lease), sa.Float()))}
        with self.eager_locking():
            return self._run_fenced([(request.jobs, values)], self._fence)

    # ------------------------------------------------------------------
    # Periodic jobs
    # ------------------------------------------------------------------
    def _newest_fires(self, conn: Connection, names: Sequence[str] | None) -> dict[str, spi.FireRecord]:
        f = self.fires_table
        later = f.alias("later")
        newer = sa.exists().where(later.c.name == f.c.name, later.c.slot_at > f.c.slot_at)
        stmt = sa.select(f.c.name, f.c.slot, f.c.slot_at, f.c.fired_at, f.c.job_id).where(~newer)
        if names is not None:
            stmt = stmt.where(f.c.name.in_(list(names)))
        newest: dict[str, spi.FireRecord] = {}
        for name, slot, slot_at, fired_at, job_id in conn.execute(stmt):
            known = newest.get(name)
            if known is None or slot > known.slot:
                newest[name] = spi.FireRecord(name, slot, slot_at, fired_at, job_id)
        return newest

    def declare_schedules(self, request: spi.DeclareSchedules) -> spi.ScheduleState:
        """Upsert the schedules by name and read DB-now and their newest fires, in one transaction."""
        s = self.schedules_table

        def work(conn: Connection) -> spi.ScheduleState:
            now = conn.execute(sa.select(self.now())).scalar_one()
            for spec in request.schedules:
                values = {
                    "cron": spec.cron, "timezone": spec.timezone, "job_type": spec.job_type, "queue": spec.queue,
                    "priority": spec.priority, "payload": spec.payload_json, "catch_up": spec.catch_up,
                    "declared_at": now, "declared_by": request.worker_id,
                }  # fmt: skip
                update = sa.update(s).where(s.c.name == spec.name).values(**values)
                if not conn.execute(update).rowcount:
                    self.insert_ignoring_duplicates(conn, s, {"name": spec.name, **values})
            return spi.ScheduleState(now, self._newest_fires(conn, [spec.name for spec in request.schedules]))

        return self._run(work)

    def fire(self, request: spi.FireRequest) -> spi.FireResult:
        """Insert the ``(schedule, slot)`` row and, when it is new, the slot's job: one transaction on the DB clock."""
        f = self.fires_table

        def work(conn: Connection) -> spi.FireResult:
            now = conn.execute(sa.select(self.now())).scalar_one()
            if now < request.slot_at:
                return spi.FireResult(fired=False, due=False, job_id=None, db_now=now)
            row = {"name": request.schedule, "slot": request.slot, "slot_at": request.slot_at, "fired_at": now}
            if not self.insert_ignoring_duplicates(conn, f, row):
                return spi.FireResult(fired=False, due=True, job_id=None, db_now=now)
            (job_id,) = self._enqueue_in(conn, [request.job])
            conn.execute(
                sa.update(f).where(f.c.name == request.schedule, f.c.slot == request.slot).values(job_id=job_id)
            )
            self.after_enqueue(conn, {request.job.queue})
            return spi.FireResult(fired=True, due=True, job_id=job_id, db_now=now)

        return self._run(work)

    def schedules(self, query: spi.ScheduleQuery) -> list[spi.ScheduleRecord]:
        """The declared schedules and their newest fires, by name."""
        s = self.schedules_table
        stmt = sa.select(s).order_by(s.c.name)
        if query.names is not None:
            stmt = stmt.where(s.c.name.in_(list(query.names)))

        def work(conn: Connection) -> list[spi.ScheduleRecord]:
            rows = list(conn.execute(stmt))
            newest = self._newest_fires(conn, query.names)
            return [
                spi.ScheduleRecord(
                    spi.ScheduleSpec(
                        r.name, r.cron, r.timezone, r.job_type, r.queue, r.priority, r.payload, r.catch_up
                    ),
                    r.declared_at,
                    r.declared_by,
                    newest.get(r.name),
                )
                for r in rows
            ]

        return self._run(work)

    def fire_history(self, query: spi.FireHistoryQuery) -> list[spi.FireRecord]:
        """The schedule's fires, newest slot first."""
        f = self.fires_table
        stmt = (
            sa.select(f.c.name, f.c.slot, f.c.slot_at, f.c.fired_at, f.c.job_id)
            .where(f.c.name == query.schedule)
            .order_by(f.c.slot_at.desc(), f.c.slot.desc())
            .limit(query.limit)
        )
        return [spi.FireRecord(*row) for row in self._run(lambda conn: list(conn.execute(stmt)))]

    def _purge_fires(self, older_than: float, batch_size: int) -> None:
        """Delete fire rows older than ``older_than`` seconds, in paced batches, keeping each schedule's newest."""
        f = self.fires_table
        later = f.alias("later")
        doomed = (
            sa.select(f.c.name, f.c.slot)
            .where(
                f.c.fired_at < self.seconds_before_now(sa.literal(float(older_than), sa.Float())),
                sa.exists().where(later.c.name == f.c.name, later.c.slot_at > f.c.slot_at),
            )
        )

        pace = policy.PurgePace(batch_size, self.lock_poll_seconds, self.pause)

        def work(conn: Connection, size: int) -> int:
            began = time.monotonic()  # the transaction has begun: any wait for the write lock is over
            keys = [(r[0], r[1]) for r in conn.execute(doomed.limit(size))]
            if keys:
                conn.execute(sa.delete(f).where(sa.tuple_(f.c.name, f.c.slot).in_(keys)))
            pace.held(time.monotonic() - began)
            return len(keys)

        for size in pace.sizes():
            with self.eager_locking():
                if not self._run(functools.partial(work, size=size)):
                    break

    # ------------------------------------------------------------------
    # Moving jobs: export, import, fenced delete
    # ------------------------------------------------------------------
    @functools.cached_property
    def _record_columns(self) -> list[tuple[str, sa.Column[Any]]]:
        """(JobRecord field, column) for every record field this table stores."""
        fields = [f.name for f in dataclasses.fields(JobRecord)]
        names = {name: _RECORD_COLUMN.get(name, name) for name in fields}
        return [(name, self.jobs.c[column]) for name, column in names.items() if column in self.jobs.c]

    def export_jobs(self, query: spi.ExportQuery) -> list[JobRecord]:
        """One page of jobs with every stored field, in id order after ``query.after``; see :class:`Backend`."""
        statuses = frozenset(query.statuses) - {JobStatus.PROCESSING}
        if not statuses:
            return []
        page = KeysetPage(statuses, query.queue, None, self._page_cursor(query.after), query.limit, newest_first=False)
        stmt = self.keyset_page([column for _, column in self._record_columns], page)
        names = [name for name, _ in self._record_columns]
        rows = self._run(lambda conn: list(conn.execute(stmt)))
        return [JobRecord(**dict(zip(names, row, strict=True))) for row in rows]

    def _page_cursor(self, after: Hashable | None) -> int | None:
        """The integer id a page continues after, or None for the first page; InvalidArgument for a foreign id."""
        if after is None:
            return None
        key = int_job_id(after)
        if key is None:
            raise InvalidArgument(f"{after!r} is not a job id of {self.name}")
        return key

    def keyset_page(self, columns: Sequence[sa.ColumnElement[Any]], page: KeysetPage) -> sa.Select[Any]:
        """A SELECT of ``columns`` for one page of jobs in id order (``page.newest_first``: descending).

        One ordered range of the listing indexes per status -- (status, id),
        or (queue, status, id) with a queue -- each stopping after
        ``page.limit`` rows, merged by id: the cost depends on the page size
        and the number of statuses, not on how many jobs the table holds.
        ``job_type`` filters within those ranges. Without statuses, the
        primary key's range serves the page.
        """
        j = self.jobs
        order = j.c.id.desc() if page.newest_first else j.c.id.asc()
        shared: list[sa.ColumnElement[bool]] = []
        if page.queue is not None:
            shared.append(j.c.queue == page.queue)
        if page.job_type is not None:
            shared.append(j.c.job_type == page.job_type)
        if page.after is not None:
            shared.append(j.c.id < page.after if page.newest_first else j.c.id > page.after)
        if page.statuses is None:
            return sa.select(*columns).where(*shared).order_by(order).limit(page.limit)
        arms = [
            sa.select(*columns).where(j.c.status == status, *shared).order_by(order).limit(page.limit)
            for status in sorted(page.statuses)
        ]
        if len(arms) == 1:
            return arms[0]
        # Each arm as a derived table: SQLite and MySQL take ORDER BY ... LIMIT in a compound's arms only so.
        merged = sa.union_all(*(sa.select(arm.subquery()) for arm in arms)).subquery("page")
        merged_order = merged.c.id.desc() if page.newest_first else merged.c.id.asc()
        return sa.select(merged).order_by(merged_order).limit(page.limit)

    def list_jobs(self, query: spi.ListQuery) -> list[Job]:
        """One page of jobs, newest first; see :class:`Backend`."""
        statuses = None if query.statuses is None else frozenset(query.statuses)
        if statuses is not None and not statuses:
            return []
        page = KeysetPage(statuses, query.queue, query.job_type, self._page_cursor(query.after), query.limit)
        stmt = self.keyset_page(self._columns, page)
        return [self._job_from_row(r) for r in self._run(lambda conn: list(conn.execute(stmt)))]

    def _record_row(self, record: JobRecord) -> dict[str, Any]:
        """The column values that store ``record`` (no lease: an imported job is never held)."""
        row = {column.name: getattr(record, name) for name, column in self._record_columns if name != "id"}
        row.update(locked_by=None, lease_expires_at=None, enqueue_token=None)
        return row

    def find_imported(self, conn: Connection, records: Sequence[JobRecord]) -> dict[str, Hashable]:
        """``{import_key: id}`` of the jobs here carrying the records' import keys.

        Must not miss a key another transaction is committing right now:
        the caller inserts with conflicts ignored first, which waits for it.
        """
        c = self.jobs.c
        found: dict[str, Hashable] = {}
        keys = sorted({r.import_key for r in records if r.import_key is not None})
        for start in range(0, len(keys), RECORD_CHUNK):
            chunk = keys[start : start + RECORD_CHUNK]
            stmt = sa.select(c.import_key, c.id).where(c.import_key.in_(chunk), c.import_key.is_not(None))
            found.update((key, job_id) for key, job_id in conn.execute(stmt))
        return found

    def insert_ignoring_conflicts(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Insert rows, skipping any that would break a unique index (an import key or a held dedupe key).

        The default is ``INSERT ... ON CONFLICT DO NOTHING`` on :meth:`conflict_insert`.
        """
        conn.execute(self.conflict_insert(self.jobs).on_conflict_do_nothing(), rows)

    def import_jobs(self, batch: spi.ImportBatch) -> spi.ImportResult:
        """Store the records in one transaction, idempotently by ``import_key``; see :class:`Backend`.

        Records whose key is already here are reported, the others inserted
        with conflicts ignored and read back by key: a record that did not
        land lost to a held dedupe key. A hold that has ended is released and
        its record tried once more.
        """
        records = list(batch.records)
        for record in records:
            if record.import_key is None:
                raise InvalidArgument("every imported record needs an import_key")
            if record.status not in STATUSES or record.status == JobStatus.PROCESSING:
                raise InvalidArgument(f"cannot import a job with status {record.status!r}")

        def work(conn: Connection) -> spi.ImportResult:
            result = spi.ImportResult([None] * len(records))
            found = self.find_imported(conn, records)
            todo = []
            for i, record in enumerate(records):
                if record.import_key in found:
                    result.ids[i] = found[record.import_key]  # type: ignore[index]
                    result.existing.add(i)
                else:
                    todo.append(i)
            for second_try in (False, True):
                for start in range(0, len(todo), RECORD_CHUNK):
                    chunk = todo[start : start + RECORD_CHUNK]
                    self.insert_ignoring_conflicts(conn, [self._record_row(records[i]) for i in chunk])
                stored = self.find_imported(conn, [records[i] for i in todo])
                for i in todo:
                    result.ids[i] = stored.get(records[i].import_key)  # type: ignore[arg-type]
                todo = [i for i in todo if result.ids[i] is None]
                if not todo or second_try:
                    break
                for i in todo:
                    key = records[i].dedupe_key
                    if key is not None:
                        self._release_expired_hold(conn, self.keeping(records[i].queue, key))
            for i in todo:
                key = records[i].dedupe_key
                result.skipped[i] = f"its dedupe key {key!r} is held here by another job"
            if len(result.existing) + len(result.skipped) < len(records):
                self.after_enqueue(conn, {records[i].queue for i, job_id in enumerate(result.ids) if job_id})
            return result

        return self._run(work)

    def delete_jobs(self, request: spi.DeleteRequest) -> set[Hashable]:
        """Delete the records' jobs still as exported (same status and lease token), in one transaction."""
        fences = [(key, r.status, r.lease_token) for r in request.records if (key := int_job_id(r.id)) is not None]
        if not fences:
            return set()
        c = self.jobs.c

        def work(conn: Connection) -> set[Hashable]:
            deleted: set[Hashable] = set()
            for start in range(0, len(fences), RECORD_CHUNK):
                chunk = {key: (status, token) for key, status, token in fences[start : start + RECORD_CHUNK]}
                # Lock the rows by primary key, check the rest of the fence here: a plain id list reads the
                # primary key on every dialect (MariaDB scans for a long row-value IN list).
                lock = sa.select(c.id, c.status, c.lease_token).where(c.id.in_(list(chunk))).with_for_update()
                rows = conn.execute(lock)
                ids = [row.id for row in rows if chunk[row.id] == (row.status, row.lease_token)]
                if ids:
                    conn.execute(sa.delete(self.jobs).where(c.id.in_(ids)))
                    deleted.update(ids)
            return deleted

        return self._run(work)

    def throughput(self, query: spi.ThroughputQuery) -> spi.Throughput:
        """Finished jobs per slice: one statement over the ``jobs_finished`` index's last window.

        The slice edges are read off the database clock first and bound as
        values, so each row costs a few comparisons (a portable CASE per
        edge, no dialect's date arithmetic): each sum counts the rows that
        finished within the last k slices, and the slices are the
        differences of neighbouring sums.
        """
        j = self.jobs
        width = query.window / query.buckets

        def work(conn: Connection) -> tuple[datetime, list[Any]]:
            now: datetime = conn.execute(sa.select(self.now())).scalar_one()
            edges = [now - timedelta(seconds=width * k) for k in range(1, query.buckets + 1)]
            within = [
                sa.func.sum(sa.case((j.c.finished_at >= edge, 1), else_=0))
                for edge in edges
            ]
            stmt = sa.select(j.c.queue, j.c.status, *within).where(
                j.c.status.in_([status_literal(JobStatus.DONE), status_literal(JobStatus.DEAD)]),
                j.c.finished_at >= edges[-1],
            )
            if query.queue is not None:
                stmt = stmt.where(j.c.queue == query.queue)
            return now, list(conn.execute(stmt.group_by(j.c.queue, j.c.status)))

        now, rows = self._run(work)
        result = spi.Throughput(now, width)
        for queue, status, *cumulative in rows:
            totals = [0, *(int(n or 0) for n in cumulative)]
            slices = [totals[k] - totals[k - 1] for k in range(1, len(totals))]
            result.counts.setdefault(queue, {})[status] = slices[::-1]
        return result

    # ------------------------------------------------------------------
    # Inspecting and managing
    # ------------------------------------------------------------------
    def get(self, lookup: spi.JobLookup) -> Job | None:
        """The job row with this id, or None."""
        key = int_job_id(lookup.job_id)
        if key is None:
            return None
        row = self._run(lambda conn: conn.execute(sa.select(*self._columns).where(self.jobs.c.id == key)).first())
        return self._job_from_row(row) if row is not None else None

    def cancel(self, request: spi.CancelRequest) -> bool:
        """Cancel a pending job, or flag a processing one; False when it is neither (or does not exist).

        One transaction of two statements at most: a job that is claimed
        between them is flagged by the second, one settled between them is
        finished and reports False.
        """
        key = int_job_id(request.job_id)
        if key is None:
            return False
        j = self.jobs
        pending = (
            sa.update(j)
            .where(j.c.id == key, j.c.status == PENDING_SQL)
            .values(status=JobStatus.CANCELLED, finished_at=self.now())
        )
        # rowcount counts matched rows on every dialect here (MySQL's client flag): a repeat still reports True.
        processing = sa.update(j).where(j.c.id == key, j.c.status == PROCESSING_SQL).values(cancel_requested=True)

        def work(conn: Connection) -> bool:
            return bool(conn.execute(pending).rowcount or conn.execute(processing).rowcount)

        return self._run(work)

    def cancel_requests(self, check: spi.CancelCheck) -> set[Hashable]:
        """The held jobs of ``check`` whose cancel was requested: one read by primary key."""
        ids = sorted({job.id for job in check.jobs})  # type: ignore[type-var]
        if not ids:
            return set()
        j = self.jobs
        found: set[Hashable] = set()
        for start in range(0, len(ids), FENCE_CHUNK):
            chunk = ids[start : start + FENCE_CHUNK]
            stmt = sa.select(j.c.id).where(j.c.id.in_(chunk), j.c.cancel_requested == sa.true())
            found |= set(self._run_single(functools.partial(_scalars, stmt)))
        return found

    def retry_now(self, request: spi.RetryNowRequest) -> bool:
        """One fenced UPDATE (pending and not yet due), then the queue's wake-up as after an enqueue."""
        key = int_job_id(request.job_id)
        if key is None:
            return False
        j = self.jobs
        waiting = sa.and_(j.c.id == key, j.c.status == PENDING_SQL, j.c.run_at > self.now())

        def work(conn: Connection) -> bool:
            queue = conn.execute(sa.select(j.c.queue).where(waiting)).scalar()
            if queue is None or not conn.execute(sa.update(j).where(waiting).values(run_at=self.now())).rowcount:
                return False
            self.after_enqueue(conn, {queue})
            return True

        return bool(self._run(work))

    def stats(self, request: spi.StatsRequest) -> dict[str, dict[str, Any]]:
        """Counts per queue (and job type) and status, plus ``scheduled`` (pending, not yet due)."""
        j = self.jobs
        not_due = sa.and_(j.c.status == JobStatus.PENDING, j.c.run_at > self.now())
        scheduled = sa.func.sum(sa.case((not_due, 1), else_=0))
        keys = [j.c.queue, j.c.job_type] if request.by_type else [j.c.queue]
        stmt = sa.select(*keys, j.c.status, sa.func.count(), scheduled).group_by(*keys, j.c.status)
        if request.queue is not None:
            stmt = stmt.where(j.c.queue == request.queue)
        counted: tuple[str, ...] = STATUSES
        if request.statuses is not None:
            counted = tuple(s for s in STATUSES if s in request.statuses)
            stmt = stmt.where(j.c.status.in_([status_literal(s) for s in counted]))
        zeros = {s: 0 for s in counted} | ({"scheduled": 0} if JobStatus.PENDING in counted else {})
        out: dict[str, dict[str, Any]] = {}
        for row in self._run(lambda conn: list(conn.execute(stmt))):
            *names, status, count, sched = row
            home: dict[str, Any] = out
            for name in names[:-1]:
                home = home.setdefault(name, {})
            counts = home.setdefault(names[-1], dict(zeros))
            counts[status] = int(count)
            if status == JobStatus.PENDING:
                counts["scheduled"] = int(sched or 0)
        return out

    def _of_types(self, job_types: frozenset[str] | None) -> list[sa.ColumnElement[bool]]:
        return [] if job_types is None else [self.jobs.c.job_type.in_(sorted(job_types))]

    def count_ready(self, request: spi.ReadyCount) -> int:
        """Exact count of due pending jobs in the queue (of the request's types); 0 while it is paused."""
        j = self.jobs
        stmt = sa.select(sa.func.count()).where(
            j.c.status == PENDING_SQL, j.c.queue == request.queue, j.c.run_at <= self.now(),
            *self._of_types(request.job_types), self.not_paused(request.queue),
        )  # fmt: skip
        return int(self._run(lambda conn: conn.execute(stmt).scalar() or 0))

    def seconds_until_due(self, probe: spi.DueProbe) -> float | None:
        """Earliest pending ``run_at`` or lease expiry of the probe's unpaused queues and types, minus DB-now."""
        j = self.jobs
        names = list(probe.queues)
        of_types = [*self._of_types(probe.job_types), self.not_paused(j.c.queue)]
        due = sa.select(sa.func.min(j.c.run_at)).where(j.c.status == PENDING_SQL, j.c.queue.in_(names), *of_types)
        expiry = sa.select(sa.func.min(j.c.lease_expires_at)).where(
            j.c.status == PROCESSING_SQL, j.c.queue.in_(names), *of_types
        )
        stmt = sa.select(due.scalar_subquery(), expiry.scalar_subquery(), self.now())
        next_due, next_expiry, now = self._run_single(lambda conn: conn.execute(stmt).one())
        moments = [m for m in (next_due, next_expiry) if m is not None]
        return (min(moments) - now).total_seconds() if moments else None

    def db_now(self) -> datetime:
        """The database clock."""
        now: datetime = self._run(lambda conn: conn.execute(sa.select(self.now())).scalar_one())
        return now

    def dead_jobs(self, query: spi.DeadJobsQuery) -> list[Job]:
        """Dead jobs, newest first."""
        j = self.jobs
        stmt = sa.select(*self._columns).where(j.c.status == JobStatus.DEAD)
        if query.queue is not None:
            stmt = stmt.where(j.c.queue == query.queue)
        stmt = stmt.order_by(j.c.finished_at.desc(), j.c.id.desc()).limit(query.limit)
        return [self._job_from_row(r) for r in self._run(lambda conn: list(conn.execute(stmt)))]

    def replay(self, request: spi.ReplayRequest) -> ReplayResult:
        """Dead jobs back to pending, one short transaction per job so a held dedupe key only skips that job."""
        j = self.jobs
        stmt = sa.select(j.c.id, j.c.queue, j.c.dedupe_key).where(j.c.status == JobStatus.DEAD)
        if request.queue is not None:
            stmt = stmt.where(j.c.queue == request.queue)
        if request.ids is not None:
            wanted = [k for k in (int_job_id(i) for i in request.ids) if k is not None]
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
            "dedupe_held_until": None,  # live again: the key is held because the job is, until it finishes
            "cancel_requested": False,  # a cancel asked of an earlier run does not stop the replayed one
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
            others = sa.and_(self.keeping(r.queue, r.dedupe_key), j.c.id != r.id)

            def revive_one(conn: Connection, upd: sa.Update = upd, others: sa.ColumnElement[bool] = others) -> int:
                self._release_expired_hold(conn, others)  # a hold that has ended must not skip this job
                return int(conn.execute(upd).rowcount)

            try:
                result.replayed += self._run(revive_one)
            except PolyqueueError as exc:
                if not isinstance(exc.__cause__, sa_exc.IntegrityError):
                    raise
                result.skipped[r.id] = f"dedupe key {r.dedupe_key!r} is held by another job"
        return result

    @staticmethod
    def _rowcount_of(stmt: sa.Executable) -> Callable[[Connection], int]:
        return lambda conn: int(conn.execute(stmt).rowcount)

    def purge(self, request: spi.PurgeRequest) -> int:
        """Delete finished rows in :class:`~polyqueue.policy.PurgePace` batches, each its own transaction."""
        j = self.jobs
        status = request.status
        select_batch = (
            sa.select(j.c.id)
            .where(
                j.c.status == status,
                j.c.finished_at < self.seconds_before_now(sa.literal(float(request.older_than), sa.Float())),
                sa.or_(j.c.dedupe_held_until.is_(None), j.c.dedupe_held_until <= self.now()),
            )
        )

        pace = policy.PurgePace(request.batch_size, self.lock_poll_seconds, self.pause)

        def work(conn: Connection, size: int) -> tuple[int, int]:
            began = time.monotonic()  # the transaction has begun: any wait for the write lock is over
            batch = [r[0] for r in conn.execute(select_batch.limit(size))]
            deleted = 0
            if batch:
                # A row that changed since the select (replayed meanwhile) stays; the batch still was not the last.
                deleted = conn.execute(sa.delete(j).where(j.c.id.in_(batch), j.c.status == status)).rowcount
            pace.held(time.monotonic() - began)
            return len(batch), int(deleted)

        total = 0
        for size in pace.sizes():
            with self.eager_locking():
                found, deleted = self._run(functools.partial(work, size=size))
            total += deleted
            self.after_purge_batch()
            if not found:
                break
        if status == JobStatus.DONE:
            self._purge_fires(request.older_than, request.batch_size)
        return total
