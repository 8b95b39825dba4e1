"""A worker's claim (some job types of a queue) is served by the ready index on every SQL backend.

With 20 job types, finished history and a backlog of a type the worker does
not handle, the server plans each handled type as an ordered range of
``jobs_ready`` and merges them; it never scans the table. (``python
benchmarks/claim_plans.py`` shows the same plans with 1M finished rows.)
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

import polyqueue
from polyqueue.backends.sql import SQLBackend
from polyqueue.testing import recorded_statements

TYPES = frozenset(f"type_{n:02d}" for n in range(20))


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def busy_queue(request: pytest.FixtureRequest, sqlite_url: str, fresh_queue: Any) -> polyqueue.Queue:
    """History, 20 handled types with ready jobs, and a backlog of an unhandled type."""
    if request.param == "sqlite":
        q: polyqueue.Queue = fresh_queue(sqlite_url)
    else:
        q = fresh_queue(request.getfixturevalue({"postgresql": "pg_url", "mysql": "mysql_url"}[request.param]))
    backend = q.backend
    assert isinstance(backend, SQLBackend)
    table, name = backend.jobs.name, backend.engine.dialect.name
    history = q.enqueue_many([{"job_type": t} for t in sorted(TYPES) for _ in range(1000)])
    with backend.engine.begin() as conn:  # 20,000 finished jobs of the same types
        conn.execute(sa.update(backend.jobs).values(status="done", finished_at=backend.now()))
    q.enqueue_many([{"job_type": t, "priority": n % 3} for t in sorted(TYPES) for n in range(30)])
    q.enqueue_many([{"job_type": "legacy"} for _ in range(3000)])
    with backend.engine.begin() as conn:
        analyze = {"postgresql": f'ANALYZE "{table}"', "sqlite": "ANALYZE"}.get(name, f"ANALYZE TABLE `{table}`")
        conn.exec_driver_sql(analyze)
    assert len(history) == 20_000
    return q


def _plan(backend: SQLBackend, statement: str, parameters: Any) -> str:
    prefix = {"postgresql": "EXPLAIN ", "sqlite": "EXPLAIN QUERY PLAN "}.get(backend.engine.dialect.name, "EXPLAIN ")
    with backend.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            cursor.execute(prefix + statement, parameters)
            rows = cursor.fetchall()
            columns = [d[0] for d in cursor.description or ()]
        finally:
            cursor.close()
            raw.rollback()
    if backend.engine.dialect.name in ("mysql", "mariadb"):
        return "\n".join(str(dict(zip(columns, row, strict=True))) for row in rows)
    return "\n".join(str(row[-1] if backend.engine.dialect.name == "sqlite" else row[0]) for row in rows)


def test_a_typed_claim_reads_only_the_ready_index(busy_queue: polyqueue.Queue) -> None:
    backend = busy_queue.backend
    assert isinstance(backend, SQLBackend)
    table, ready = backend.jobs.name, f"{backend.prefix}jobs_ready"
    with recorded_statements(table) as sent:
        jobs = busy_queue.claim(limit=100, job_types=TYPES)
    assert len(jobs) == 100 and {j.job_type for j in jobs} <= TYPES
    assert [j.priority for j in jobs] == [2] * 100
    dialect = backend.engine.dialect.name
    reads = [(s, p) for s, p in sent if "pending" in s or "job_type" in s]
    assert reads, sent
    plans = [_plan(backend, s, p) for s, p in reads]
    if dialect == "postgresql":
        assert len(sent) == 1, "a worker's claim is one statement on PostgreSQL"
        # The only other table read is the tiny per-queue settings table (flow control and pause).
        assert ready in plans[0] and f"Seq Scan on {table}" not in plans[0], plans[0]
    elif dialect == "sqlite":
        (plan,) = [p for p in plans if "MERGE" in p]
        assert plan.count(ready) == len(TYPES) and f"SCAN {table}" not in plan, plan
    else:
        (plan,) = [p for p in plans if "UNION" in p]
        # Besides one row per job type, each branch probes the per-queue settings table (flow control, pause).
        rows = [row for row in plan.splitlines() if f"'table': '{table}'" in row]
        assert len(rows) == len(TYPES) and all(f"'key': '{ready}'" in row for row in rows), plan
        assert "filesort" not in plan and "'type': 'ALL'" not in plan, plan
