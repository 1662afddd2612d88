"""Pacing (one aiolimiter shared by every attempt) and the daily quota read from headers.

aiolimiter lets a full bucket through at once, so the bucket holds one call and its period is
the spacing between calls: requests leave evenly spaced, with no burst at start or after a pause.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
from aiolimiter import AsyncLimiter

from .config import Rate

CLIMB_EVERY = 20
"""After a 429 the pace climbs back by a tenth of the target every this many successes."""
SLOW_DOWN = 0.7


class Pacer:
    """Spaces every attempt of every worker; pauses them all at once after a 429."""

    def __init__(self, rate: Rate | None, *, probe_first: bool = False) -> None:
        self.target = rate
        self._rate: float | None = None
        self._limiter: AsyncLimiter | None = None
        self._resume_at = 0.0
        self._not_before = 0.0
        self._pause_reason = ""
        self._streak = 0
        self._backoffs = 0
        self._last = -math.inf
        self._probe_pending = probe_first
        self._learnt = anyio.Event()
        if not probe_first:
            self._learnt.set()
        self._set(rate.per_second if rate else None)

    @property
    def per_second(self) -> float | None:
        return self._rate

    def _set(self, per_second: float | None) -> None:
        self._rate = per_second
        self._limiter = AsyncLimiter(1, 1 / per_second) if per_second else None
        # A fresh bucket is empty: keep the spacing from the call that left last.
        if per_second:
            self._not_before = max(self._not_before, self._last + 1 / per_second)

    def learn(self, rate: Rate | None) -> None:
        """The first answer told us the plan: pace at it from now on."""
        if rate is not None:
            self.target = rate
            self._set(rate.per_second)
        self._learnt.set()

    async def acquire(self) -> None:
        """Wait for this attempt's slot."""
        while True:
            wait = max(self._resume_at, self._not_before) - anyio.current_time()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            if not self._learnt.is_set():
                if not self._probe_pending:
                    # One probe is out; the others wait for the plan it reveals.
                    with anyio.move_on_after(1 / (self._rate or 1)):
                        await self._learnt.wait()
                    continue
                self._probe_pending = False
            limiter = self._limiter
            if limiter is not None:
                await limiter.acquire()
            if limiter is self._limiter and anyio.current_time() >= self._resume_at:
                self._last = anyio.current_time()
                return

    def pause(self, seconds: float, reason: str) -> None:
        """Hold every worker for `seconds` (already-sent requests are not affected)."""
        until = anyio.current_time() + max(0.0, seconds)
        if until > self._resume_at:
            self._resume_at, self._pause_reason = until, reason

    def rate_limited(self, retry_after: float | None) -> float:
        """A per-minute 429: pause everyone, then resume slower. Returns the pause length."""
        self._backoffs += 1
        self._streak = 0
        pause = retry_after if retry_after is not None else min(60.0, 2.0**self._backoffs)
        self.pause(pause, "backing off after a 429")
        if self._rate:
            floor = self.target.per_second * 0.1 if self.target else self._rate * 0.1
            self._set(max(floor, self._rate * SLOW_DOWN))
        return pause

    def succeeded(self) -> None:
        """Climb back toward the target slowly after a slow-down."""
        self._backoffs = 0
        if not (self.target and self._rate) or self._rate >= self.target.per_second:
            return
        self._streak += 1
        if self._streak >= CLIMB_EVERY:
            self._streak = 0
            step = self.target.per_second * 0.1
            self._set(min(self.target.per_second, self._rate + step))

    def state(self) -> tuple[str, float | None]:
        """('sending', None) or (why paused, seconds left)."""
        left = self._resume_at - anyio.current_time()
        return (self._pause_reason, left) if left > 0 else ("sending", None)


def _int(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(float(headers[name]))
    except (KeyError, ValueError):
        return None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (delta form; HTTP dates are rare here and read as absent)."""
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass
class Quota:
    """The daily quota as the X-RateLimit-* headers report it (the day, not the minute)."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None
    """Unix seconds."""

    def observe(self, headers: Mapping[str, str]) -> None:
        limit = _int(headers, "x-ratelimit-limit")
        remaining = _int(headers, "x-ratelimit-remaining")
        reset = _int(headers, "x-ratelimit-reset")
        if limit is not None:
            self.limit = limit
        if remaining is None:
            return
        new_window = reset is not None and (self.reset_at is None or reset > self.reset_at)
        # Answers arrive out of order: within one window the smallest figure is the freshest.
        if new_window or self.remaining is None or remaining < self.remaining:
            self.remaining = remaining
        if new_window:
            self.reset_at = float(reset) if reset is not None else None

    def spent(self, in_flight: int, reserve: int) -> bool:
        """True when sending one more call would eat into the reserve."""
        return self.remaining is not None and self.remaining - in_flight <= reserve

    def seconds_to_reset(self) -> float | None:
        return None if self.reset_at is None else max(0.0, self.reset_at - time.time())

    def start_new_window(self) -> None:
        """After waiting out a reset, trust the next answer rather than the old count."""
        self.remaining = None
