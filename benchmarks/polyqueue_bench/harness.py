"""The benchmark harness behind ``polyqueue bench``: polyqueue against the naive ``job_queue`` loop and its peers.

Every figure is measured on real servers in one run, repeated (median and
min-max of ``repetitions``), with the repetitions interleaved between the
systems so that a slow minute of the machine hurts everyone alike. Worker
processes are started with ``spawn`` and wait at a barrier, so process start-up
and imports are never timed. Systems compared, each through its own public API:

* ``polyqueue`` -- :class:`polyqueue.Worker` in each worker process, burst mode;
* ``naive`` -- the ``job_queue`` table and loop of the essay, as written minus
  its 0.1 s sleep (the sleep is kept for the idle scenario, where it is the point);
* ``pgqueuer`` (asyncpg, uvloop, batch size 100) and ``procrastinate`` on PostgreSQL;
* ``huey`` (``SqliteHuey`` and its consumer) on SQLite;
* ``SELECT 1`` round trips through the same driver, as the floor.

The peers are optional (``pip install -e 'benchmarks[peers]'``); a peer whose
package is missing is skipped and said so. Results go to a rich table, a JSON
file and, when matplotlib is installed, a PNG chart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

__all__ = ["BACKENDS", "SCENARIOS", "BenchConfig", "Figure", "main", "run_bench"]

#: Every scenario, in the order they run.
SCENARIOS = ("select1", "enqueue", "drain", "latency", "idle", "history", "memory")
#: Every built-in backend the harness knows.
BACKENDS = ("sqlite", "postgresql", "mysql")
#: The database the PostgreSQL and MySQL benchmarks create and use, apart from the test database.
BENCH_DATABASE = "polyqueue_bench"
#: The MariaDB/MySQL user the idle worker connects as, so that its statements can be told apart.
BENCH_USER = "polyqueue_bench"
PREFIX = "pqbench_"
JOB_TYPE = "noop"

#: Reference targets (this project's 2-core development machine); printed next to the figures.
TARGETS: list[dict[str, Any]] = [
    {
        "what": "PostgreSQL drain, 2 processes >= pgqueuer",
        "kind": "ratio",
        "key": ("drain", "2 processes", "postgresql", "polyqueue"),
        "vs": ("drain", "2 processes", "postgresql", "pgqueuer"),
        "at_least": 1.0,
    },
    {
        "what": "PostgreSQL drain, 2 processes >= 20x naive",
        "kind": "ratio",
        "key": ("drain", "2 processes", "postgresql", "polyqueue"),
        "vs": ("drain", "2 processes", "postgresql", "naive"),
        "at_least": 20.0,
    },
    {
        "what": "PostgreSQL drain, 2 processes >= 20x procrastinate",
        "kind": "ratio",
        "key": ("drain", "2 processes", "postgresql", "polyqueue"),
        "vs": ("drain", "2 processes", "postgresql", "procrastinate"),
        "at_least": 20.0,
    },
    {
        "what": "PostgreSQL bulk enqueue >= 1.5x pgqueuer",
        "kind": "ratio",
        "key": ("enqueue", "bulk", "postgresql", "polyqueue"),
        "vs": ("enqueue", "bulk", "postgresql", "pgqueuer"),
        "at_least": 1.5,
    },
    {
        "what": "PostgreSQL bulk enqueue >= 1.5x procrastinate",
        "kind": "ratio",
        "key": ("enqueue", "bulk", "postgresql", "polyqueue"),
        "vs": ("enqueue", "bulk", "postgresql", "procrastinate"),
        "at_least": 1.5,
    },
    {
        "what": "PostgreSQL latency p50 <= 3 ms",
        "kind": "value",
        "key": ("latency", "p50", "postgresql", "polyqueue"),
        "at_most": 3.0,
    },
    {
        "what": "PostgreSQL latency p99 <= 15 ms",
        "kind": "value",
        "key": ("latency", "p99", "postgresql", "polyqueue"),
        "at_most": 15.0,
    },
    {
        "what": "PostgreSQL idle <= 0.2 statements/s",
        "kind": "value",
        "key": ("idle", "per worker", "postgresql", "polyqueue"),
        "at_most": 0.2,
    },
    {
        "what": "history ratio >= 0.9 (PostgreSQL)",
        "kind": "value",
        "key": ("history", "ratio full/empty", "postgresql", "polyqueue"),
        "at_least": 0.9,
    },
    {
        "what": "history ratio >= 0.9 (MySQL/MariaDB)",
        "kind": "value",
        "key": ("history", "ratio full/empty", "mysql", "polyqueue"),
        "at_least": 0.9,
    },
    {
        "what": "history ratio >= 0.9 (SQLite)",
        "kind": "value",
        "key": ("history", "ratio full/empty", "sqlite", "polyqueue"),
        "at_least": 0.9,
    },
    {
        "what": "MariaDB drain, 2 processes >= 20x naive",
        "kind": "ratio",
        "key": ("drain", "2 processes", "mysql", "polyqueue"),
        "vs": ("drain", "2 processes", "mysql", "naive"),
        "at_least": 20.0,
    },
    {
        "what": "SQLite drain, 2 processes >= 10x naive",
        "kind": "ratio",
        "key": ("drain", "2 processes", "sqlite", "polyqueue"),
        "vs": ("drain", "2 processes", "sqlite", "naive"),
        "at_least": 10.0,
    },
    {
        "what": "SQLite drain, 2 processes >= 1.5x huey",
        "kind": "ratio",
        "key": ("drain", "2 processes", "sqlite", "polyqueue"),
        "vs": ("drain", "2 processes", "sqlite", "huey"),
        "at_least": 1.5,
    },
    {
        "what": "worker RSS growth <= 10% (PostgreSQL)",
        "kind": "value",
        "key": ("memory", "RSS growth", "postgresql", "polyqueue"),
        "at_most": 10.0,
    },
    {
        "what": "worker RSS growth <= 10% (SQLite)",
        "kind": "value",
        "key": ("memory", "RSS growth", "sqlite", "polyqueue"),
        "at_most": 10.0,
    },
    {
        "what": "worker RSS growth <= 10% (MySQL/MariaDB)",
        "kind": "value",
        "key": ("memory", "RSS growth", "mysql", "polyqueue"),
        "at_most": 10.0,
    },
]


class BenchError(Exception):
    """A benchmark could not be set up or its result failed verification."""


class Unsupported(Exception):
    """The system has no such operation (huey has no bulk enqueue, for example)."""


# ----------------------------------------------------------------------------
# Configuration and results
# ----------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """What to run and how big. Every field is a keyword of :func:`run_bench`."""

    backends: tuple[str, ...] = BACKENDS
    scenarios: tuple[str, ...] = SCENARIOS
    repetitions: int = 3
    #: Systems to include besides polyqueue: ``naive``, ``pgqueuer``, ``procrastinate``, ``huey``.
    baselines: tuple[str, ...] = ("naive", "pgqueuer", "procrastinate", "huey")
    bulk_jobs: int = 20_000
    single_jobs: int = 2_000
    drain_jobs: int = 20_000
    #: Jobs for the drains of the slow baselines (the naive loop, procrastinate); None means ``drain_jobs``.
    #: Fewer jobs flatter the naive loop (its claim scans and sorts every pending row).
    slow_drain_jobs: int | None = None
    processes: tuple[int, ...] = (1, 2)
    latency_rate: float = 100.0
    latency_seconds: float = 10.0
    idle_seconds: float = 10.0
    history_rows: int = 1_000_000
    history_jobs: int = 10_000
    memory_jobs: tuple[int, int] = (10_000, 200_000)
    select1_seconds: float = 2.0
    #: polyqueue Worker threads per process and claim batch size (None: the Worker's default).
    concurrency: int = 8
    batch_size: int | None = 100
    procrastinate_concurrency: int = 10
    pgqueuer_batch_size: int = 100
    #: Backend name -> URL; missing ones come from the test-server defaults (POLYQUEUE_TEST_*_URL).
    urls: dict[str, str] = field(default_factory=dict)
    output_dir: str | None = "benchmarks/results"
    chart: bool = True
    #: Shown in the output next to the figures ("full run", "quick run", ...).
    label: str = ""


@dataclass
class Figure:
    """One measured quantity: the values of all repetitions of one system on one backend."""

    scenario: str
    variant: str
    backend: str
    system: str
    unit: str
    higher_is_better: bool
    values: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        """``(scenario, variant, backend, system)``."""
        return (self.scenario, self.variant, self.backend, self.system)

    @property
    def median(self) -> float:
        """Median over repetitions (NaN when nothing was measured)."""
        return statistics.median(self.values) if self.values else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data.update(
            median=self.median,
            min=min(self.values) if self.values else None,
            max=max(self.values) if self.values else None,
        )
        return data


@dataclass
class Trial:
    """One repetition's unit of work: runs one system once and returns metric -> value."""

    scenario: str
    backend: str
    system: str
    run: Callable[[], dict[str, float]]
    #: metric (the figure's variant) -> (unit, higher_is_better)
    metrics: dict[str, tuple[str, bool]]
    note: str = ""


