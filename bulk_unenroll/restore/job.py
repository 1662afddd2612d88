"""One restore: re-enroll removed pairs, a batch of up to 500 per Add Contacts call, through
the same session (pace, quota, retries, breaker, audit), results file (journal, lock, `.sent`
marks), workers, signals and progress as a run; only what an answer means for the pairs of
its batch is its own."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..api import client
from ..api.session import Final, Request, Stopped
from ..config import JobConfig
from ..errors import InputError
from ..events import Event, Note
from ..models import CAMPAIGN_NOT_FOUND, RESTORE_OUTCOMES, Enrollment, Outcome, RowResult
from ..results.journal import Journal, read_history
from ..send.runner import Job, Progress, Results, _failed, _Sending
from .select import Batch, Filters, RestorePlan, build_restore_plan, check_restore_file

LOST_BEFORE = "a request in an earlier restore got no definite answer (see .sent)"


@dataclass(frozen=True)
class RestoreOptions:
    """What to restore from, which pairs, and what the API is told the restore is."""

    results: Path
    """The results file of the run to undo."""
    source: str
    """Add Contacts' `source`: names the restore for traceability."""
    filters: Filters = Filters()


class RestoreJob(Job):
    """A restore, planned and run like a `Job`; `config.input` is the run's results file and
    `config.out` the restore's own."""

    def __init__(
        self,
        config: JobConfig,
        options: RestoreOptions,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        handle_signals: bool = False,
    ) -> None:
        super().__init__(
            config, on_progress=on_progress, on_event=on_event, handle_signals=handle_signals
        )
        self.options = options
        self.restore_plan: RestorePlan | None = None
        self.summary.outcome_kinds = RESTORE_OUTCOMES

    async def plan(self, *, dry_run: bool = False) -> RestorePlan:  # type: ignore[override]
        """Read RESULTS and the restore's own results file (locked unless dry)."""
        out, opts = self.config.out, self.options
        if out.resolve() == opts.results.resolve():
            raise InputError(
                f"--out {out} is RESULTS itself: a restore writes its own results file; "
                "give a new path such as restore-results.csv"
            )
        try:
            if dry_run:
                history = await anyio.to_thread.run_sync(read_history, out)
            else:
                self._journal = await anyio.to_thread.run_sync(Journal, out)
                history = self._journal.history
                for notice in self._journal.notices:
                    self._on_event(Note(notice))
            check_restore_file(history, out)
            plan = await anyio.to_thread.run_sync(
                build_restore_plan, opts.results, history, opts.filters
            )
        except BaseException:
            self.close()
            raise
        self.restore_plan = plan
        s = self.summary
        s.total_rows = plan.total
        s.outcomes.update(plan.settled_before)
        s.outcomes[Outcome.FAILED] += plan.failed_before  # until this restore settles them
        s.settled_before = sum(plan.settled_before.values())
        s.to_send = plan.to_send
        return plan

    async def _send_all(self, sending: _Sending, workers: int) -> None:
        plan = self.restore_plan
        assert plan is not None
        await self._run_pool(
            sending.journal,
            min(workers, max(1, plan.calls)),
            functools.partial(self._feed, plan.batches()),
            functools.partial(self._settle_batch, sending),
        )

    async def _feed(
        self, batches: Iterator[Batch], work: MemoryObjectSendStream[Batch], done: Results
    ) -> None:
        async with work, done:
            for batch in batches:
                if self._stopping.is_set():
                    return
                try:
                    await work.send(batch)
                except anyio.BrokenResourceError:
                    return

    async def _settle_batch(self, sending: _Sending, batch: Batch) -> list[RowResult] | None:
        """One Add Contacts call through the session, and what its end means for each pair;
        None when the run stopped first (the batch stays to do)."""
        marked = False

        def mark_sent() -> None:
            nonlocal marked
            if not marked:
                sending.journal.mark_all_sent(batch.pairs)
                marked = True
                self._sent_rows += len(batch.pairs)

        cfg, campaign = self.config, batch.campaign_id
        ids = [e.contact_id for e in batch.pairs]
        end = await sending.session.send(
            Request(
                batch.pairs[0],
                functools.partial(
                    client.add_contacts,
                    sending.http,
                    cfg.base_url,
                    campaign,
                    ids,
                    self.options.source,
                    cfg.timeout,
                ),
                skip=lambda: campaign in self._dead_campaigns,
                sending=mark_sent,
                classify=client.classify_add,
                audit={"operation": "add_contacts", "campaign_id": campaign, "contact_ids": ids},
            )
        )
        if isinstance(end, Stopped) and end.skipped:
            results = [self._dead_campaign_result(e, end.attempts) for e in batch.pairs]
        elif isinstance(end, Stopped) or not end.settled:
            if marked and not end.lost:
                sending.journal.mark_all_sent(batch.pairs, -1)  # only refusals: nothing applied
            if isinstance(end, Stopped):
                return None
            results = [_failed(e, end) for e in batch.pairs]
        else:
            results = self._answered(batch, end)
        self._finished(batch.pairs)
        return results

    def _answered(self, batch: Batch, end: Final) -> list[RowResult]:
        """A definite answer settles every pair of the batch: `restored` if the answer names
        it among the newly added, `already_enrolled` if skipped, `rejected` for the batch."""
        answer, outcome = end.answer, end.verdict.outcome
        if outcome is Outcome.REJECTED and answer.code in CAMPAIGN_NOT_FOUND:
            self._dead_campaigns.setdefault(batch.campaign_id, batch.pairs[0].row)
        added = None if answer.added is None else frozenset(answer.added)
        results = []
        for e in batch.pairs:
            detail = end.verdict.detail
            pair_outcome = outcome or Outcome.REJECTED
            if outcome is Outcome.RESTORED and added is not None and e.contact_id not in added:
                pair_outcome = Outcome.ALREADY_ENROLLED
            detail = _after_lost(e, end, pair_outcome, detail)
            results.append(_record(e, pair_outcome, end, detail))
        self.summary.rows_settled_by_calls += len(batch.pairs)
        return results


def _after_lost(e: Enrollment, end: Final, outcome: Outcome, detail: str) -> str:
    """Say so when the answer came after an attempt whose answer was lost: a pair skipped as
    enrolled was most likely restored by that attempt."""
    lost = ([LOST_BEFORE] if e.attempted_before else []) + list(end.lost)
    if not lost:
        return detail
    said = f"answered by a retry after a lost answer ({'; '.join(dict.fromkeys(lost))})"
    if outcome is Outcome.ALREADY_ENROLLED:
        said += ": most likely restored by that earlier attempt"
    return f"{said}; {detail}" if detail else said


def _record(e: Enrollment, outcome: Outcome, end: Final, detail: str) -> RowResult:
    return RowResult(
        e.row,
        e.campaign_id,
        e.contact_id,
        outcome,
        http_status=end.answer.status,
        error_code=end.answer.code,
        attempts=end.attempts,
        request_id=end.answer.request_id,
        detail=detail,
        finished_at=datetime.now(UTC),
    )
