"""Show how a worker's claim is planned on each SQL backend with 20 job types in one queue and 1M finished rows.

    python benchmarks/claim_plans.py [--finished 1000000] [--out docs/claim-plans.md] [URL ...]

For each backend (default: a SQLite file, and the local PostgreSQL and MariaDB
test servers) it fills a fresh table prefix with ``--finished`` done rows spread
over 20 job types, 2,500 ready jobs of each of those types, and 50,000 ready jobs
of a 21st type the worker does not handle; then it records the statements a
``Worker`` handling the 20 types sends for one claim of 100 jobs, the plan
the server makes for them, and the median time of that claim. The tables are
dropped afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polyqueue
from polyqueue.backends.sql import SQLBackend
from polyqueue.testing import drop_schema, recorded_statements, server_url, unique_prefix

TYPES = [f"type_{n:02d}" for n in range(20)]
READY_PER_TYPE = 2_500
UNHANDLED = 50_000


def fill(q: polyqueue.Queue, finished: int) -> None:
    """Finished history, ready jobs of the 20 handled types, and a backlog of an unhandled type."""
    backend = q.backend
    assert isinstance(backend, SQLBackend)
    table = backend.jobs.name
    dialect = backend.engine.dialect.name
    with backend.engine.begin() as conn:
        if dialect == "postgresql":
            conn.exec_driver_sql(
                f'INSERT INTO "{table}" (queue, job_type, payload, priority, status, attempts, max_attempts, '
                "run_at, created_at, finished_at, lease_token) "
                "SELECT 'default', 'type_' || lpad(mod(g, 20)::text, 2, '0'), '{}', 0, 'done', 1, 5, now(), now(), "
                f"now(), 1 FROM generate_series(1, {finished}) AS g"
            )
        else:
            conn.exec_driver_sql("CREATE TEMPORARY TABLE pq_plan_digits (d INTEGER)")
            conn.exec_driver_sql("INSERT INTO pq_plan_digits VALUES " + ",".join(f"({d})" for d in range(1000)))
            sqlite_now = "((julianday('now') - 2440587.5) * 86400.0)"
            now = "UTC_TIMESTAMP(6)" if dialect in ("mysql", "mariadb") else sqlite_now
            label = "CONCAT('type_', LPAD(MOD(a.d * 1000 + b.d, 20), 2, '0'))" if dialect != "sqlite" else (
                "'type_' || substr('0' || ((a.d * 1000 + b.d) % 20), -2)"
            )
            conn.exec_driver_sql(
                f"INSERT INTO {table} (queue, job_type, payload, priority, status, attempts, max_attempts, run_at, "
                f"created_at, finished_at, lease_token) SELECT 'default', {label}, '{{}}', 0, 'done', 1, 5, {now}, "
                f"{now}, {now}, 1 FROM pq_plan_digits a CROSS JOIN pq_plan_digits b WHERE a.d * 1000 + b.d < {finished}"
            )
            conn.exec_driver_sql("DROP TABLE pq_plan_digits")
    q.enqueue_many([{"job_type": t, "payload": {"n": n}} for t in TYPES for n in range(READY_PER_TYPE)])
    for start in range(0, UNHANDLED, 10_000):
        q.enqueue_many([{"job_type": "legacy", "payload": {"n": n}} for n in range(start, start + 10_000)])
    with backend.engine.begin() as conn:
        if dialect == "postgresql":
            conn.exec_driver_sql(f'ANALYZE "{table}"')
        elif dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql(f"ANALYZE TABLE `{table}`").all()
        else:
            conn.exec_driver_sql("ANALYZE")


def explain(backend: SQLBackend, statement: str, parameters: Any) -> str:
    """The server's plan of one recorded statement (PostgreSQL: executed, in a transaction rolled back)."""
    dialect = backend.engine.dialect.name
    with backend.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            if dialect == "postgresql":
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) " + statement, parameters)
            elif dialect == "sqlite":
                cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            else:
                cursor.execute("EXPLAIN " + statement, parameters)
            rows = cursor.fetchall()
            columns = [d[0] for d in cursor.description or ()]
        finally:
            cursor.close()
            raw.rollback()
    if dialect == "postgresql":
        return "\n".join(r[0] for r in rows)
    if dialect == "sqlite":
        return "\n".join(f"{r[-1]}" for r in rows)
    keep = [c for c in ("id", "select_type", "table", "type", "key", "rows", "Extra") if c in columns]
    lines = [" | ".join(keep)]
    for row in rows:
        record = dict(zip(columns, row, strict=True))
        lines.append(" | ".join(str(record[c]) for c in keep))
    return "\n".join(lines)