# ----------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


def _percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, round(pct / 100.0 * (len(ordered) - 1))))
    return ordered[rank]


def _default_url(backend: str, workdir: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}"
    from polyqueue.testing import server_url

    return server_url(backend)


def _bench_database_url(url: str) -> str:
    """The same server with the dedicated benchmark database (created when missing)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return url
    engine = sa.create_engine(parsed, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if parsed.get_backend_name() == "postgresql":
                exists = conn.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": BENCH_DATABASE}
                ).first()
                if not exists:
                    conn.exec_driver_sql(f'CREATE DATABASE "{BENCH_DATABASE}"')
            else:
                conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{BENCH_DATABASE}`")
    finally:
        engine.dispose()
    return parsed.set(database=BENCH_DATABASE).render_as_string(hide_password=False)


def _dbapi_connect(url: str, *, autocommit: bool = False) -> Any:
    """A plain driver connection (psycopg, PyMySQL or sqlite3) for the naive loop and SELECT 1."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        import psycopg

        return psycopg.connect(
            host=parsed.host or "127.0.0.1",
            port=parsed.port or 5432,
            user=parsed.username,
            password=parsed.password,
            dbname=parsed.database,
            autocommit=autocommit,
        )
    if backend in ("mysql", "mariadb"):
        import pymysql

        return pymysql.connect(
            host=parsed.host or "127.0.0.1",
            port=parsed.port or 3306,
            user=parsed.username or "root",
            password=parsed.password or "",
            database=parsed.database,
            autocommit=autocommit,
            charset="utf8mb4",
        )
    import sqlite3

    conn = sqlite3.connect(parsed.database or ":memory:", isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _pg_dsn(url: str) -> str:
    parsed = make_url(url)
    auth = parsed.username or ""
    if parsed.password:
        from urllib.parse import quote

        auth += ":" + quote(str(parsed.password), safe="")
    return f"postgresql://{auth}@{parsed.host or '127.0.0.1'}:{parsed.port or 5432}/{parsed.database}"


class StatementCounter:
    """Counts statements a process sends, for SQLite's trace callback (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self, _statement: str) -> None:
        with self._lock:
            self.count += 1


# ----------------------------------------------------------------------------
# Systems under test. Each has a picklable spec so worker processes can rebuild it.
# ----------------------------------------------------------------------------
@dataclass
class Spec:
    """How to open one system on one backend, in this process or a worker process."""

    system: str
    backend: str
    url: str
    name: str = PREFIX
    options: dict[str, Any] = field(default_factory=dict)


class System:
    """The producer side, used by the benchmark process."""

    #: True when the system forks its own worker processes (huey's consumer).
    forks_workers = False

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def setup(self) -> None:
        """Create the schema if missing and empty it."""

    def clear(self) -> None:
        """Remove every job."""

    def enqueue_bulk(self, n: int) -> None:
        """Enqueue ``n`` jobs through the system's batch API."""
        raise Unsupported(f"{self.spec.system} has no bulk enqueue")

    def enqueue_single(self, n: int) -> None:
        """Enqueue ``n`` jobs one call (one transaction) each."""
        for i in range(n):
            self.enqueue_one({"i": i})

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        """Enqueue one job."""
        raise NotImplementedError

    def verify_drained(self, n: int, handled: int) -> str:
        """Raise :class:`BenchError` unless all ``n`` jobs finished exactly once; return what was checked."""
        raise NotImplementedError

    def drop(self) -> None:
        """Remove what ``setup`` created."""

    def close(self) -> None:
        """Release connections."""

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        """The consumer side, built inside a worker process."""
        raise NotImplementedError


class WorkerSide:
    """The consumer side of a system, inside one worker process."""

    def __init__(self) -> None:
        self.handled = 0
        #: When the last job finished, for systems that learn it before their run returns (huey).
        self.finished_at: float | None = None
        self.latencies: list[float] = []
        self.statements = StatementCounter()
        self._count_lock = threading.Lock()

    def on_job(self, payload: Any) -> None:
        """What every benchmark handler does: count, and record latency when the producer stamped a time."""
        stamped = payload.get("t") if isinstance(payload, dict) else None
        if stamped is not None:
            self.latencies.append(time.time() - stamped)
        with self._count_lock:
            self.handled += 1

    def trace_sqlite(self) -> None:
        """Count SQLite statements through the trace callback (SQLite systems only)."""

    def run_burst(self, expected: int) -> None:
        """Process until nothing is ready."""
        raise NotImplementedError

    def run_until(self, stop: threading.Event) -> None:
        """Process (and wait for work) until ``stop`` is set."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


# --- polyqueue ------------------------------------------------------------------
class PolyqueueSystem(System):
    """polyqueue itself, through its public API."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        import polyqueue

        self.q = polyqueue.connect(spec.url, table_prefix=spec.name)

    def setup(self) -> None:
        self.q.migrate()
        self.clear()

    def clear(self) -> None:
        backend: Any = self.q.backend
        table = backend.jobs.name
        with backend.engine.begin() as conn:
            if self.spec.backend == "sqlite":
                conn.exec_driver_sql(f'DELETE FROM "{table}"')
            elif self.spec.backend == "postgresql":
                conn.exec_driver_sql(f'TRUNCATE TABLE "{table}"')
            else:
                conn.exec_driver_sql(f"TRUNCATE TABLE `{table}`")

    def enqueue_bulk(self, n: int) -> None:
        self.q.enqueue_many([{"job_type": JOB_TYPE, "payload": {"i": i}} for i in range(n)])

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        self.q.enqueue(JOB_TYPE, payload)

    def verify_drained(self, n: int, handled: int) -> str:
        stats = self.q.stats()
        if stats["done"] != n or handled != n or stats["pending"] or stats["processing"]:
            raise BenchError(
                f"polyqueue on {self.spec.backend}: {stats} with {handled} handler calls, expected {n} done"
            )
        return f"done={stats['done']} handler calls={handled}"

    def drop(self) -> None:
        from polyqueue.testing import drop_schema

        drop_schema(self.q)

    def close(self) -> None:
        self.q.close()

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        return PolyqueueWorkerSide(self, params)


class PolyqueueWorkerSide(WorkerSide):
    """A :class:`polyqueue.Worker` with a no-op handler."""

    def __init__(self, system: PolyqueueSystem, params: dict[str, Any]) -> None:
        super().__init__()
        import polyqueue

        self.system = system
        options: dict[str, Any] = {"concurrency": params.get("concurrency", 8)}
        if params.get("batch_size"):
            options["batch_size"] = params["batch_size"]
        self.worker = polyqueue.Worker(system.q, **options)
        self.worker.register(JOB_TYPE, lambda job: self.on_job(job.payload))

    def trace_sqlite(self) -> None:
        backend: Any = self.system.q.backend
        backend._run_single(lambda conn: None)  # creates the single-statement engine, so it is traced too
        for engine in {id(e): e for e in (backend.engine, backend._autocommit_engine)}.values():
            engine.dispose()  # connections made from now on carry the trace
            sa.event.listen(engine, "connect", lambda dbapi_conn, _rec: dbapi_conn.set_trace_callback(self.statements))

    def run_burst(self, expected: int) -> None:
        self.worker.run(burst=True)

    def _stop_when_set(self, stop: threading.Event) -> None:
        stop.wait()
        self.worker.stop()

    def run_until(self, stop: threading.Event) -> None:
        threading.Thread(target=self._stop_when_set, args=(stop,), daemon=True).start()
        self.worker.run()

    def close(self) -> None:
        self.system.close()


# --- the naive job_queue loop ---------------------------------------------------
NAIVE_DDL = {
    # The essay's table, verbatim where the dialect allows it (SQLite has no SERIAL or NOW()).
    "postgresql": """CREATE TABLE IF NOT EXISTS {t} (
    id            SERIAL PRIMARY KEY,
    job_type      VARCHAR(255) NOT NULL,
    payload       TEXT,
    status        VARCHAR(50)  DEFAULT 'pending',
    created_at    TIMESTAMP    DEFAULT NOW(),
    attempts      INTEGER      DEFAULT 0,
    locked_by     VARCHAR(255),
    error_message TEXT
)""",
    "mysql": """CREATE TABLE IF NOT EXISTS {t} (
    id            SERIAL PRIMARY KEY,
    job_type      VARCHAR(255) NOT NULL,
    payload       TEXT,
    status        VARCHAR(50)  DEFAULT 'pending',
    created_at    TIMESTAMP    DEFAULT NOW(),
    attempts      INTEGER      DEFAULT 0,
    locked_by     VARCHAR(255),
    error_message TEXT
)""",
    "sqlite": """CREATE TABLE IF NOT EXISTS {t} (
    id            INTEGER PRIMARY KEY,
    job_type      VARCHAR(255) NOT NULL,
    payload       TEXT,
    status        VARCHAR(50)  DEFAULT 'pending',
    created_at    TIMESTAMP    DEFAULT CURRENT_TIMESTAMP,
    attempts      INTEGER      DEFAULT 0,
    locked_by     VARCHAR(255),
    error_message TEXT
)""",
}


class NaiveSystem(System):
    """The essay's ``job_queue`` table, driven through the plain driver as the essay does."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self.table = f"{spec.name}job_queue"
        self.mark = "?" if spec.backend == "sqlite" else "%s"
        self.conn = _dbapi_connect(spec.url)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(sql.replace("%s", self.mark), params)
        return cur

    def _commit(self) -> None:
        if self.spec.backend != "sqlite":
            self.conn.commit()

    def setup(self) -> None:
        self._execute(NAIVE_DDL[self.spec.backend].format(t=self.table))
        self._commit()
        self.clear()

    def clear(self) -> None:
        self._execute(f"DELETE FROM {self.table}" if self.spec.backend == "sqlite" else f"TRUNCATE TABLE {self.table}")
        self._commit()

    def enqueue_bulk(self, n: int) -> None:
        # The obvious batch: executemany in one transaction.
        rows = [(JOB_TYPE, json.dumps({"i": i})) for i in range(n)]
        if self.spec.backend == "sqlite":
            self.conn.execute("BEGIN")
        self.conn.cursor().executemany(
            f"INSERT INTO {self.table} (job_type, payload) VALUES ({self.mark}, {self.mark})", rows
        )
        if self.spec.backend == "sqlite":
            self.conn.execute("COMMIT")
        self._commit()

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        self._execute(f"INSERT INTO {self.table} (job_type, payload) VALUES (%s, %s)", (JOB_TYPE, json.dumps(payload)))
        self._commit()

    def verify_drained(self, n: int, handled: int) -> str:
        done = self._execute(f"SELECT count(*) FROM {self.table} WHERE status = 'done'").fetchone()[0]
        total = self._execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]
        self._commit()
        if done != n or total != n or handled != n:
            raise BenchError(
                f"naive on {self.spec.backend}: done={done} of {total} with {handled} handler calls, expected {n}"
            )
        return f"done={done} handler calls={handled}"

    def drop(self) -> None:
        self._execute(f"DROP TABLE IF EXISTS {self.table}")
        self._commit()

    def close(self) -> None:
        self.conn.close()

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        return NaiveWorkerSide(self)


class NaiveWorkerSide(WorkerSide):
    """The essay's ``process_jobs`` loop; ``run_until`` keeps its 0.1 s sleep, ``run_burst`` drops it."""

    def __init__(self, system: NaiveSystem) -> None:
        super().__init__()
        self.system = system
        self.hostname = socket.gethostname()
        table, sqlite = system.table, system.spec.backend == "sqlite"
        lock = "" if sqlite else "\n            FOR UPDATE SKIP LOCKED"
        self.select = f"""
            SELECT * FROM {table}
            WHERE status = 'pending'
            AND (locked_by IS NULL OR locked_by = %s)
            ORDER BY created_at ASC
            LIMIT 1{lock}
        """
        self.take = f"UPDATE {table} SET status='processing', locked_by=%s, attempts=attempts+1 WHERE id=%s"
        self.done = f"UPDATE {table} SET status='done' WHERE id=%s"
        self.reset = f"UPDATE {table} SET status='pending', error_message=%s WHERE id=%s"

    def trace_sqlite(self) -> None:
        self.system.conn.set_trace_callback(self.statements)

    def _one(self) -> bool:
        system = self.system
        if system.spec.backend == "sqlite":
            system.conn.execute("BEGIN IMMEDIATE")
        try:
            job = system._execute(self.select, [self.hostname]).fetchone()
            if job:
                system._execute(self.take, [self.hostname, job[0]])
                try:
                    self.on_job(json.loads(job[2]))
                    system._execute(self.done, [job[0]])
                except Exception as exc:  # the essay's "just reset it"
                    system._execute(self.reset, [str(exc), job[0]])
        finally:
            if system.spec.backend == "sqlite":
                system.conn.execute("COMMIT")
            else:
                system.conn.commit()
        return bool(job)

    def run_burst(self, expected: int) -> None:
        while self._one():
            pass

    def run_until(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._one():
                stop.wait(0.1)  # "10 polls per second. This is very reasonable."

    def close(self) -> None:
        self.system.close()


# --- pgqueuer -------------------------------------------------------------------------
class PgQueuerSystem(System):
    """pgqueuer on asyncpg (and uvloop in the workers), tables prefixed ``pqbench_``."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        os.environ["PGQUEUER_PREFIX"] = spec.name
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(_pg_dsn(spec.url)))
        self.queries = Queries(AsyncpgDriver(self.conn))

    def _wait(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def setup(self) -> None:
        if not self._wait(self.queries.schema_is_installed()):
            self._wait(self.queries.install())
        self.clear()

    def clear(self) -> None:
        self._wait(self.queries.clear_queue())
        self._wait(self.queries.clear_queue_log())

    def enqueue_bulk(self, n: int) -> None:
        payloads: list[bytes | None] = [json.dumps({"i": i}).encode() for i in range(n)]
        self._wait(self.queries.enqueue([JOB_TYPE] * n, payloads, [0] * n))

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        self._wait(self.queries.enqueue(JOB_TYPE, json.dumps(payload).encode(), 0))

    def verify_drained(self, n: int, handled: int) -> str:
        left = self._wait(self.conn.fetchval(f"SELECT count(*) FROM {self.spec.name}pgqueuer"))
        if left or handled != n:
            raise BenchError(f"pgqueuer: {left} jobs left, {handled} handler calls, expected {n}")
        return f"queue empty, handler calls={handled}"

    def drop(self) -> None:
        self._wait(self.queries.uninstall())

    def close(self) -> None:
        self._wait(self.conn.close())
        self.loop.close()

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        return PgQueuerWorkerSide(self.spec, params)


class PgQueuerWorkerSide(WorkerSide):
    """pgqueuer's QueueManager with an async no-op entrypoint, on uvloop."""

    def __init__(self, spec: Spec, params: dict[str, Any]) -> None:
        super().__init__()
        os.environ["PGQUEUER_PREFIX"] = spec.name
        self.dsn = _pg_dsn(spec.url)
        self.batch_size = int(params.get("pgqueuer_batch_size", 100))

    async def _serve(self, drain: bool, stop: threading.Event | None) -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries, QueueManager
        from pgqueuer.types import QueueExecutionMode

        conn = await asyncpg.connect(self.dsn)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint(JOB_TYPE)
        async def noop(job: Any) -> None:
            self.on_job(json.loads(job.payload))

        stopper = None
        if stop is not None:
            loop = asyncio.get_running_loop()

            async def stop_when_told() -> None:
                await loop.run_in_executor(None, stop.wait)
                qm.shutdown.set()

            stopper = asyncio.create_task(stop_when_told())
        mode = QueueExecutionMode.drain if drain else QueueExecutionMode.continuous
        await qm.run(batch_size=self.batch_size, mode=mode)
        if stopper is not None:
            await stopper
        await conn.close()

    def _run(self, drain: bool, stop: threading.Event | None) -> None:
        import uvloop

        uvloop.run(self._serve(drain, stop))

    def run_burst(self, expected: int) -> None:
        self._run(True, None)

    def run_until(self, stop: threading.Event) -> None:
        self._run(False, stop)


# --- procrastinate ----------------------------------------------------------------------
class ProcrastinateSystem(System):
    """procrastinate with its psycopg connector, in the benchmark database's public schema."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        import procrastinate

        self.loop = asyncio.new_event_loop()
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_pg_dsn(spec.url)))
        self.task = self.app.task(name=JOB_TYPE)(_procrastinate_noop)
        self.loop.run_until_complete(self.app.open_async())

    def _wait(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _sql(self, sql: str) -> Any:
        return self._wait(self.app.connector.execute_query_one_async(sql))

    def setup(self) -> None:
        if self._sql("SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS present")["present"] is not True:
            self._wait(self.app.schema_manager.apply_schema_async())
        self.clear()

    def clear(self) -> None:
        self._wait(self.app.connector.execute_query_async("TRUNCATE procrastinate_jobs CASCADE"))

    def enqueue_bulk(self, n: int) -> None:
        jobs: list[dict[str, Any]] = [{"i": i} for i in range(n)]
        self._wait(self.task.batch_defer_async(*jobs))

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        self._wait(self.task.defer_async(**payload))

    def verify_drained(self, n: int, handled: int) -> str:
        done = self._sql("SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'succeeded'")["n"]
        if done != n or handled != n:
            raise BenchError(f"procrastinate: succeeded={done}, handler calls={handled}, expected {n}")
        return f"succeeded={done} handler calls={handled}"

    def drop(self) -> None:
        self.clear()

    def close(self) -> None:
        self._wait(self.app.close_async())
        self.loop.close()

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        return ProcrastinateWorkerSide(self.spec, params)


async def _procrastinate_noop(**kwargs: Any) -> None:
    side = ProcrastinateWorkerSide.current
    if side is not None:
        side.on_job(kwargs)


class ProcrastinateWorkerSide(WorkerSide):
    """procrastinate's worker with an async no-op task."""

    current: ProcrastinateWorkerSide | None = None

    def __init__(self, spec: Spec, params: dict[str, Any]) -> None:
        super().__init__()
        self.dsn = _pg_dsn(spec.url)
        self.concurrency = int(params.get("procrastinate_concurrency", 10))
        ProcrastinateWorkerSide.current = self

    async def _serve(self, wait: bool, stop: threading.Event | None) -> None:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=self.dsn))
        app.task(name=JOB_TYPE)(_procrastinate_noop)
        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(concurrency=self.concurrency, wait=wait, install_signal_handlers=False)
            )
            if stop is not None:
                await asyncio.get_running_loop().run_in_executor(None, stop.wait)
                worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    def run_burst(self, expected: int) -> None:
        asyncio.run(self._serve(False, None))

    def run_until(self, stop: threading.Event) -> None:
        asyncio.run(self._serve(True, stop))


