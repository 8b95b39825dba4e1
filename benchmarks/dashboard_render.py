"""Time the dashboard's overview and job-list pages over a PostgreSQL table with 1M finished jobs.

    python benchmarks/dashboard_render.py [--finished 1000000] [--rounds 3] [--json OUT] [URL]

It fills a fresh table prefix (on the local PostgreSQL test server unless a
URL is given) with ``--finished`` jobs that ended over the last 30 days --
done, with one in fifty dead, across 8 queues and 10 job types, 2,000 of
them in the last hour -- plus 2,000 pending jobs; vacuums and analyses it
like autovacuum would; then renders each page in-process (Starlette's test
client: routing, database reads, templates) ``--rounds`` times after one
warm-up and reports the median in milliseconds. The table is dropped
afterwards. The target is 200 ms per page.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from typing import Any

import polyqueue
from polyqueue.backends.sql import SQLBackend
from polyqueue.testing import drop_schema, server_url, unique_prefix

TARGET_MS = 200.0
QUEUES = 8
TYPES = 10


def fill(q: polyqueue.Queue, finished: int) -> None:
    """Finished history over 30 days (2,000 in the last hour), one in fifty dead, and 2,000 pending jobs."""
    backend = q.backend
    assert isinstance(backend, SQLBackend) and backend.engine.dialect.name == "postgresql"
    table = backend.jobs.name
    age = "CASE WHEN g <= 2000 THEN g * interval '1.7 second' ELSE g * interval '2.5 second' END"
    with backend.engine.begin() as conn:
        conn.exec_driver_sql(
            f'INSERT INTO "{table}" (queue, job_type, payload, priority, status, attempts, max_attempts, run_at, '
            "created_at, finished_at, lease_token, last_error, errors) "
            f"SELECT 'queue_' || mod(g, {QUEUES}), 'type_' || mod(g, {TYPES}), '{{\"n\": ' || g || '}}', 0, "
            "CASE WHEN mod(g, 50) = 0 THEN 'dead' ELSE 'done' END, 1, 5, "
            f"now() - ({age}) - interval '1 second', now() - ({age}) - interval '1 second', now() - ({age}), 1, "
            "CASE WHEN mod(g, 50) = 0 THEN 'ValueError: bad input' END, "
            'CASE WHEN mod(g, 50) = 0 THEN \'[{"attempt": 1, "error": "ValueError: bad input"}]\' END '
            f"FROM generate_series(1, {finished}) AS g"
        )
    for start in range(0, 2000, 1000):
        q.enqueue_many(
            [{"job_type": f"type_{n % TYPES}", "queue": f"queue_{n % QUEUES}"} for n in range(start, start + 1000)]
        )
    with backend.autocommit_engine().connect() as conn:
        conn.exec_driver_sql(f'VACUUM ANALYZE "{table}"')


def median_ms(client: Any, path: str, rounds: int) -> tuple[float, list[float]]:
    """One warm-up, then ``rounds`` timed GETs of ``path``; every answer must be 200."""
    assert client.get(path).status_code == 200
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(times), times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", nargs="?", default=None)
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="Also write the figures here.")
    parser.add_argument("--prefix", default=None, help="Table prefix: reused as filled when its table has jobs.")
    parser.add_argument("--keep", action="store_true", help="Keep the table afterwards (to look at plans).")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

    from polyqueue.web import DashboardSettings, create_app

    q = polyqueue.connect(args.url or server_url("postgresql"), table_prefix=args.prefix or unique_prefix())
    q.migrate()
    try:
        if not q.list_jobs(limit=1):
            started = time.perf_counter()
            fill(q, args.finished)
            print(f"filled {args.finished:,} finished + 2,000 pending jobs in {time.perf_counter() - started:.0f} s")
        dead = q.list_jobs(status="dead", limit=1)[0].id
        deep = q.list_jobs(status="done", queue="queue_3", limit=1)[0].id
        pages = {
            "overview": "/",
            "job list": "/jobs",
            "job list, dead": "/jobs?status=dead",
            "job list, queue + status + type": "/jobs?queue=queue_3&status=done&job_type=type_3",
            "job list, a page deep in history": f"/jobs?queue=queue_3&status=done&after={int(str(deep)) - 600_000}",
            "dead job": f"/jobs/{dead}",
        }
        results = {}
        with TestClient(create_app(q, DashboardSettings(refresh=0))) as client:
            for name, path in pages.items():
                median, times = median_ms(client, path, args.rounds)
                results[name] = {"path": path, "median_ms": round(median, 1), "runs_ms": [round(t, 1) for t in times]}
                verdict = "ok" if median <= TARGET_MS else "OVER TARGET"
                print(f"{name:36s} median {median:7.1f} ms  runs {', '.join(f'{t:.1f}' for t in times)}  {verdict}")
        if args.json:
            with open(args.json, "w") as out:
                json.dump({"finished": args.finished, "target_ms": TARGET_MS, "pages": results}, out, indent=2)
        return 0 if all(r["median_ms"] <= TARGET_MS for r in results.values()) else 1
    finally:
        if not args.keep:
            drop_schema(q)
        q.close()


if __name__ == "__main__":
    sys.exit(main())