def claim_timing(q: polyqueue.Queue, rounds: int = 15) -> float:
    """Median milliseconds of one typed claim of 100 jobs (each round gives its jobs back)."""
    session = q.consumer_session("plan-worker")
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        jobs = session.claim(["default"], limit=100, lease=60, job_types=frozenset(TYPES))
        times.append((time.perf_counter() - started) * 1000)
        assert len(jobs) == 100 and {j.job_type for j in jobs} <= set(TYPES)
        session.release(jobs)
    return statistics.median(times)


def report(url: str, finished: int) -> str:
    q = polyqueue.connect(url, table_prefix=unique_prefix())
    q.migrate()
    backend = q.backend
    assert isinstance(backend, SQLBackend)
    try:
        started = time.perf_counter()
        fill(q, finished)
        filled = time.perf_counter() - started
        with recorded_statements(backend.jobs.name) as sent:
            jobs = q.consumer_session("plan-worker").claim(
                ["default"], limit=100, lease=60, job_types=frozenset(TYPES)
            )
        q.consumer_session("plan-worker").release(jobs)
        version = backend.server_version()
        out = [
            f"## {backend.engine.dialect.name} {version}",
            "",
            f"{finished:,} finished rows, {len(TYPES) * READY_PER_TYPE:,} ready jobs of the 20 handled types, "
            f"{UNHANDLED:,} ready jobs of an unhandled type (filled in {filled:.0f} s). "
            f"A claim of 100 jobs by a worker handling the 20 types sends {len(sent)} statement(s); "
            f"median {claim_timing(q):.2f} ms over 15 claims.",
            "",
        ]
        for n, (statement, parameters) in enumerate(sent, 1):
            plan = explain(backend, statement, parameters)
            shown = statement if len(statement) < 1500 else statement[:1500] + " …"
            out += [f"### Statement {n}", "", "```sql", shown.strip(), "```", "", "```text", plan, "```", ""]
        return "\n".join(out)
    finally:
        drop_schema(q)
        q.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("urls", nargs="*", help="queue URLs (default: a SQLite file and the local test servers)")
    parser.add_argument("--finished", type=int, default=1_000_000, help="finished rows in the history")
    parser.add_argument("--out", default="-", help="Markdown file to write (default: standard output)")
    args = parser.parse_args(argv)
    urls = args.urls or [
        f"sqlite:///{Path('claim_plans.db').resolve()}",
        server_url("postgresql"),
        server_url("mysql"),
    ]
    sections = [
        "# How a worker's claim is planned",
        "",
        f"Made by `python benchmarks/claim_plans.py --finished {args.finished}` on "
        f"{datetime.now(UTC):%Y-%m-%d}. Each backend's typed claim reads the ready index led by "
        "(queue, job_type), one ordered range per handled type, and never reads finished rows or the "
        "backlog of the type no worker of this kind handles.",
        "",
    ]
    for url in urls:
        print(f"planning {url.split('@')[-1]}", file=sys.stderr)
        sections.append(report(url, args.finished))
    text = "\n".join(sections)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    for url in urls:
        if url.startswith("sqlite:///"):
            for suffix in ("", "-wal", "-shm"):
                Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
