"""Schema version 5 on a table made by version 4: ``migrate`` adds the columns and indexes, and keeps every job.

The version-4 table is made the way version 4 left it: the current schema
with the four new columns, their indexes and the new dedupe rule taken back
out. Jobs written in that shape are then migrated and used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import polyqueue
from polyqueue.backends.base import ExportQuery
from polyqueue.backends.sql import SCHEMA_VERSION

MakeQueue = Callable[..., polyqueue.Queue]
NEW_COLUMNS = ("dedupe_for", "dedupe_held_until", "enqueue_token", "import_key")
OLD_LIVE_RULE = "dedupe_key IS NOT NULL AND status IN ('pending', 'processing')"
NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "now()",
    "mysql": "UTC_TIMESTAMP(6)",
}


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request: pytest.FixtureRequest) -> str:
    """Each SQL backend."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url"))


def columns(backend: Any) -> set[str]:
    with backend.engine.connect() as conn:
        return {c["name"] for c in sa.inspect(conn).get_columns(backend.jobs.name)}


def indexes(backend: Any) -> set[str]:
    with backend.engine.connect() as conn:
        return {i["name"] for i in sa.inspect(conn).get_indexes(backend.jobs.name)}


def make_version_4(backend: Any, kind: str, keep: tuple[str, ...] = ()) -> None:
    """Turn a fresh table into what version 4 made (``keep``: columns an interrupted upgrade already added)."""
    table, prefix = backend.jobs.name, backend.prefix
    gone = [name for name in NEW_COLUMNS if name not in keep]
    with backend.engine.begin() as conn:
        if kind == "mysql":
            conn.exec_driver_sql(
                f"ALTER TABLE `{table}` MODIFY COLUMN live_dedupe_key VARCHAR(255) "
                "AS (CASE WHEN status IN ('pending', 'processing') THEN dedupe_key END) VIRTUAL"
            )
            conn.exec_driver_sql(f"ALTER TABLE `{table}` " + ", ".join(f"DROP COLUMN {name}" for name in gone))
        else:
            for name in ("jobs_enqueue_token", "jobs_import_key", "jobs_dedupe"):
                conn.exec_driver_sql(f'DROP INDEX "{prefix}{name}"')
            conn.exec_driver_sql(
                f'CREATE UNIQUE INDEX "{prefix}jobs_dedupe" ON "{table}" (queue, dedupe_key) WHERE {OLD_LIVE_RULE}'
            )
            for name in gone:
                conn.exec_driver_sql(f'ALTER TABLE "{table}" DROP COLUMN {name}')
        conn.execute(sa.update(backend.schema_table).values(version=4))
        quote = "`" if kind == "mysql" else '"'
        now = NOW[kind]
        for payload, status, key in (('{"old": 1}', "pending", "live-key"), ('{"old": 2}', "done", "done-key")):
            conn.exec_driver_sql(
                f"INSERT INTO {quote}{table}{quote} (queue, job_type, payload, priority, status, attempts, "
                f"max_attempts, run_at, created_at, finished_at, lease_token, dedupe_key) VALUES ('default', 'old', "
                f"'{payload}', 0, '{status}', 0, 5, {now}, {now}, {'NULL' if status == 'pending' else now}, 0, "
                f"'{key}')"
            )


@pytest.mark.parametrize("interrupted", [False, True], ids=["from-4", "interrupted-upgrade"])
def test_migrating_a_version_4_table_adds_the_new_columns_and_keeps_the_jobs(
    fresh_queue: MakeQueue, url: str, interrupted: bool
) -> None:
    q = fresh_queue(url)
    backend: Any = q.backend
    kind = backend.name
    make_version_4(backend, kind, keep=("dedupe_for",) if interrupted else ())
    assert not set(NEW_COLUMNS[1:]) & columns(backend)
    q.migrate()
    assert set(NEW_COLUMNS) <= columns(backend)
    if kind != "mysql":
        assert {f"{backend.prefix}jobs_enqueue_token", f"{backend.prefix}jobs_import_key"} <= indexes(backend)
    with backend.engine.connect() as conn:
        assert conn.execute(sa.select(backend.schema_table.c.version)).scalar() == SCHEMA_VERSION
    q.migrate()  # idempotent

    (old_live,) = [r.id for r in q.backend.export_jobs(ExportQuery(frozenset({"pending"})))]
    assert q.require(old_live).payload == {"old": 1}
    assert q.enqueue("t", dedupe_key="live-key") == old_live, "a live key of version 4 is still held"
    assert q.enqueue("t", dedupe_key="done-key") != old_live, "a finished job of version 4 holds nothing"
    held = q.enqueue("t", {"new": True}, dedupe_key="held", dedupe_for=3600)
    for job in q.claim(job_types=["t", "old"], limit=10):
        q.complete(job)
    assert q.enqueue("t", dedupe_key="held") == held, "dedupe_for works on the migrated table"
    assert q.enqueue("t", dedupe_key="live-key") != old_live, "the old job, done, let its key go"
    ids = q.enqueue_many([{"job_type": "bulk", "payload": n} for n in range(300)])
    assert len(set(ids)) == 300 and q.require(ids[-1]).payload == 299

