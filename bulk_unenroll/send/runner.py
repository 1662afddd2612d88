"""Orchestration: one producer, a fixed pool of workers, one writer; stop reasons and signals."""

from __future__ import annotations

import contextlib
import os
import random
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..api import client
from ..api.audit import AuditLog
from ..api.pacing import PACE, RATE_LIMITED, Pacer, Quota, Waits, add_wait, retry_after, time_scale
from ..config import JobConfig
from ..errors import (
    AuthError,
    BulkUnenrollError,
    InputError,
    ResultsFileError,
    SetupError,
    find_in_group,
)
from ..input.source import Source
from ..limits import PLANS, Rate, is_published_plan, plan_for_daily_limit, reserve_leaves_no_calls
from ..models import Enrollment, Outcome, RowResult, StopReason, Summary
from ..plan import RowAction, SendPlan, build_plan, work_batches
from ..results.journal import Journal, read_history
from ..text import describe_reset, duration, pace_text
from .claims import InputClaim

PROGRESS_EVERY = 0.5
ENDS_WITH_AN_ERROR = (StopReason.ABORTED, StopReason.ERROR)
"""Stops that `Job.run` raises as an error (AuthError, InputError) rather than returns."""
OVERLOADS_PER_ROW = 10
"""Overload answers a row may get without spending its retries. Past this it is refused for
itself, not for the pace (other rows get through), and ends like any failing row."""
WAITING_FOR_QUOTA = "waiting for quota reset"
RETRY_BACKOFF = "retry backoff"
QUOTA_IN_FLIGHT = "quota"
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
UNCLEAR_CAMPAIGNS = 3
"""Campaigns answering an unclear 404 before any answer showed the route exists, taken to mean
a wrong --base-url rather than that many deleted campaigns (see `_route_shown`)."""


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress displays."""

    summary: Summary
    in_flight: int
    sent_rows: int
    pace_per_second: float | None
    pacer_state: str
    pause_left: float | None
    finished_rows: int = 0
    """Rows of this run's send list that have ended (any outcome, `failed` included)."""
    quota_limit: int | None = None
    quota_remaining: int | None = None
    """The daily quota as the last answer reported it; None until an answer says."""


