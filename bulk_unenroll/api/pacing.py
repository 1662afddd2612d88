"""Pacing (one aiolimiter shared by every attempt) and the daily quota read from headers.

aiolimiter lets a full bucket through at once, so the bucket holds about one call and its
period is the spacing between calls: requests leave evenly spaced, with no burst at start or
after a pause. The bucket is a few milliseconds deeper than one call (`CATCH_UP`): a timer that
fires late (epoll rounds timeouts up to the millisecond, the loop has other work) is made up by
the next slot instead of being lost. With a bucket of exactly one call every late wake-up was
lost: 37.8/s of 40/s (94.5%) against a strict 1 s window.

Even spacing leaves a strict window 2% of itself (`SAFETY_MARGIN`) less the catch-up for
jitter: 10 ms of a 1 s window. On a shared machine the server (or this process) can stall for
longer, stamp a request late and count one call too many in its window: a 1-in-3 chance of a
429 per 20 s at 40/s, measured with stalls of up to 40 ms. Any such stall also delays that
request's answer, so the pacer watches latency: a call answered `e` seconds slower than usual
holds the call one window's worth of calls later until a window plus `e` after it (`answered`).
Nothing is held while answers come at their usual speed, so the guard costs no rate.

An unknown limit (a custom tier, or no daily limit reported) is found by probing: the pace
doubles every 8 seconds (`PROBE_STEPS`) while it is what holds the run back, until the first 429.
The API counts per minute, but a gateway in front of it may count per second, and one 429 cannot
say which: with a rising pace, the calls accepted in the second before it and those in the minute
before it both fit a limit of exactly that many. So lone trial calls follow, at the per-second
count's pace, one at a time: a trial the minute's count would have refused that is accepted
shows the window is a second (`_trial`); a refused one shows it is the minute. Either way the
pace becomes 98% of that window's count, and each of the next calls waits until one of the calls
already counted leaves the window, so the overshoot of the probe is not paid for with a run of
429s. The trials cost at most one 429 more.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import anyio
from aiolimiter import AsyncLimiter

from ..limits import SAFETY_MARGIN, Rate

CATCH_UP = 0.010
"""Seconds of lateness a slot may make up. N+1 calls still span at least N spacings less this,
so a window that fits N calls with 2% to spare keeps 2% of itself less this (10 ms of 1 s)."""
CLIMB_EVERY = 20
"""After a 429 the pace climbs back by a tenth every this many successes."""
SLOW_DOWN = 0.7
LONGEST_BACKOFF = 60.0
OVERLOAD_PAUSE = 1.0
"""Seconds every worker waits after a gateway sheds a call of an unpaced run (nothing to slow)."""
LATENCY_SAMPLES = 32
"""Usual latency: the fastest of this many recent answers."""
PROBE_STEPS = 7.5
"""While probing an unknown limit, the pace doubles this many times a window (every 8 s of a
minute), if the pace is what holds the run back."""
PROBE_GROWTH = 2.0
SHORT_WINDOW = 1.0
"""The shorter window an unknown limit may be counted in (a gateway's per second), told from the
API's minute by lone trial calls after the probe's first 429."""
LONGEST_SECOND_WAIT = 2.0
"""A 429 asking to wait longer than this (Retry-After) came from a window longer than a second:
a per-second limit frees a slot within one. Then the minute's count is the limit, no trial."""
TRIAL_PATIENCE = 5.0
"""Seconds the others wait for a trial call's answer before another call tries instead (that
call may never have left, or got no answer)."""
PACE = "pace"
"""What an attempt waited for when it waited for its slot (not for a pause)."""
RATE_LIMITED = "backing off after a 429"

Waits = dict[str, float]
"""Seconds an attempt waited before it left, by why (`PACE`, a pause's reason, ...)."""


def add_wait(waits: Waits, why: str, seconds: float) -> None:
    waits[why] = waits.get(why, 0.0) + seconds


class Pacer:
    """Spaces every attempt of every worker; pauses them all at once after a 429.

    `rate` None sends unpaced. With `probe_first`, one request goes out alone and the others
    wait until `learn` says the pace. `adaptive` (unknown limits) climbs with no ceiling until
    a 429 shows where the limit is.
    """

    def __init__(self, rate: Rate | None, *, probe_first: bool = False) -> None:
        self.target = rate
        self._rate: float | None = None
        self._ceiling: float | None = None
        self._limiter: AsyncLimiter | None = None
        self._resume_at = 0.0
        self._not_before = 0.0
        self._pause_reason = ""
        self._streak = 0
        self._backoffs = 0
        self._slowed_at = -math.inf
        self._last = -math.inf
        self._probe_pending = probe_first
        self._learnt = anyio.Event()
        self._closed = False
        self._waiters: set[anyio.CancelScope] = set()
        self._window: tuple[int, float] | None = None
        self._bound = False
        """The last slot had to wait for the pace (it, not the workers, sets the rate)."""
        self._issued = 0
        self._seq: dict[float, int] = {}
        self._holds: list[tuple[int, float]] = []
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._gateway_floor: float | None = None
        """The slowest pace overload answers may push the run to (a tenth of the first)."""
        self._probing = False
        self._stepped_at = -math.inf
        self._accepted: deque[float] = deque()
        """While the limit is unknown: when the calls the API accepted were sent."""
        self._refused_at: float | None = None
        """When the call the probe's first 429 refused was sent, while trials tell its window."""
        self._counts = (0, 0)
        """The calls accepted in the second and in the minute before that refused call."""
        self._trial: tuple[float, bool] | None = None
        """The last trial call: when it left, and whether the minute's count would refuse it."""
        self._trial_answered = anyio.Event()
        self._limit_window = 60.0
        """The window an unknown limit is counted in: the starting rate's period, a minute
        (the API's limits are per minute; shorter in a sandbox that runs time faster)."""
        self.learnt: Rate | None = None
        """The per-minute limit found by probing (calls the API accepted in a minute)."""
        if not probe_first:
            self._learnt.set()
        self._aim(rate, adaptive=False)

    @property
    def per_second(self) -> float | None:
        return self._rate

    @property
    def window(self) -> tuple[int, float] | None:
        """(calls, seconds): the whole count per window that slow answers hold calls to;
        None when the rate names no whole count (2.5/s) or is unknown."""
        return self._window

    @property
    def learning(self) -> bool:
        return not self._learnt.is_set()

    def _aim(self, rate: Rate | None, *, adaptive: bool) -> None:
        self.target = rate
        per_second = None if rate is None or rate.unlimited else rate.per_second
        self._ceiling = None if adaptive else per_second
        self._probing = adaptive and per_second is not None
        if rate is not None and adaptive:
            self._limit_window = rate.period
        self._stepped_at = -math.inf
        self._streak = 0
        # The strict window the pace was derived from: N calls per period (N = pace / margin);
        # none for a fractional N (2.5/s is no count a window can hold) or a guessed pace.
        self._window = None
        if rate is not None and per_second and not adaptive:
            limit = rate.calls / SAFETY_MARGIN
            if round(limit) >= 1 and abs(limit - round(limit)) < 1e-6:
                self._window = (round(limit), rate.period)
        self._set(per_second)

    def _set(self, per_second: float | None) -> None:
        self._rate = per_second
        if not per_second:
            self._limiter = None
            return
        slack = min(0.5, CATCH_UP * per_second)
        self._limiter = AsyncLimiter(1 + slack, (1 + slack) / per_second)
        # A fresh bucket is empty: keep the spacing from the call that left last.
        self._not_before = max(self._not_before, self._last + 1 / per_second)

    def learn(self, rate: Rate | None, *, adaptive: bool = False) -> None:
        """The first answer told us the plan: pace at it from now on and release the others.

        `adaptive`: the limit is unknown (a custom tier); start at `rate` and climb slowly until
        a 429 marks the ceiling.
        """
        if rate is not None or adaptive:
            self._aim(rate if rate is not None else self.target, adaptive=adaptive)
        self._learnt.set()

    def unanswered(self) -> None:
        """The probe got no response (timeout, reset, 5xx): let the next attempt probe again."""
        if not self._learnt.is_set():
            self._probe_pending = True

    def close(self) -> None:
        """The run is stopping: wake every waiting worker now rather than after its slot."""
        self._closed = True
        self._learnt.set()
        for scope in self._waiters:
            scope.cancel()

    async def acquire(self, waited: Waits | None = None) -> float:
        """Wait for this attempt's slot; returns the loop time it was given (or closed at).

        `waited` gets the seconds spent, by why: `PACE`, or the reason of the pause."""
        now = anyio.current_time()
        if self._limiter is None and self._learnt.is_set() and now >= self._resume_at:
            return now  # unpaced and not paused: the hot path of an unmetered run
        with anyio.CancelScope() as scope:
            self._waiters.add(scope)
            try:
                return await self._acquire({} if waited is None else waited)
            finally:
                self._waiters.discard(scope)
        return anyio.current_time()

    async def _acquire(self, waited: Waits) -> float:
        while not self._closed:
            now = anyio.current_time()
            wait = max(self._resume_at, self._not_before) - now
            if wait > 0:
                why = self._pause_reason if self._resume_at >= self._not_before else PACE
                await anyio.sleep(wait)
                add_wait(waited, why, anyio.current_time() - now)
                continue
            if not self._learnt.is_set():
                if not self._probe_pending:
                    await self._learnt.wait()  # one probe is out; its answer sets the pace
                    add_wait(waited, PACE, anyio.current_time() - now)
                    continue
                self._probe_pending = False
            if self._trial_out():
                await self._await_trial(waited)
                continue
            limiter = self._limiter
            if limiter is not None:
                self._bound = not limiter.has_capacity()
                await limiter.acquire()
                add_wait(waited, PACE, anyio.current_time() - now)
            now = anyio.current_time()
            if limiter is self._limiter and now >= self._resume_at:
                if self._trial_out():
                    continue
                hold = self._hold_for(self._issued)
                if hold > now:
                    self._not_before = max(self._not_before, hold)
                    continue
                if self._refused_at is not None and not self._try(now):
                    continue
                self._last = now
                if self._window is not None:
                    self._seq[now] = self._issued
                self._issued += 1
                return now
        return anyio.current_time()

    def _trial_out(self) -> bool:
        return self._trial is not None and not self._trial_answered.is_set()

    async def _await_trial(self, waited: Waits) -> None:
        """Wait for the trial call's answer (or for `TRIAL_PATIENCE`, then try again)."""
        assert self._trial is not None
        started = anyio.current_time()
        with anyio.move_on_after(self._trial[0] + TRIAL_PATIENCE - started):
            await self._trial_answered.wait()
        self._trial_answered.set()
        add_wait(waited, PACE, anyio.current_time() - started)

    def _try(self, now: float) -> bool:
        """This slot is a trial: note whether the minute's count would refuse it. False when
        trials told nothing for a whole minute: the minute's count, the safer, is the limit."""
        window, per_window = self._limit_window, self._counts[1]
        if self._refused_at is not None and now > self._refused_at + window:
            self._hold(per_window, window)
            return False
        self._trial = (now, self._accepted_in(now, window) >= per_window)
        self._trial_answered = anyio.Event()
        return True

    def _hold_for(self, seq: int) -> float:
        """The latest time a slow answer says call number `seq` must not leave before."""
        hold = 0.0
        while self._holds and self._holds[0][0] <= seq:
            hold = max(hold, heapq.heappop(self._holds)[1])
        return hold

    def answered(self, sent_at: float) -> None:
        """A response came for the call sent at `sent_at` (as `acquire` returned it).

        The server stamped that call at most this much later than usual, so the call N slots
        on (the one that would make N+1 in a window) waits until a window after that stamp.
        """
        if self._trial is not None and self._trial[0] == sent_at:
            self._trial_answered.set()
        seq = self._seq.pop(sent_at, None)
        if seq is None or self._window is None:
            return
        calls, period = self._window
        latency = anyio.current_time() - sent_at
        self._latencies.append(latency)
        excess = min(latency - min(self._latencies), period)
        if excess > 0.001:
            heapq.heappush(self._holds, (seq + calls, sent_at + period + excess))

    def pause(self, seconds: float, reason: str) -> None:
        """Hold every worker for `seconds` (already-sent requests are not affected)."""
        until = anyio.current_time() + max(0.0, seconds)
        if until > self._resume_at:
            self._resume_at, self._pause_reason = until, reason

    def rate_limited(self, retry_after: float | None, sent_at: float = math.inf) -> float | None:
        """A per-minute 429: pause everyone, then resume slower. Returns the pause length.

        429s for requests sent before the last slow-down were caused by the old pace: they
        extend the pause but do not slow down again (a burst of them is one signal); None.
        While the limit is unknown, a 429 tells where it is (`_refused`).
        """
        if sent_at < self._slowed_at:
            if retry_after is not None:
                self.pause(retry_after, RATE_LIMITED)
            return None
        self._backoffs += 1
        self._streak = 0
        pause = (
            retry_after if retry_after is not None else min(LONGEST_BACKOFF, 2.0**self._backoffs)
        )
        self.pause(pause, RATE_LIMITED)
        self._slowed_at = anyio.current_time()
        if self._probing or self._refused_at is not None:
            self._refused(sent_at, retry_after)
            return pause
        if self._rate:
            if self._ceiling is None:
                # Unknown limit: it lies below the pace that drew this 429; climb back to there.
                # (A known pace is climbed back to in full: the 429 may come from another
                # integration sharing the workspace's window for a while.)
                self._ceiling = self._rate * SAFETY_MARGIN
            floor = (self._ceiling or self._rate) * 0.1
            self._set(max(floor, self._rate * SLOW_DOWN))
        return pause

    def overloaded(self, retry_after: float | None, sent_at: float = math.inf) -> bool:
        """A gateway in front of the API shed a call (a 503, a quick 502/504): too fast for it,
        whatever the plan allows. Resume slower and climb back only to just below the pace
        that drew it: the gateway's limit lies there. True when it slowed down.

        Answers to calls sent before the last slow-down were drawn by the old pace: one signal.
        """
        if retry_after is not None:
            self.pause(retry_after, "backing off: the gateway is overloaded")
        if sent_at < self._slowed_at:
            return False
        self._slowed_at = anyio.current_time()
        self._streak = 0
        if not self._rate:
            self.pause(OVERLOAD_PAUSE, "backing off: the gateway is overloaded")
            return True
        if self._gateway_floor is None:
            self._gateway_floor = self._rate * 0.1
        ceiling = min(self._ceiling or math.inf, self._rate * SAFETY_MARGIN)
        self._ceiling = max(self._gateway_floor, ceiling)
        self._set(max(self._gateway_floor, self._rate * SLOW_DOWN))
        return True

    def _refused(self, sent_at: float, retry_after: float | None) -> None:
        """A 429 while the limit is unknown. The probe's first: the calls accepted in the
        second and in the minute before it are the two candidate limits; trials at the
        per-second one's pace follow. A trial's: the minute's count is the limit."""
        window = self._limit_window
        if self._refused_at is not None:
            self._hold(self._counts[1], window)
            return
        self._probing = False
        per_second = self._accepted_in(sent_at, SHORT_WINDOW)
        per_window = self._accepted_in(sent_at, window)
        if (
            window <= SHORT_WINDOW
            or (retry_after is not None and retry_after > LONGEST_SECOND_WAIT)
            or per_second * window <= per_window * SHORT_WINDOW
        ):
            self._hold(per_window, window)  # only the minute can have said no
            return
        self._refused_at, self._counts = sent_at, (per_second, per_window)
        pace = per_second * SAFETY_MARGIN / SHORT_WINDOW
        self._ceiling = pace
        self._set(pace)
        # The second that refused must have passed before a trial can tell anything.
        self._not_before = max(self._not_before, sent_at + SHORT_WINDOW)

    def _accepted_in(self, before: float, window: float) -> int:
        """Calls the API accepted that were sent in the `window` seconds before `before`."""
        return sum(1 for sent in self._accepted if before - window < sent < before)

    def _hold(self, calls: int, window: float) -> None:
        """The limit is `calls` per `window`: hold 98% of it, and let the next calls leave
        only as counted ones leave the window (at most `calls` in it)."""
        now, calls = anyio.current_time(), max(1, calls)
        counted = sorted(t for t in self._accepted if t > now - window)[-calls:]
        self._probing, self._refused_at = False, None
        self._trial_answered.set()
        self._accepted.clear()
        self.learnt = Rate(calls, window)
        pace = calls * SAFETY_MARGIN / window
        self._ceiling, self._window = pace, (calls, window)
        self._set(pace)
        free = calls - len(counted)
        for i, sent in enumerate(counted):
            heapq.heappush(self._holds, (self._issued + free + i, sent + window))

    def succeeded(self, sent_at: float = math.inf) -> None:
        """Climb back toward the ceiling slowly after a slow-down; probe an unknown limit."""
        now = anyio.current_time()
        if self._probing or self._refused_at is not None:
            self._count_accepted(sent_at, now)
        if sent_at < self._slowed_at:
            return
        self._backoffs = 0
        if self._refused_at is not None:
            return  # trials set the pace until they tell the window
        if self._probing and self._rate:
            self._probe_step(now, self._rate)
        else:
            self._climb()

    def _count_accepted(self, sent_at: float, now: float) -> None:
        """While the limit is unknown, every accepted call counts in the API's window, however
        late its answer came; an accepted trial the minute's count would refuse tells that
        the minute was no limit."""
        self._accepted.append(min(sent_at, now))
        while self._accepted[0] <= now - 2 * self._limit_window:
            self._accepted.popleft()
        if self._trial is not None and self._trial[0] == sent_at:
            self._trial_answered.set()
            if self._trial[1]:
                self._hold(self._counts[0], SHORT_WINDOW)

    def _probe_step(self, now: float, rate: float) -> None:
        """Probing: grow the pace a step at a time, while the pace is what holds the run back."""
        if self._stepped_at == -math.inf:
            self._stepped_at = now
        elif self._bound and now - self._stepped_at >= self._limit_window / PROBE_STEPS:
            self._stepped_at = now
            self._set(rate * PROBE_GROWTH)

    def _climb(self) -> None:
        """After a slow-down: a tenth more every CLIMB_EVERY answers, up to the ceiling (with
        no known limit, only while the pace is what holds the run back)."""
        rate, ceiling = self._rate, self._ceiling
        if not rate or (ceiling is not None and rate >= ceiling):
            return
        if ceiling is None and not self._bound:
            return  # no known limit, and the pace is not what holds the run back: stay put
        self._streak += 1
        if self._streak >= CLIMB_EVERY:
            self._streak = 0
            step = (ceiling or rate) * 0.1
            self._set(rate + step if ceiling is None else min(ceiling, rate + step))

    def state(self) -> tuple[str, float | None]:
        """('sending', None) or (why paused, seconds left)."""
        left = self._resume_at - anyio.current_time()
        if left > 0:
            return self._pause_reason, left
        if self._refused_at is not None:
            return "telling a per-second limit from a per-minute one", None
        return ("waiting for the first answer" if self.learning else "sending"), None


def _int(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return max(0, int(float(headers[name])))
    except (KeyError, ValueError, OverflowError):  # absent, garbage, or "inf"
        return None


LOOPBACK = ("127.0.0.1", "localhost", "::1")
TIME_SCALE_HEADER = "x-sandbox-time-scale"


def time_scale(headers: Mapping[str, str], base_url: str) -> float | None:
    """How much faster than real time a sandbox on this machine runs its plan's limits
    (`bulk-unenroll sandbox --day-seconds`); None for any other server, which cannot
    speed a run up by saying so."""
    if urlsplit(base_url).hostname not in LOOPBACK:
        return None
    try:
        scale = float(headers.get(TIME_SCALE_HEADER, "nan"))
    except ValueError:
        return None
    return scale if math.isfinite(scale) and scale > 0 and scale != 1 else None


LONGEST_RETRY_AFTER = 3600.0
RESET_HORIZON = 2 * 86_400.0
"""A daily quota resets within a day: a reset further away (or as far back) is misread."""
EPOCH_SECONDS_FROM = 1e9
"""Below this (2001 as Unix seconds), a reset figure counts seconds until the reset."""
EPOCH_MILLISECONDS_FROM = 1e11
"""From here (5138 as Unix seconds, 1973 as milliseconds), a reset figure is in milliseconds."""


def _date(text: str) -> float | None:
    """An HTTP-date or an ISO-8601 time as Unix seconds (UTC unless it says otherwise)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (ValueError, TypeError, IndexError):
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def server_now(headers: Mapping[str, str]) -> float:
    """The server's clock (its Date header) when it sent one, else ours: a date the server
    gives is best measured against its own clock."""
    said = _date(headers.get("date", ""))
    return said if said is not None else time.time()


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds: delta seconds or an HTTP-date, bounded."""
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        at = _date(value)
        if at is None:
            return None
        seconds = at - server_now(headers)
    # A hostile or broken header ("inf", "1e9") must not park the run for years.
    return min(max(0.0, seconds), LONGEST_RETRY_AFTER) if math.isfinite(seconds) else None


def reset_time(value: str, now: float) -> float | None:
    """X-RateLimit-Reset as Unix seconds. The docs say Unix seconds; gateways also send epoch
    milliseconds, seconds until the reset, ISO-8601 or an HTTP-date. None when unreadable or
    implausible for a daily quota (more than RESET_HORIZON from `now`)."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        at = _date(text)
    else:
        if not math.isfinite(number) or number < 0:
            return None
        if number < EPOCH_SECONDS_FROM:
            at = now + number
        elif number < EPOCH_MILLISECONDS_FROM:
            at = number
        else:
            at = number / 1000
    if at is None or abs(at - now) > RESET_HORIZON:
        return None
    return at


RESET_JITTER = 2.0
"""Seconds by which two answers' resets may differ and still name one quota day: a reset given
as seconds-until is rounded, and each answer is read at its own time."""


@dataclass
class Quota:
    """The daily quota as the X-RateLimit-* headers report it (the day, not the minute)."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None
    """Unix seconds."""
    silent: bool = False
    """An answer came without the count: the API does not report it."""

    def observe(self, headers: Mapping[str, str], now: float | None = None) -> None:
        limit = _int(headers, "x-ratelimit-limit")
        remaining = _int(headers, "x-ratelimit-remaining")
        said = headers.get("x-ratelimit-reset")
        reset = reset_time(said, time.time() if now is None else now) if said else None
        if limit is not None:
            self.limit = limit
        if remaining is None:
            self.silent = True
            return
        if reset is not None and self.reset_at is not None:
            if reset < self.reset_at - RESET_JITTER:
                return  # a late answer from the previous quota day
            if reset <= self.reset_at + RESET_JITTER:
                reset = None  # the same quota day
        new_window = reset is not None
        # Answers arrive out of order: within one window the smallest figure is the freshest.
        if new_window or self.remaining is None or remaining < self.remaining:
            self.remaining = remaining
        if new_window:
            self.reset_at = reset

    def spent(self, in_flight: int, reserve: int) -> bool:
        """True when sending one more call would eat into the reserve. Until an answer tells
        the count (at the start, after a reset), a run keeping a reserve sends one call at a
        time: calls leaving at the pace before the first answer came could spend it."""
        if self.remaining is None:
            return reserve > 0 and in_flight > 0 and not self.silent
        return self.remaining - in_flight <= reserve

    def seconds_to_reset(self) -> float | None:
        return None if self.reset_at is None else max(0.0, self.reset_at - time.time())

    def start_new_window(self) -> None:
        """After waiting out a reset, trust the next answer rather than the old count."""
        self.remaining = None
