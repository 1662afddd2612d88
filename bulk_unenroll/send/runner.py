"""Orchestration: one producer, a fixed pool of workers, one writer; stop reasons and signals."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, TypeVar

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..api import client
from ..api.listing import CampaignLister
from ..api.pacing import Pacer
from ..api.session import OVERLOADS_PER_ROW, Final, Hold, Request, Session, Stopped
from ..config import JobConfig
from ..errors import AuthError, BulkUnenrollError, InputError, ResultsFileError, find_in_group
from ..events import Event, MaxRemovalsReached, Note, Said, SameInputShared, Setting
from ..input.source import Source
from ..models import (
    CAMPAIGN_NOT_FOUND,
    RESTORE_ONLY,
    Enrollment,
    Outcome,
    RowResult,
    StopReason,
    Summary,
)
from ..plan import RowAction, SendPlan, build_plan, work_batches
from ..platforms import require_posix
from ..results.history import History
from ..results.journal import Journal, read_history
from .check import EnrollmentCheck
from .claims import InputClaim

__all__ = ["OVERLOADS_PER_ROW", "Job", "Progress", "run_job", "unenroll_file"]
PROGRESS_EVERY = 0.5
ENDS_WITH_AN_ERROR = (StopReason.ABORTED, StopReason.ERROR)
"""Stops that `Job.run` raises as an error (AuthError, InputError) rather than returns."""
MAY_HAVE_REMOVED = "an earlier attempt may have removed it"
"""How the detail of a `not_enrolled` after a lost answer begins (restore reads it back)."""
Item = TypeVar("Item")
"""What the workers take, one at a time: a row to unenroll, a batch to restore."""
Results = MemoryObjectSendStream[list[RowResult]]


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
        on_event: Callable[[Event], None] | None = None,
        handle_signals: bool = False,
    ) -> None:
        require_posix()  # Windows: one sentence (use WSL) before anything is read or locked
        self.config = config
        self.source = Source(config.input, config.read)
        self.summary = Summary()
        self._on_progress = on_progress
        self._on_event = on_event or (lambda _message: None)
        self._handle_signals = handle_signals
        self._journal: Journal | None = None
        self._claim: InputClaim | None = None
        self._plan: SendPlan | None = None
        self._sent_rows = 0
        self._finished_rows = 0
        self._removed = 0
        self._dead_campaigns: dict[str, int] = {}
        """Campaign -> the row whose answer was campaign_not_found."""
        self._workers_alive = 0
        self._stopping = anyio.Event()
        self._signalled = False
        self._session: Session | None = None
        """The run's API session (pace, quota, retries); None until `run` starts."""

    # -- planning -------------------------------------------------------------------------

    async def plan(self, *, dry_run: bool = False) -> SendPlan:
        """Read and validate the input, compare with the results file; locks it unless dry."""
        self.source.columns()  # fail fast on a missing column, before any lock or pass
        if self.source.sheet_note:
            self._on_event(Note(self.source.sheet_note))
        try:
            if dry_run:
                history = await anyio.to_thread.run_sync(read_history, self.config.out)
            else:
                self._claim_input()
                self._journal = await anyio.to_thread.run_sync(Journal, self.config.out)
                history = self._journal.history
                for notice in self._journal.notices:
                    self._on_event(Note(notice))
            _refuse_restore_results(history, self.config.out)
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
            self._on_event(SameInputShared(cfg.input, self._claim.others))
        elif self._claim.unchecked:
            unchecked = self._claim.unchecked
            self._on_event(
                Note(f"warning: cannot check for another run on {cfg.input}: {unchecked}")
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
        if self._journal is None:
            await self.plan()
        journal = self._journal
        assert journal is not None, "plan() opens the results file"
        cfg = self.config
        self.summary.started_at = datetime.now(UTC)
        try:
            self._session = session = Session(
                cfg,
                self.summary,
                stopping=self._stopping,
                stop=self.stop,
                on_event=self._on_event,
                hold=self._removals_left,
                workers_alive=lambda: self._workers_alive,
            )
            workers = cfg.workers(cfg.pace())
            session.open_audit()
            http = client.make_client(cfg.api_key.reveal(), cfg.timeout, workers, cfg.ca_bundle)
            async with http:
                await self._send_all(_Sending(session, journal, http), workers)
        except BaseExceptionGroup as group:
            # A task failed (the results file filled up): raise its error, not the group.
            error = find_in_group(group, BulkUnenrollError)
            if error is None:
                raise
            raise error from None
        finally:
            self.summary.finished_at = datetime.now(UTC)
            self.summary.final_pace = self._session.pacer.per_second if self._session else None
            if self._session is not None:
                self._session.close()
            self.close()
        if self.summary.stop_reason is StopReason.ABORTED:
            abort = self._session.abort_error if self._session else AuthError
            raise abort(self.summary.stop_event or self.summary.stop_detail)
        if self.summary.stop_reason is StopReason.ERROR:
            raise InputError(self.summary.stop_event or self.summary.stop_detail)
        return self.summary

    async def _send_all(self, sending: _Sending, workers: int) -> None:
        """Send the plan's rows, one DELETE each (`restore` sends batches instead); with
        --check-enrollment, list the campaigns first (`check.py`)."""
        plan, cfg = self._plan, self.config
        assert plan is not None
        check = None
        if cfg.check_enrollment:
            lister = CampaignLister(sending.session, sending.http, cfg.base_url, cfg.timeout)
            check = EnrollmentCheck(lister, plan.campaign_counts, self.summary, self._on_event)
        await self._run_pool(
            sending.journal,
            workers,
            functools.partial(self._produce, plan, check),
            functools.partial(self._settle_row, sending),
        )

    async def _run_pool(
        self,
        journal: Journal,
        workers: int,
        produce: Callable[[MemoryObjectSendStream[Item], Results], Coroutine[None, None, None]],
        settle: Callable[[Item], Awaitable[list[RowResult] | None]],
    ) -> None:
        """One producer, `workers` workers settling what it yields, one writer."""
        work_send, work_recv = anyio.create_memory_object_stream[Item](workers * 2)
        done_send, done_recv = anyio.create_memory_object_stream[list[RowResult]](workers * 4)
        async with anyio.create_task_group() as tg:
            if self._handle_signals:
                tg.start_soon(self._watch_signals)
            tg.start_soon(self._tick)
            async with anyio.create_task_group() as flow:
                flow.start_soon(self._writer, journal, done_recv)
                async with anyio.create_task_group() as pool:
                    self._pool_scope = pool.cancel_scope
                    async with work_recv, done_send:
                        pool.start_soon(produce, work_send, done_send.clone())
                        self._workers_alive = workers
                        for _ in range(workers):
                            pool.start_soon(
                                self._work, settle, work_recv.clone(), done_send.clone()
                            )
            # The writer has recorded every result by now; stop the watcher and the ticker.
            tg.cancel_scope.cancel()

    async def _produce(
        self,
        plan: SendPlan,
        check: EnrollmentCheck | None,
        work: MemoryObjectSendStream[Enrollment],
        done: MemoryObjectSendStream[list[RowResult]],
    ) -> None:
        async with work, done:
            if check is not None:  # every listing before the first row: no DELETE moves a list
                await check.list_campaigns(self._stopping.is_set)
                await self._record_listed(check, plan, done)
            batches = work_batches(self.source, plan)
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
                    if check is not None and check.settles(enrollment):
                        continue  # recorded from its campaign's listing
                    try:
                        await work.send(enrollment)
                    except anyio.BrokenResourceError:
                        return

    async def _record_listed(
        self,
        check: EnrollmentCheck,
        plan: SendPlan,
        done: MemoryObjectSendStream[list[RowResult]],
    ) -> None:
        """Record the rows the listings settle, all at once, right after the listings (an
        extra pass over the input): never hours later, behind DELETEs waiting for quota. Also
        when the run stops (a quota spent in a later listing): the calls of the complete
        listings are spent, and their rows would otherwise be listed again on every rerun."""
        check.forget_stale()
        if not check.listings:
            return
        batches = work_batches(self.source, plan)
        while True:
            batch = await anyio.to_thread.run_sync(next, batches, None)
            if batch is None:
                return
            settled = [e for e in batch[0] if check.settles(e)]
            if settled:
                self._finished_rows += len(settled)
                # Their new records supersede any `failed` ones.
                self.summary.outcomes[Outcome.FAILED] -= sum(e.failed_before for e in settled)
                await done.send([check.record(e) for e in settled])

    async def _work(
        self,
        settle: Callable[[Item], Awaitable[list[RowResult] | None]],
        work: MemoryObjectReceiveStream[Item],
        done: Results,
    ) -> None:
        try:
            async with work, done:
                async for item in work:
                    if self._stopping.is_set():
                        return
                    results = await settle(item)
                    if results is not None:
                        # Shielded: a row the API answered is recorded even if the grace
                        # period ends now (the writer is outside the cancelled pool).
                        with anyio.CancelScope(shield=True):
                            await done.send(results)
        finally:
            self._workers_alive -= 1  # workers waiting on the route count the others

    def _finished(self, pairs: tuple[Enrollment, ...]) -> None:
        """Count rows that got their record in this run."""
        self._finished_rows += len(pairs)
        # Their new records supersede the `failed` ones.
        self.summary.outcomes[Outcome.FAILED] -= sum(e.failed_before for e in pairs)

    async def _settle_row(self, sending: _Sending, e: Enrollment) -> list[RowResult] | None:
        """One row's DELETE and its record; None when the run stopped first."""
        result = await self._unenroll(sending, e)
        if result is None:
            return None
        self._finished((e,))
        return [result]

    async def _writer(
        self, journal: Journal, done: MemoryObjectReceiveStream[list[RowResult]]
    ) -> None:
        """One writer owns the results file; it writes whatever has piled up in one go."""
        async with done:
            async for batch in done:
                while len(batch) < 1000:
                    try:
                        batch += done.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):  # EndOfStream: the last
                        break  # sender closed meanwhile; what is held is still written
                journal.record(batch)
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
        session = self._session
        state, left = session.pacer.state() if session else ("starting", None)
        if self.summary.finished_at is not None:  # the final frame: no pacer any more
            reason = self.summary.stop_reason
            stopped = f"stopped ({reason.value.replace('_', ' ')})"
            state, left = ("finished" if reason is StopReason.COMPLETE else stopped), None
        return Progress(
            summary=self.summary,
            in_flight=session.in_flight if session else 0,
            sent_rows=self._sent_rows,
            pace_per_second=session.pacer.per_second if session else None,
            pacer_state=state,
            pause_left=left,
            finished_rows=self._finished_rows,
            quota_limit=session.quota.limit if session else None,
            quota_remaining=session.quota.remaining if session else None,
        )

    @property
    def _pacer(self) -> Pacer | None:
        """The run's shared pace; None until `run` starts."""
        return self._session.pacer if self._session else None

    def stop(self, reason: StopReason, why: Event | None = None) -> None:
        """Stop dispatching; requests already sent finish and are recorded."""
        if not self._stopping.is_set():
            s = self.summary
            s.stop_reason, s.stop_event, s.stop_detail = reason, why, str(why or "")
            self._stopping.set()
            if self._session is not None:
                self._session.pacer.close()  # wake workers waiting for a slot, a pause or the plan
            if why is not None and s.stop_detail and reason not in ENDS_WITH_AN_ERROR:
                self._on_event(why)  # an error is raised to the caller, who shows it once

    async def _watch_signals(self) -> None:
        """SIGINT and SIGTERM stop the run gracefully; where no receiver can be set up (an
        event loop in another thread than the main one, a loop without signal handlers)
        the run goes on without, and says so."""
        with contextlib.ExitStack() as stack:
            try:
                signals = stack.enter_context(
                    anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
                )
            except (NotImplementedError, RuntimeError) as exc:
                self._on_event(
                    Note(
                        f"signals are not watched here ({str(exc) or 'no signal handlers'}): "
                        "SIGINT and SIGTERM give the requests in flight no grace period; "
                        "however the process ends, a rerun carries on (they are marked in the "
                        ".sent file)"
                    )
                )
                return
            await self._take_signals(signals)

    async def _take_signals(self, signals: AsyncIterator[int]) -> None:
        async with anyio.create_task_group() as grace:
            async for signum in signals:
                if self._signalled:
                    self._leave_now(signum)
                self._signalled = True
                reason = StopReason.SIGINT if signum == signal.SIGINT else StopReason.SIGTERM
                self.stop(
                    reason,
                    Note(
                        f"{reason.value.upper()} received: finishing "
                        f"{self._in_flight()} request(s) in flight "
                        f"(up to {self.config.grace_period:g}s); "
                        "signal again to quit at once"
                    ),
                )
                # The grace period runs beside this loop, so a second signal is seen at once.
                grace.start_soon(self._end_grace)

    async def _end_grace(self) -> None:
        await anyio.sleep(self.config.grace_period)
        self._pool_scope.cancel()

    def _leave_now(self, signum: int) -> NoReturn:
        """Second signal: exit now. Records written so far are whole and flushed; the rows
        in flight are in the `.sent` file, so the rerun reports their outcome truthfully."""
        self._on_event(Note("second signal: exiting now; a rerun redoes the rows in flight"))
        if self._journal is not None:
            with contextlib.suppress(ResultsFileError):
                self._journal.sync_if_due(force=True)
        os._exit(128 + signum)

    def _in_flight(self) -> int:
        return self._session.in_flight if self._session else 0

    # -- one row ----------------------------------------------------------------------------

    def _removals_left(self, in_flight: int) -> Hold:
        """--max-removals: the session's gate before each DELETE."""
        cap = self.config.max_removals
        if cap is None or self._removed + in_flight < cap:
            return Hold.GO
        if self._removed < cap:
            return Hold.WAIT  # answers in flight decide whether the cap is met
        self.stop(StopReason.MAX_REMOVALS, MaxRemovalsReached(cap))
        return Hold.STOP

    async def _unenroll(self, sending: _Sending, e: Enrollment) -> RowResult | None:
        """The row's DELETE through the session, and what its end means for the row; None
        when the run stops first (the row stays to do)."""
        marked = False

        def mark_sent() -> None:
            nonlocal marked
            if not marked:
                sending.journal.mark_sent(e)
                marked = True
                self._sent_rows += 1

        cfg = self.config
        end = await sending.session.send(
            Request(
                e,
                functools.partial(client.delete, sending.http, cfg.base_url, e, cfg.timeout),
                skip=lambda: e.campaign_id in self._dead_campaigns,
                sending=mark_sent,
            )
        )
        maybe_applied = e.attempted_before or bool(end.lost)
        if isinstance(end, Stopped) and end.skipped:
            return self._dead_campaign_result(e, end.attempts)
        if isinstance(end, Stopped) or not end.settled:
            if marked and not maybe_applied:
                # Every answer it got was a refusal (a 429, a 503, a 401, a refused
                # connection): nothing was applied. Take back its `.sent` mark, so a
                # rerun's `not_enrolled` is not blamed on a lost answer.
                sending.journal.mark_sent(e, -1)
            return None if isinstance(end, Stopped) else _failed(e, end)
        return self._finish(e, end, maybe_applied)

    def _dead_campaign_result(self, e: Enrollment, attempts: int) -> RowResult:
        first = self._dead_campaigns[e.campaign_id]
        return RowResult(
            e.row,
            e.campaign_id,
            e.contact_id,
            Outcome.REJECTED,
            http_status=None,
            error_code=CAMPAIGN_NOT_FOUND[0],
            attempts=attempts,
            detail=f"not sent: the campaign answered campaign_not_found for row {first}",
            finished_at=datetime.now(UTC),
        )

    def _finish(self, e: Enrollment, end: Final, maybe_applied: bool) -> RowResult:
        """A definite answer settles the row."""
        answer, outcome = end.answer, end.verdict.outcome
        assert outcome is not None, "a definite answer carries its outcome"
        detail = end.verdict.detail
        if outcome is Outcome.NOT_ENROLLED and maybe_applied:
            self.summary.lost_then_not_enrolled += 1
            earlier = ["a request in an earlier run got no definite answer (see .sent)"]
            lost_reasons = (earlier if e.attempted_before else []) + list(end.lost)
            detail = f"{MAY_HAVE_REMOVED}: " + "; ".join(dict.fromkeys(lost_reasons))
        if outcome is Outcome.REJECTED and answer.code in CAMPAIGN_NOT_FOUND:
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
            attempts=end.attempts,
            request_id=answer.request_id,
            detail=detail,
            finished_at=datetime.now(UTC),
        )