class Job:
    """One bulk unenrollment: plan it, then run it against the API."""

    def __init__(
        self,
        config: JobConfig,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.config = config
        self.source = Source(config.input, config.read)
        self.summary = Summary()
        self._on_progress = on_progress
        self._on_event = on_event or (lambda _message: None)
        self._handle_signals = handle_signals
        self._journal: Journal | None = None
        self._claim: InputClaim | None = None
        self._plan: SendPlan | None = None
        self._in_flight = 0
        self._sent_rows = 0
        self._finished_rows = 0
        self._removed = 0
        self._dead_campaigns: dict[str, int] = {}
        self._route_known = False
        """An answer only LeadLex's DELETE route gives has come: --base-url is right."""
        self._unclear: dict[str, str] = {}
        """Campaign -> the unclear 404 it answered while the route was unknown."""
        self._workers_alive = 0
        self._held: Counter[str] = Counter()
        """Rows the workers hold (waiting for a slot or an answer), per campaign."""
        self._limited_since: float | None = None
        """When the current run of nothing but 429s began."""
        self._consecutive_transient = 0
        self._stopping = anyio.Event()
        self._signalled = False
        self._quota = Quota()
        self._pacer: Pacer | None = None
        self._plan_learnt = False
        self._answered = False
        """Some request of this run got an HTTP answer: the setup can reach the API."""
        self._abort_error: type[BulkUnenrollError] = AuthError
        self._audit: AuditLog | None = None

    # -- planning -------------------------------------------------------------------------

    async def plan(self, *, dry_run: bool = False) -> SendPlan:
        """Read and validate the input, compare with the results file; locks it unless dry."""
        self.source.columns()  # fail fast on a missing column, before any lock or pass
        if self.source.sheet_note:
            self._on_event(self.source.sheet_note)
        try:
            if dry_run:
                history = await anyio.to_thread.run_sync(read_history, self.config.out)
            else:
                self._claim_input()
                self._journal = await anyio.to_thread.run_sync(Journal, self.config.out)
                history = self._journal.history
                for notice in self._journal.notices:
                    self._on_event(notice)
            plan = await anyio.to_thread.run_sync(build_plan, self.source, history)
        except BaseException:
            self.close()
            raise
        self._plan = plan
        s = self.summary
        s.total_rows = plan.total_rows
        before = plan.settled_before()
        s.outcomes.update(before)
        s.outcomes[Outcome.FAILED] += plan.failed_before()  # until this run settles them
        s.settled_before = plan.count(
            RowAction.SETTLED
        )  # the plan's figure: invalid and duplicate rows
        # of an earlier run are counted under their own status, as the plan counts them
        s.to_send = plan.count(RowAction.SEND)
        return plan

    def _claim_input(self) -> None:
        """Refuse (or, allowed, warn about) another live run on this input: with its own
        --out it would send every pair this run sends."""
        cfg = self.config
        self._claim = InputClaim(cfg.input, cfg.out, cfg.read, shared=cfg.allow_same_input)
        if self._claim.others:
            self._on_event(
                f"warning: another run is using {cfg.input} ({self._claim.others}); going on "
                "as --allow-same-input asks: pairs both runs send go out twice"
            )
        elif self._claim.unchecked:
            self._on_event(
                f"warning: cannot check for another run on {cfg.input}: {self._claim.unchecked}"
            )

    def close(self) -> None:
        """Release the results file (sync, tidy, unlock) and the input. Safe to call twice."""
        try:
            if self._journal is not None:
                journal, self._journal = self._journal, None
                journal.close()
        finally:
            if self._claim is not None:
                self._claim.release()

    # -- running --------------------------------------------------------------------------

    async def run(self) -> Summary:
        """Send every planned row; returns the summary. Raises only for what ends the run."""
        if self._plan is None:
            await self.plan()
        assert self._plan is not None and self._journal is not None
        cfg = self.config
        self.summary.started_at = datetime.now(UTC)
        try:
            pace = cfg.pace()
            self._pacer = Pacer(pace or cfg.pace(PLANS["starter"]), probe_first=pace is None)
            workers = cfg.workers(pace)
            if cfg.audit_log is not None:
                self._audit = AuditLog(cfg.audit_log)
            http = client.make_client(cfg.api_key.reveal(), cfg.timeout, workers, cfg.ca_bundle)
            async with http:
                await self._run_pool(http, workers)
        except BaseExceptionGroup as group:
            # A task failed (the results file filled up): raise its error, not the group.
            error = find_in_group(group, BulkUnenrollError)
            if error is None:
                raise
            raise error from None
        finally:
            self.summary.finished_at = datetime.now(UTC)
            self.summary.final_pace = self._pacer.per_second if self._pacer else None
            if self._audit is not None:
                self._audit.close()
            self.close()
        if self.summary.stop_reason is StopReason.ABORTED:
            raise self._abort_error(self.summary.stop_detail)
        if self.summary.stop_reason is StopReason.ERROR:
            raise InputError(self.summary.stop_detail)
        return self.summary

    async def _run_pool(self, http: httpx.AsyncClient, workers: int) -> None:
        work_send, work_recv = anyio.create_memory_object_stream[Enrollment](workers * 2)
        done_send, done_recv = anyio.create_memory_object_stream[list[RowResult]](workers * 4)
        async with anyio.create_task_group() as tg:
            if self._handle_signals:
                tg.start_soon(self._watch_signals)
            tg.start_soon(self._tick)
            async with anyio.create_task_group() as flow:
                flow.start_soon(self._writer, done_recv)
                async with anyio.create_task_group() as pool:
                    self._pool_scope = pool.cancel_scope
                    async with work_recv, done_send:
                        pool.start_soon(self._produce, work_send, done_send.clone())
                        self._workers_alive = workers
                        for _ in range(workers):
                            pool.start_soon(self._work, http, work_recv.clone(), done_send.clone())
            # The writer has recorded every result by now; stop the watcher and the ticker.
            tg.cancel_scope.cancel()

    async def _produce(
        self,
        work: MemoryObjectSendStream[Enrollment],
        done: MemoryObjectSendStream[list[RowResult]],
    ) -> None:
        assert self._plan is not None
        batches = work_batches(self.source, self._plan)
        async with work, done:
            while not self._stopping.is_set():
                batch = await anyio.to_thread.run_sync(next, batches, None)
                if batch is None:
                    return
                enrollments, records = batch
                if records:
                    await done.send(records)  # invalid and duplicate rows, one batch at a time
                for enrollment in enrollments:
                    if self._stopping.is_set():
                        return
                    try:
                        await work.send(enrollment)
                    except anyio.BrokenResourceError:
                        return

    async def _work(
        self,
        http: httpx.AsyncClient,
        work: MemoryObjectReceiveStream[Enrollment],
        done: MemoryObjectSendStream[list[RowResult]],
    ) -> None:
        try:
            async with work, done:
                async for enrollment in work:
                    if self._stopping.is_set():
                        return
                    self._held[enrollment.campaign_id] += 1
                    try:
                        result = await self._unenroll(http, enrollment)
                    finally:
                        self._held[enrollment.campaign_id] -= 1
                    if result is not None:
                        self._finished_rows += 1
                        if enrollment.failed_before:  # its new record supersedes the `failed`
                            self.summary.outcomes[Outcome.FAILED] -= 1
                        # Shielded: a row the API answered is recorded even if the grace
                        # period ends now (the writer is outside the cancelled pool).
                        with anyio.CancelScope(shield=True):
                            await done.send([result])
        finally:
            self._workers_alive -= 1  # workers waiting on the route count the others

    async def _writer(self, done: MemoryObjectReceiveStream[list[RowResult]]) -> None:
        """One writer owns the results file; it writes whatever has piled up in one go."""
        assert self._journal is not None
        async with done:
            async for batch in done:
                while len(batch) < 1000:
                    try:
                        batch += done.receive_nowait()
                    except anyio.WouldBlock:
                        break
                self._journal.record(batch)
                for result in batch:
                    self.summary.outcomes[result.outcome] += 1
                    if result.error_code:
                        self.summary.error_codes[result.error_code] += 1

    async def _tick(self) -> None:
        """Sync the results once a second and feed the progress display."""
        while True:
            await anyio.sleep(PROGRESS_EVERY)
            if self._journal is not None:
                self._journal.sync_if_due()
            if self._on_progress is not None:
                self._on_progress(self.progress())

    def progress(self) -> Progress:
        state, left = self._pacer.state() if self._pacer else ("starting", None)
        if self.summary.finished_at is not None:  # the final frame: no pacer any more
            reason = self.summary.stop_reason
            stopped = f"stopped ({reason.value.replace('_', ' ')})"
            state, left = ("finished" if reason is StopReason.COMPLETE else stopped), None
        return Progress(
            summary=self.summary,
            in_flight=self._in_flight,
            sent_rows=self._sent_rows,
            pace_per_second=self._pacer.per_second if self._pacer else None,
            pacer_state=state,
            pause_left=left,
            finished_rows=self._finished_rows,
            quota_limit=self._quota.limit,
            quota_remaining=self._quota.remaining,
        )

    def stop(self, reason: StopReason, detail: str = "") -> None:
        """Stop dispatching; requests already sent finish and are recorded."""
        if not self._stopping.is_set():
            self.summary.stop_reason, self.summary.stop_detail = reason, detail
            self._stopping.set()
            if self._pacer is not None:
                self._pacer.close()  # wake workers waiting for a slot, a pause or the plan
            if detail and reason not in ENDS_WITH_AN_ERROR:
                self._on_event(detail)  # an error is raised to the caller, who shows it once

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as grace:
                async for signum in signals:
                    if self._signalled:
                        self._leave_now(signum)
                    self._signalled = True
                    reason = StopReason.SIGINT if signum == signal.SIGINT else StopReason.SIGTERM
                    self.stop(
                        reason,
                        f"{reason.value.upper()} received: finishing {self._in_flight} request(s) "
                        f"in flight (up to {self.config.grace_period:g}s); "
                        "signal again to quit at once",
                    )
                    # The grace period runs beside this loop, so a second signal is seen at once.
                    grace.start_soon(self._end_grace)

    async def _end_grace(self) -> None:
        await anyio.sleep(self.config.grace_period)
        self._pool_scope.cancel()

    def _leave_now(self, signum: int) -> NoReturn:
        """Second signal: exit now. Records written so far are whole and flushed; the rows
        in flight are in the `.sent` file, so the rerun reports their outcome truthfully."""
        self._on_event("second signal: exiting now; a rerun redoes the rows in flight")
        if self._journal is not None:
            with contextlib.suppress(ResultsFileError):
                self._journal.sync_if_due(force=True)
        os._exit(128 + signum)

    # -- one row ----------------------------------------------------------------------------

    def _dead_campaign_result(self, e: Enrollment, attempts: int) -> RowResult | None:
        first = self._dead_campaigns.get(e.campaign_id)
        if first is None:
            return None
        return RowResult(
            e.row,
            e.campaign_id,
            e.contact_id,
            Outcome.REJECTED,
            http_status=None,
            error_code="campaign_not_found",
            attempts=attempts,
            detail=f"not sent: the campaign answered campaign_not_found for row {first}",
            finished_at=datetime.now(UTC),
        )

    async def _ready_to_send(self, waited: Waits) -> float | None:
        """Wait for a slot from the pacer and the quota: its time, or None when stopping.
        `waited` gets the seconds spent waiting, by why."""
        cfg, pacer, quota = self.config, self._pacer, self._quota
        assert pacer is not None
        while True:
            if self._stopping.is_set():
                return None
            cap = cfg.max_removals
            if cap is not None and self._removed + self._in_flight >= cap:
                if self._removed < cap:
                    await anyio.sleep(0.05)  # answers in flight decide whether the cap is met
                    add_wait(waited, "max_removals", 0.05)
                    continue
                self.stop(StopReason.MAX_REMOVALS, f"stopped after --max-removals {cap}")
                return None
            if quota.spent(self._in_flight, cfg.reserve):
                if self._in_flight:
                    await anyio.sleep(0.05)  # answers in flight will refresh the count
                    add_wait(waited, QUOTA_IN_FLIGHT, 0.05)
                    continue
                if not self._wait_for_quota():
                    return None
                continue
            slot = await pacer.acquire(waited)
            if self._stopping.is_set():
                return None
            if cap is not None and self._removed + self._in_flight >= cap:
                continue  # other workers took the last removals while this one waited
            if not quota.spent(self._in_flight, cfg.reserve):
                return slot

    def _wait_for_quota(self) -> bool:
        """The daily quota is spent: stop, or (with --wait-for-quota) pause until it resets."""
        assert self._pacer is not None
        left = self._quota.seconds_to_reset()
        reset_at = None
        if left is not None:
            reset_at = datetime.fromtimestamp(self._quota.reset_at or 0, UTC)
            self.summary.quota_reset_at = reset_at
        spent = "daily quota spent" + (
            f" (keeping --reserve {self.config.reserve})" if self.config.reserve else ""
        )
        if not self.config.wait_for_quota:
            when = f"; it resets {describe_reset(reset_at)}" if reset_at else ""
            self.stop(StopReason.QUOTA, spent + when)
            return False
        if left is None or left <= 0:
            left = 60.0  # reset unknown or already due: look again in a minute
        state, _ = self._pacer.state()
        if state != WAITING_FOR_QUOTA:
            until = datetime.now(UTC) + timedelta(seconds=left)
            self._on_event(
                f"{spent}: waiting until the reset at {describe_reset(until)}, "
                "then carrying on (--wait-for-quota)"
            )
        self._pacer.pause(left + 1.0, WAITING_FOR_QUOTA)
        self._quota.start_new_window()
        return True

    async def _unenroll(self, http: httpx.AsyncClient, e: Enrollment) -> RowResult | None:  # noqa: C901, PLR0912, PLR0915
        """Attempts until a definite outcome; None when the run stops first (row stays to do)."""
        cfg, pacer = self.config, self._pacer
        assert pacer is not None and self._journal is not None
        attempts = retries = overloads = 0
        maybe_applied, lost_reasons = e.attempted_before, []
        if e.attempted_before:
            lost_reasons.append("a request in an earlier run got no definite answer (see .sent)")
        marked = False
        waited: Waits = {}
        while True:
            dead = self._dead_campaign_result(e, attempts)
            if dead is not None:
                return dead
            if e.campaign_id in self._unclear and not await self._route_shown():
                self._left_to_do(e, marked, maybe_applied)  # its campaign may not exist
                return None
            sent_at = await self._ready_to_send(waited)
            if sent_at is None:
                self._left_to_do(e, marked, maybe_applied)
                return None
            dead = self._dead_campaign_result(e, attempts)  # it may have died while we waited
            if dead is not None:
                return dead
            if e.campaign_id in self._unclear and not self._route_known:
                continue  # its campaign answered an unclear 404 while we waited: wait above
            if not marked:
                self._journal.mark_sent(e)
                marked = True
                self._sent_rows += 1
            self._in_flight += 1
            self.summary.calls += 1  # now, not when answered: the grace period may end first
            left_at, started = datetime.now(UTC), anyio.current_time()
            try:
                answer = await client.delete(http, cfg.base_url, e, cfg.timeout)
            except anyio.get_cancelled_exc_class():
                if self._audit is not None:  # the grace period ended: a request all the same
                    took = anyio.current_time() - started
                    cut = client.Answer(None, error="the run ended before the answer came")
                    self._audit_request(e, cut, "cut_off", attempts + 1, left_at, took, waited)
                raise
            finally:
                self._in_flight -= 1
            attempts += 1
            verdict = client.classify(answer)
            if answer.setup_fault and not self._answered:
                # Nothing has answered yet: a refused port, an unknown host or an untrusted
                # certificate is the setup, not an outage. Once answers came, it may pass.
                verdict = client.Verdict(client.Action.ABORT, detail=answer.setup_fault)
            self._answered = self._answered or answer.status is not None
            action = verdict.action
            if self._audit is not None:
                took = anyio.current_time() - started
                result = AUDIT_RESULTS.get(verdict.action, str(verdict.outcome))
                self._audit_request(e, answer, result, attempts, left_at, took, waited)
            waited = {}
            if answer.headers is not None:
                self._quota.observe(answer.headers)
                pacer.answered(sent_at)  # a slow answer may mean a late stamp: see pacing
                self._check_reserve()
            self._learn_plan(answer, verdict)
            self._route_known = self._route_known or verdict.route_exists
            if action is not client.Action.SLOW_DOWN:
                self._limited_since = None
            if action is client.Action.UNCLEAR_404:
                if not self._route_known:
                    self._unclear.setdefault(e.campaign_id, client.said_404(answer))
                    if not await self._route_shown():
                        self._left_to_do(e, marked, maybe_applied)
                        return None
                # The route exists, so this 404 is about this row: it settles this row alone.
                action = client.Action.DONE
            if action is client.Action.DONE:
                assert verdict.outcome is not None
                self._consecutive_transient = 0
                pacer.succeeded(sent_at)
                self._say_limit_found()
                return self._finish(e, answer, verdict, attempts, maybe_applied, lost_reasons)
            if action is client.Action.SLOW_DOWN:
                self.summary.rate_limited += 1
                pause = pacer.rate_limited(retry_after(answer.headers or httpx.Headers()), sent_at)
                if self._limited_too_long(pause or 0.0):
                    self._left_to_do(e, marked, maybe_applied)
                    return None
                if pause is not None:
                    self._on_event(
                        f"429 rate limited: pausing all workers {pause:.1f}s, "
                        f"then {pace_text(pacer.per_second)}"
                    )
                self._say_limit_found()
                continue
            if action is client.Action.QUOTA:
                self._quota.remaining = 0
                continue
            if answer.maybe_applied:  # whatever happens next, this attempt may have removed it
                maybe_applied = True
                lost_reasons.append(_uncertain(answer, verdict.detail))
            if action is client.Action.ABORT:
                if not self._stopping.is_set():  # only the key's own refusals are AuthError
                    self._abort_error = AuthError if answer.status in (401, 403) else SetupError
                self.stop(StopReason.ABORTED, verdict.detail)
                self._left_to_do(e, marked, maybe_applied)
                return None
            if action is client.Action.OVERLOADED:
                overloads += 1
                if not self._overloaded(answer, verdict, sent_at, e, marked, maybe_applied):
                    return None
                if overloads <= OVERLOADS_PER_ROW:
                    continue  # a pacing signal: the row's retries are not spent on it
            # Transient: retry with backoff, unless the API looks down altogether.
            elif not self._still_up(verdict, e, marked, maybe_applied):
                return None
            retries += 1
            if retries > cfg.retry.max_retries:
                self._left_to_do(e, marked, maybe_applied)
                return RowResult(
                    e.row,
                    e.campaign_id,
                    e.contact_id,
                    Outcome.FAILED,
                    http_status=answer.status,
                    error_code=answer.code,
                    attempts=attempts,
                    request_id=answer.request_id,
                    detail=f"no definite answer after {attempts} attempts (last: {verdict.detail})",
                    finished_at=datetime.now(UTC),
                )
            hint = retry_after(answer.headers) if answer.headers is not None else None
            ceiling = min(cfg.retry.max_delay, cfg.retry.base_delay * 2 ** (retries - 1))
            delay = min(hint, cfg.retry.max_delay) if hint is not None else None
            backoff_from = anyio.current_time()
            with anyio.move_on_after(delay if delay is not None else random.uniform(0, ceiling)):
                await self._stopping.wait()  # a stop ends the backoff at once
            add_wait(waited, RETRY_BACKOFF, anyio.current_time() - backoff_from)

    def _audit_request(
        self,
        e: Enrollment,
        answer: client.Answer,
        result: str,
        attempt: int,
        left_at: datetime,
        took: float,
        waited: Waits,
    ) -> None:
        assert self._audit is not None
        why: Waits = {}
        for reason, seconds in waited.items():
            add_wait(why, AUDIT_WAITS.get(reason, "other"), seconds)
        self._audit.request(
            e,
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

    def _still_up(
        self, verdict: client.Verdict, e: Enrollment, marked: bool, maybe_applied: bool
    ) -> bool:
        """Count one more answer that settled nothing; stop the run when nothing succeeds."""
        self._consecutive_transient += 1
        if self._consecutive_transient < self.config.breaker_threshold:
            return True
        self.stop(
            StopReason.API_DOWN,
            f"the API looks down: {self._consecutive_transient} attempts in a row failed "
            f"(last: {verdict.detail}); stopped sending, rerun later",
        )
        self._left_to_do(e, marked, maybe_applied)
        return False

    def _overloaded(
        self,
        answer: client.Answer,
        verdict: client.Verdict,
        sent_at: float,
        e: Enrollment,
        marked: bool,
        maybe_applied: bool,
    ) -> bool:
        """A gateway shed the call: slow the shared pace. False when the run stops instead."""
        assert self._pacer is not None
        self.summary.overloaded += 1
        pacer = self._pacer
        if pacer.overloaded(retry_after(answer.headers or httpx.Headers()), sent_at):
            self._on_event(
                f"gateway overloaded ({verdict.detail}): slowing all workers to "
                f"{pace_text(pacer.per_second)}"
            )
        return self._still_up(verdict, e, marked, maybe_applied)

    async def _route_shown(self) -> bool:
        """An unclear 404 came before any answer showed that --base-url serves the DELETE
        route: wait while other rows find out. False, and the run stopped (exit 3), when no
        worker can find out or UNCLEAR_CAMPAIGNS campaigns answered so: a wrong URL."""
        while not self._route_known:
            if self._stopping.is_set():
                return False
            if len(self._unclear) >= UNCLEAR_CAMPAIGNS or self._only_unclear_rows_held():
                campaigns = list(self._unclear)[:UNCLEAR_CAMPAIGNS]
                if not self._stopping.is_set():
                    self._abort_error = SetupError  # a wrong --base-url, not a refused key
                self.stop(
                    StopReason.ABORTED,
                    f"the API answered {self._unclear[campaigns[0]]} for "
                    f"campaign{'s' if len(campaigns) > 1 else ''} {', '.join(campaigns)}, "
                    "and no answer has shown that --base-url serves the DELETE route: check "
                    "--base-url (it should end in /api-gateway). Nothing was recorded for "
                    "these rows. If the URL is right, these campaigns do not exist: take "
                    "their rows out.",
                )
                return False
            await anyio.sleep(0.05)
        return True

    def _only_unclear_rows_held(self) -> bool:
        """Every worker holds a row of a campaign that answered an unclear 404: none of them
        can show the route, and none is free to take a row that could."""
        held = [campaign for campaign, rows in self._held.items() if rows > 0]
        busy = sum(self._held.values())
        return busy >= self._workers_alive and all(c in self._unclear for c in held)

    def _limited_too_long(self, pause: float) -> bool:
        """Nothing but 429s for longer than --max-429-wait (counting the pause now due):
        stop, exit 75, rather than retry forever."""
        now, longest = anyio.current_time(), self.config.retry.max_429_wait
        if self._limited_since is None:
            self._limited_since = now
        if now + pause - self._limited_since <= longest:
            return False
        past = f"past --max-429-wait {longest:g}s"
        self.stop(
            StopReason.API_DOWN,
            "the API answered nothing but 429 (too many requests) for "
            + duration(now - self._limited_since, up=True)
            + (
                f", and the next pause ({duration(pause, up=True)}) would go {past}"
                if pause
                else f", {past}"
            )
            + ": stopped sending, rerun later",
        )
        return True

    def _left_to_do(self, e: Enrollment, marked: bool, maybe_applied: bool) -> None:
        """The row ends this run without a definite outcome. If every answer it got was a
        refusal (a 429, a 503, a 401, a refused connection), nothing was applied: take back
        its `.sent` mark, so a rerun's `not_enrolled` is not blamed on a lost answer."""
        if marked and not maybe_applied:
            assert self._journal is not None
            self._journal.mark_sent(e, -1)

    def _finish(
        self,
        e: Enrollment,
        answer: client.Answer,
        verdict: client.Verdict,
        attempts: int,
        maybe_applied: bool,
        lost_reasons: list[str],
    ) -> RowResult:
        outcome = verdict.outcome
        assert outcome is not None
        detail = verdict.detail
        if outcome is Outcome.NOT_ENROLLED and maybe_applied:
            self.summary.lost_then_not_enrolled += 1
            detail = "an earlier attempt may have removed it: " + "; ".join(
                dict.fromkeys(lost_reasons)
            )
        if outcome is Outcome.REJECTED and answer.code in client.CAMPAIGN_NOT_FOUND:
            self._dead_campaigns.setdefault(e.campaign_id, e.row)
        if outcome is Outcome.REMOVED:
            self._removed += 1
        self.summary.rows_settled_by_calls += 1
        return RowResult(
            e.row,
            e.campaign_id,
            e.contact_id,
            outcome,
            http_status=answer.status,
            error_code=answer.code,
            attempts=attempts,
            request_id=answer.request_id,
            detail=detail,
            finished_at=datetime.now(UTC),
        )

    def _check_reserve(self) -> None:
        """A --reserve of the whole daily limit the API reports is a usage error, not a quota
        stop that would repeat every night (the answer that told us is recorded as usual)."""
        limit, reserve = self._quota.limit, self.config.reserve
        if reserve and limit is not None and reserve >= limit:
            source = f"the API reports a daily limit of {limit:,} calls"
            if is_published_plan(limit):
                source += f" (the {plan_for_daily_limit(limit).name} plan)"
            self.stop(StopReason.ERROR, reserve_leaves_no_calls(reserve, limit, source))

    def _say_limit_found(self) -> None:
        """Once probing found an unknown limit: say it, and the --rate that skips the probe."""
        pacer = self._pacer
        if pacer is None or pacer.learnt is None or self.summary.learnt_rate is not None:
            return
        learnt = pacer.learnt
        self.summary.learnt_rate = str(learnt)
        window = duration(learnt.period, up=True)
        self._on_event(
            f"found the limit: the API accepted {learnt.calls:g} calls in {window} "
            f"before its first 429; pacing at {pace_text(pacer.per_second)} from now on "
            f"(next time pass --rate {learnt})"
        )

    def _learn_plan(self, answer: client.Answer, verdict: client.Verdict) -> None:
        """Pace at the plan the first X-RateLimit-Limit reveals, unless told a rate."""
        pacer = self._pacer
        if self._plan_learnt or pacer is None or not pacer.learning:
            return
        if verdict.action is client.Action.ABORT:
            return  # the run stops; stop() releases the workers waiting for the plan
        if answer.status is None or answer.status >= 500:
            pacer.unanswered()  # no answer, or a gateway's: it says nothing of the plan
            return
        self._plan_learnt = True
        limit = self._quota.limit
        climbing = (
            "and doubling it every 8 s until a 429 shows the limit (--plan or --rate sets it)"
        )
        if limit is None:
            pace = self.config.pace(PLANS["starter"])
            self._on_event(
                f"the API did not report its daily limit: starting at Starter's {pace} {climbing}"
            )
            pacer.learn(pace, adaptive=True)
            return
        plan = plan_for_daily_limit(limit)
        pace = self.config.pace(plan)
        scale = time_scale(answer.headers or {}, self.config.base_url)
        shown = str(pace)
        if pace is not None and scale is not None:
            pace = Rate(pace.calls, pace.period / scale)
            shown = f"{pace_text(pace.per_second)} (the sandbox runs time {scale:g}x faster)"
        if is_published_plan(limit):
            self._on_event(f"daily limit {limit:,}: {plan.name} plan, pacing at {shown}")
            pacer.learn(pace)
        else:
            self._on_event(
                f"daily limit {limit:,} is no published plan: starting at {plan.name}'s "
                f"{shown} {climbing}"
            )
            pacer.learn(pace, adaptive=True)


def _uncertain(answer: client.Answer, detail: str) -> str:
    """What an attempt that may have been applied got, in words for `detail`."""
    if answer.status is None:
        return f"its answer was lost ({detail})"
    return f"it got {detail} (an answer that can follow a removal)"


async def run_job(
    config: JobConfig,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> Summary:
    """Plan and run a job in one call (the library's async entry point)."""
    job = Job(config, on_progress=on_progress, on_event=on_event)
    await job.plan()
    return await job.run()


def unenroll_file(
    config: JobConfig,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> Summary:
    """Synchronous wrapper for schedulers (Airflow, Prefect) that do not run an event loop."""
    return anyio.run(
        lambda: run_job(config, on_progress=on_progress, on_event=on_event), backend="asyncio"
    )
