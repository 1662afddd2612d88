"""Inline SVG charts for the report page: no script, no external file, a title and a
description for screen readers, and plain shapes that print."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from ..text import duration
from .timeline import Bar, Stretch, Timeline

COLOURS = {
    "removed": "#2e7d32",
    "not_enrolled": "#64b5f6",
    "rejected": "#ef6c00",
    "failed": "#c62828",
    "invalid": "#6a1b9a",
    "duplicate": "#9e9e9e",
}
CALLS, LIMITED, QUOTA = "#1565c0", "#d32f2f", "#212121"
WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 22, 34


def e(value: object) -> str:
    """Every piece of text on the page goes through here: ids come from customer files."""
    return escape(str(value), quote=True)


def _svg(name: str, title: str, desc: str, body: str, height: int) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-labelledby="{name}-title {name}-desc" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{name}-title">{e(title)}</title><desc id="{name}-desc">{e(desc)}</desc>'
        f"{body}</svg>"
    )


def outcome_bar(outcomes: dict[str, int]) -> str:
    """One bar split by outcome, each part as wide as its share of the rows."""
    total = sum(outcomes.values())
    parts, x = [], 0.0
    for name, count in outcomes.items():
        if not count:
            continue
        width = (WIDTH - 2) * count / total
        share = f"{name}: {count:,} rows ({100 * count / total:.1f}%)"
        parts.append(
            f'<rect x="{x + 1:.2f}" y="1" width="{width:.2f}" height="38" '
            f'fill="{COLOURS.get(name, CALLS)}"><title>{e(share)}</title></rect>'
        )
        x += width
    shares = "; ".join(f"{n} {c:,}" for n, c in outcomes.items() if c) or "no rows"
    return _svg("outcomes", "Rows by outcome", f"{total:,} rows: {shares}.", "".join(parts), 40)


def _when(moment: datetime | None, seconds: bool = False) -> str:
    if moment is None:
        return ""
    return f"{moment:%Y-%m-%d %H:%M:%S}" if seconds else f"{moment:%Y-%m-%d %H:%M}"


def _nice(peak: float) -> int:
    """The axis' top: the first of 1, 2, 5, 10, 20, 50... at or above the peak."""
    scale = 1
    while True:
        for step in (1, 2, 5):
            if scale * step >= peak:
                return scale * step
        scale *= 10


def timeline_chart(t: Timeline) -> str:
    """Calls per minute as bars (each bar's average when it spans several minutes), red
    marks where the API answered 429, black marks where it said the daily quota was spent,
    and a numbered line where each stretch of work began."""
    if not t.bars:
        return ""
    per_minute = [bar.calls * 60 / t.bar_seconds for bar in t.bars]
    top = _nice(max(per_minute))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / len(t.bars)
    body = [_axes(top, t, plot_w, plot_h)]
    for i, (bar, rate) in enumerate(zip(t.bars, per_minute, strict=True)):
        body.append(_bar(bar, rate, LEFT + i * step, step, top, plot_h, t.bar_seconds))
    body.extend(_stretch_lines(t, step, plot_h))
    title = "Calls per minute over the run"
    return _svg("timeline", title, _timeline_desc(t), "".join(body), HEIGHT)


def _axes(top: int, t: Timeline, plot_w: float, plot_h: float) -> str:
    base, fine = TOP + plot_h, t.bar_seconds < 60
    return (
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="#555"/>'
        f'<line x1="{LEFT}" y1="{base}" x2="{LEFT + plot_w}" y2="{base}" stroke="#555"/>'
        f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top:,}</text>'
        f'<text x="{LEFT - 6}" y="{base}" text-anchor="end">0</text>'
        f'<text x="{LEFT - 6}" y="{TOP - 8}" text-anchor="end">calls/min</text>'
        f'<text x="{LEFT}" y="{HEIGHT - 10}">{e(_when(t.start, fine))} UTC</text>'
        f'<text x="{LEFT + plot_w}" y="{HEIGHT - 10}" text-anchor="end">'
        f"{e(_when(t.end, fine))} UTC</text>"
    )


def _bar(bar: Bar, rate: float, x: float, step: float, top: int, plot_h: float, w: int) -> str:
    height = plot_h * rate / top
    span = duration(w)
    what = f"{_when(bar.at, w < 60)} UTC, {span}: {bar.calls:,} calls"
    if bar.rate_limited:
        what += f", {bar.rate_limited:,} answered 429"
    if bar.quota:
        what += f", {bar.quota:,} quota spent or waited for"
    parts = [
        f'<rect x="{x:.2f}" y="{TOP + plot_h - height:.2f}" width="{max(step - 0.5, 0.5):.2f}" '
        f'height="{height:.2f}" fill="{CALLS}"><title>{e(what)}</title></rect>'
    ]
    mark_w = max(step - 0.5, 2.0)
    if bar.rate_limited:
        parts.append(_mark(x, TOP + plot_h + 2, mark_w, LIMITED, what))
    if bar.quota:
        parts.append(_mark(x, TOP + plot_h + 8, mark_w, QUOTA, what))
    return "".join(parts)


def _mark(x: float, y: float, width: float, colour: str, what: str) -> str:
    return (
        f'<rect x="{x:.2f}" y="{y:.2f}" width="{width:.2f}" height="5" fill="{colour}">'
        f"<title>{e(what)}</title></rect>"
    )


def _stretch_lines(t: Timeline, step: float, plot_h: float) -> list[str]:
    """A dashed line where each stretch after the first began: a restart, or the end of a
    wait (for the quota, say)."""
    if t.start is None or len(t.stretches) < 2:
        return []
    lines = []
    for number, s in enumerate(t.stretches[1:], start=2):
        x = LEFT + (s.start - t.start).total_seconds() / t.bar_seconds * step
        lines.append(
            f'<line x1="{x:.2f}" y1="{TOP}" x2="{x:.2f}" y2="{TOP + plot_h}" stroke="#444" '
            f'stroke-dasharray="4 3"><title>stretch {number} began {e(_when(s.start))} UTC'
            f'</title></line><text x="{x + 3:.2f}" y="{TOP - 4}">{number}</text>'
        )
    return lines


def _timeline_desc(t: Timeline) -> str:
    parts = [
        f"From {_when(t.start)} to {_when(t.end)} UTC: {t.calls:,} calls, "
        f"at most {t.peak:,} in one minute, in {_count(t.stretches_total, 'stretch')} of work."
    ]
    if t.from_audit:
        parts.append(
            f"{_count(t.rate_limited, 'answer')} 429 (rate limited); "
            f"{_count(t.quota_spent, 'answer')} daily quota spent; "
            f"{_count(t.quota_waits, 'request')} waited for the quota to reset."
        )
    return " ".join(parts)


def _count(n: int, noun: str, plural: str | None = None) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n:,} {plural or (noun + 'es' if noun.endswith('ch') else noun + 's')}"


def _quota_note(s: Stretch) -> str:
    notes = []
    if s.quota_waits:
        notes.append("waited for the daily quota")
    if s.quota_spent:
        notes.append("daily quota spent")
    return ", ".join(notes)


def stretch_rows(stretches: Sequence[Stretch]) -> list[tuple[str, ...]]:
    """The stretches as table cells: the chart's text equivalent."""
    return [
        (
            str(i),
            f"{_when(s.start)} UTC",
            f"{_when(s.end)} UTC",
            f"{s.calls:,}",
            f"{s.rate_limited:,}",
            _quota_note(s),
        )
        for i, s in enumerate(stretches, start=1)
    ]
