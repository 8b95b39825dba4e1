"""Schema version 6 on a table made by version 5: ``migrate`` adds the runtime-control columns and keeps every job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import polyqueue
from polyqueue.backends.sql import SCHEMA_VERSION

MakeQueue = Callable[..., polyqueue.Queue]
NEW_COLUMNS = ("headers", "timeout", "cancel_requested")


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request: pytest.FixtureRequest) -> str:
    """Each SQL backend."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url"))


def columns(backend: Any) -> set[str]:
    with backend.engine.connect() as conn:
        return {c["name"] for c in sa.inspect(conn).get_columns(backend.jobs.name)}


@pytest.mark.parametrize("interrupted", [False, True], ids=["from-5", "interrupted-upgrade"])
def test_migrating_a_version_5_table_adds_the_columns_and_keeps_the_jobs(
    fresh_queue: MakeQueue, url: str, interrupted: bool
) -> None:
    q = fresh_queue(url)
    backend: Any = q.backend
    waiting, running = q.enqueue("old", {"n": 1}), q.enqueue("old", {"n": 2})
    (claimed,) = q.claim(job_types=["old"])
    assert claimed.id == waiting
    quote = "`" if backend.name == "mysql" else '"'
    gone = NEW_COLUMNS[1:] if interrupted else NEW_COLUMNS
    with backend.engine.begin() as conn:
        for name in gone:
            conn.exec_driver_sql(f"ALTER TABLE {quote}{backend.jobs.name}{quote} DROP COLUMN {name}")
        conn.execute(sa.update(backend.schema_table).values(version=5))
    assert not set(gone) & columns(backend)

    q.migrate()
    assert set(NEW_COLUMNS) <= columns(backend)
    with backend.engine.connect() as conn:
        assert conn.execute(sa.select(backend.schema_table.c.version)).scalar() == SCHEMA_VERSION
    q.migrate()  # idempotent

    old = q.require(running)
    assert (old.payload, old.headers, old.timeout, old.cancel_requested) == ({"n": 2}, {}, None, False)
    assert q.cancel(claimed.id) is True, "a job claimed under version 5 can be cancelled while running"
    assert q.require(claimed.id).cancel_requested
    new = q.enqueue("new", headers={"tenant": "acme"}, timeout=5)
    assert (q.require(new).headers, q.require(new).timeout) == ({"tenant": "acme"}, 5.0)