# --- huey --------------------------------------------------------------------------------
def _make_huey(path: str, counter: Any = None, latencies: Any = None) -> tuple[Any, Any]:
    from huey import SqliteHuey

    huey = SqliteHuey(name="pqbench", filename=path, results=False)

    @huey.task(name=JOB_TYPE)
    def noop(i: int | None = None, t: float | None = None) -> None:
        if counter is not None:
            if t is not None and latencies is not None:
                latencies.put(time.time() - t)
            with counter.get_lock():
                counter.value += 1

    return huey, noop


class HueySystem(System):
    """huey's ``SqliteHuey`` and its consumer (worker processes forked by the consumer)."""

    forks_workers = True

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self.path = str(Path(make_url(spec.url).database or "bench.db").with_name("huey.db"))
        self.huey, self.task = _make_huey(self.path)

    def setup(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.huey.flush()

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        self.task(**payload)

    def verify_drained(self, n: int, handled: int) -> str:
        left = self.huey.pending_count()
        if left or handled != n:
            raise BenchError(f"huey: {left} tasks left, {handled} handler calls, expected {n}")
        return f"queue empty, handler calls={handled}"

    def drop(self) -> None:
        self.huey.flush()
        self.huey.storage.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + suffix)

    def close(self) -> None:
        self.huey.storage.close()

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        return HueyWorkerSide(self.path, int(params.get("processes", 1)))


