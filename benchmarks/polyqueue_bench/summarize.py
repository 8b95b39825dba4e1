"""Render a benchmark result JSON (from ``polyqueue bench``) as the Markdown tables of benchmarks/README.md.

Usage: ``python -m polyqueue_bench.summarize benchmarks/results/2026-11-25-3.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .report import format_value
from .targets import compute_checks


def summarize(result: dict[str, Any]) -> str:
    """The Markdown summary of one run: header, every figure with polyqueue's ratio, the reference targets."""
    ratios = {(r["scenario"], r["variant"], r["backend"], r["vs"]): r["ratio"] for r in result["ratios"]}
    config = result["config"]
    lines = [
        f"Run `{result['label']}`, {result['started']} to {result['finished']}; "
        f"median of {config['repetitions']} (min-max); polyqueue `concurrency={config['concurrency']}, "
        f"batch_size={config['batch_size']}`.",
        "",
        "| scenario | variant | backend | system | median | min-max | unit | polyqueue vs this |",
        "|---|---|---|---|---:|---:|---|---:|",
    ]
    for f in result["figures"]:
        ratio = ratios.get((f["scenario"], f["variant"], f["backend"], f["system"]))
        shown = "" if ratio is None else ("inf" if ratio == float("inf") else f"{ratio:.2f}x")
        lines.append(
            f"| {f['scenario']} | {f['variant']} | {f['backend']} | {f['system']} | {format_value(f['median'])} | "
            f"{format_value(f['min'])}-{format_value(f['max'])} | {f['unit']} | {shown} |"
        )
    if result.get("errors"):
        lines += ["", "Failed trials:", ""] + [f"* {e}" for e in result["errors"]]
    # Checked again against today's targets (a run's own JSON holds the targets of its day).
    figures = {
        (f["scenario"], f["variant"], f["backend"], f["system"]): SimpleNamespace(**f) for f in result["figures"]
    }
    checks = compute_checks(figures)  # type: ignore[arg-type]
    if checks:
        lines += ["", "| target | measured | met |", "|---|---:|---|"]
        for check in checks:
            value = format_value(check["value"])
            met = "yes" if check["met"] else ("not measured" if check["value"] is None else "**no**")
            lines.append(f"| {check['target']} | {value} | {met} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Print the summary of each JSON file named in ``argv``."""
    if not argv:
        print((__doc__ or "").strip().splitlines()[-1], file=sys.stderr)
        return 2
    for path in argv:
        print(summarize(json.loads(Path(path).read_text())))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
