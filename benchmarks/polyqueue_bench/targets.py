"""The reference targets (this project's 2-core development machine), checked and printed next to the figures."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

#: ``(scenario, variant, backend, system)``
Key = tuple[str, str, str, str]
#: How the targets name the backends.
BACKEND_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}


class Measured(Protocol):
    """What a target reads of a figure."""

    values: list[float]

    @property
    def median(self) -> float: ...


@dataclass(frozen=True)
class Target:
    """polyqueue's figure ``key``, or its ratio to the figure ``vs``, at least or at most a bound."""

    what: str
    key: Key
    vs: Key | None = None
    at_least: float | None = None
    at_most: float | None = None

    def measure(self, figures: Mapping[Key, Measured]) -> float | None:
        """The figure's median (or the ratio of the two medians); None when not measured."""
        figure = figures.get(self.key)
        if figure is None or not figure.values:
            return None
        if self.vs is None:
            return figure.median
        other = figures.get(self.vs)
        return figure.median / other.median if other is not None and other.values and other.median else None

    def check(self, figures: Mapping[Key, Measured]) -> dict[str, Any]:
        """``{"target", "value", "met"}``; ``met`` is None when not measured."""
        value = self.measure(figures)
        return {"target": self.what, "value": value, "met": None if value is None else self.met_by(value)}

    def met_by(self, value: float) -> bool:
        """Whether ``value`` is within the bound."""
        if self.at_least is not None:
            return value >= self.at_least
        return self.at_most is not None and value <= self.at_most


def faster_than(label: str, scenario: str, variant: str, backend: str, **times: float) -> list[Target]:
    """polyqueue at least ``times[peer]`` times each peer's rate (``>= peer`` when 1, ``>= 20x peer`` otherwise)."""
    return [
        Target(
            f"{label} >= {'' if factor == 1 else f'{factor:g}x '}{peer}",
            (scenario, variant, backend, "polyqueue"),
            vs=(scenario, variant, backend, peer),
            at_least=factor,
        )
        for peer, factor in times.items()
    ]


def on_each(
    what: str,
    scenario: str,
    variant: str,
    backends: tuple[str, ...],
    *,
    at_least: float | None = None,
    at_most: float | None = None,
) -> list[Target]:
    """The same bound on polyqueue's figure on each backend, named ``what (Backend)``."""
    return [
        Target(
            f"{what} ({BACKEND_NAMES[backend]})",
            (scenario, variant, backend, "polyqueue"),
            at_least=at_least,
            at_most=at_most,
        )
        for backend in backends
    ]


TARGETS: list[Target] = [
    *faster_than(
        "PostgreSQL drain, 2 processes",
        "drain",
        "2 processes",
        "postgresql",
        pgqueuer=1.0,
        naive=20.0,
        procrastinate=20.0,
    ),
    *faster_than("PostgreSQL bulk enqueue", "enqueue", "bulk", "postgresql", pgqueuer=1.5, procrastinate=1.5),
    Target("PostgreSQL latency p50 <= 3 ms", ("latency", "p50", "postgresql", "polyqueue"), at_most=3.0),
    Target("PostgreSQL latency p99 <= 15 ms", ("latency", "p99", "postgresql", "polyqueue"), at_most=15.0),
    Target("PostgreSQL idle <= 0.2 statements/s", ("idle", "per worker", "postgresql", "polyqueue"), at_most=0.2),
    *on_each("history ratio >= 0.9", "history", "ratio full/empty", ("postgresql", "mysql", "sqlite"), at_least=0.9),
    *faster_than("MariaDB drain, 2 processes", "drain", "2 processes", "mysql", naive=20.0),
    *faster_than("SQLite drain, 2 processes", "drain", "2 processes", "sqlite", naive=10.0, huey=1.5),
    *on_each("worker RSS growth <= 10%", "memory", "RSS growth", ("postgresql", "sqlite", "mysql"), at_most=10.0),
]


def compute_checks(figures: Mapping[Key, Measured]) -> list[dict[str, Any]]:
    """The reference targets, each met or not (or not measured in this run)."""
    return [target.check(figures) for target in TARGETS]
