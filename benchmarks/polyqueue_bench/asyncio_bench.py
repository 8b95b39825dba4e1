"""Benchmark of polyqueue's asyncio support: async handlers drained by one worker process, and async enqueue.

Standalone, apart from ``polyqueue bench``: ``python -m polyqueue_bench.asyncio_bench [options]``.

* drain: ``--drain-jobs`` (10,000) jobs whose handler awaits
  ``asyncio.sleep(--sleep)`` (0.5 s), worked off by ONE worker process with
  ``concurrency`` ``--concurrency`` (500), through ``await worker.run_async(burst=True)``
  and through ``worker.run(burst=True)`` (the worker's own loop thread), at
  the default ``batch_size`` (= ``concurrency``; ``--batch-size`` to prefetch more). The
  time runs inside the worker process, from the start of the run to its
  return (imports, connecting and the enqueue are not timed); every drain is
  verified: as many handler calls as jobs and every job ``done``.
* enqueue: ``--enqueue-jobs`` (2,000) jobs from one event loop, one awaited
  ``AsyncQueue.enqueue`` after the other ("single", each its own transaction),
  against ``Queue.enqueue``; and in batches of ``--batch`` (100) through
  ``enqueue_many``. Each async figure is measured with every asyncio driver
  the backend can use (``async_driver=``): the thread bridge and the
  SQLAlchemy asyncio drivers that are installed. The configurations take
  turns call by call (see :func:`alternating_enqueue`), so that the machine's
  changing load falls on all of them alike. Also "concurrent": the same jobs
  enqueued by 32 tasks at once.

Servers as for ``polyqueue bench`` (the ``polyqueue_bench`` database of the
test servers, ``POLYQUEUE_TEST_*_URL``); SQLite is a file in a temporary
directory. Figures are medians (with min-max) of ``-r`` repetitions (3),
interleaved between configurations. ``--json`` writes the report.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .connections import bench_database_url, default_url

#: The asyncio drivers worth measuring per backend (``async_driver=`` values), with the module each needs.
DRIVERS: dict[str, dict[str, str | None]] = {
    "sqlite": {"threads": None, "aiosqlite": "aiosqlite"},
    "postgresql": {"psycopg_async": "psycopg", "threads": None},
    "mysql": {"threads": None, "asyncmy": "asyncmy", "aiomysql": "aiomysql"},
}
CONCURRENT_TASKS = 32


def _queue(url: str, prefix: str, **options: Any) -> Any:
    import polyqueue

    q = polyqueue.connect(url, table_prefix=prefix, **options)
    q.migrate()
    return q


def _prefix() -> str:
    from polyqueue.testing import unique_prefix

    return unique_prefix()


def _drop(q: Any) -> None:
    from polyqueue.testing import drop_schema

    try:
        drop_schema(q)
    finally:
        q.close()


# --- drain ------------------------------------------------------------------------------------
def child_drain(
    url: str, prefix: str, jobs: int, concurrency: int, sleep: float, mode: str, batch_size: int | None = None
) -> dict[str, Any]:
    """In the worker process: drain the queue with async handlers; the run's seconds and handler calls."""
    import polyqueue

    q = polyqueue.connect(url, table_prefix=prefix)
    worker = polyqueue.Worker(q, concurrency=concurrency, lease=60, batch_size=batch_size)
    handled = 0

    @worker.handler("sleep")
    async def nap(job: polyqueue.Job) -> None:
        nonlocal handled
        await asyncio.sleep(sleep)
        handled += 1

    started = time.perf_counter()
    if mode == "run_async":
        succeeded = asyncio.run(worker.run_async(burst=True))
    else:
        succeeded = worker.run(burst=True)
    elapsed = time.perf_counter() - started
    q.close()
    return {"seconds": elapsed, "handled": handled, "succeeded": succeeded}


def drain_once(url: str, jobs: int, concurrency: int, sleep: float, mode: str, batch_size: int | None = None) -> float:
    """Enqueue ``jobs``, drain them in one worker process, verify; the drain's seconds."""
    prefix = _prefix()
    q = _queue(url, prefix)
    try:
        for start in range(0, jobs, 1000):
            q.enqueue_many([{"job_type": "sleep", "payload": {"i": i}} for i in range(start, min(jobs, start + 1000))])
        argv = [sys.executable, "-m", "polyqueue_bench.asyncio_bench", "--child-drain"]
        argv += [json.dumps([url, prefix, jobs, concurrency, sleep, mode, batch_size])]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"worker process failed: {done.stderr.strip()[-2000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        stats = q.stats()
        if report["handled"] != jobs or stats["done"] != jobs or stats["pending"] or stats["processing"]:
            raise RuntimeError(f"drain not exact: {report['handled']} handler calls for {jobs} jobs, stats {stats}")
        return float(report["seconds"])
    finally:
        _drop(q)


