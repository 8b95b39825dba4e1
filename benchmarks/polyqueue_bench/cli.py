"""The command line of the harness: ``polyqueue bench``, ``python benchmarks/run.py``, ``python -m polyqueue_bench``."""

from __future__ import annotations

import argparse
import sys

from .config import BACKENDS, SCENARIOS, BenchConfig, BenchError
from .harness import run_bench

#: What ``--quick`` changes: small sizes and 1 repetition, a smoke run of every scenario.
QUICK = {
    "repetitions": 1,
    "bulk_jobs": 2000,
    "single_jobs": 200,
    "drain_jobs": 2000,
    "slow_drain_jobs": 1000,
    "latency_seconds": 2,
    "idle_seconds": 3,
    "history_rows": 20_000,
    "history_jobs": 1000,
    "memory_jobs": (1000, 5000),
}


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in _csv(text))


def parser() -> argparse.ArgumentParser:
    """The options, each a field of :class:`BenchConfig` (plus ``--no-chart`` and ``--quick``), each with its help."""
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="polyqueue bench",
        description="Benchmark polyqueue against the naive job_queue loop and its peers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--backends", type=_csv, default=BACKENDS, help=f"comma-separated, from {','.join(BACKENDS)}")
    add("--scenarios", type=_csv, default=SCENARIOS, help=f"comma-separated, from {','.join(SCENARIOS)}")
    add(
        "--baselines",
        type=_csv,
        default=defaults.baselines,
        help="systems besides polyqueue: naive,pgqueuer,procrastinate,huey",
    )
    add(
        "-r",
        "--repetitions",
        type=int,
        default=defaults.repetitions,
        help="runs of each scenario (the median is reported)",
    )
    add("--bulk-jobs", type=int, default=defaults.bulk_jobs, help="jobs enqueued in batches by the enqueue scenario")
    add(
        "--single-jobs",
        type=int,
        default=defaults.single_jobs,
        help="jobs enqueued one at a time by the enqueue scenario",
    )
    add("--drain-jobs", type=int, default=defaults.drain_jobs, help="jobs the drain scenario's workers empty")
    add(
        "--slow-drain-jobs",
        type=int,
        default=None,
        help="drain size for naive and procrastinate (default: --drain-jobs)",
    )
    add(
        "--processes",
        type=_ints,
        default=defaults.processes,
        help="comma-separated worker process counts for the drain",
    )
    add(
        "--latency-rate",
        type=float,
        default=defaults.latency_rate,
        help="jobs per second enqueued by the latency scenario",
    )
    add(
        "--latency-seconds", type=float, default=defaults.latency_seconds, help="how long the latency scenario enqueues"
    )
    add(
        "--idle-seconds",
        type=float,
        default=defaults.idle_seconds,
        help="how long idle workers are watched (queries they send)",
    )
    add(
        "--history-rows",
        type=int,
        default=defaults.history_rows,
        help="finished rows in the table for the history scenario",
    )
    add("--history-jobs", type=int, default=defaults.history_jobs, help="jobs drained over that history")
    add(
        "--memory-jobs",
        type=_ints,
        default=defaults.memory_jobs,
        help="SMALL,LARGE: worker RSS after SMALL jobs and after LARGE",
    )
    add("--concurrency", type=int, default=defaults.concurrency, help="polyqueue worker threads per process")
    add("--batch-size", type=int, default=defaults.batch_size, help="jobs per claim for polyqueue workers")
    add("--output-dir", default=defaults.output_dir, help="where the results (JSON, Markdown, chart) are written")
    add("--no-chart", action="store_true", help="write no PNG chart (no matplotlib needed)")
    add("--label", default="", help="a name shown next to the figures (e.g. 'full run')")
    add("--quick", action="store_true", help="small sizes, 1 repetition: a smoke run of every scenario")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (``polyqueue bench ARGS``): parse ``argv``, run, return the exit status."""
    args = parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("no_chart", "quick")}
    options["chart"] = not args.no_chart
    if args.quick:
        options.update(QUICK, label=args.label or "quick run")
    try:
        report = run_bench(**options)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for error in report["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if report["errors"] else 0
