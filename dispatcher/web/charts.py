"""Server-rendered SVG charts of a queue's attempts (:func:`dispatcher.admin.activity`): no
JavaScript and nothing fetched from elsewhere, so the strict Content-Security-Policy holds.

Each chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` summing it up for
screen readers, and a ``<title>`` per bucket (shown on hover) with its numbers; the queue page
also lists every bucket with attempts in a table. Every text put into the markup is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from markupsafe import Markup, escape

from dispatcher.admin import Activity, ActivityBucket

__all__ = ["COLORS", "counts_chart", "sparkline", "times_chart"]

COLORS = {
    "delivered": "#18794e",
    "retried": "#d08a00",
    "dead": "#b3261e",
    "p50": "#2c6bd6",
    "p99": "#7b3fbf",
}
WIDTH, HEIGHT = 720, 170
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 10, 22  # room for the axes' labels
SERIES = ("delivered", "retried", "dead")


def _hhmm(at: datetime) -> str:
    return at.strftime("%H:%M")


def _span(a: Activity, b: ActivityBucket) -> str:
    end = b.start + timedelta(seconds=a.step_seconds)
    return f"{_hhmm(b.start)}\u2013{_hhmm(end)} UTC"


def _ms(value: float | None) -> str:
    return "\u2013" if value is None else f"{value:g} ms"


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top`` (1, 2 or 5 times a power of ten)."""
    if top <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= top:
        power *= 10
    while power > top:
        power /= 10
    for step in (1, 2, 5, 10):
        if step * power >= top:
            return step * power
    return 10 * power


def _axis(value: float, unit: str) -> str:
    """An axis label: ``250``, ``500 ms``, ``2.5 s``."""
    if unit == " ms" and value >= 1000:
        return f"{value / 1000:g} s"
    return f"{_number(value)}{unit}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:g}"


def _frame(
    chart_id: str, title: str, desc: str, a: Activity, top: float, unit: str, body: list[str]
) -> Markup:
    """The ``<svg>`` around ``body``: title, description, horizontal grid and axis labels."""
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" aria-labelledby="{escape(chart_id)}-title '
        f'{escape(chart_id)}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#d5dae0" stroke-width="1"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#56606b">{escape(_axis(top * fraction, unit))}</text>'
        )
    for index, anchor in ((0, "start"), (len(a.buckets) // 2, "middle"), (None, "end")):
        at = a.end if index is None else a.buckets[index].start
        x = _x(a, len(a.buckets) if index is None else index)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" font-size="11" '
            f'fill="#56606b">{escape(_hhmm(at))}</text>'
        )
    parts.extend(body)
    parts.append("</svg>")
    return Markup("".join(parts))


def _x(a: Activity, index: float) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * index / len(a.buckets)


def counts_chart(a: Activity, chart_id: str) -> Markup:
    """Stacked bars per bucket: delivered, retried and dead-lettered attempts."""
    totals = {name: sum(getattr(b, name) for b in a.buckets) for name in SERIES}
    top = _nice(max((b.delivered + b.retried + b.dead for b in a.buckets), default=0))
    plot_h = HEIGHT - TOP - BOTTOM
    width = (WIDTH - LEFT - RIGHT) / len(a.buckets)
    body: list[str] = []
    for i, b in enumerate(a.buckets):
        base = TOP + plot_h
        tip = f"{_span(a, b)}: {b.delivered} delivered, {b.retried} retried, {b.dead} dead-lettered"
        bars = []
        for name in SERIES:
            value = getattr(b, name)
            if not value:
                continue
            h = plot_h * value / top
            base -= h
            bars.append(
                f'<rect class="bar-{name}" x="{_x(a, i) + 0.5:.1f}" y="{base:.1f}" '
                f'width="{max(width - 1, 0.5):.1f}" height="{h:.1f}" fill="{COLORS[name]}"/>'
            )
        body.append(
            f'<g class="bucket"><title>{escape(tip)}</title>'
            f'<rect x="{_x(a, i):.1f}" y="{TOP}" width="{width:.1f}" height="{plot_h}" '
            f'fill="transparent"/>{"".join(bars)}</g>'
        )
    per = "minute" if a.step_seconds == 60 else f"{a.step_seconds // 60} minutes"
    title = f"Attempts of queue {a.queue} per {per}, {_window_text(a)}"
    desc = (
        f"Stacked bars: {totals['delivered']} delivered, {totals['retried']} retried, "
        f"{totals['dead']} dead-lettered in all; the axis goes up to {_number(top)}."
    )
    return _frame(chart_id, title, desc, a, top, "", body)


def _window_text(a: Activity) -> str:
    return f"{_hhmm(a.start)} to {_hhmm(a.end)} UTC"


def times_chart(a: Activity, chart_id: str) -> Markup:
    """Lines of the answer time's p50 and p99 per bucket (gaps where nothing was sent)."""
    values = [v for b in a.buckets for v in (b.p50_ms, b.p99_ms) if v is not None]
    top = _nice(max(values, default=0))
    plot_h = HEIGHT - TOP - BOTTOM
    width = (WIDTH - LEFT - RIGHT) / len(a.buckets)
    body: list[str] = []
    for name in ("p50", "p99"):
        runs: list[list[str]] = [[]]
        for i, b in enumerate(a.buckets):
            value = getattr(b, f"{name}_ms")
            if value is None:
                runs.append([])
                continue
            x, y = _x(a, i + 0.5), TOP + plot_h * (1 - value / top)
            runs[-1].append(f"{x:.1f},{y:.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                body.append(
                    f'<circle class="line-{name}" cx="{cx}" cy="{cy}" r="2" fill="{COLORS[name]}"/>'
                )
            elif run:
                body.append(
                    f'<polyline class="line-{name}" points="{" ".join(run)}" fill="none" '
                    f'stroke="{COLORS[name]}" stroke-width="1.6"/>'
                )
    for i, b in enumerate(a.buckets):
        if b.p50_ms is None:
            continue
        tip = f"{_span(a, b)}: p50 {_ms(b.p50_ms)}, p99 {_ms(b.p99_ms)} ({b.attempts} attempts)"
        body.append(
            f'<rect x="{_x(a, i):.1f}" y="{TOP}" width="{width:.1f}" height="{plot_h}" '
            f'fill="transparent"><title>{escape(tip)}</title></rect>'
        )
    worst = max((b.p99_ms for b in a.buckets if b.p99_ms is not None), default=None)
    title = f"Answer time of queue {a.queue}, p50 and p99, {_window_text(a)}"
    desc = (
        "No attempts in this window."
        if worst is None
        else f"Two lines, the median and the 99th percentile per bucket; the highest p99 was "
        f"{_ms(worst)}."
    )
    return _frame(chart_id, title, desc, a, top, " ms", body)


def sparkline(values: Sequence[int], queue: str, width: int = 120, height: int = 26) -> Markup:
    """A small line of delivered jobs per minute over the last hour (the overview's)."""
    top = max(values, default=0) or 1
    step = width / max(len(values) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (height - 4) * v / top:.1f}" for i, v in enumerate(values)
    )
    total = sum(values)
    label = (
        f"Queue {queue}: {total} delivered in the last hour, at most {max(values, default=0)} "
        "in one minute"
    )
    return Markup(
        f'<svg class="sparkline" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>'
        f'<line x1="0" x2="{width}" y1="{height - 2}" y2="{height - 2}" stroke="#d5dae0"/>'
        f'<polyline points="{points}" fill="none" stroke="{COLORS["delivered"]}" '
        f'stroke-width="1.5"/></svg>'
    )
