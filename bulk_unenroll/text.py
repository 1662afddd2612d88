"""The one place that formats durations, rates and reset times for people."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from .limits import Rate


def duration(seconds: float, *, up: bool = False) -> str:
    """`42s`, `3m07s`, `5h12m`, `3d04h`: short enough for a progress line. `up` rounds up,
    for a wait that must not be understated ("in 5h12m" never comes early)."""
    total = max(0, math.ceil(seconds) if up else round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def per_unit(per_second: float | None) -> str:
    """`s` or `min`, whichever reads better for this rate."""
    return "s" if per_second is not None and per_second >= 1 else "min"


def rate_text(
    rate: Rate | float | None,
    noun: str = "",
    per: str | None = None,
    *,
    figures: int | None = None,
    unknown: str = "unknown",
) -> str:
    """Per second or per minute (`per`, else whichever reads better): `4.9/s`, `9.8 rows/min`;
    with `figures`, that many significant figures (`39.2/s`, `49/min`, `1,200/s`)."""
    if rate is None:
        return unknown
    per_second = rate.per_second if isinstance(rate, Rate) else rate
    if math.isinf(per_second):
        return "unlimited"
    unit = f" {noun}/" if noun else "/"
    per = per or per_unit(per_second)
    value = per_second if per == "s" else per_second * 60
    if figures is None:
        shown = f"{value:,.1f}"
    elif value >= 10 ** (figures - 1):
        shown = f"{value:,.0f}"
    else:
        shown = f"{value:.{figures}g}"
    return f"{shown}{unit}{per}"


def pace_text(per_second: float | None) -> str:
    """A pace for people: 39.2/s, 49/min, or unpaced."""
    return rate_text(per_second or None, figures=3, unknown="unpaced")


def describe_reset(reset_at: datetime, now: datetime | None = None) -> str:
    """'2026-12-01 00:00:00 UTC (01:00:00 CET local), in 5h12m'."""
    now = now or datetime.now(UTC)
    local = reset_at.astimezone()
    return (
        f"{reset_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC "
        f"({local:%H:%M:%S} {local.tzname()} local), "
        f"in {duration((reset_at - now).total_seconds(), up=True)}"
    )
