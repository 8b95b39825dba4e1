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
    """The options, each a field of :class:`BenchConfig` (plus ``--no-chart`` and ``--quick``)."""
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="polyqueue bench", description="Benchmark polyqueue against the naive job_queue loop and its peers."
    )
    parser.add_argument("--backends", type=_csv, default=BACKENDS, help=f"comma-separated, from {','.join(BACKENDS)}")
    parser.add_argument(
        "--scenarios", type=_csv, default=SCENARIOS, help=f"comma-separated, from {','.join(SCENARIOS)}"
    )
    parser.add_argument("--baselines", type=_csv, default=defaults.baselines, help="naive,pgqueuer,procrastinate,huey")
    parser.add_argument("-r", "--repetitions", type=int, default=defaults.repetitions)
    parser.add_argument("--bulk-jobs", type=int, default=defaults.bulk_jobs)
    parser.add_argument("--single-jobs", type=int, default=defaults.single_jobs)
    parser.add_argument("--drain-jobs", type=int, default=defaults.drain_jobs)
    parser.add_argument("--slow-drain-jobs", type=int, default=None, help="drain size for naive and procrastinate")
    parser.add_argument("--processes", type=_ints, default=defaults.processes)
    parser.add_argument("--latency-rate", type=float, default=defaults.latency_rate)
    parser.add_argument("--latency-seconds", type=float, default=defaults.latency_seconds)
    parser.add_argument("--idle-seconds", type=float, default=defaults.idle_seconds)
    parser.add_argument("--history-rows", type=int, default=defaults.history_rows)
    parser.add_argument("--history-jobs", type=int, default=defaults.history_jobs)
    parser.add_argument(
        "--memory-jobs",
        type=_ints,
        default=defaults.memory_jobs,
        help="SMALL,LARGE: worker RSS after SMALL jobs and after LARGE",
    )
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--output-dir", default=defaults.output_dir)
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition: a smoke run of every scenario")
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
