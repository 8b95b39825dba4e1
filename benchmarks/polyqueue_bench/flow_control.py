"""What flow control costs when it does not bind: the same drain, unlimited and with limits set, in one run.

``python -m polyqueue_bench.flow_control [--backend postgresql] [-r 3] [--jobs 20000] [--processes 2]``

Each repetition drains ``--jobs`` no-op jobs with ``--processes`` worker
processes once per configuration, the configurations taking turns (so load on
a shared machine falls on all alike):

* ``unlimited`` -- the queue has no settings row: the plain claim (one
  statement on PostgreSQL);
* ``limits`` -- ``concurrency`` and ``rate`` set far above what the workers
  reach: every claim locks the queue's settings row, counts the queue's
  processing jobs and takes from the rate allowance;
* ``per_key`` (with ``--per-key``) -- also ``per_key``, jobs spread over 100
  keys: every claim ranks the queue's ready jobs per key (a scan).

Prints the median jobs/s of each and its ratio to ``unlimited``; ``--json``
writes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .config import JOB_TYPE, Spec
from .connections import bench_database_url, default_url
from .scenarios.drain import drain_once
from .systems.polyqueue import PolyqueueSystem

#: Limits no drain here comes near: a claim reads and updates them, and none of them ever binds.
LOOSE = {"concurrency": 100_000, "rate": 1_000_000.0}
KEYS = 100


class KeyedSystem(PolyqueueSystem):
    """polyqueue with every job given one of :data:`KEYS` concurrency keys (for the ``per_key`` drain)."""

    keyed = False

    def enqueue_bulk(self, n: int) -> None:
        if not self.keyed:
            super().enqueue_bulk(n)
            return
        self.q.enqueue_many(
            [{"job_type": JOB_TYPE, "payload": {"i": i}, "concurrency_key": f"k{i % KEYS}"} for i in range(n)]
        )


def configure(system: KeyedSystem, name: str) -> None:
    """Set (or clear) the default queue's limits for configuration ``name``."""
    system.keyed = name == "per_key"
    if name == "unlimited":
        system.q.set_limits("default")
    elif name == "limits":
        system.q.set_limits("default", **LOOSE)  # type: ignore[arg-type]
    else:
        system.q.set_limits("default", per_key=100_000, **LOOSE)  # type: ignore[arg-type]


def run(backend: str, repetitions: int, jobs: int, processes: int, per_key: bool) -> dict[str, Any]:
    """Drain once per configuration per repetition; the figures, medians and ratios."""
    with tempfile.TemporaryDirectory() as workdir:
        url = bench_database_url(default_url(backend, Path(workdir)))
        spec = Spec("polyqueue", backend, url, name="pqflow_")
        system = KeyedSystem(spec)
        system.setup()
        params = {"concurrency": 8, "batch_size": 100}
        names = ["unlimited", "limits", *(["per_key"] if per_key else [])]
        rates: dict[str, list[float]] = {name: [] for name in names}
        try:
            drain_once(system, processes, min(jobs, 2000), params)  # warm-up: caches, plans, autovacuum settle
            for rep in range(repetitions):
                for name in names:
                    configure(system, name)
                    (rate,) = drain_once(system, processes, jobs, params).values()
                    rates[name].append(rate)
                    print(f"rep {rep + 1} {name:>9}: {rate:10,.0f} jobs/s", flush=True)
        finally:
            configure(system, "unlimited")
            system.drop()
            system.close()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "backend": backend,
        "jobs": jobs,
        "processes": processes,
        "repetitions": repetitions,
        "worker": params,
        "limits": LOOSE,
        "rates": rates,
        "medians": medians,
        "ratios": {name: medians[name] / medians["unlimited"] for name in names},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polyqueue_bench.flow_control", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="postgresql", choices=("postgresql", "mysql", "sqlite"))
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--per-key", action="store_true", help="Also drain with a non-binding per_key limit.")
    parser.add_argument("--json", default=None, help="Write the figures to this file.")
    args = parser.parse_args(argv)
    result = run(args.backend, args.repetitions, args.jobs, args.processes, args.per_key)
    for name, median in result["medians"].items():
        print(f"{name:>9}: median {median:10,.0f} jobs/s  ratio {result['ratios'][name]:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
