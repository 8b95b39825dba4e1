"""One benchmark run: reachable backends, the systems on each, every scenario's trials, interleaved repetitions.

Every figure is measured on real servers in one run, repeated (median and
min-max of ``repetitions``), with the repetitions interleaved between the
systems so that a slow minute of the machine hurts everyone alike. A trial that
fails keeps what it measured, is reported under ``errors`` and is not run
again; a backend whose server is unreachable, or a peer that is not installed,
is listed under ``skipped``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from .config import BACKENDS, SCENARIOS, BenchConfig, BenchError, Spec
from .connections import bench_database_url, default_url
from .report import (
    Figure,
    compute_checks,
    compute_ratios,
    machine_description,
    output_base,
    render_checks,
    render_table,
    write_json,
    write_outputs,
)
from .scenarios import SCENARIO_CLASSES, Scenario, Trial
from .systems import SYSTEMS, System, open_system
from .targets import Key

#: Packages whose versions the report records, when installed.
VERSIONED_PACKAGES = (
    "polyqueue",
    "SQLAlchemy",
    "psycopg",
    "PyMySQL",
    "pgqueuer",
    "procrastinate",
    "huey",
    "asyncpg",
    "uvloop",
)


class Bench:
    """One benchmark run: systems, scenarios, trials, figures."""

    def __init__(self, config: BenchConfig, console: Any = None) -> None:
        from rich.console import Console

        self.config = config
        self.console = console or Console(width=None if sys.stdout.isatty() else 150)
        self.workdir = Path(tempfile.mkdtemp(prefix="polyqueue-bench-"))
        self.figures: dict[Key, Figure] = {}
        self.urls: dict[str, str] = {}
        self.skipped: list[str] = []
        self.errors: list[str] = []
        #: Every system opened in this process, dropped and closed at the end of the run.
        self.systems: dict[tuple[str, str], System] = {}
        self.cleanups: list[Callable[[], None]] = []
        self.versions: dict[str, str] = {}

    # --- what the scenarios use -------------------------------------------------------
    def systems_for(self, backend: str) -> list[str]:
        """polyqueue and the selected baselines that run on ``backend`` and are installed."""
        names = ["polyqueue"]
        for name, system in SYSTEMS.items():
            if name == "polyqueue" or name not in self.config.baselines or backend not in system.backends:
                continue
            missing = system.missing_modules()
            if missing:
                note = f"{name}: not installed ({', '.join(missing)}); pip install -e 'benchmarks[peers]'"
                if note not in self.skipped:
                    self.skipped.append(note)
                continue
            names.append(name)
        return names

    def system(self, backend: str, name: str) -> System:
        """The (cached) producer side of ``name`` on ``backend``, set up."""
        key = (backend, name)
        if key not in self.systems:
            system = open_system(Spec(name, backend, self.urls[backend]))
            system.setup()
            self.systems[key] = system
        return self.systems[key]

    def worker_params(self, **extra: Any) -> dict[str, Any]:
        """Parameters every worker process gets."""
        return {
            "concurrency": self.config.concurrency,
            "batch_size": self.config.batch_size,
            "procrastinate_concurrency": self.config.procrastinate_concurrency,
            "pgqueuer_batch_size": self.config.pgqueuer_batch_size,
            **extra,
        }

    def on_cleanup(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at the end of the run, after the systems are dropped."""
        self.cleanups.append(callback)

    # --- running ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run every selected scenario on every reachable backend; return the report."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        config = self.config
        started = datetime.now(UTC)
        backends = self._available_backends()
        for scenario in config.scenarios:
            if scenario not in SCENARIOS:
                raise BenchError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
        self._record_versions(backends)
        json_path = output_base(Path(config.output_dir)).with_suffix(".json") if config.output_dir else None
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        try:
            with Progress(*columns, console=self.console) as progress:
                for name in [s for s in SCENARIOS if s in config.scenarios]:
                    self._run_scenario(progress, SCENARIO_CLASSES[name](self), backends)
                    if json_path is not None:  # a checkpoint, so a long run that dies still leaves its figures
                        write_json(self._report(started), json_path)
        finally:
            self._cleanup()
        report = self._report(started)
        self.console.print(render_table(report))
        self.console.print(render_checks(report))
        if config.output_dir:
            paths = write_outputs(report, Path(config.output_dir), chart=config.chart, base=json_path)
            for path in paths:
                self.console.print(f"wrote {path}")
            report["files"] = [str(p) for p in paths]
        return report

    def _run_scenario(self, progress: Any, scenario: Scenario, backends: list[str]) -> None:
        """Every repetition of every trial of ``scenario``, repetition by repetition."""
        trials: list[Trial] = [trial for backend in backends for trial in scenario.trials(backend)]
        task = progress.add_task(scenario.name, total=len(trials) * self.config.repetitions)
        failed: set[int] = set()
        for rep in range(self.config.repetitions):
            for number, trial in enumerate(trials):
                what = f"{scenario.name} #{rep + 1}: {trial.system} on {trial.backend}"
                progress.update(task, description=what)
                if number not in failed:
                    try:
                        self._record(trial, trial.run())
                    except BenchError as exc:
                        # Keep what was measured; this trial is not run again.
                        failed.add(number)
                        self.errors.append(f"{what}: {exc}")
                        self.console.print(f"[red]failed[/] {what}: {exc}")
                progress.advance(task)
        progress.update(task, description=scenario.name)

    def _available_backends(self) -> list[str]:
        from polyqueue.testing import reachable

        ready = []
        for backend in self.config.backends:
            if backend not in BACKENDS:
                raise BenchError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
            url = self.config.urls.get(backend) or default_url(backend, self.workdir)
            if backend != "sqlite" and not reachable(url):
                self.skipped.append(f"{backend}: server unreachable at {make_url(url).host}:{make_url(url).port}")
                continue
            self.urls[backend] = bench_database_url(url)
            ready.append(backend)
        return ready

    def _record(self, trial: Trial, values: dict[str, float]) -> None:
        for metric, value in values.items():
            unit, higher = trial.metrics[metric]
            key = (trial.scenario, metric, trial.backend, trial.system)
            figure = self.figures.get(key)
            if figure is None:
                figure = self.figures[key] = Figure(
                    trial.scenario, metric, trial.backend, trial.system, unit, higher, note=trial.note
                )
            figure.values.append(value)

    def _record_versions(self, backends: Iterable[str]) -> None:
        for package in VERSIONED_PACKAGES:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                self.versions[package] = importlib.metadata.version(package)
        self.versions["sqlite"] = sqlite3.sqlite_version
        for backend in backends:
            if backend == "sqlite":
                continue
            engine = sa.create_engine(self.urls[backend])
            try:
                with engine.connect() as conn:
                    self.versions[backend] = str(conn.exec_driver_sql("SELECT version()").scalar())
            finally:
                engine.dispose()

    def _cleanup(self) -> None:
        for system in self.systems.values():
            with contextlib.suppress(Exception):
                system.drop()
            with contextlib.suppress(Exception):
                system.close()
        for callback in self.cleanups:
            with contextlib.suppress(Exception):
                callback()
        for path in self.workdir.glob("*"):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.workdir.rmdir()

    def _report(self, started: datetime) -> dict[str, Any]:
        config = asdict(self.config)
        config["urls"] = {b: make_url(u).render_as_string(hide_password=True) for b, u in self.urls.items()}
        return {
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "label": self.config.label,
            "machine": machine_description(),
            "versions": self.versions,
            "config": config,
            "skipped": self.skipped,
            "errors": self.errors,
            "figures": [f.as_dict() for f in self.figures.values()],
            "ratios": compute_ratios(self.figures),
            "checks": compute_checks(self.figures),
        }


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    import logging

    previous = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.root.setLevel(previous)


def run_bench(config: BenchConfig | None = None, *, console: Any = None, **options: Any) -> dict[str, Any]:
    """Run the benchmarks and return the report (also printed, and written to ``output_dir``).

    ``options`` are the fields of :class:`BenchConfig` (``backends``,
    ``scenarios``, ``repetitions``, sizes, ``baselines``, ``urls``,
    ``output_dir``, ``chart``...), overriding ``config``. Raises
    :class:`BenchError` when a scenario cannot run or a drain fails its
    exactly-once verification.
    """
    base = asdict(config) if config is not None else {}
    unknown = set(options) - set(BenchConfig.__dataclass_fields__)
    if unknown:
        raise BenchError(f"unknown bench option(s): {', '.join(sorted(unknown))}")
    merged = {**base, **{k: v for k, v in options.items() if v is not None}}
    for key in ("backends", "scenarios", "baselines", "processes", "memory_jobs"):
        if key in merged and not isinstance(merged[key], tuple):
            merged[key] = tuple(merged[key])
    cfg = BenchConfig(**merged)
    if cfg.repetitions < 1:
        raise BenchError("repetitions must be at least 1")
    with _quiet_logs():
        return Bench(cfg, console=console).run()
