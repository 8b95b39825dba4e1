"""Throughput as an inline SVG bar chart: server-rendered, no JavaScript, readable without styles."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

__all__ = ["Bar", "throughput_svg"]

WIDTH, HEIGHT, GAP = 600, 120, 1


@dataclass(frozen=True, slots=True)
class Bar:
    """One slice: how many jobs ended done and dead in it, and its label (minutes ago)."""

    done: int
    dead: int
    label: str


def throughput_svg(bars: list[Bar], title: str) -> str:
    """Stacked bars (done below, dead above), oldest on the left; each bar's tooltip gives its counts."""
    top = max((b.done + b.dead for b in bars), default=0) or 1
    step = WIDTH / max(len(bars), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + 14}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for i, bar in enumerate(bars):
        x = i * step
        done_h = HEIGHT * bar.done / top
        dead_h = HEIGHT * bar.dead / top
        tip = escape(f"{bar.label}: {bar.done} done, {bar.dead} dead")
        parts.append(f"<g><title>{tip}</title>")
        parts.append(
            f'<rect class="done" x="{x:.1f}" y="{HEIGHT - done_h:.1f}" width="{step - GAP:.1f}" height="{done_h:.1f}"/>'
        )
        parts.append(
            f'<rect class="dead" x="{x:.1f}" y="{HEIGHT - done_h - dead_h:.1f}" '
            f'width="{step - GAP:.1f}" height="{dead_h:.1f}"/>'
        )
        parts.append("</g>")
    parts.append(f'<text x="0" y="{HEIGHT + 12}">{escape(bars[0].label) if bars else ""}</text>')
    parts.append(f'<text x="{WIDTH}" y="{HEIGHT + 12}" text-anchor="end">now</text>')
    legend = '<tspan class="done">done</tspan> <tspan class="dead">dead</tspan>'
    parts.append(f'<text x="2" y="10">{top} per slice · {legend}</text>')
    parts.append("</svg>")
    return "".join(parts)
