"""Default settings against hand-tuned ones: drains of polyqueue's ``Worker(q, concurrency=8)`` as the README
shows it, next to fixed ``batch_size`` values and pgqueuer's default and tuned ``batch_size``.

Every polyqueue configuration drains the same number of no-op jobs (verified
done once each) with 1 and 2 worker processes; pgqueuer may be given fewer
(``--pgqueuer-jobs``: its dequeue slows down on a large table, so fewer jobs
flatter it and the ratios against it are conservative); the repetitions are interleaved (one
drain of every configuration, then the next round), so load from other
processes falls on all alike. Figures are medians with min-max, and ratios
are taken between medians of the same run::

    python -m polyqueue_bench.defaults --backends postgresql --jobs 100000 -r 3 \\
        --batch-sizes default,100,200,400 --pgqueuer-batch-sizes 10,100 --json results/<date>-defaults.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from .config import BACKENDS, Spec, processes_label
from .connections import bench_database_url, default_url
from .report import machine_description
from .scenarios.drain import drain_once
from .systems import open_system


@dataclass(frozen=True)
class Config:
    """One configuration of one system: what it is called in the report and the worker parameters it gets."""

    system: str
    label: str
    params: dict[str, Any]


def configurations(backend: str, batch_sizes: list[str], pgqueuer_sizes: list[int], concurrency: int) -> list[Config]:
    """polyqueue at each batch size (``default``: the Worker's own), then pgqueuer at each (PostgreSQL only)."""
    configs = []
    for size in batch_sizes:
        fixed = None if size == "default" else int(size)
        label = f"polyqueue concurrency={concurrency}" + (" (defaults)" if fixed is None else f", batch_size={fixed}")
        configs.append(Config("polyqueue", label, {"concurrency": concurrency, "batch_size": fixed}))
    if backend == "postgresql":
        for pg_size in pgqueuer_sizes:
            label = f"pgqueuer batch_size={pg_size}" + (" (defaults)" if pg_size == 10 else "")
            configs.append(Config("pgqueuer", label, {"pgqueuer_batch_size": pg_size}))
    return configs


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every drain of every configuration, interleaved; the report as a dict."""
    workdir = Path(tempfile.mkdtemp(prefix="polyqueue-defaults-"))
    started = datetime.now(UTC)
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    loads: list[str] = []
    urls: dict[str, str] = {}
    for backend in args.backends:
        url = urls[backend] = bench_database_url(default_url(backend, workdir))
        configs = configurations(backend, args.batch_sizes, args.pgqueuer_batch_sizes, args.concurrency)
        prefix = f"pqdef{os.getpid()}_"  # its own tables: other runs may share the benchmark database
        systems = {name: open_system(Spec(name, backend, url, prefix)) for name in {c.system for c in configs}}
        for system in systems.values():
            system.setup()
        figures = results.setdefault(backend, {})
        try:
            for rep in range(args.repetitions):
                loads.append(Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "")
                for processes in args.processes:
                    for config in configs:
                        jobs = args.pgqueuer_jobs if config.system == "pgqueuer" and args.pgqueuer_jobs else args.jobs
                        rate = drain_once(systems[config.system], processes, jobs, config.params)
                        value = rate[processes_label(processes)]
                        figures.setdefault(config.label, {}).setdefault(processes_label(processes), []).append(value)
                        print(f"{backend} #{rep + 1} {processes_label(processes)}: {config.label}: {value:,.0f} jobs/s",
                              flush=True)  # fmt: skip
        finally:
            for system in systems.values():
                system.drop()
                system.close()
    return {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "loadavg_per_round": loads,
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "urls": {b: make_url(u).render_as_string(hide_password=True) for b, u in urls.items()},
        "drains": {
            backend: {
                label: {variant: summary(values) for variant, values in variants.items()}
                for label, variants in figures.items()
            }
            for backend, figures in results.items()
        },
    }


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def print_report(report: dict[str, Any]) -> None:
    """Medians per configuration, and each one's ratio to the first (polyqueue's defaults)."""
    for backend, figures in report["drains"].items():
        print(f"\n{backend} (jobs/s, median of {report['config']['repetitions']}; ratio to the first row)")
        first = next(iter(figures.values()))
        for label, variants in figures.items():
            cells = [
                f"{variant}: {s['median']:>9,.0f} ({s['median'] / first[variant]['median']:.2f}x)"
                for variant, s in variants.items()
            ]
            print(f"  {label:<45} " + "  ".join(cells))


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m polyqueue_bench.defaults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["postgresql"], help=",".join(BACKENDS))
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--processes", type=lambda s: [int(p) for p in s.split(",")], default=[1, 2])
    parser.add_argument("--pgqueuer-jobs", type=int, default=None, help="jobs per pgqueuer drain (default: --jobs)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-sizes", type=lambda s: s.split(","), default=["default", "100", "200", "400"])
    parser.add_argument("--pgqueuer-batch-sizes", type=lambda s: [int(p) for p in s.split(",")], default=[10, 100])
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
