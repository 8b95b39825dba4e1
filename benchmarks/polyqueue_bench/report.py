"""A run's results: figures, polyqueue's ratios to the other systems, the reference checks, tables and files.

The JSON file holds the whole report (the format the committed results use);
``summarize.py`` renders one as Markdown.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .targets import Key, compute_checks

__all__ = [
    "Figure",
    "compute_checks",
    "compute_ratios",
    "format_value",
    "machine_description",
    "output_base",
    "render_checks",
    "render_table",
    "write_json",
    "write_outputs",
]


@dataclass
class Figure:
    """One measured quantity: the values of all repetitions of one system on one backend."""

    scenario: str
    variant: str
    backend: str
    system: str
    unit: str
    higher_is_better: bool
    values: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def key(self) -> Key:
        """``(scenario, variant, backend, system)``."""
        return (self.scenario, self.variant, self.backend, self.system)

    @property
    def median(self) -> float:
        """Median over repetitions (NaN when nothing was measured)."""
        return statistics.median(self.values) if self.values else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data.update(
            median=self.median,
            min=min(self.values) if self.values else None,
            max=max(self.values) if self.values else None,
        )
        return data


def _ratio(scenario: str, variant: str, backend: str, vs: str, ratio: float, better_when: str) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "variant": variant,
        "backend": backend,
        "vs": vs,
        "ratio": ratio,
        "better_when": better_when,
    }


def compute_ratios(figures: dict[Key, Figure]) -> list[dict[str, Any]]:
    """polyqueue against every other system measured on the same scenario, variant and backend."""
    ratios = []
    for key, figure in figures.items():
        scenario, variant, backend, system = key
        if system != "polyqueue" or not figure.values:
            continue
        for (s2, v2, b2, other), peer in figures.items():
            if (s2, v2, b2) != (scenario, variant, backend) or other == "polyqueue" or not peer.values:
                continue
            if figure.higher_is_better:
                ratio = figure.median / peer.median if peer.median else float("inf")
            else:
                ratio = peer.median / figure.median if figure.median else float("inf")
            ratios.append(_ratio(scenario, variant, backend, other, ratio, "> 1"))
        if scenario == "drain":
            floor = figures.get(("select1", "round trips", backend, "SELECT 1"))
            if floor is not None and floor.values:
                per_round_trip = figure.median / floor.median
                vs = "SELECT 1 round trips/s"
                ratios.append(_ratio(scenario, variant, backend, vs, per_round_trip, "jobs per round-trip time"))
    return ratios


def machine_description() -> dict[str, Any]:
    """CPU, cores, memory, OS and Python of this machine."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def format_value(value: float | None, unit: str = "") -> str:
    """A figure as shown: two decimals for small values and fine units, none for large rates; ``-`` when absent."""
    if value is None or value != value:
        return "-"
    if unit in ("ms", "x", "%", "statements/s") or abs(value) < 100:
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def render_table(report: dict[str, Any]) -> Any:
    """A rich table of every figure with polyqueue's ratio to it."""
    from rich.table import Table

    table = Table(
        title=f"polyqueue bench {report.get('label') or ''} (median of {report['config']['repetitions']}, min-max)"
    )
    for column in ("scenario", "variant", "backend", "system"):
        table.add_column(column)
    table.add_column("median", justify="right")
    table.add_column("min-max", justify="right")
    table.add_column("unit")
    table.add_column("polyqueue vs this", justify="right")
    ratios = {(r["scenario"], r["variant"], r["backend"], r["vs"]): r["ratio"] for r in report["ratios"]}
    for f in report["figures"]:
        ratio = ratios.get((f["scenario"], f["variant"], f["backend"], f["system"]))
        table.add_row(
            f["scenario"],
            f["variant"],
            f["backend"],
            f["system"],
            format_value(f["median"], f["unit"]),
            f"{format_value(f['min'], f['unit'])}-{format_value(f['max'], f['unit'])}",
            f["unit"],
            f"{ratio:,.2f}x" if ratio is not None else "",
        )
    return table


def render_checks(report: dict[str, Any]) -> Any:
    """A rich table of the reference targets."""
    from rich.table import Table

    table = Table(title="reference targets")
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("met")
    for check in report["checks"]:
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "[dim]not measured[/]"}[check["met"]]
        table.add_row(check["target"], format_value(check["value"]), met)
    return table


def output_base(directory: Path) -> Path:
    """``directory/<date>`` (``<date>-2``, ``-3``... when taken), without suffix."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    base = directory / stamp
    suffix = itertools.count(2)
    while base.with_suffix(".json").exists():
        base = directory / f"{stamp}-{next(suffix)}"
    return base


def write_json(report: dict[str, Any], path: Path) -> None:
    """The report as indented JSON."""
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def write_outputs(
    report: dict[str, Any], directory: Path, *, chart: bool = True, base: Path | None = None
) -> list[Path]:
    """``<date>.json`` (and ``<date>.png`` when matplotlib is installed) in ``directory`` (or at ``base``)."""
    base = base.with_suffix("") if base is not None else output_base(directory)
    json_path = base.with_suffix(".json")
    write_json(report, json_path)
    paths = [json_path]
    if chart and importlib.util.find_spec("matplotlib") is not None:
        from .chart import draw_chart

        png = base.with_suffix(".png")
        draw_chart(report, png)
        paths.append(png)
    return paths