# --- enqueue ----------------------------------------------------------------------------------
async def alternating_enqueue(backend: str, url: str, jobs: int, batch: int) -> dict[str, float]:
    """One repetition of the enqueue figures on ``backend``: ``{"sync/single": jobs/s, "async-threads/batch": ...}``.

    Every configuration -- the synchronous Queue and an AsyncQueue per
    installed asyncio driver, each on a table prefix of its own -- makes one
    call in turn, ``jobs`` times (single) and ``jobs / batch`` times
    (``enqueue_many``), from one event loop; each call is timed on its own and
    the times are summed per configuration. So the machine's load, however it
    changes, falls on every configuration alike, call by call. (The sync calls
    block the loop while they run: nothing else runs on it meanwhile.)
    "concurrent" then has 32 tasks enqueue ``jobs`` at once on each AsyncQueue.
    """
    drivers = [name for name, module in DRIVERS[backend].items() if module is None or importlib.util.find_spec(module)]
    prefixes = {name: _prefix() for name in ["sync", *drivers]}
    for prefix in prefixes.values():
        migrated = await asyncio.to_thread(_queue, url, prefix)
        migrated.close()
    sync = await asyncio.to_thread(_queue, url, prefixes["sync"])
    queues = {name: polyqueue_connect_async(url, prefixes[name], name) for name in drivers}
    spent: dict[str, float] = {}

    def add(key: str, seconds: float) -> None:
        spent[key] = spent.get(key, 0.0) + seconds

    try:
        sync.get(1)
        for aq in queues.values():
            await aq.get(1)  # connect outside the timing
        for i in range(jobs):
            started = time.perf_counter()
            sync.enqueue("t", {"i": i})
            add("sync/single", time.perf_counter() - started)
            for name, aq in queues.items():
                started = time.perf_counter()
                await aq.enqueue("t", {"i": i})
                add(f"async-{name}/single", time.perf_counter() - started)
        for start in range(0, jobs, batch):
            specs = [{"job_type": "t", "payload": {"i": i}} for i in range(start, min(jobs, start + batch))]
            started = time.perf_counter()
            sync.enqueue_many(specs)
            add("sync/batch", time.perf_counter() - started)
            for name, aq in queues.items():
                started = time.perf_counter()
                await aq.enqueue_many(specs)
                add(f"async-{name}/batch", time.perf_counter() - started)
        for name, aq in queues.items():

            async def one_task(offset: int, aq: Any = aq) -> None:
                for i in range(offset, jobs, CONCURRENT_TASKS):
                    await aq.enqueue("t", {"i": i})

            started = time.perf_counter()
            await asyncio.gather(*(one_task(n) for n in range(CONCURRENT_TASKS)))
            add(f"async-{name}/concurrent", time.perf_counter() - started)
        for name, aq in queues.items():
            pending = (await aq.stats())["pending"]
            if pending != 3 * jobs:
                raise RuntimeError(f"async enqueue on {name} stored {pending} jobs, expected {3 * jobs}")
        return {key: jobs / seconds for key, seconds in spent.items()}
    finally:
        for aq in queues.values():
            await asyncio.to_thread(_drop, aq.sync)
            await aq.close()
        await asyncio.to_thread(_drop, sync)


def polyqueue_connect_async(url: str, prefix: str, driver: str) -> Any:
    """An AsyncQueue on ``driver`` (an ``async_driver`` value)."""
    import polyqueue

    return polyqueue.connect_async(url, table_prefix=prefix, async_driver=driver)


# --- the run ----------------------------------------------------------------------------------
def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every selected part on every reachable backend; the report."""
    from polyqueue.testing import reachable

    workdir = Path(tempfile.mkdtemp(prefix="polyqueue-asyncio-bench-"))
    urls: dict[str, str] = {}
    for backend in args.backends:
        url = default_url(backend, workdir)
        if backend != "sqlite" and not reachable(url):
            print(f"skipped {backend}: server unreachable", file=sys.stderr)
            continue
        urls[backend] = bench_database_url(url)
    samples: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)
        print(f"  {key}: {value:,.1f}", flush=True)

    for rep in range(args.repetitions):
        print(f"repetition {rep + 1}/{args.repetitions}", flush=True)
        for backend, url in urls.items():
            if "enqueue" in args.parts:
                measured = asyncio.run(alternating_enqueue(backend, url, args.enqueue_jobs, args.batch))
                for key, value in measured.items():
                    record(f"enqueue/{backend}/{key}", value)
            if "drain" in args.parts:
                for mode in args.drain_modes:
                    seconds = drain_once(url, args.drain_jobs, args.concurrency, args.sleep, mode, args.batch_size)
                    record(f"drain/{backend}/{mode}/seconds", seconds)
    figures: dict[str, dict[str, float]] = {key: _summary(values) for key, values in samples.items()}
    ratios: dict[str, float] = {}
    for key, figure in figures.items():
        part, backend, system, kind = key.split("/")
        if part == "enqueue" and system.startswith("async-"):
            sync = figures.get(f"enqueue/{backend}/sync/{kind if kind != 'concurrent' else 'single'}")
            if sync:
                ratios[key] = figure["median"] / sync["median"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "child_drain")},
        "versions": _versions(),
        "figures": figures,
        "ratios_to_sync": ratios,
    }


def _versions() -> dict[str, str]:
    import importlib.metadata
    import sqlite3

    found = {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version}
    for package in ("polyqueue", "SQLAlchemy", "psycopg", "PyMySQL", "asyncmy", "aiomysql", "aiosqlite", "greenlet"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def print_report(report: dict[str, Any]) -> None:
    """The figures as text: medians with min-max, and each async figure's ratio to the sync API."""
    for key, figure in report["figures"].items():
        unit = "s" if key.endswith("/seconds") else "jobs/s"
        ratio = report["ratios_to_sync"].get(key)
        extra = f"  ({ratio:.0%} of sync)" if ratio is not None else ""
        print(f"{key:48s} {figure['median']:>10,.1f} {unit:6s} [{figure['min']:,.1f}-{figure['max']:,.1f}]{extra}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``python -m polyqueue_bench.asyncio_bench``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mysql", type=lambda t: t.split(","))
    parser.add_argument("--parts", default="drain,enqueue", type=lambda t: t.split(","))
    parser.add_argument("--drain-modes", default="run_async,run", type=lambda t: t.split(","))
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--drain-jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=None, help="the worker's batch_size (default: concurrency)")
    parser.add_argument("--enqueue-jobs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--json", default="")
    parser.add_argument("--child-drain", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_drain:
        print(json.dumps(child_drain(*json.loads(args.child_drain))))
        return 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
