"""The PNG chart of a report (needs matplotlib, from the ``peers`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw_chart(report: dict[str, Any], path: Path) -> None:
    """Bars (median, min-max whiskers) per scenario variant, one colour per system, log scale for rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in report["figures"]:
        if f["scenario"] in ("history", "memory") and f["unit"] in ("x", "%"):
            continue
        panels.setdefault((f["scenario"], f["unit"]), []).append(f)
    if not panels:
        return
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    systems = sorted({f["system"] for f in report["figures"]})
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(systems)}
    for ax, ((scenario, unit), figures) in zip(axes.flat, sorted(panels.items()), strict=False):
        labels = [f"{f['backend']}\n{f['variant']}\n{f['system']}" for f in figures]
        medians = [f["median"] for f in figures]
        lows = [max(0.0, f["median"] - f["min"]) for f in figures]
        highs = [max(0.0, f["max"] - f["median"]) for f in figures]
        ax.bar(
            range(len(figures)), medians, yerr=[lows, highs], color=[colours[f["system"]] for f in figures], capsize=3
        )
        ax.set_xticks(range(len(figures)))
        ax.set_xticklabels(labels, fontsize=6, rotation=90)
        ax.set_title(f"{scenario} ({unit})", fontsize=10)
        if unit.endswith("/s") and min(medians) > 0 and max(medians) / max(min(medians), 1e-9) > 20:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[s]) for s in systems]
    fig.legend(handles, systems, loc="upper right", ncol=len(systems))
    fig.suptitle(
        f"polyqueue bench {report['started']} - {report['machine']['cpu']}, {report['machine']['cores']} cores"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
