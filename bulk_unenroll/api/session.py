"""One paced, quota-aware, retrying API session: every operation's requests go through it.

It owns what the calls of a run share: the pace (`Pacer`), the daily `Quota`, the circuit
breaker, the retry policy, 429 and overload handling, the route check for unclear 404s and the
audit log. An operation hands it one request at a time (`send`) and gets back the request's
final answer (`Final`) or why none settled it (`Stopped`); what that answer means for the
operation's rows stays with the operation.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

import anyio
import httpx

from ..config import JobConfig
from ..errors import AuthError, BulkUnenrollError, SetupError
from ..events import (
    Event,
    LimitFound,
    Note,
    PaceChosen,
    QuotaSpent,
    RateLimitedTooLong,
    ReserveLeavesNoCalls,
    RouteUnknown,
)
from ..limits import PLANS, Rate, is_published_plan, plan_for_daily_limit
from ..models import Enrollment, StopReason, Summary
from ..text import pace_text
from . import client
from .audit import AuditLog
from .pacing import PACE, RATE_LIMITED, Pacer, Quota, Waits, add_wait, retry_after, time_scale

OVERLOADS_PER_ROW = 10
"""Overload answers a request may get without spending its retries. Past this it is refused for
itself, not for the pace (other requests get through), and ends like any failing request."""
WAITING_FOR_QUOTA = "waiting for quota reset"
RETRY_BACKOFF = "retry backoff"
QUOTA_IN_FLIGHT = "quota"
HELD = "held by the operation"
AUDIT_WAITS = {
    PACE: "pace",
    RATE_LIMITED: "rate_limit_pause",
    RETRY_BACKOFF: "retry_backoff",
    WAITING_FOR_QUOTA: "quota",
    QUOTA_IN_FLIGHT: "quota",
}
"""Why an attempt waited, as the audit log names it; any other pause is `other`."""
AUDIT_RESULTS = {
    client.Action.RETRY: "transient",
    client.Action.SLOW_DOWN: "rate_limited",
    client.Action.OVERLOADED: "overloaded",
    client.Action.QUOTA: "quota_spent",
    client.Action.ABORT: "aborted",
}
RATE_REFUSALS = (client.Action.SLOW_DOWN, client.Action.QUOTA)
"""429s: nothing was applied, and the request's retries are not spent on them."""
UNCLEAR_CAMPAIGNS = 3
"""Campaigns answering an unclear 404 before any answer showed the route exists, taken to mean
a wrong --base-url rather than that many deleted campaigns (see `_route_shown`)."""


class Hold(Enum):
    """The operation's own gate before each attempt (the unenroll loop's --max-removals)."""

    GO = "go"
    WAIT = "wait"
    """Not now: requests in flight decide; look again shortly."""
    STOP = "stop"
    """The operation stopped the run."""


class _Unsent(Enum):
    STOPPED = "stopped"
    SKIPPED = "skipped"


class _Next(Enum):
    """After an answer that settled nothing."""

    AGAIN = "again"
    """Send again at the next slot; the request's retries are not spent."""
    BACK_OFF = "back_off"
    """Spend a retry: back off, then send again."""
    STOP = "stop"


