"""The dashboard's charts, drawn as plain SVG on the server from the last hour's bins (history.py): a line
per series, a gap where nothing was seen, the y axis from zero to a round maximum, and an HTML legend.
The page replaces the whole fragment every CHART_REFRESH_MS, so the charts are drawn in one place only."""

from __future__ import annotations

import math
from html import escape

from services.api.dashboard.history import BIN_S, Chart, HistoryData

CHART_REFRESH_MS = BIN_S * 1000
WIDTH, HEIGHT = 480, 150
LEFT, RIGHT, TOP, BOTTOM = 46, 8, 8, 20  # room for the axis labels
COLOURS = {
    "SUCCESS": "#27ab83", "FAILURE": "#d64545", "TIMEOUT": "#f0b429", "REVOKED": "#7b8794",
    "p50": "#2186eb", "p95": "#9446ed", "p99": "#1f2933",
    "fetch": "#2186eb", "classify": "#9446ed", "upscale": "#27ab83", "upload": "#f0b429",
}  # fmt: skip
PALETTE = ("#2186eb", "#27ab83", "#9446ed", "#f0b429", "#d64545", "#7b8794")
EMPTY = {"gpu": "No upscaler reports GPU memory (CPU workers only)."}


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value * (1 - 1e-9))


def _label(value: float, unit: str) -> str:
    text = f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"
    return f"{text} {unit}".strip() if unit in ("s", "MB") else text + unit


def _path(points: list[float | None], top: float) -> str:
    """An SVG path through `points` (evenly spaced, the newest at the right), broken at each None; a point
    alone between gaps is a dot (a zero-length segment, drawn by the round line cap)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(points) - 1)
    parts: list[str] = []
    run = 0  # points in the segment being drawn
    for i, value in enumerate([*points, None]):
        if value is None:
            if run == 1:
                parts.append("h0")
            run = 0
            continue
        x, y = LEFT + i * step, TOP + plot_h * (1 - min(value, top) / top)
        parts.append(f"{'L' if run else 'M'}{x:.1f} {y:.1f}")
        run += 1
    return " ".join(parts)


def render_chart(chart: Chart) -> str:
    values = [v for s in chart.series for v in s.points if v is not None]
    caption = f"<figcaption>{escape(chart.title)}</figcaption>"
    if not chart.series and chart.id in EMPTY:
        return f"<figure class='chart' id='chart-{chart.id}'>{caption}<p class='empty'>{EMPTY[chart.id]}</p></figure>"
    top = nice_ceiling(max(values, default=0.0))
    bottom_y = HEIGHT - BOTTOM
    grid = "".join(
        f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{y:.1f}' y2='{y:.1f}' class='grid'/>"
        f"<text x='{LEFT - 4}' y='{y + 4:.1f}' text-anchor='end'>{escape(_label(v, chart.unit))}</text>"
        for v in (0.0, top / 2, top)
        for y in [TOP + (HEIGHT - TOP - BOTTOM) * (1 - v / top)]
    )
    ticks = "".join(
        f"<text x='{x:.1f}' y='{HEIGHT - 5}' text-anchor='{anchor}'>{label}</text>"
        for x, anchor, label in ((LEFT, "start", "-60 min"), ((LEFT + WIDTH - RIGHT) / 2, "middle", "-30 min"),
                                 (WIDTH - RIGHT, "end", "now"))
    )  # fmt: skip
    lines, legend = [], []
    for i, series in enumerate(chart.series):
        colour = COLOURS.get(series.name, PALETTE[i % len(PALETTE)])
        name = escape(series.name)
        if d := _path(series.points, top):
            lines.append(f"<path d='{d}' stroke='{colour}' data-series='{name}'/>")
        legend.append(f"<span><i style='background:{colour}'></i>{name}</span>")
    svg = (
        f"<svg viewBox='0 0 {WIDTH} {HEIGHT}' role='img' aria-label='{escape(chart.title)}'>"
        f"{grid}<line x1='{LEFT}' x2='{LEFT}' y1='{TOP}' y2='{bottom_y}' class='axis'/>{ticks}"
        f"<g class='lines'>{''.join(lines)}</g></svg>"
    )
    legend_html = f"<div class='legend'>{''.join(legend)}</div>"
    return f"<figure class='chart' id='chart-{chart.id}'>{caption}{svg}{legend_html}</figure>"


def render_charts(history: HistoryData) -> str:
    """Every chart, as the HTML the page's #charts section holds."""
    return "".join(render_chart(chart) for chart in history.charts)
