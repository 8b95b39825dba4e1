"""Benchmark of the Redis depth cache: idle database load, wake-up latency, and depth() against COUNT(*).

Standalone, apart from ``polyqueue bench``: ``python -m polyqueue_bench.depth_cache [--only idle,latency,depth]``.

* idle: N idle worker processes on MariaDB for S seconds, without and with the
  cache; statements reaching the server per worker per second, from
  ``SHOW GLOBAL STATUS LIKE 'Questions'`` deltas minus the measuring queries.
* latency: enqueue -> handler-start, one worker process (wall clock on one
  host), jobs enqueued one at a time with idle gaps, on MariaDB and SQLite,
  with and without the cache.
* depth: ``Queue.depth()`` (cached) against the exact count (``depth(exact=True)``,
  a ``COUNT(*)`` over the ready index) and a plain ``COUNT(*)`` of pending rows,
  with 1,000,000 finished and 100,000 pending rows on MariaDB and SQLite.

MariaDB runs as a private server (``mariadb-install-db`` + ``mariadbd`` on a
free port, default durability) so no other client's statements are counted;
``--mysql-url`` uses an existing server instead. Redis is ``--redis-url``
(default: database 15 of the local server; keys are namespaced and removed).
Figures are medians of several windows or samples; the JSON report goes to
``--json`` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polyqueue
from polyqueue.testing import drop_schema

#: How the worker subprocesses start: this module again, with ``--worker``.
WORKER_COMMAND = [sys.executable, "-m", "polyqueue_bench.depth_cache", "--worker"]


# --- a private MariaDB ------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_mariadb() -> Iterator[str]:
    """A throwaway mariadbd on a free loopback port; yields its SQLAlchemy URL."""
    root = Path(tempfile.mkdtemp(prefix="polyqueue-bench-mariadb-"))
    port = _free_port()
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={root / 'data'}",
         "--auth-root-authentication-method=normal", "--skip-test-db", *as_root],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    server = subprocess.Popen(
        ["mariadbd", "--no-defaults", f"--datadir={root / 'data'}", f"--port={port}", "--bind-address=127.0.0.1",
         f"--socket={root / 'sock'}", f"--log-error={root / 'err.log'}", "--skip-log-bin", "--skip-name-resolve",
         "--innodb-buffer-pool-size=256M", "--max-connections=300", *as_root],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import pymysql

        deadline = time.monotonic() + 60
        while True:
            try:
                conn = pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True)
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE test CHARACTER SET utf8mb4")
        conn.close()
        yield f"mysql+pymysql://root@127.0.0.1:{port}/test"
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)


class QuestionCounter:
    """``Questions`` of a MariaDB server, read over one connection of our own."""

    def __init__(self, url: str) -> None:
        import pymysql
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.conn = pymysql.connect(
            host=parsed.host, port=parsed.port or 3306, user=parsed.username, password=parsed.password or "",
            autocommit=True,
        )  # fmt: skip
        # What one reading adds to the counter itself (measured, not assumed).
        first, second = self.read_raw(), self.read_raw()
        self.own_cost = second - first

    def read_raw(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            return int(cur.fetchone()[1])

    def close(self) -> None:
        self.conn.close()


# --- worker processes -----------------------------------------------------------------
def worker_process(url: str, cache: str, prefix: str, concurrency: int) -> None:
    """Entry point of a worker subprocess: run until SIGTERM; handlers return their start time."""
    options: dict[str, Any] = {"table_prefix": prefix}
    if cache:
        options["depth_cache"] = cache
    with polyqueue.connect(url, **options) as q:
        worker = polyqueue.Worker(q, concurrency=concurrency)
        worker.register("stamp", lambda job: time.time())
        worker.run()


def start_workers(
    url: str, cache: str | None, prefix: str, count: int, concurrency: int
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [*WORKER_COMMAND, url, cache or "", prefix, str(concurrency)],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def fresh_queue(url: str, cache: str | None) -> polyqueue.Queue:
    options: dict[str, Any] = {"table_prefix": f"pqb_{uuid.uuid4().hex[:8]}_"}
    if cache:
        options["depth_cache"] = cache
    q = polyqueue.connect(url, **options)
    q.migrate()
    return q


def drop(q: polyqueue.Queue) -> None:
    drop_schema(q)  # a test-only operation since the SPI split (polyqueue.testing)
    q.close()


# --- the measurements -------------------------------------------------------------------
def idle_statements(url: str, cache: str | None, workers: int, seconds: float, windows: int = 3) -> dict[str, Any]:
    """Statements per worker per second reaching MariaDB from ``workers`` idle worker processes."""
    q = fresh_queue(url, cache)
    counter = QuestionCounter(url)
    procs = start_workers(url, cache, q.options["table_prefix"], workers, 4)
    try:
        time.sleep(6.0)  # start-up: imports, connections, first claims and probes
        rates = []
        span = seconds / windows
        for _ in range(windows):
            before = counter.read_raw()
            time.sleep(span)
            after = counter.read_raw()
            rates.append((after - before - counter.own_cost) / span / workers)
    finally:
        stop_workers(procs)
        counter.close()
        drop(q)
    return {"per_worker_per_s": statistics.median(rates), "windows": rates, "seconds": seconds, "workers": workers}


def wakeup_latency(url: str, cache: str | None, samples: int) -> dict[str, Any]:
    """Enqueue -> handler start (ms) for jobs enqueued one at a time onto an idle worker process."""
    q = fresh_queue(url, cache)
    procs = start_workers(url, cache, q.options["table_prefix"], 1, 4)
    sent: dict[Any, float] = {}
    enqueue_ms = []
    try:
        time.sleep(4.0)
        for _ in range(samples):
            time.sleep(random.uniform(0.05, 0.3))  # idle gaps: the worker is waiting each time
            t0 = time.time()
            job_id = q.enqueue("stamp")
            enqueue_ms.append((time.time() - t0) * 1000)
            sent[job_id] = t0
        deadline = time.monotonic() + 30
        while q.stats()["done"] < samples and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop_workers(procs)
    latencies = []
    for job_id, t0 in sent.items():
        job = q.get(job_id)
        if job is not None and job.result is not None:
            latencies.append((float(job.result) - t0) * 1000)
    drop(q)
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies),
        "p90_ms": latencies[int(len(latencies) * 0.9) - 1],
        "enqueue_p50_ms": statistics.median(enqueue_ms),
        "samples": len(latencies),
    }


FILL_FINISHED = {
    "mysql": (
        "INSERT INTO {t} (queue, job_type, payload, priority, status, attempts, max_attempts, run_at, created_at, "
        "finished_at, lease_token) SELECT 'default', 'bench', '{{}}', 0, 'done', 1, 5, UTC_TIMESTAMP(6), "
        "UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), 0 FROM seq_1_to_{n}"
    ),
    "sqlite": (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) "
        "INSERT INTO {t} (queue, job_type, payload, priority, status, attempts, max_attempts, run_at, created_at, "
        "finished_at, lease_token) SELECT 'default', 'bench', '{{}}', 0, 'done', 1, 5, "
        "(julianday('now') - 2440587.5) * 86400.0, (julianday('now') - 2440587.5) * 86400.0, "
        "(julianday('now') - 2440587.5) * 86400.0, 0 FROM c"
    ),
}


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def depth_speed(url: str, cache: str, finished: int, pending: int) -> dict[str, Any]:
    """Cached depth() against the exact count and a plain COUNT(*), on a table with history."""
    import sqlalchemy as sa

    q = fresh_queue(url, cache)
    try:
        inner = q.backend.inner  # type: ignore[attr-defined]
        table = inner.jobs.name
        dialect = "sqlite" if url.startswith("sqlite") else "mysql"
        t0 = time.perf_counter()
        with inner.engine.begin() as conn:
            conn.exec_driver_sql(FILL_FINISHED[dialect].format(t=table, n=finished))
        for start in range(0, pending, 5000):
            q.enqueue_many([{"job_type": "bench"} for _ in range(min(5000, pending - start))])
        fill_s = time.perf_counter() - t0
        with inner.engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE TABLE {table}" if dialect == "mysql" else "ANALYZE")
        exact = q.depth(exact=True)
        cached = q.depth()
        plain = sa.text(f"SELECT COUNT(*) FROM {table} WHERE status = 'pending'")

        def plain_count() -> int:
            with inner.engine.connect() as conn:
                return int(conn.execute(plain).scalar_one())

        plain_count()
        cached_s = timed(q.depth, 2000)
        exact_s = timed(lambda: q.depth(exact=True), 15)
        plain_s = timed(plain_count, 15)
    finally:
        drop(q)
    return {
        "finished_rows": finished,
        "pending_rows": pending,
        "fill_s": fill_s,
        "cached_depth": cached,
        "exact_depth": exact,
        "cached_us": cached_s * 1e6,
        "exact_count_ms": exact_s * 1000,
        "plain_count_ms": plain_s * 1000,
        "speedup_vs_exact": exact_s / cached_s,
        "speedup_vs_plain_count": plain_s / cached_s,
    }


# --- driver ------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", default="idle,latency,depth", help="comma-separated: idle, latency, depth")
    parser.add_argument("--mysql-url", default=None, help="use this MariaDB/MySQL instead of a private server")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="idle measurement per configuration")
    parser.add_argument("--samples", type=int, default=60, help="latency samples per configuration")
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    results: dict[str, Any] = {}

    def report(name: str, value: dict[str, Any]) -> None:
        results[name] = value
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in value.items() if k != "windows"}
        print(f"{name:36s} {shown}", flush=True)

    with private_mariadb() if args.mysql_url is None else _given(args.mysql_url) as mysql_url:
        sqlite_dir = Path(tempfile.mkdtemp(prefix="polyqueue-bench-sqlite-"))
        try:
            if "idle" in parts:
                base = idle_statements(mysql_url, None, args.workers, args.seconds)
                report("idle mariadb, no cache", base)
                cached = idle_statements(mysql_url, args.redis_url, args.workers, args.seconds)
                report("idle mariadb, depth cache", cached)
                ratio = base["per_worker_per_s"] / max(cached["per_worker_per_s"], 1e-9)
                report("idle statements ratio", {"fewer_with_cache_x": ratio})
            if "latency" in parts:
                for name, url in (("mariadb", mysql_url), ("sqlite", f"sqlite:///{sqlite_dir / 'latency.db'}")):
                    report(f"latency {name}, depth cache", wakeup_latency(url, args.redis_url, args.samples))
                    report(f"latency {name}, no cache", wakeup_latency(url, None, max(20, args.samples // 3)))
            if "depth" in parts:
                for name, url in (("mariadb", mysql_url), ("sqlite", f"sqlite:///{sqlite_dir / 'depth.db'}")):
                    report(f"depth {name}", depth_speed(url, args.redis_url, args.finished, args.pending))
        finally:
            shutil.rmtree(sqlite_dir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        worker_process(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
