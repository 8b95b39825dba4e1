"""Drain rates: pre-enqueued no-op jobs worked off by 1, 2... worker processes, every drain verified."""

from __future__ import annotations

from functools import partial
from typing import Any

from ..children import Children
from ..config import processes_label
from ..systems import System
from .base import JOBS_PER_SECOND, Scenario, Trial


def drain_once(system: System, processes: int, n: int, params: dict[str, Any]) -> dict[str, float]:
    """Enqueue ``n`` jobs, drain them with ``processes`` worker processes, verify, return jobs/s.

    The time runs from the barrier to the last worker process finishing (for
    huey, to its last handler call: huey deletes a task when it dequeues it).
    """
    system.clear()
    system.fill(n)
    params = {**params, "expected": n, "processes": processes}
    with Children(system.spec, "drain", 1 if system.forks_workers else processes, params) as children:
        started = children.go()
        results = children.gather()
    elapsed = max(r["end"] for r in results) - started
    system.verify_drained(n, sum(r["handled"] for r in results))
    return {processes_label(processes): n / elapsed}


class Drain(Scenario):
    """Each system drains the same number of jobs (fewer for the slow baselines with ``slow_drain_jobs``)."""

    name = "drain"

    def trials(self, backend: str) -> list[Trial]:
        trials = []
        for name, system in self.systems(backend):
            n = self.config.drain_jobs
            if system.slow and self.config.slow_drain_jobs:
                n = self.config.slow_drain_jobs
            for processes in self.config.processes:
                run = partial(drain_once, system, processes, n, self.bench.worker_params())
                metrics = {processes_label(processes): JOBS_PER_SECOND}
                trials.append(self.trial(backend, name, run, metrics, f"{n:,} no-op jobs, verified done once each"))
        return trials
