"""Drain throughput of the Redis Cluster backend on 1 master and on 3, beside PostgreSQL, on this machine.

    .venv/bin/python benchmarks/redis_cluster_scaling.py [--jobs 20000] [--queues 12] [--processes 4] [--repeat 3]

For each repetition, and for each system in turn (interleaved, so a slow
moment of the machine hits every system alike), it enqueues ``--jobs`` no-op
jobs spread over ``--queues`` queues, then starts ``--processes`` worker
processes, each a polyqueue ``Worker`` over all the queues in burst mode, and
times from the moment they are told to start until the last one exits (every
job done). Reported: jobs/s, the median of the repetitions.

Systems: a private Redis Cluster of 1 master + 1 replica and one of 3 masters
+ 3 replicas (each started here on free ports, AOF on, ``appendfsync
everysec``, ``WAIT`` for one replica on every enqueue and settlement, the
cluster default), and the PostgreSQL test server (``POLYQUEUE_TEST_POSTGRESQL_URL``,
default 127.0.0.1:5432), all on this one machine. ``--json FILE`` writes the
raw figures.

This is a script, not a test: its figures depend on the machine (see
``--help``); the plugin README quotes a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins" / "polyqueue-redis" / "tests"))

import polyqueue  # noqa: E402
from polyqueue.testing import drop_schema, reachable, server_url, unique_prefix  # noqa: E402

_WORKER = r"""
import os, sys, time
import polyqueue
url, go, queues, concurrency, batch = sys.argv[1:6]
q = polyqueue.connect(url, table_prefix=os.environ["BENCH_PREFIX"])
worker = polyqueue.Worker(q, queues=queues.split(","), concurrency=int(concurrency), batch_size=int(batch))
worker.register("noop", lambda job: None)
q.backend.db_now()  # connected before the start signal
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
worker.run(burst=True)
q.close()
"""


def master_cpu(cluster: Any) -> list[float]:
    """CPU seconds (user + system) each master of a private cluster has used so far."""
    seconds = []
    for node in cluster.masters:
        info = node.info("cpu")
        seconds.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return seconds


def drain(url: str, args: argparse.Namespace, cpu: Callable[[], list[float]] | None = None) -> dict[str, float]:
    """Enqueue the jobs, drain them with the worker processes; returns jobs/s and the masters' busiest share."""
    prefix = unique_prefix()
    queues = [f"bench-{i}" for i in range(args.queues)]
    q = polyqueue.connect(url, table_prefix=prefix)
    q.migrate()
    try:
        for start in range(0, args.jobs, 1000):
            count = min(1000, args.jobs - start)
            q.enqueue_many([{"job_type": "noop", "queue": queues[(start + i) % len(queues)]} for i in range(count)])
        with tempfile.TemporaryDirectory() as tmp:
            go = Path(tmp) / "go"
            env = {**os.environ, "BENCH_PREFIX": prefix}
            command = [sys.executable, "-c", _WORKER, url, str(go), ",".join(queues), str(args.concurrency)]
            command.append(str(args.batch))
            procs = [
                subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(args.processes)
            ]
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            before = cpu() if cpu is not None else []
            started = time.perf_counter()
            go.touch()
            for proc in procs:
                proc.wait(600)
            elapsed = time.perf_counter() - started
            after = cpu() if cpu is not None else []
        stats = q.stats()
        if stats["done"] != args.jobs:
            raise RuntimeError(f"the drain left jobs behind: {stats}")
        used = [b - a for a, b in zip(before, after, strict=True)]
        return {
            "jobs_per_second": args.jobs / elapsed,
            # The busiest master's CPU time as a share of the drain's wall time (1.0 = one core saturated).
            "busiest_master_cpu": max(used) / elapsed if used else 0.0,
            "redis_cpu_us_per_job": sum(used) / args.jobs * 1e6 if used else 0.0,
        }
    finally:
        drop_schema(q)
        q.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--queues", type=int, default=12)
    parser.add_argument("--processes", type=int, default=4, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=8, help="handler threads per worker")
    parser.add_argument("--batch", type=int, default=100, help="the workers' batch_size (jobs per claim)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--appendfsync", default="everysec", choices=["always", "everysec", "no"])
    parser.add_argument("--no-postgresql", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    from private_cluster import PrivateCluster

    clusters = {
        "redis-1-master": PrivateCluster(1, 1, appendfsync=args.appendfsync).start(),
        "redis-3-masters": PrivateCluster(3, 1, appendfsync=args.appendfsync).start(),
    }
    systems: dict[str, Callable[[], dict[str, float]]] = {
        name: (lambda c=c: drain(c.url, args, lambda: master_cpu(c))) for name, c in clusters.items()
    }
    pg = server_url("postgresql")
    if not args.no_postgresql and reachable(pg):
        systems["postgresql"] = lambda: drain(pg, args)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    try:
        for repetition in range(1, args.repeat + 1):
            for name, run in systems.items():
                figures = run()
                runs[name].append(figures)
                print(f"repetition {repetition}: {name:16s} {_line(figures)}", flush=True)
    finally:
        for cluster in clusters.values():
            cluster.close()
    medians = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in runs.items()}
    print()
    for name, median in medians.items():
        rates = ", ".join(f"{r['jobs_per_second']:,.0f}" for r in runs[name])
        print(f"{name:16s} median {_line(median)}  (jobs/s of the runs: {rates})")
    ratio = medians["redis-3-masters"]["jobs_per_second"] / medians["redis-1-master"]["jobs_per_second"]
    print(f"3 masters / 1 master: {ratio:.2f}x")
    if args.json is not None:
        result = {
            "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": runs,
            "medians": medians,
            "ratio_3_to_1_masters": ratio,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _line(figures: dict[str, float]) -> str:
    text = f"{figures['jobs_per_second']:9,.0f} jobs/s"
    if figures.get("redis_cpu_us_per_job"):
        text += (
            f", Redis {figures['redis_cpu_us_per_job']:.0f} us CPU/job,"
            f" busiest master {100 * figures['busiest_master_cpu']:.0f}% of a core"
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