class HueyWorkerSide(WorkerSide):
    """huey's consumer with ``workers=processes, worker_type='process'``; counts live in shared memory."""

    def __init__(self, path: str, processes: int) -> None:
        super().__init__()
        fork = multiprocessing.get_context("fork")
        self.counter = fork.Value("q", 0)
        self.statement_count = fork.Value("q", 0)
        self.latency_queue: Any = fork.SimpleQueue()
        self.path = path
        self.processes = processes
        self.huey, _ = _make_huey(path, self.counter, self.latency_queue)

    def trace_sqlite(self) -> None:
        storage = self.huey.storage
        original = storage._create_connection
        shared = self.statement_count

        def count(_statement: str) -> None:
            with shared.get_lock():
                shared.value += 1

        def traced() -> Any:
            conn = original()
            conn.set_trace_callback(count)
            return conn

        storage._create_connection = traced

    def _consumer(self) -> Any:
        return self.huey.create_consumer(workers=self.processes, worker_type="process", periodic=False)

    def run_burst(self, expected: int) -> None:
        consumer = self._consumer()
        consumer.start()
        while self.counter.value < expected:
            time.sleep(0.0005)
        self.finished_at = time.time()  # huey deletes a task when it dequeues it: run means done
        self.handled = self.counter.value
        consumer.stop(graceful=True)

    def run_until(self, stop: threading.Event) -> None:
        consumer = self._consumer()
        consumer.start()
        stop.wait()
        consumer.stop(graceful=True)
        self.handled = self.counter.value
        while not self.latency_queue.empty():
            self.latencies.append(self.latency_queue.get())

    @property
    def statement_total(self) -> int:
        """Statements counted in all of the consumer's processes."""
        return int(self.statement_count.value)


class _Closing(System):
    """Holds a connection until the run's clean-up, which runs ``last_sql`` (if any) and closes it."""

    def __init__(self, conn: Any, last_sql: str | None = None) -> None:
        self.conn = conn
        self.last_sql = last_sql

    def close(self) -> None:
        if self.last_sql:
            self.conn.cursor().execute(self.last_sql)
        self.conn.close()


SYSTEMS: dict[str, type[System]] = {
    "polyqueue": PolyqueueSystem,
    "naive": NaiveSystem,
    "pgqueuer": PgQueuerSystem,
    "procrastinate": ProcrastinateSystem,
    "huey": HueySystem,
}
#: Which peers run on which backend.
PEERS = {"postgresql": ("pgqueuer", "procrastinate"), "sqlite": ("huey",), "mysql": ()}
#: Baselines slow enough that their drains may be given fewer jobs (``slow_drain_jobs``).
SLOW_BASELINES = ("naive", "procrastinate")
PEER_MODULES = {"pgqueuer": ("pgqueuer", "asyncpg", "uvloop"), "procrastinate": ("procrastinate",), "huey": ("huey",)}


def open_system(spec: Spec) -> System:
    """Build the system a spec names."""
    return SYSTEMS[spec.system](spec)


# ----------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------
def _child_main(spec: Spec, role: str, params: dict[str, Any], pipe: multiprocessing.connection.Connection) -> None:
    """Entry point of a worker process: build the worker, report ready, wait for "go", then work."""
    try:
        system = open_system(spec)
        side = system.worker(params)
        if params.get("trace_sqlite"):
            side.trace_sqlite()
        pipe.send(("ready", os.getpid()))
        if pipe.recv() != "go":
            return
        if role == "drain":
            side.run_burst(int(params.get("expected", 0)))
            pipe.send(("done", {"end": side.finished_at or time.time(), "handled": side.handled}))
        elif role == "serve":
            stop = threading.Event()

            def control() -> None:
                while True:
                    command = pipe.recv()
                    if command == "mark":
                        count = getattr(side, "statement_total", side.statements.count)
                        pipe.send(("mark", {"statements": count, "time": time.time()}))
                    elif command == "stop":
                        stop.set()
                        return

            threading.Thread(target=control, daemon=True).start()
            side.run_until(stop)
            pipe.send(("done", {"end": time.time(), "handled": side.handled, "latencies": side.latencies}))
        elif role == "memory":
            # One long-lived worker; RSS is read the moment the handler count passes each threshold.
            stop = threading.Event()
            thresholds = list(params["thresholds"])

            def monitor() -> None:
                while thresholds:
                    if side.handled >= thresholds[0]:
                        pipe.send(("round", {"handled": side.handled, "rss": _rss_bytes()}))
                        thresholds.pop(0)
                    else:
                        time.sleep(0.01)
                stop.set()

            threading.Thread(target=monitor, daemon=True).start()
            side.run_until(stop)
            pipe.send(("done", {"end": time.time(), "handled": side.handled}))
        side.close()
    except BaseException as exc:  # report and die: the parent turns it into a BenchError
        with contextlib.suppress(Exception):
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


