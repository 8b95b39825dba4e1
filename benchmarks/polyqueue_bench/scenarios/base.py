"""What a scenario is to the harness: something that builds the trials of one repetition on one backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import BenchConfig
    from ..harness import Bench
    from ..systems import System

#: A metric's unit and whether more is better.
Metric = tuple[str, bool]
JOBS_PER_SECOND: Metric = ("jobs/s", True)


@dataclass
class Trial:
    """One repetition's unit of work: runs one system once and returns metric -> value."""

    scenario: str
    backend: str
    system: str
    run: Callable[[], dict[str, float]]
    #: metric (the figure's variant) -> (unit, higher_is_better)
    metrics: dict[str, Metric]
    note: str = ""


class Scenario:
    """One scenario of a run; subclasses build its trials from the run's systems and configuration."""

    #: The scenario's name, as ``--scenarios`` and the report spell it.
    name = ""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    @property
    def config(self) -> BenchConfig:
        """The run's configuration."""
        return self.bench.config

    def trials(self, backend: str) -> list[Trial]:
        """The trials of one repetition on ``backend``."""
        raise NotImplementedError

    def systems(self, backend: str) -> Iterator[tuple[str, System]]:
        """The run's systems on ``backend`` by name, opened and set up."""
        for name in self.bench.systems_for(backend):
            yield name, self.bench.system(backend, name)

    def trial(
        self, backend: str, system: str, run: Callable[[], dict[str, float]], metrics: dict[str, Metric], note: str
    ) -> Trial:
        """A trial of this scenario."""
        return Trial(self.name, backend, system, run, metrics, note)
