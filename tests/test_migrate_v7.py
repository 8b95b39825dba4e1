"""Schema version 7 on a table made by version 6: ``migrate`` creates the listing indexes, and list_jobs pages."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

import polyqueue
from polyqueue.backends.sql import SCHEMA_VERSION, SQLBackend

LISTING = ("jobs_by_status", "jobs_by_queue_status")


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request: pytest.FixtureRequest) -> str:
    """Each SQL backend."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url"))


def test_version_6_gains_the_listing_indexes(url: str, fresh_queue: Callable[..., polyqueue.Queue]) -> None:
    q = fresh_queue(url)
    backend = q.backend
    assert isinstance(backend, SQLBackend)
    ids = q.enqueue_many([{"job_type": "t", "queue": "a"} for _ in range(5)])
    with backend.engine.begin() as conn:
        for index in backend.jobs.indexes:
            if index.name in {f"{backend.prefix}{name}" for name in LISTING}:
                index.drop(conn)
        conn.execute(sa.update(backend.schema_table).values(version=6))
    with backend.engine.connect() as conn:
        names = {i["name"] for i in sa.inspect(conn).get_indexes(backend.jobs.name)}
    assert not names & {f"{backend.prefix}{name}" for name in LISTING}
    q.migrate()
    with backend.engine.connect() as conn:
        names = {i["name"] for i in sa.inspect(conn).get_indexes(backend.jobs.name)}
        assert conn.execute(sa.select(backend.schema_table.c.version)).scalar() == SCHEMA_VERSION
    assert {f"{backend.prefix}{name}" for name in LISTING} <= names
    assert [j.id for j in q.list_jobs(queue="a", status="pending")] == ids[::-1]