class Children:
    """A set of worker processes started together and released at one barrier."""

    def __init__(self, spec: Spec, role: str, count: int, params: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[Any] = []
        for _ in range(count):
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=_child_main, args=(spec, role, params, child_end), daemon=False)
            process.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.processes.append(process)
        for pipe in self.pipes:
            self.expect(pipe, "ready", timeout=120)

    def expect(self, pipe: multiprocessing.connection.Connection, what: str, timeout: float = 600) -> Any:
        """The next message of ``pipe``, which must be ``what``."""
        if not pipe.poll(timeout):
            raise BenchError(f"a worker process sent no {what!r} within {timeout:.0f}s")
        kind, data = pipe.recv()
        if kind == "error":
            raise BenchError(f"worker process failed: {data}")
        if kind != what:
            raise BenchError(f"worker process sent {kind!r}, expected {what!r}")
        return data

    def send_all(self, message: str) -> None:
        """Send ``message`` to every process."""
        for pipe in self.pipes:
            pipe.send(message)

    def go(self) -> float:
        """Release the barrier; returns the wall-clock time of the release."""
        started = time.time()
        self.send_all("go")
        return started

    def gather(self, what: str = "done", timeout: float = 900) -> list[Any]:
        """One ``what`` message from every process."""
        return [self.expect(pipe, what, timeout) for pipe in self.pipes]

    def close(self) -> None:
        """Wait for the processes to exit (kill them after a while)."""
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)


