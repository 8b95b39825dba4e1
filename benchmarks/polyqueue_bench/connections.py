"""Where the benchmarks connect: the servers' URLs, the dedicated benchmark database, plain driver connections."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from .config import BENCH_DATABASE


def default_url(backend: str, workdir: Path) -> str:
    """A SQLite file in ``workdir``, or the test server of ``backend`` (``POLYQUEUE_TEST_*_URL``)."""
    if backend == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}"
    from polyqueue.testing import server_url

    return server_url(backend)


def bench_database_url(url: str) -> str:
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


def dbapi_connect(url: str, *, autocommit: bool = False) -> Any:
    """A plain driver connection (psycopg, PyMySQL or sqlite3) for the naive loop, SELECT 1 and the idle probes."""
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


def pg_dsn(url: str) -> str:
    """A libpq DSN (for asyncpg, pgqueuer and procrastinate) from a SQLAlchemy URL."""
    parsed = make_url(url)
    auth = parsed.username or ""
    if parsed.password:
        auth += ":" + quote(str(parsed.password), safe="")
    return f"postgresql://{auth}@{parsed.host or '127.0.0.1'}:{parsed.port or 5432}/{parsed.database}"