def _never() -> bool:
    return False


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Request:
    """One request for the session to send, and the operation's say in it."""

    enrollment: Enrollment
    """The pair it is about (for a batch, its first pair): the audit log names it unless
    `audit` says otherwise; an unclear 404 is about its campaign."""
    perform: Callable[[], Awaitable[client.Answer]]
    """Sends it once; never raises for the network (a lost answer is an `Answer` too)."""
    skip: Callable[[], bool] = _never
    """Asked before and after each wait: True when it needs no more sending."""
    sending: Callable[[], None] = _nothing
    """Called just before each attempt leaves."""
    classify: Callable[[client.Answer], client.Verdict] = client.classify
    """The operation's answer table (the DELETE's unless said otherwise)."""
    audit: Mapping[str, object] | None = None
    """What the audit line names when the request is not about one pair (a batch POST's
    campaign and contact ids); None: the pair's row, campaign and contact."""
    waits_for_route: bool = True
    """An unclear 404 before the route is known waits for other requests to show it. False
    (a listing: nothing else is in flight while it is read): it ends the request at once,
    its campaign's later requests wait instead, and only UNCLEAR_CAMPAIGNS campaigns
    answering so, or the operation finding nothing left to show it (`wrong_route`), stop
    the run as a wrong --base-url."""

    def about(self) -> Mapping[str, object]:
        """What the request's audit lines name."""
        if self.audit is not None:
            return self.audit
        e = self.enrollment
        return {"row": e.row, "campaign_id": e.campaign_id, "contact_id": e.contact_id}


@dataclass(frozen=True, slots=True)
class Final:
    """The request's last answer: a definite one (`settled`), or the last of its retries."""

    answer: client.Answer
    verdict: client.Verdict
    attempts: int
    lost: tuple[str, ...]
    """Earlier attempts that may have been applied without a definite answer, in words."""
    settled: bool


@dataclass(frozen=True, slots=True)
class Stopped:
    """No answer settled the request: the run stopped first, or `skip` said so (`skipped`)."""

    attempts: int
    lost: tuple[str, ...]
    skipped: bool = False