def _drain_once(
    system: System,
    processes: int,
    n: int,
    params: dict[str, Any],
    *,
    fill: bool = True,
    verify: Callable[[int, int], str] | None = None,
) -> dict[str, float]:
    """Enqueue ``n`` jobs, drain them with ``processes`` worker processes, verify, return jobs/s."""
    if fill:
        system.clear()
        try:
            system.enqueue_bulk(n)
        except Unsupported:
            for i in range(n):
                system.enqueue_one({"i": i})
    params = {**params, "expected": n, "processes": processes}
    children = Children(system.spec, "drain", 1 if system.forks_workers else processes, params)
    try:
        started = children.go()
        results = children.gather()
    finally:
        children.close()
    elapsed = max(r["end"] for r in results) - started
    (verify or system.verify_drained)(n, sum(r["handled"] for r in results))
    return {f"{processes} process{'es' if processes > 1 else ''}": n / elapsed}


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------
class Bench:
    """One benchmark run: systems, scenarios, trials, figures."""

    def __init__(self, config: BenchConfig, console: Any = None) -> None:
        from rich.console import Console

        self.config = config
        self.console = console or Console(width=None if sys.stdout.isatty() else 150)
        self.workdir = Path(tempfile.mkdtemp(prefix="polyqueue-bench-"))
        self.figures: dict[tuple[str, str, str, str], Figure] = {}
        self.notes: list[str] = []
        self.urls: dict[str, str] = {}
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self.systems: dict[tuple[str, str], System] = {}
        self.versions: dict[str, str] = {}

    # --- set-up ---------------------------------------------------------------
    def _available_backends(self) -> list[str]:
        from polyqueue.testing import reachable

        ready = []
        for backend in self.config.backends:
            if backend not in BACKENDS:
                raise BenchError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
            url = self.config.urls.get(backend) or _default_url(backend, self.workdir)
            if backend != "sqlite" and not reachable(url):
                self.skipped.append(f"{backend}: server unreachable at {make_url(url).host}:{make_url(url).port}")
                continue
            self.urls[backend] = _bench_database_url(url)
            ready.append(backend)
        return ready

    def _systems_for(self, backend: str) -> list[str]:
        names = ["polyqueue"]
        if "naive" in self.config.baselines:
            names.append("naive")
        for peer in PEERS[backend]:
            if peer not in self.config.baselines:
                continue
            missing = [m for m in PEER_MODULES[peer] if not _importable(m)]
            if missing:
                note = f"{peer}: not installed ({', '.join(missing)}); pip install -e 'benchmarks[peers]'"
                if note not in self.skipped:
                    self.skipped.append(note)
                continue
            names.append(peer)
        return names

    def system(self, backend: str, name: str) -> System:
        """The (cached) producer side of ``name`` on ``backend``."""
        key = (backend, name)
        if key not in self.systems:
            system = open_system(Spec(name, backend, self.urls[backend]))
            system.setup()
            self.systems[key] = system
        return self.systems[key]

    def worker_params(self, **extra: Any) -> dict[str, Any]:
        """Parameters every worker process gets."""
        return {
            "concurrency": self.config.concurrency,
            "batch_size": self.config.batch_size,
            "procrastinate_concurrency": self.config.procrastinate_concurrency,
            "pgqueuer_batch_size": self.config.pgqueuer_batch_size,
            **extra,
        }

    # --- scenarios: each returns the trials of one repetition -------------------
    def trials_select1(self, backend: str) -> list[Trial]:
        url = self.urls[backend]
        seconds = self.config.select1_seconds

        def run() -> dict[str, float]:
            conn = _dbapi_connect(url, autocommit=True)
            try:
                cur = conn.cursor()
                count, deadline = 0, time.perf_counter() + seconds
                started = time.perf_counter()
                while time.perf_counter() < deadline:
                    for _ in range(100):
                        cur.execute("SELECT 1")
                        cur.fetchone()
                    count += 100
                return {"round trips": count / (time.perf_counter() - started)}
            finally:
                conn.close()

        return [
            Trial(
                "select1",
                backend,
                "SELECT 1",
                run,
                {"round trips": ("round trips/s", True)},
                "one connection, autocommit, plain driver",
            )
        ]

    def trials_enqueue(self, backend: str) -> list[Trial]:
        trials = []
        bulk, single = self.config.bulk_jobs, self.config.single_jobs
        for name in self._systems_for(backend):
            system = self.system(backend, name)

            def run_bulk(system: System = system) -> dict[str, float]:
                system.clear()
                started = time.perf_counter()
                system.enqueue_bulk(bulk)
                return {"bulk": bulk / (time.perf_counter() - started)}

            def run_single(system: System = system) -> dict[str, float]:
                system.clear()
                started = time.perf_counter()
                system.enqueue_single(single)
                return {"single": single / (time.perf_counter() - started)}

            if name != "huey":
                trials.append(
                    Trial(
                        "enqueue",
                        backend,
                        name,
                        run_bulk,
                        {"bulk": ("jobs/s", True)},
                        f"one batch call of {bulk:,} jobs",
                    )
                )
            trials.append(
                Trial(
                    "enqueue",
                    backend,
                    name,
                    run_single,
                    {"single": ("jobs/s", True)},
                    f"{single:,} calls, one transaction each",
                )
            )
        return trials

    def trials_drain(self, backend: str) -> list[Trial]:
        trials = []
        for name in self._systems_for(backend):
            system = self.system(backend, name)
            n = self.config.drain_jobs
            if name in SLOW_BASELINES and self.config.slow_drain_jobs:
                n = self.config.slow_drain_jobs
            for processes in self.config.processes:
                variant = f"{processes} process{'es' if processes > 1 else ''}"

                def run(system: System = system, processes: int = processes, n: int = n) -> dict[str, float]:
                    return _drain_once(system, processes, n, self.worker_params())

                trials.append(
                    Trial(
                        "drain",
                        backend,
                        name,
                        run,
                        {variant: ("jobs/s", True)},
                        f"{n:,} no-op jobs, verified done once each",
                    )
                )
        return trials

    def trials_latency(self, backend: str) -> list[Trial]:
        trials = []
        for name in self._systems_for(backend):
            if name == "naive":
                continue  # without its sleep the naive loop spins; with it, latency is its 0.1 s by construction
            system = self.system(backend, name)

            def run(system: System = system) -> dict[str, float]:
                return self._latency_once(system)

            metrics = {"p50": ("ms", False), "p99": ("ms", False)}
            trials.append(
                Trial(
                    "latency",
                    backend,
                    name,
                    run,
                    metrics,
                    f"{self.config.latency_rate:g} jobs/s for {self.config.latency_seconds:g}s, 1 worker process",
                )
            )
        return trials

    def _latency_once(self, system: System) -> dict[str, float]:
        system.clear()
        children = Children(system.spec, "serve", 1, self.worker_params(processes=1))
        try:
            children.go()
            time.sleep(1.0)  # let the worker settle into waiting
            interval = 1.0 / self.config.latency_rate
            count = int(self.config.latency_rate * self.config.latency_seconds)
            start = time.perf_counter()
            for i in range(count):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                system.enqueue_one({"i": i, "t": time.time()})
            time.sleep(1.0)  # the last jobs
            children.send_all("stop")
            (result,) = children.gather()
        finally:
            children.close()
        latencies = result["latencies"]
        if len(latencies) != count:
            raise BenchError(f"{system.spec.system} on {system.spec.backend}: {len(latencies)} of {count} jobs ran")
        return {"p50": _percentile(latencies, 50) * 1000, "p99": _percentile(latencies, 99) * 1000}

    def trials_idle(self, backend: str) -> list[Trial]:
        trials = []
        for name in self._systems_for(backend):
            system = self.system(backend, name)

            def run(system: System = system) -> dict[str, float]:
                return {"per worker": self._idle_once(system)}

            note = {
                "postgresql": "transactions (xact_commit+xact_rollback) in the benchmark database, pg_stat_database",
                "mysql": "statements of a dedicated user (information_schema.USER_STATISTICS, userstat on)",
                "sqlite": "statements through sqlite3's trace callback in the worker process(es)",
            }[backend]
            if name == "naive":
                note += "; naive loop as written, with its 0.1 s sleep"
            trials.append(Trial("idle", backend, name, run, {"per worker": ("statements/s", False)}, note))
        return trials

    def _statement_probe(self, backend: str) -> tuple[Callable[[], float], str | None]:
        """A reader of the server's statement counter for the idle worker, and the URL the worker must use.

        PostgreSQL: committed + rolled-back transactions of the benchmark
        database (``pg_stat_database``), read from another database so that
        reading does not move it. MariaDB: the per-user statement counters of
        ``information_schema.USER_STATISTICS`` for a dedicated user the idle
        worker connects as (``userstat`` is switched on for the measurement
        and restored afterwards), so other clients of the server do not count.
        """
        url = make_url(self.urls[backend])
        if backend == "postgresql":
            conn = _dbapi_connect(url.set(database="postgres").render_as_string(hide_password=False), autocommit=True)
            sql = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s"
            self.systems[(backend, "probe")] = _Closing(conn)
            return (lambda: float(conn.execute(sql, [BENCH_DATABASE]).fetchone()[0])), None
        key = (backend, "probe")
        if key not in self.systems:
            conn = _dbapi_connect(url.render_as_string(hide_password=False), autocommit=True)
            cur = conn.cursor()
            for host in ("%", "localhost"):
                cur.execute(f"CREATE USER IF NOT EXISTS '{BENCH_USER}'@'{host}'")
                cur.execute(f"GRANT ALL PRIVILEGES ON `{BENCH_DATABASE}`.* TO '{BENCH_USER}'@'{host}'")
            cur.execute("SELECT @@GLOBAL.userstat")
            previous = int(cur.fetchone()[0])
            cur.execute("SET GLOBAL userstat = 1")
            self.systems[key] = _Closing(conn, f"SET GLOBAL userstat = {previous}")
        conn = self.systems[key].conn  # type: ignore[attr-defined]
        sql = (
            "SELECT COALESCE(SUM(SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS), 0) "
            "FROM information_schema.USER_STATISTICS WHERE USER = %s"
        )

        def read() -> float:
            cur = conn.cursor()
            cur.execute(sql, [BENCH_USER])
            return float(cur.fetchone()[0])

        return read, url.set(username=BENCH_USER, password=None).render_as_string(hide_password=False)

    def _idle_once(self, system: System) -> float:
        backend = system.spec.backend
        system.clear()
        params = self.worker_params(processes=1, trace_sqlite=backend == "sqlite")
        spec = system.spec
        probe: Callable[[], float] | None = None
        if backend != "sqlite":
            probe, worker_url = self._statement_probe(backend)
            if worker_url is not None:
                spec = Spec(spec.system, spec.backend, worker_url, spec.name, spec.options)
        children = Children(spec, "serve", 1, params)
        try:
            children.go()
            # Start-up statements settle first; PostgreSQL may hold an idle session's statistics
            # for up to 10 s (PGSTAT_IDLE_INTERVAL) before publishing them.
            time.sleep(11.0 if backend == "postgresql" else 2.0)
            seconds = self.config.idle_seconds
            if probe is None:
                children.send_all("mark")
                (first,) = children.gather("mark")
                time.sleep(seconds)
                children.send_all("mark")
                (last,) = children.gather("mark")
                count = last["statements"] - first["statements"]
                elapsed = last["time"] - first["time"]
            elif backend == "postgresql":
                before, started = probe(), time.time()
                time.sleep(seconds)
                children.send_all("stop")  # a session publishes its statistics when it ends
                children.gather()
                elapsed = time.time() - started
                time.sleep(1.0)
                count = probe() - before
            else:
                before, started = probe(), time.time()
                time.sleep(seconds)
                count = probe() - before
                elapsed = time.time() - started
            if backend != "postgresql":
                children.send_all("stop")
                children.gather()
        finally:
            children.close()
        return max(0.0, count) / elapsed

    def trials_history(self, backend: str) -> list[Trial]:
        full = PolyqueueSystem(Spec("polyqueue", backend, self.urls[backend], name=f"{PREFIX}hist_"))
        empty = PolyqueueSystem(Spec("polyqueue", backend, self.urls[backend], name=f"{PREFIX}nohist_"))
        full.q.migrate()
        empty.setup()
        self.systems[(backend, "history-full")] = full
        self.systems[(backend, "history-empty")] = empty
        history_top = self._fill_history(full, self.config.history_rows)
        n = self.config.history_jobs
        rates: dict[str, float] = {}

        def run_one(system: PolyqueueSystem, which: str) -> dict[str, float]:
            keep_below = history_top if system is full else 0
            self._drop_finished_above(system, keep_below)
            system.enqueue_bulk(n)

            def verify(expected: int, handled: int) -> str:
                done = self._count_done_above(system, keep_below)
                if done != expected or handled != expected:
                    raise BenchError(f"history on {backend}: {done} done, {handled} handler calls, expected {expected}")
                return f"done={done} handler calls={handled}"

            rate = _drain_once(system, 1, n, self.worker_params(), fill=False, verify=verify)["1 process"]
            self._drop_finished_above(system, keep_below)
            rates[which] = rate
            values = {which: rate}
            if "full" in rates and "empty" in rates:
                values["ratio full/empty"] = rates["full"] / rates["empty"]
                rates.clear()
            return values

        rows = self.config.history_rows
        note = f"claim+complete of {n:,} jobs by 1 worker process; 'full' table holds {rows:,} done rows"
        return [
            Trial("history", backend, "polyqueue", lambda: run_one(empty, "empty"), {"empty": ("jobs/s", True)}, note),
            Trial(
                "history",
                backend,
                "polyqueue",
                lambda: run_one(full, "full"),
                {"full": ("jobs/s", True), "ratio full/empty": ("x", True)},
                note,
            ),
        ]

    def _fill_history(self, system: PolyqueueSystem, rows: int) -> int:
        """Make ``rows`` finished jobs server-side (doubling INSERT ... SELECT); returns the highest id."""
        backend: Any = system.q.backend
        jobs = backend.jobs
        with backend.engine.begin() as conn:
            have = (
                conn.execute(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == "done")).scalar() or 0
            )
        if have < rows:
            self.console.print(
                f"  [dim]{system.spec.backend}: making {rows:,} finished rows for the history scenario...[/]"
            )
            system.clear()
            system.q.enqueue(JOB_TYPE, {"history": True})
            with backend.engine.begin() as conn:
                conn.execute(
                    sa.update(jobs).values(status="done", attempts=1, finished_at=backend.now(), lease_token=1)
                )
            cols = [
                "queue",
                "job_type",
                "payload",
                "priority",
                "status",
                "attempts",
                "max_attempts",
                "run_at",
                "created_at",
                "finished_at",
                "lease_token",
            ]
            have = 1
            while have < rows:
                take = min(have, rows - have)
                with backend.engine.begin() as conn:
                    source = sa.select(*[jobs.c[c] for c in cols]).where(jobs.c.status == "done").limit(take)
                    conn.execute(sa.insert(jobs).from_select(cols, source))
                have += take
            with backend.engine.begin() as conn:
                analyze = {
                    "postgresql": f'ANALYZE "{jobs.name}"',
                    "mysql": f"ANALYZE TABLE `{jobs.name}`",
                    "sqlite": "ANALYZE",
                }
                result = conn.exec_driver_sql(analyze[system.spec.backend])
                if result.returns_rows:
                    result.fetchall()
        with backend.engine.begin() as conn:
            return int(conn.execute(sa.select(sa.func.max(jobs.c.id))).scalar() or 0)

    @staticmethod
    def _count_done_above(system: PolyqueueSystem, top: int) -> int:
        backend: Any = system.q.backend
        jobs = backend.jobs
        with backend.engine.begin() as conn:
            stmt = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.id > top, jobs.c.status == "done")
            return int(conn.execute(stmt).scalar() or 0)

    @staticmethod
    def _drop_finished_above(system: PolyqueueSystem, top: int) -> None:
        backend: Any = system.q.backend
        with backend.engine.begin() as conn:
            conn.execute(sa.delete(backend.jobs).where(backend.jobs.c.id > top))

    def trials_memory(self, backend: str) -> list[Trial]:
        small, large = self.config.memory_jobs
        system = self.system(backend, "polyqueue")

        def run() -> dict[str, float]:
            system.clear()
            system.enqueue_bulk(small)
            params = self.worker_params(processes=1, thresholds=[small, large])
            children = Children(system.spec, "memory", 1, params)
            try:
                children.go()
                (first,) = children.gather("round")
                done = small
                while done < large:
                    chunk = min(20_000, large - done)
                    system.enqueue_bulk(chunk)
                    done += chunk
                (second,) = children.gather("round")
                (final,) = children.gather()
            finally:
                children.close()
            system.verify_drained(large, final["handled"])
            return {
                f"RSS after {small:,}": first["rss"] / 2**20,
                f"RSS after {large:,}": second["rss"] / 2**20,
                "RSS growth": (second["rss"] - first["rss"]) / first["rss"] * 100.0,
            }

        metrics = {
            f"RSS after {small:,}": ("MiB", False),
            f"RSS after {large:,}": ("MiB", False),
            "RSS growth": ("%", False),
        }
        note = f"one worker process; RSS after draining {small:,} jobs, then after {large:,} in total"
        return [Trial("memory", backend, "polyqueue", run, metrics, note)]

    # --- running ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run every selected scenario on every reachable backend; return the report."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        config = self.config
        started = datetime.now(UTC)
        backends = self._available_backends()
        for scenario in config.scenarios:
            if scenario not in SCENARIOS:
                raise BenchError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
        self._record_versions(backends)
        json_path = _output_base(Path(config.output_dir)).with_suffix(".json") if config.output_dir else None
        try:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            ) as progress:
                for scenario in [s for s in SCENARIOS if s in config.scenarios]:
                    builder = getattr(self, f"trials_{scenario}")
                    trials: list[Trial] = []
                    for backend in backends:
                        trials.extend(builder(backend))
                    task = progress.add_task(scenario, total=len(trials) * config.repetitions)
                    failed: set[int] = set()
                    for rep in range(config.repetitions):
                        for number, trial in enumerate(trials):
                            what = f"{scenario} #{rep + 1}: {trial.system} on {trial.backend}"
                            progress.update(task, description=what)
                            if number not in failed:
                                try:
                                    self._record(trial, trial.run())
                                except BenchError as exc:
                                    # Keep what was measured; this trial is not run again.
                                    failed.add(number)
                                    self.errors.append(f"{what}: {exc}")
                                    self.console.print(f"[red]failed[/] {what}: {exc}")
                            progress.advance(task)
                    progress.update(task, description=scenario)
                    if json_path is not None:  # a checkpoint, so a long run that dies still leaves its figures
                        json_path.write_text(json.dumps(self._report(started), indent=2, default=str) + "\n")
        finally:
            self._cleanup()
        report = self._report(started)
        self.console.print(render_table(report))
        self.console.print(render_checks(report))
        if config.output_dir:
            paths = write_outputs(report, Path(config.output_dir), chart=config.chart, base=json_path)
            for path in paths:
                self.console.print(f"wrote {path}")
            report["files"] = [str(p) for p in paths]
        return report

    def _record(self, trial: Trial, values: dict[str, float]) -> None:
        for metric, value in values.items():
            unit, higher = trial.metrics[metric]
            key = (trial.scenario, metric, trial.backend, trial.system)
            figure = self.figures.get(key)
            if figure is None:
                figure = self.figures[key] = Figure(
                    trial.scenario, metric, trial.backend, trial.system, unit, higher, note=trial.note
                )
            figure.values.append(value)

    def _record_versions(self, backends: Iterable[str]) -> None:
        import importlib.metadata

        for package in (
            "polyqueue",
            "SQLAlchemy",
            "psycopg",
            "PyMySQL",
            "pgqueuer",
            "procrastinate",
            "huey",
            "asyncpg",
            "uvloop",
        ):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                self.versions[package] = importlib.metadata.version(package)
        import sqlite3

        self.versions["sqlite"] = sqlite3.sqlite_version
        for backend in backends:
            if backend == "sqlite":
                continue
            engine = sa.create_engine(self.urls[backend])
            try:
                with engine.connect() as conn:
                    self.versions[backend] = str(conn.exec_driver_sql("SELECT version()").scalar())
            finally:
                engine.dispose()

    def _cleanup(self) -> None:
        for system in self.systems.values():
            with contextlib.suppress(Exception):
                system.drop()
            with contextlib.suppress(Exception):
                system.close()
        for path in self.workdir.glob("*"):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.workdir.rmdir()

    def _report(self, started: datetime) -> dict[str, Any]:
        figures = list(self.figures.values())
        config = asdict(self.config)
        config["urls"] = {b: make_url(u).render_as_string(hide_password=True) for b, u in self.urls.items()}
        return {
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "label": self.config.label,
            "machine": machine_description(),
            "versions": self.versions,
            "config": config,
            "skipped": self.skipped,
            "errors": self.errors,
            "figures": [f.as_dict() for f in figures],
            "ratios": compute_ratios(self.figures),
            "checks": compute_checks(self.figures),
        }


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def machine_description() -> dict[str, Any]:
    """CPU, cores, memory, OS and Python of this machine."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------
# Ratios, checks, output
# ----------------------------------------------------------------------------
def compute_ratios(figures: dict[tuple[str, str, str, str], Figure]) -> list[dict[str, Any]]:
    """polyqueue against every other system measured on the same scenario, variant and backend."""
    ratios = []
    for key, figure in figures.items():
        scenario, variant, backend, system = key
        if system != "polyqueue" or not figure.values:
            continue
        for (s2, v2, b2, other), peer in figures.items():
            if (s2, v2, b2) != (scenario, variant, backend) or other == "polyqueue" or not peer.values:
                continue
            if figure.higher_is_better:
                ratio = figure.median / peer.median if peer.median else float("inf")
            else:
                ratio = peer.median / figure.median if figure.median else float("inf")
            ratios.append(
                {
                    "scenario": scenario,
                    "variant": variant,
                    "backend": backend,
                    "vs": other,
                    "ratio": ratio,
                    "better_when": "> 1",
                }
            )
        if scenario == "drain":
            floor = figures.get(("select1", "round trips", backend, "SELECT 1"))
            if floor is not None and floor.values:
                ratios.append(
                    {
                        "scenario": scenario,
                        "variant": variant,
                        "backend": backend,
                        "vs": "SELECT 1 round trips/s",
                        "ratio": figure.median / floor.median,
                        "better_when": "jobs per round-trip time",
                    }
                )
    return ratios


def compute_checks(figures: dict[tuple[str, str, str, str], Figure]) -> list[dict[str, Any]]:
    """The reference targets, each met or not (or not measured in this run)."""
    checks = []
    for target in TARGETS:
        figure = figures.get(target["key"])
        value: float | None = None
        if figure is not None and figure.values:
            value = figure.median
            if target["kind"] == "ratio":
                other = figures.get(target["vs"])
                value = value / other.median if other is not None and other.values and other.median else None
        if value is None:
            met = None
        elif "at_least" in target:
            met = value >= target["at_least"]
        else:
            met = value <= target["at_most"]
        checks.append({"target": target["what"], "value": value, "met": met})
    return checks


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or value != value:
        return "-"
    if unit in ("ms", "x", "%", "statements/s") or abs(value) < 100:
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def render_table(report: dict[str, Any]) -> Any:
    """A rich table of every figure with its ratio to the naive loop."""
    from rich.table import Table

    table = Table(
        title=f"polyqueue bench {report.get('label') or ''} (median of {report['config']['repetitions']}, min-max)"
    )
    for column in ("scenario", "variant", "backend", "system"):
        table.add_column(column)
    table.add_column("median", justify="right")
    table.add_column("min-max", justify="right")
    table.add_column("unit")
    table.add_column("polyqueue vs this", justify="right")
    ratios = {(r["scenario"], r["variant"], r["backend"], r["vs"]): r["ratio"] for r in report["ratios"]}
    for f in report["figures"]:
        ratio = ratios.get((f["scenario"], f["variant"], f["backend"], f["system"]))
        table.add_row(
            f["scenario"],
            f["variant"],
            f["backend"],
            f["system"],
            _fmt(f["median"], f["unit"]),
            f"{_fmt(f['min'], f['unit'])}-{_fmt(f['max'], f['unit'])}",
            f["unit"],
            f"{ratio:,.2f}x" if ratio is not None else "",
        )
    return table


def render_checks(report: dict[str, Any]) -> Any:
    """A rich table of the reference targets."""
    from rich.table import Table

    table = Table(title="reference targets")
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("met")
    for check in report["checks"]:
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "[dim]not measured[/]"}[check["met"]]
        table.add_row(check["target"], _fmt(check["value"]), met)
    return table


def _output_base(directory: Path) -> Path:
    """``directory/<date>`` (``<date>-2``, ``-3``... when taken), without suffix."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    base = directory / stamp
    suffix = itertools.count(2)
    while base.with_suffix(".json").exists():
        base = directory / f"{stamp}-{next(suffix)}"
    return base


