"""Enqueue rates: ``bulk``, one batch call; ``single``, one call (one transaction) per job."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from ..systems import System
from .base import JOBS_PER_SECOND, Scenario, Trial


def timed_enqueue(system: System, variant: str, enqueue: Callable[[int], None], n: int) -> dict[str, float]:
    """Empty the system, enqueue ``n`` jobs with ``enqueue``; ``{variant: jobs per second}``."""
    system.clear()
    started = time.perf_counter()
    enqueue(n)
    return {variant: n / (time.perf_counter() - started)}


class Enqueue(Scenario):
    """Every system's batch API (when it has one) and its one-job call."""

    name = "enqueue"

    def trials(self, backend: str) -> list[Trial]:
        trials = []
        bulk, single = self.config.bulk_jobs, self.config.single_jobs
        for name, system in self.systems(backend):
            if system.bulk_enqueue:
                run = partial(timed_enqueue, system, "bulk", system.enqueue_bulk, bulk)
                note = f"one batch call of {bulk:,} jobs"
                trials.append(self.trial(backend, name, run, {"bulk": JOBS_PER_SECOND}, note))
            run = partial(timed_enqueue, system, "single", system.enqueue_single, single)
            note = f"{single:,} calls, one transaction each"
            trials.append(self.trial(backend, name, run, {"single": JOBS_PER_SECOND}, note))
        return trials
