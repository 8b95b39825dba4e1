"""Enqueue -> handler start at a steady rate, p50 and p99.

The producer stamps ``time.time()`` into the payload and the handler subtracts
it on the same machine, so the figure includes the producer's commit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

from ..children import Children
from ..config import BenchError
from ..systems import SYSTEMS, System
from .base import Scenario, Trial


def percentile(values: Sequence[float], pct: float) -> float:
    """The value at rank ``pct`` % of ``values`` (nearest rank; NaN when empty)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, round(pct / 100.0 * (len(ordered) - 1))))
    return ordered[rank]


class Latency(Scenario):
    """One worker process waiting for work while the benchmark process enqueues at ``latency_rate``."""

    name = "latency"

    def trials(self, backend: str) -> list[Trial]:
        config = self.config
        note = f"{config.latency_rate:g} jobs/s for {config.latency_seconds:g}s, 1 worker process"
        metrics = {"p50": ("ms", False), "p99": ("ms", False)}
        return [
            self.trial(backend, name, partial(self.once, self.bench.system(backend, name)), metrics, note)
            for name in self.bench.systems_for(backend)
            if SYSTEMS[name].measures_latency
        ]

    def once(self, system: System) -> dict[str, float]:
        """One measurement: p50 and p99 in milliseconds."""
        system.clear()
        interval = 1.0 / self.config.latency_rate
        count = int(self.config.latency_rate * self.config.latency_seconds)
        with Children(system.spec, "serve", 1, self.bench.worker_params(processes=1)) as children:
            children.go()
            time.sleep(1.0)  # let the worker settle into waiting
            start = time.perf_counter()
            for i in range(count):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                system.enqueue_one({"i": i, "t": time.time()})
            time.sleep(1.0)  # the last jobs
            (result,) = children.stop()
        latencies = result["latencies"]
        if len(latencies) != count:
            raise BenchError(f"{system.spec.system} on {system.spec.backend}: {len(latencies)} of {count} jobs ran")
        return {"p50": percentile(latencies, 50) * 1000, "p99": percentile(latencies, 99) * 1000}