def write_outputs(
    report: dict[str, Any], directory: Path, *, chart: bool = True, base: Path | None = None
) -> list[Path]:
    """``<date>.json`` (and ``<date>.png`` when matplotlib is installed) in ``directory`` (or at ``base``)."""
    base = base.with_suffix("") if base is not None else _output_base(directory)
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths = [json_path]
    if chart and _importable("matplotlib"):
        png = base.with_suffix(".png")
        draw_chart(report, png)
        paths.append(png)
    return paths


def draw_chart(report: dict[str, Any], path: Path) -> None:
    """Bars (median, min-max whiskers) per scenario variant, one colour per system, log scale for rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in report["figures"]:
        if f["scenario"] in ("history", "memory") and f["unit"] in ("x", "%"):
            continue
        panels.setdefault((f["scenario"], f["unit"]), []).append(f)
    if not panels:
        return
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    systems = sorted({f["system"] for f in report["figures"]})
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(systems)}
    for ax, ((scenario, unit), figures) in zip(axes.flat, sorted(panels.items()), strict=False):
        labels = [f"{f['backend']}\n{f['variant']}\n{f['system']}" for f in figures]
        medians = [f["median"] for f in figures]
        lows = [max(0.0, f["median"] - f["min"]) for f in figures]
        highs = [max(0.0, f["max"] - f["median"]) for f in figures]
        ax.bar(
            range(len(figures)), medians, yerr=[lows, highs], color=[colours[f["system"]] for f in figures], capsize=3
        )
        ax.set_xticks(range(len(figures)))
        ax.set_xticklabels(labels, fontsize=6, rotation=90)
        ax.set_title(f"{scenario} ({unit})", fontsize=10)
        if unit.endswith("/s") and min(medians) > 0 and max(medians) / max(min(medians), 1e-9) > 20:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[s]) for s in systems]
    fig.legend(handles, systems, loc="upper right", ncol=len(systems))
    fig.suptitle(
        f"polyqueue bench {report['started']} - {report['machine']['cpu']}, {report['machine']['cores']} cores"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    import logging

    previous = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.root.setLevel(previous)


def run_bench(config: BenchConfig | None = None, *, console: Any = None, **options: Any) -> dict[str, Any]:
    """Run the benchmarks and return the report (also printed, and written to ``output_dir``).

    ``options`` are the fields of :class:`BenchConfig` (``backends``,
    ``scenarios``, ``repetitions``, sizes, ``baselines``, ``urls``,
    ``output_dir``, ``chart``...), overriding ``config``. Raises
    :class:`BenchError` when a scenario cannot run or a drain fails its
    exactly-once verification.
    """
    base = asdict(config) if config is not None else {}
    unknown = set(options) - set(BenchConfig.__dataclass_fields__)
    if unknown:
        raise BenchError(f"unknown bench option(s): {', '.join(sorted(unknown))}")
    merged = {**base, **{k: v for k, v in options.items() if v is not None}}
    for key in ("backends", "scenarios", "baselines", "processes", "memory_jobs"):
        if key in merged and not isinstance(merged[key], tuple):
            merged[key] = tuple(merged[key])
    cfg = BenchConfig(**merged)
    if cfg.repetitions < 1:
        raise BenchError("repetitions must be at least 1")
    with _quiet_logs():
        return Bench(cfg, console=console).run()


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (``polyqueue bench ARGS``): parse ``argv``, run, return the exit status."""
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="polyqueue bench", description="Benchmark polyqueue against the naive job_queue loop and its peers."
    )
    parser.add_argument("--backends", type=_csv, default=BACKENDS, help=f"comma-separated, from {','.join(BACKENDS)}")
    parser.add_argument(
        "--scenarios", type=_csv, default=SCENARIOS, help=f"comma-separated, from {','.join(SCENARIOS)}"
    )
    parser.add_argument("--baselines", type=_csv, default=defaults.baselines, help="naive,pgqueuer,procrastinate,huey")
    parser.add_argument("-r", "--repetitions", type=int, default=defaults.repetitions)
    parser.add_argument("--bulk-jobs", type=int, default=defaults.bulk_jobs)
    parser.add_argument("--single-jobs", type=int, default=defaults.single_jobs)
    parser.add_argument("--drain-jobs", type=int, default=defaults.drain_jobs)
    parser.add_argument("--slow-drain-jobs", type=int, default=None, help="drain size for naive and procrastinate")
    parser.add_argument("--processes", type=lambda t: tuple(int(p) for p in _csv(t)), default=defaults.processes)
    parser.add_argument("--latency-rate", type=float, default=defaults.latency_rate)
    parser.add_argument("--latency-seconds", type=float, default=defaults.latency_seconds)
    parser.add_argument("--idle-seconds", type=float, default=defaults.idle_seconds)
    parser.add_argument("--history-rows", type=int, default=defaults.history_rows)
    parser.add_argument("--history-jobs", type=int, default=defaults.history_jobs)
    parser.add_argument(
        "--memory-jobs",
        type=lambda t: tuple(int(p) for p in _csv(t)),
        default=defaults.memory_jobs,
        help="SMALL,LARGE: worker RSS after SMALL jobs and after LARGE",
    )
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--output-dir", default=defaults.output_dir)
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition: a smoke run of every scenario")
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("no_chart", "quick")}
    options["chart"] = not args.no_chart
    if args.quick:
        options.update(
            repetitions=1,
            bulk_jobs=2000,
            single_jobs=200,
            drain_jobs=2000,
            slow_drain_jobs=1000,
            latency_seconds=2,
            idle_seconds=3,
            history_rows=20_000,
            history_jobs=1000,
            memory_jobs=(1000, 5000),
            label=args.label or "quick run",
        )
    try:
        report = run_bench(**options)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for error in report["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if report["errors"] else 0