class Session:
    """The shared pace, quota, breaker and retries of one run's API calls."""

    def __init__(
        self,
        config: JobConfig,
        summary: Summary,
        *,
        stopping: anyio.Event,
        stop: Callable[[StopReason, Event], None],
        on_event: Callable[[Event], None],
        hold: Callable[[int], Hold],
        workers_alive: Callable[[], int],
    ) -> None:
        self.config = config
        self.summary = summary
        pace = config.pace()
        self.pacer = Pacer(pace or config.pace(PLANS["starter"]), probe_first=pace is None)
        self.quota = Quota()
        self.audit: AuditLog | None = None
        self.in_flight = 0
        self.abort_error: type[BulkUnenrollError] = AuthError
        """What the run raises when it stopped as ABORTED."""
        self._stopping = stopping
        self._stop = stop
        self._on_event = on_event
        self._hold = hold
        self._workers_alive = workers_alive
        self._route_known = False
        """An answer only LeadLex's DELETE route gives has come: --base-url is right."""
        self._unclear: dict[str, str] = {}
        """Campaign -> the unclear 404 it answered while the route was unknown."""
        self._held: Counter[str] = Counter()
        """Requests being sent (waiting for a slot or an answer), per campaign."""
        self._limited_since: float | None = None
        """When the current run of nothing but 429s began."""
        self._consecutive_transient = 0
        self._plan_learnt = False
        self._answered = False
        """Some request of this run got an HTTP answer: the setup can reach the API."""

    def open_audit(self) -> None:
        if self.config.audit_log is not None:
            self.audit = AuditLog(self.config.audit_log)

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()

    # -- one request ------------------------------------------------------------------------

    async def send(self, request: Request) -> Final | Stopped:
        """Attempts until a definite answer, the retries are spent, or the run stops."""
        campaign = request.enrollment.campaign_id
        self._held[campaign] += 1
        try:
            return await self._attempts(request)
        finally:
            self._held[campaign] -= 1

    async def _attempts(self, request: Request) -> Final | Stopped:
        attempts = retries = overloads = 0
        lost: list[str] = []
        waited: Waits = {}
        while True:
            sent_at = await self._turn(request, waited)
            if isinstance(sent_at, _Unsent):
                return Stopped(attempts, tuple(lost), skipped=sent_at is _Unsent.SKIPPED)
            request.sending()
            attempts += 1
            answer, verdict = await self._attempt(request, attempts, waited)
            waited = {}
            self._observe(answer, verdict, sent_at)
            action = verdict.action
            if action is client.Action.UNCLEAR_404 and not await self._route_for(request, answer):
                return Stopped(attempts, tuple(lost))
            if action in (client.Action.DONE, client.Action.UNCLEAR_404):
                self._consecutive_transient = 0
                self.pacer.succeeded(sent_at)
                self._say_limit_found()
                return Final(answer, verdict, attempts, tuple(lost), settled=True)
            if answer.maybe_applied and action not in RATE_REFUSALS:
                lost.append(_uncertain(answer, verdict.detail))  # whatever comes next
            if action is client.Action.OVERLOADED:
                overloads += 1
            step = self._next_step(answer, verdict, sent_at, overloads)
            if step is _Next.STOP:
                return Stopped(attempts, tuple(lost))
            if step is _Next.BACK_OFF:
                retries += 1
                if retries > self.config.retry.max_retries:
                    return Final(answer, verdict, attempts, tuple(lost), settled=False)
                await self._back_off(answer, retries, waited)

    async def _turn(self, request: Request, waited: Waits) -> float | _Unsent:
        """Wait for the request's turn: the time of its slot, or why it goes unsent."""
        campaign = request.enrollment.campaign_id
        while True:
            if request.skip():
                return _Unsent.SKIPPED
            if campaign in self._unclear and not await self._route_shown():
                return _Unsent.STOPPED  # its campaign may not exist
            sent_at = await self._ready_to_send(waited)
            if sent_at is None:
                return _Unsent.STOPPED
            if request.skip():  # it may have become needless while we waited
                return _Unsent.SKIPPED
            if campaign not in self._unclear or self._route_known:
                return sent_at
            # Its campaign answered an unclear 404 while we waited: wait above.

    async def _route_for(self, request: Request, answer: client.Answer) -> bool:
        """An unclear 404 settles its own request, but only once another answer showed the
        route exists (or at once, unless `request.waits_for_route`). False when the run
        stopped instead."""
        if self._route_known:
            return True
        self._unclear.setdefault(request.enrollment.campaign_id, client.said_404(answer))
        if not request.waits_for_route and len(self._unclear) < UNCLEAR_CAMPAIGNS:
            return True
        return await self._route_shown()

    def route_unclear(self, campaign: str) -> bool:
        """The campaign answered an unclear 404 and no answer has shown the route yet."""
        return campaign in self._unclear and not self._route_known

    def wrong_route(self) -> bool:
        """Nothing left to send can show the route: unclear 404s and no answer that showed
        it mean a wrong --base-url; the run stops (exit 3). False when the route is known
        or no unclear 404 came."""
        if self._route_known or not self._unclear:
            return False
        self._stop_at_wrong_route()
        return True

    def _next_step(
        self, answer: client.Answer, verdict: client.Verdict, sent_at: float, overloads: int
    ) -> _Next:
        """What an answer that settled nothing leads to."""
        action = verdict.action
        if action is client.Action.SLOW_DOWN:
            return _Next.AGAIN if self._slowed_down(answer, sent_at) else _Next.STOP
        if action is client.Action.QUOTA:
            self.quota.remaining = 0
            return _Next.AGAIN
        if action is client.Action.ABORT:
            self._abort(answer, verdict)
            return _Next.STOP
        if action is client.Action.OVERLOADED:
            if not self._overloaded(answer, verdict, sent_at):
                return _Next.STOP
            if overloads <= OVERLOADS_PER_ROW:
                return _Next.AGAIN  # a pacing signal: the request's retries are not spent on it
            return _Next.BACK_OFF
        # Transient: retry with backoff, unless the API looks down altogether.
        return _Next.BACK_OFF if self._still_up(verdict) else _Next.STOP

    async def _attempt(
        self, request: Request, attempt: int, waited: Waits
    ) -> tuple[client.Answer, client.Verdict]:
        """Send once and classify the answer; the audit log gets a line either way."""
        self.in_flight += 1
        self.summary.calls += 1  # now, not when answered: the grace period may end first
        left_at, started = datetime.now(UTC), anyio.current_time()
        try:
            answer = await request.perform()
        except anyio.get_cancelled_exc_class():
            # The grace period ended: a request all the same.
            took = anyio.current_time() - started
            cut = client.Answer(None, error="the run ended before the answer came")
            self._audit_request(request, cut, "cut_off", attempt, left_at, took, waited)
            raise
        finally:
            self.in_flight -= 1
        verdict = request.classify(answer)
        if answer.setup_fault is not None and not self._answered:
            # Nothing has answered yet: a refused port, an unknown host or an untrusted
            # certificate is the setup, not an outage. Once answers came, it may pass.
            fault = answer.setup_fault
            verdict = client.Verdict(client.Action.ABORT, detail=str(fault), says=fault)
        self._answered = self._answered or answer.status is not None
        took = anyio.current_time() - started
        result = AUDIT_RESULTS.get(verdict.action, str(verdict.outcome or verdict.detail))
        self._audit_request(request, answer, result, attempt, left_at, took, waited)
        return answer, verdict

    def _observe(self, answer: client.Answer, verdict: client.Verdict, sent_at: float) -> None:
        """What every answer tells the shared pace, the quota and the route check."""
        if answer.headers is not None:
            self.quota.observe(answer.headers)
            self.pacer.answered(sent_at)  # a slow answer may mean a late stamp: see pacing
            self._check_reserve()
        self._learn_plan(answer, verdict)
        self._route_known = self._route_known or verdict.route_exists
        if verdict.action is not client.Action.SLOW_DOWN:
            self._limited_since = None

    async def _back_off(self, answer: client.Answer, retries: int, waited: Waits) -> None:
        """Wait before the next retry: Retry-After when given, else full-jitter backoff."""
        policy = self.config.retry
        hint = retry_after(answer.headers) if answer.headers is not None else None
        ceiling = min(policy.max_delay, policy.base_delay * 2 ** (retries - 1))
        delay = min(hint, policy.max_delay) if hint is not None else None
        backoff_from = anyio.current_time()
        with anyio.move_on_after(delay if delay is not None else random.uniform(0, ceiling)):
            await self._stopping.wait()  # a stop ends the backoff at once
        add_wait(waited, RETRY_BACKOFF, anyio.current_time() - backoff_from)

    def _audit_request(
        self,
        request: Request,
        answer: client.Answer,
        result: str,
        attempt: int,
        left_at: datetime,
        took: float,
        waited: Waits,
    ) -> None:
        if self.audit is None:
            return
        why: Waits = {}
        for reason, seconds in waited.items():
            add_wait(why, AUDIT_WAITS.get(reason, "other"), seconds)
        self.audit.request(
            request.about(),
            sent_at=left_at,
            attempt=attempt,
            seconds=took,
            waited=why,
            http_status=answer.status,
            error_code=answer.code,
            request_id=answer.request_id,
            result=result,
            error=answer.error,
        )

    # -- waiting for a slot -----------------------------------------------------------------

    async def _ready_to_send(self, waited: Waits) -> float | None:
        """Wait for a slot from the pacer and the quota: its time, or None when stopping.
        `waited` gets the seconds spent waiting, by why."""
        cfg, pacer, quota = self.config, self.pacer, self.quota
        while True:
            if self._stopping.is_set():
                return None
            hold = self._hold(self.in_flight)
            if hold is Hold.STOP:
                return None
            if hold is Hold.WAIT:
                await anyio.sleep(0.05)  # answers in flight decide whether to go on
                add_wait(waited, HELD, 0.05)
                continue
            if quota.spent(self.in_flight, cfg.reserve):
                if self.in_flight:
                    await anyio.sleep(0.05)  # answers in flight will refresh the count
                    add_wait(waited, QUOTA_IN_FLIGHT, 0.05)
                    continue
                if not self._wait_for_quota():
                    return None
                continue
            slot = await pacer.acquire(waited)
            if self._stopping.is_set():
                return None
            if self._hold(self.in_flight) is not Hold.GO:
                continue  # other requests took what was left while this one waited
            if not quota.spent(self.in_flight, cfg.reserve):
                return slot

    def _wait_for_quota(self) -> bool:
        """The daily quota is spent: stop, or (with --wait-for-quota) pause until it resets."""
        left = self.quota.seconds_to_reset()
        reset_at = None
        if left is not None:
            reset_at = datetime.fromtimestamp(self.quota.reset_at or 0, UTC)
            self.summary.quota_reset_at = reset_at
        now = datetime.now(UTC)
        if not self.config.wait_for_quota:
            self._stop(StopReason.QUOTA, QuotaSpent(self.config.reserve, reset_at, now))
            return False
        if left is None or left <= 0:
            left = 60.0  # reset unknown or already due: look again in a minute
        state, _ = self.pacer.state()
        if state != WAITING_FOR_QUOTA:
            until = now + timedelta(seconds=left)
            self._on_event(QuotaSpent(self.config.reserve, reset_at, now, waiting_until=until))
        self.pacer.pause(left + 1.0, WAITING_FOR_QUOTA)
        self.quota.start_new_window()
        return True

    # -- answers that stop or slow the run ----------------------------------------------------

    def _abort(self, answer: client.Answer, verdict: client.Verdict) -> None:
        if not self._stopping.is_set():  # only the key's own refusals are AuthError
            self.abort_error = AuthError if answer.status in (401, 403) else SetupError
        self._stop(StopReason.ABORTED, verdict.says or Note(verdict.detail))

    def _slowed_down(self, answer: client.Answer, sent_at: float) -> bool:
        """A 429: pause every worker. False when the run stops instead (--max-429-wait)."""
        pacer = self.pacer
        self.summary.rate_limited += 1
        pause = pacer.rate_limited(retry_after(answer.headers or httpx.Headers()), sent_at)
        if self._limited_too_long(pause or 0.0):
            return False
        if pause is not None:
            self._on_event(
                Note(
                    f"429 rate limited: pausing all workers {pause:.1f}s, "
                    f"then {pace_text(pacer.per_second)}"
                )
            )
        self._say_limit_found()
        return True

    def _still_up(self, verdict: client.Verdict) -> bool:
        """Count one more answer that settled nothing; stop the run when nothing succeeds."""
        self._consecutive_transient += 1
        if self._consecutive_transient < self.config.breaker_threshold:
            return True
        self._stop(
            StopReason.API_DOWN,
            Note(
                f"the API looks down: {self._consecutive_transient} attempts in a row failed "
                f"(last: {verdict.detail}); stopped sending, rerun later"
            ),
        )
        return False

    def _overloaded(self, answer: client.Answer, verdict: client.Verdict, sent_at: float) -> bool:
        """A gateway shed the call: slow the shared pace. False when the run stops instead."""
        self.summary.overloaded += 1
        pacer = self.pacer
        if pacer.overloaded(retry_after(answer.headers or httpx.Headers()), sent_at):
            self._on_event(
                Note(
                    f"gateway overloaded ({verdict.detail}): slowing all workers to "
                    f"{pace_text(pacer.per_second)}"
                )
            )
        return self._still_up(verdict)

    async def _route_shown(self) -> bool:
        """An unclear 404 came before any answer showed that --base-url serves the DELETE
        route: wait while other rows find out. False, and the run stopped (exit 3), when no
        worker can find out or UNCLEAR_CAMPAIGNS campaigns answered so: a wrong URL."""
        while not self._route_known:
            if self._stopping.is_set():
                return False
            if len(self._unclear) >= UNCLEAR_CAMPAIGNS or self._only_unclear_rows_held():
                self._stop_at_wrong_route()
                return False
            await anyio.sleep(0.05)
        return True

    def _stop_at_wrong_route(self) -> None:
        campaigns = list(self._unclear)[:UNCLEAR_CAMPAIGNS]
        if not self._stopping.is_set():
            self.abort_error = SetupError  # a wrong --base-url, not a refused key
        said = self._unclear[campaigns[0]]
        self._stop(StopReason.ABORTED, RouteUnknown(said, tuple(campaigns)))

    def _only_unclear_rows_held(self) -> bool:
        """Every worker holds a row of a campaign that answered an unclear 404: none of them
        can show the route, and none is free to take a row that could."""
        held = [campaign for campaign, rows in self._held.items() if rows > 0]
        busy = sum(self._held.values())
        return busy >= self._workers_alive() and all(c in self._unclear for c in held)

    def _limited_too_long(self, pause: float) -> bool:
        """Nothing but 429s for longer than --max-429-wait (counting the pause now due):
        stop, exit 75, rather than retry forever."""
        now, longest = anyio.current_time(), self.config.retry.max_429_wait
        if self._limited_since is None:
            self._limited_since = now
        if now + pause - self._limited_since <= longest:
            return False
        self._stop(
            StopReason.API_DOWN, RateLimitedTooLong(now - self._limited_since, pause, longest)
        )
        return True

    # -- what answers reveal about the account ------------------------------------------------

    def _check_reserve(self) -> None:
        """A --reserve of the whole daily limit the API reports is a usage error, not a quota
        stop that would repeat every night (the answer that told us is recorded as usual)."""
        limit, reserve = self.quota.limit, self.config.reserve
        if reserve and limit is not None and reserve >= limit:
            source = f"the API reports a daily limit of {limit:,} calls"
            if is_published_plan(limit):
                source += f" (the {plan_for_daily_limit(limit).name} plan)"
            self._stop(StopReason.ERROR, ReserveLeavesNoCalls(reserve, limit, source))

    def _say_limit_found(self) -> None:
        """Once probing found an unknown limit: say it, and the --rate that skips the probe."""
        pacer = self.pacer
        if pacer.learnt is None or self.summary.learnt_rate is not None:
            return
        self.summary.learnt_rate = str(pacer.learnt)
        self._on_event(LimitFound(pacer.learnt, pacer.per_second))

    def _learn_plan(self, answer: client.Answer, verdict: client.Verdict) -> None:
        """Pace at the plan the first X-RateLimit-Limit reveals, unless told a rate."""
        pacer = self.pacer
        if self._plan_learnt or not pacer.learning:
            return
        if verdict.action is client.Action.ABORT:
            return  # the run stops; stop() releases the workers waiting for the plan
        if answer.status is None or answer.status >= 500:
            pacer.unanswered()  # no answer, or a gateway's: it says nothing of the plan
            return
        self._plan_learnt = True
        limit = self.quota.limit
        if limit is None:
            pace = self.config.pace(PLANS["starter"])
            self._on_event(PaceChosen(None, "Starter", str(pace), climbing=True))
            pacer.learn(pace, adaptive=True)
            return
        plan = plan_for_daily_limit(limit)
        pace = self.config.pace(plan)
        scale = time_scale(answer.headers or {}, self.config.base_url)
        shown = str(pace)
        if pace is not None and scale is not None:
            pace = Rate(pace.calls, pace.period / scale)
            shown = f"{pace_text(pace.per_second)} (the sandbox runs time {scale:g}x faster)"
        published = is_published_plan(limit)
        self._on_event(PaceChosen(limit, plan.name, shown, climbing=not published))
        pacer.learn(pace, adaptive=not published)


def _uncertain(answer: client.Answer, detail: str) -> str:
    """What an attempt that may have been applied got, in words."""
    if answer.status is None:
        return f"its answer was lost ({detail})"
    return f"it got {detail} (an answer that can follow a removal)"
