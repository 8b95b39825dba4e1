"""What a benchmark run knows and is asked to do: scenarios, backends, sizes, and how a system is opened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Every scenario, in the order they run.
SCENARIOS = ("select1", "enqueue", "drain", "latency", "idle", "history", "memory")
#: Every built-in backend the harness knows.
BACKENDS = ("sqlite", "postgresql", "mysql")
#: The database the PostgreSQL and MySQL benchmarks create and use, apart from the test database.
BENCH_DATABASE = "polyqueue_bench"
#: The MariaDB/MySQL user the idle worker connects as, so that its statements can be told apart.
BENCH_USER = "polyqueue_bench"
PREFIX = "pqbench_"
JOB_TYPE = "noop"


class BenchError(Exception):
    """A benchmark could not be set up or its result failed verification."""


@dataclass
class BenchConfig:
    """What to run and how big. Every field is a keyword of :func:`polyqueue_bench.run_bench`."""

    backends: tuple[str, ...] = BACKENDS
    scenarios: tuple[str, ...] = SCENARIOS
    repetitions: int = 3
    #: Systems to include besides polyqueue: ``naive``, ``pgqueuer``, ``procrastinate``, ``huey``.
    baselines: tuple[str, ...] = ("naive", "pgqueuer", "procrastinate", "huey")
    bulk_jobs: int = 20_000
    single_jobs: int = 2_000
    drain_jobs: int = 20_000
    #: Jobs for the drains of the slow baselines (the naive loop, procrastinate); None means ``drain_jobs``.
    #: Fewer jobs flatter the naive loop (its claim scans and sorts every pending row).
    slow_drain_jobs: int | None = None
    processes: tuple[int, ...] = (1, 2)
    latency_rate: float = 100.0
    latency_seconds: float = 10.0
    idle_seconds: float = 10.0
    history_rows: int = 1_000_000
    history_jobs: int = 10_000
    memory_jobs: tuple[int, int] = (10_000, 200_000)
    select1_seconds: float = 2.0
    #: polyqueue Worker threads per process and claim batch size (None: the Worker's default).
    concurrency: int = 8
    batch_size: int | None = 100
    procrastinate_concurrency: int = 10
    pgqueuer_batch_size: int = 100
    #: Backend name -> URL; missing ones come from the test-server defaults (POLYQUEUE_TEST_*_URL).
    urls: dict[str, str] = field(default_factory=dict)
    output_dir: str | None = "benchmarks/results"
    chart: bool = True
    #: Shown in the output next to the figures ("full run", "quick run", ...).
    label: str = ""


@dataclass
class Spec:
    """How to open one system on one backend, in this process or a worker process (picklable)."""

    system: str
    backend: str
    url: str
    name: str = PREFIX
    options: dict[str, Any] = field(default_factory=dict)


def processes_label(processes: int) -> str:
    """The drain variant for ``processes`` worker processes: ``1 process``, ``2 processes``."""
    return f"{processes} process{'es' if processes > 1 else ''}"
