"""The run over time, from per-minute counts (per-second for a short run): bars for a chart
(at most `MAX_BARS`, however long the job) and the stretches of work, split where nothing
happened for `GAP` (a restart, or a wait for the daily quota)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

GAP = timedelta(minutes=10)
"""Quiet this long between two calls starts a new stretch of work."""
MAX_BARS = 120
BAR_SECONDS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200)
"""Bar widths that read as round times; wider still for jobs of months, in whole days."""
FINE_SPAN = timedelta(seconds=30 * MAX_BARS)
"""A run shorter than this gets bars narrower than a minute, from per-second counts."""
LISTED_STRETCHES = 50
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Minute:
    """What happened in one minute (or one second: `timeline`'s `fine`), UTC: calls sent,
    429s, quota-spent answers, and the seconds requests spent in 429 pauses."""

    at: datetime
    calls: int
    rate_limited: int = 0
    quota_spent: int = 0
    paused: float = 0.0
    """Seconds requests spent waiting out 429 pauses (summed over requests)."""
    quota_waits: int = 0
    """Requests that left after waiting for the daily quota to reset (--wait-for-quota)."""


@dataclass(frozen=True)
class Bar:
    """One bar of the chart: `Timeline.bar_seconds` wide from `at`."""

    at: datetime
    calls: int
    rate_limited: int
    quota: int
    """Quota-spent answers, and requests that left after a wait for the quota."""


@dataclass(frozen=True)
class Stretch:
    """A stretch of work with no quiet of `GAP` or more inside: a run, or part of one."""

    start: datetime
    end: datetime
    calls: int
    rate_limited: int
    quota_spent: int
    quota_waits: int
    """Requests in it that had waited for the daily quota (the wait is a stop inside it)."""


@dataclass(frozen=True)
class Timeline:
    """The run over time; empty when no record has a readable time."""

    from_audit: bool
    """Calls, 429s and quota stops come from the audit log (else: the results file's
    attempts, counted in the minute each row finished, and no 429s or quota stops)."""
    bar_seconds: int = 60
    bars: tuple[Bar, ...] = ()
    stretches: tuple[Stretch, ...] = ()
    stretches_total: int = 0
    calls: int = 0
    rate_limited: int = 0
    quota_spent: int = 0
    quota_waits: int = 0
    paused: float = 0.0
    peak: int = 0
    """Most calls in one minute."""

    @property
    def start(self) -> datetime | None:
        return self.bars[0].at if self.bars else None

    @property
    def end(self) -> datetime | None:
        return self.bars[-1].at + timedelta(seconds=self.bar_seconds) if self.bars else None


def timeline(
    results: list[Minute], audit: list[Minute] | None = None, fine: list[Minute] | None = None
) -> Timeline:
    """From the audit log's minutes when there is one (each request, with its answer), else
    from the results file's; a stretch of work spans either's activity. `fine`: the counted
    source per second, for a run shorter than `FINE_SPAN`. Every list is sorted."""
    counted = results if audit is None else audit
    active = sorted({m.at for m in results} | {m.at for m in audit or ()})
    if not active:
        return Timeline(from_audit=audit is not None)
    slots, unit = (fine, 1) if fine else (counted, 60)
    first, last = (slots[0].at, slots[-1].at) if slots else (active[0], active[-1])
    width = _bar_seconds(unit + (last - first).total_seconds())
    stretches = _stretches(active, counted)
    return Timeline(
        from_audit=audit is not None,
        bar_seconds=width,
        bars=_bars(first, last, slots, width),
        stretches=tuple(stretches[:LISTED_STRETCHES]),
        stretches_total=len(stretches),
        calls=sum(m.calls for m in counted),
        rate_limited=sum(m.rate_limited for m in counted),
        quota_spent=sum(m.quota_spent for m in counted),
        quota_waits=sum(m.quota_waits for m in counted),
        paused=sum(m.paused for m in counted),
        peak=max((m.calls for m in counted), default=0),
    )


def _bar_seconds(span: float) -> int:
    for width in BAR_SECONDS:
        if span <= width * MAX_BARS:
            return width
    return -(-int(span) // (MAX_BARS * 86400)) * 86400


def _bars(first: datetime, last: datetime, slots: list[Minute], width: int) -> tuple[Bar, ...]:
    """Every bar from the first slot to the last, the empty ones too: a gap is shown."""
    step = timedelta(seconds=width)
    count = int((last - first) / step) + 1
    calls, limited, spent = [0] * count, [0] * count, [0] * count
    for m in slots:
        i = min(count - 1, max(0, int((m.at - first) / step)))
        calls[i] += m.calls
        limited[i] += m.rate_limited
        spent[i] += m.quota_spent + m.quota_waits
    return tuple(Bar(first + i * step, calls[i], limited[i], spent[i]) for i in range(count))


def _stretches(active: list[datetime], counted: list[Minute]) -> list[Stretch]:
    """Split the active minutes at each quiet of `GAP` or more; count each stretch's calls."""
    bounds: list[tuple[datetime, datetime]] = []
    for at in active:
        if bounds and at - bounds[-1][1] < GAP:
            bounds[-1] = (bounds[-1][0], at)
        else:
            bounds.append((at, at))
    found = []
    i = 0
    for start, last in bounds:
        inside = []
        while i < len(counted) and counted[i].at <= last:
            if counted[i].at >= start:
                inside.append(counted[i])
            i += 1
        found.append(
            Stretch(
                start,
                last + MINUTE,
                calls=sum(m.calls for m in inside),
                rate_limited=sum(m.rate_limited for m in inside),
                quota_spent=sum(m.quota_spent for m in inside),
                quota_waits=sum(m.quota_waits for m in inside),
            )
        )
    return found
