"""LeadLex's limits: rates, the published plans, the quota arithmetic, the safety margin."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import InputError

SAFETY_MARGIN = 0.98
"""Pace at 98% of a limit. N calls at that pace span N/0.98 windows, so a strict sliding window
of any length leaves 2% of itself (20 ms of a 1 s window, 1.2 s of a minute) for the pacer's own
catch-up tolerance (`pacing.CATCH_UP`) and for network and server jitter: zero 429s, 97-98% of
the rate. See docs/benchmarks.md for the measured figures."""


@dataclass(frozen=True, slots=True)
class Rate:
    """Calls per period, e.g. 40/s or 50/min."""

    calls: float
    period: float

    @property
    def per_second(self) -> float:
        return self.calls / self.period

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.calls)

    @classmethod
    def parse(cls, text: str) -> Rate:
        if text.strip().lower() in ("unlimited", "none", "max"):
            return UNLIMITED
        match = re.fullmatch(
            r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*", text
        )
        if not match or float(match[1]) <= 0:
            raise InputError(
                f"--rate {text!r} is not a rate: write calls per second or minute, "
                "for example 40/s or 50/min, or 'unlimited' for an unmetered key"
            )
        period = {"s": 1.0, "m": 60.0, "h": 3600.0}[match[2][0]]
        return cls(float(match[1]), period)

    def __str__(self) -> str:
        if self.unlimited:
            return "unlimited"
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.period, f"{self.period:g}s")
        return f"{self.calls:g}/{unit}"


UNLIMITED = Rate(math.inf, 1.0)
"""No pacing at all: for unmetered keys, the sandbox and benchmarks."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A LeadLex workspace plan: the daily quota and the per-minute limit."""

    name: str
    per_day: int
    per_minute: int

    @property
    def rate(self) -> Rate:
        return Rate(self.per_minute, 60.0)


PLANS = {
    p.name: p for p in (Plan("starter", 100, 10), Plan("pro", 1_000, 50), Plan("org", 10_000, 200))
}


def plan_for_daily_limit(limit: int) -> Plan:
    """The plan whose daily quota is `limit`, or the largest one below it for custom tiers."""
    fitting = [p for p in PLANS.values() if p.per_day <= limit]
    return max(fitting, key=lambda p: p.per_day) if fitting else PLANS["starter"]


def is_published_plan(limit: int) -> bool:
    """A daily limit that names a published plan (a custom tier's does not)."""
    return any(p.per_day == limit for p in PLANS.values())


def days_needed(calls: int, per_day: int, reserve: int = 0) -> int | None:
    """Quota days a job of `calls` calls spans at `per_day`, keeping `reserve`; None if never."""
    usable = per_day - reserve
    if usable <= 0:
        return None
    return max(1, math.ceil(calls / usable)) if calls else 0
