"""Schema version 8 on tables made by version 7: ``migrate`` adds the queue settings table and the concurrency key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import polyqueue
from polyqueue.backends.sql import SCHEMA_VERSION

MakeQueue = Callable[..., polyqueue.Queue]


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request: pytest.FixtureRequest) -> str:
    """Each SQL backend."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url"))


def test_migrating_a_version_7_schema_adds_settings_and_keys_and_keeps_the_jobs(
    fresh_queue: MakeQueue, url: str
) -> None:
    q = fresh_queue(url)
    backend: Any = q.backend
    waiting = q.enqueue("old", {"n": 1})
    quote = "`" if backend.name == "mysql" else '"'
    jobs, running = f"{quote}{backend.jobs.name}{quote}", f"{quote}{backend.prefix}jobs_running{quote}"
    with backend.engine.begin() as conn:  # what version 7 made: no running index, no key, no settings table
        on_table = f" ON {jobs}" if backend.name == "mysql" else ""
        conn.exec_driver_sql(f"DROP INDEX {running}{on_table}")
        conn.exec_driver_sql(f"ALTER TABLE {jobs} DROP COLUMN concurrency_key")
        backend.queues_table.drop(conn)
        conn.execute(sa.update(backend.schema_table).values(version=7))

    q.migrate()
    with backend.engine.connect() as conn:
        assert conn.execute(sa.select(backend.schema_table.c.version)).scalar() == SCHEMA_VERSION == 8
        assert "concurrency_key" in {c["name"] for c in sa.inspect(conn).get_columns(backend.jobs.name)}
        assert f"{backend.prefix}jobs_running" in {i["name"] for i in sa.inspect(conn).get_indexes(backend.jobs.name)}
    q.migrate()  # idempotent
    assert q.get(waiting).status == "pending"  # type: ignore[union-attr]
    q.set_limits("default", per_key=1)
    q.enqueue_many([{"job_type": "new", "concurrency_key": "k"} for _ in range(2)])
    claimed = q.claim(limit=5)
    assert sorted(j.concurrency_key or "-" for j in claimed) == ["-", "k"]