@dataclass(frozen=True, slots=True)
class _Sending:
    """What the workers send with: the API session, the results file, the HTTP client."""

    session: Session
    journal: Journal
    http: httpx.AsyncClient


def _refuse_restore_results(history: History, out: Path) -> None:
    """A restore's results file as --out would skip every pair it restored, unsent."""
    if history.outcomes_recorded() & RESTORE_ONLY:
        raise InputError(
            Said(
                (
                    Setting.OUT,
                    f" {out} records re-enrollments: it is a restore's results file, not a "
                    "run's. Give the run a results file of its own (a new path)",
                )
            )
        )


def _failed(e: Enrollment, end: Final) -> RowResult:
    """Retries spent without a definite answer."""
    return RowResult(
        e.row,
        e.campaign_id,
        e.contact_id,
        Outcome.FAILED,
        http_status=end.answer.status,
        error_code=end.answer.code,
        attempts=end.attempts,
        request_id=end.answer.request_id,
        detail=f"no definite answer after {end.attempts} attempts (last: {end.verdict.detail})",
        finished_at=datetime.now(UTC),
    )


async def run_job(
    config: JobConfig,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> Summary:
    """Plan and run a job in one call (the library's async entry point)."""
    job = Job(config, on_progress=on_progress, on_event=on_event)
    await job.plan()
    return await job.run()


def unenroll_file(
    config: JobConfig,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> Summary:
    """Synchronous wrapper for schedulers (Airflow, Prefect) that do not run an event loop."""
    return anyio.run(
        lambda: run_job(config, on_progress=on_progress, on_event=on_event), backend="asyncio"
    )
