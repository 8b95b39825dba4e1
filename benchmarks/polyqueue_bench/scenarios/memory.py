"""Worker memory: RSS of one long-running worker process after a few jobs and after many, and the growth."""

from __future__ import annotations

from functools import partial

from ..children import Children
from ..systems import System
from .base import Scenario, Trial

#: Jobs enqueued at a time while the worker runs.
CHUNK = 20_000


class Memory(Scenario):
    """polyqueue only: its worker must not grow with the number of jobs it has handled."""

    name = "memory"

    def trials(self, backend: str) -> list[Trial]:
        small, large = self.config.memory_jobs
        metrics = {
            f"RSS after {small:,}": ("MiB", False),
            f"RSS after {large:,}": ("MiB", False),
            "RSS growth": ("%", False),
        }
        note = f"one worker process; RSS after draining {small:,} jobs, then after {large:,} in total"
        run = partial(self.once, self.bench.system(backend, "polyqueue"))
        return [self.trial(backend, "polyqueue", run, metrics, note)]

    def once(self, system: System) -> dict[str, float]:
        """One worker process, read at ``small`` and at ``large`` jobs handled."""
        small, large = self.config.memory_jobs
        system.clear()
        system.enqueue_bulk(small)
        params = self.bench.worker_params(processes=1, thresholds=[small, large])
        with Children(system.spec, "memory", 1, params) as children:
            children.go()
            (first,) = children.gather("round")
            done = small
            while done < large:
                chunk = min(CHUNK, large - done)
                system.enqueue_bulk(chunk)
                done += chunk
            (second,) = children.gather("round")
            (final,) = children.gather()
        system.verify_drained(large, final["handled"])
        return {
            f"RSS after {small:,}": first["rss"] / 2**20,
            f"RSS after {large:,}": second["rss"] / 2**20,
            "RSS growth": (second["rss"] - first["rss"]) / first["rss"] * 100.0,
        }
