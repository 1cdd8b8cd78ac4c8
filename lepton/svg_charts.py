"""Small, dependency-free SVG charts for self-contained HTML reports (no network at view time).

Two shapes are enough for the privacy report: lines (epsilon over charges, with a budget
line) and stacked bars (participants and dropouts per round). Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 150, 28, 40
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Line:
    """One series: y values at x = 1, 2, …; ``dashed`` for limits such as a budget."""

    label: str
    values: Sequence[float]
    dashed: bool = False


def _frame(title: str, y_label: str, y_max: float, x_ticks: Sequence[str]) -> list[str]:
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<text x="{_LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_LEFT + plot_w}" y2="{_TOP + plot_h}" '
        'stroke="#333"/>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}" stroke="#333"/>',
        f'<text x="12" y="{_TOP + plot_h / 2}" font-size="11" transform="rotate(-90 12 '
        f'{_TOP + plot_h / 2})" text-anchor="middle">{escape(y_label)}</text>',
    ]
    for i in range(5):
        value = y_max * i / 4
        y = _TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{value:.3g}</text>"
        )
    step = max(1, len(x_ticks) // 12)
    for i, tick in enumerate(x_ticks):
        if i % step == 0:
            x = _x(i + 1, len(x_ticks))
            parts.append(
                f'<text x="{x:.1f}" y="{_TOP + plot_h + 14}" font-size="9" '
                f'text-anchor="middle">{escape(tick)}</text>'
            )
    return parts


def _x(i: float, n: int) -> float:
    plot_w = WIDTH - _LEFT - _RIGHT
    return _LEFT + plot_w * (i - 0.5) / max(n, 1)


def _y(value: float, y_max: float) -> float:
    plot_h = HEIGHT - _TOP - _BOTTOM
    return _TOP + plot_h - plot_h * (value / y_max if y_max > 0 else 0.0)


def _legend(labels: Sequence[str], colors: Sequence[str]) -> list[str]:
    x = WIDTH - _RIGHT + 10
    return [
        f'<rect x="{x}" y="{_TOP + 16 * i}" width="10" height="10" fill="{c}"/>'
        f'<text x="{x + 14}" y="{_TOP + 16 * i + 9}" font-size="10">{escape(label[:22])}</text>'
        for i, (label, c) in enumerate(zip(labels, colors, strict=True))
    ]


def line_chart(title: str, y_label: str, lines: Sequence[Line], x_ticks: Sequence[str]) -> str:
    """Lines over the same x positions (one per tick)."""
    n = len(x_ticks)
    y_max = max((v for line in lines for v in line.values), default=1.0) * 1.1 or 1.0
    parts = _frame(title, y_label, y_max, x_ticks)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(lines))]
    for line, color in zip(lines, colors, strict=True):
        points = " ".join(
            f"{_x(i + 1, n):.1f},{_y(v, y_max):.1f}" for i, v in enumerate(line.values)
        )
        dash = ' stroke-dasharray="5,4"' if line.dashed else ""
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
        )
        if not line.dashed:
            parts += [
                f'<circle cx="{_x(i + 1, n):.1f}" cy="{_y(v, y_max):.1f}" r="2.5" fill="{color}"/>'
                for i, v in enumerate(line.values)
            ]
    parts += _legend([line.label for line in lines], colors)
    parts.append("</svg>")
    return "".join(parts)


def stacked_bars(
    title: str, y_label: str, stacks: Mapping[str, Sequence[float]], x_ticks: Sequence[str]
) -> str:
    """One bar per tick, stacked from the series in ``stacks`` (in order)."""
    n = len(x_ticks)
    totals = [sum(series[i] for series in stacks.values()) for i in range(n)]
    y_max = max(totals, default=1.0) * 1.1 or 1.0
    parts = _frame(title, y_label, y_max, x_ticks)
    colors = [PALETTE[(i * 3) % len(PALETTE)] for i in range(len(stacks))]
    width = (WIDTH - _LEFT - _RIGHT) / max(n, 1) * 0.7
    base = [0.0] * n
    for series, color in zip(stacks.values(), colors, strict=True):
        for i, value in enumerate(series):
            top, bottom = _y(base[i] + value, y_max), _y(base[i], y_max)
            parts.append(
                f'<rect x="{_x(i + 1, n) - width / 2:.1f}" y="{top:.1f}" width="{width:.1f}" '
                f'height="{bottom - top:.1f}" fill="{color}"/>'
            )
            base[i] += value
    parts += _legend(list(stacks), colors)
    parts.append("</svg>")
    return "".join(parts)
