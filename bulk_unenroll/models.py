"""Pure data: what a row is, how it ended, and the job's tally."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from .events import Event


class Outcome(StrEnum):
    """How one input row ended. The value is what the results file says."""

    REMOVED = "removed"
    NOT_ENROLLED = "not_enrolled"
    REJECTED = "rejected"
    FAILED = "failed"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    RESTORED = "restored"
    """`restore`: the API added the pair back (named among the newly added)."""
    ALREADY_ENROLLED = "already_enrolled"
    """`restore`: the API skipped the pair as enrolled already."""


RUN_OUTCOMES = tuple(Outcome)[:6]
"""How a `run` row can end (what its summary lists)."""
RESTORE_OUTCOMES = (Outcome.RESTORED, Outcome.ALREADY_ENROLLED, Outcome.REJECTED, Outcome.FAILED)
"""How a `restore` pair can end."""
RESTORE_ONLY = frozenset(RESTORE_OUTCOMES[:2])
"""Outcomes only a restore records: a results file holding them is a restore's."""


NEEDS_A_LOOK = (Outcome.REJECTED, Outcome.FAILED, Outcome.INVALID)
"""Outcomes that make a finished job exit 1, and what `report --export` picks by default."""


CONTACT_ID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
"""A contact id as the input layer keeps it (a lower-case UUID) and as a listing must give it
for its rows to match."""
CAMPAIGN_NOT_FOUND = ("campaign_not_found",)
"""The only 404 error code that settles every row of a campaign (the API client's table, the
dead-campaign shortcut and the report's rows rejected for good share it). The campaign-start
page spells an unknown campaign `not_found`, but gateways answer an unknown route (a wrong
base URL) the same way: that spelling, like any other undocumented 404, settles nothing."""


class StopReason(StrEnum):
    """Why a run stopped; decides the exit code together with the results."""

    COMPLETE = "complete"
    QUOTA = "quota"
    API_DOWN = "api_down"
    MAX_REMOVALS = "max_removals"
    SIGINT = "sigint"
    SIGTERM = "sigterm"
    ABORTED = "aborted"
    ERROR = "error"
    """Ended by an error other than the API refusing the setup (usage, input, results file)."""


@dataclass(frozen=True, slots=True)
class Enrollment:
    """One (campaign, contact) pair to unenroll; `row` counts data rows from 1."""

    row: int
    campaign_id: str
    contact_id: str
    attempted_before: bool = False
    """An earlier run sent this pair and never recorded a definite answer."""
    failed_before: bool = False
    """The results file's latest record for this pair says `failed`."""


@dataclass(frozen=True, slots=True)
class RowResult:
    """The record of one row in the results file."""

    row: int
    campaign_id: str
    contact_id: str
    outcome: Outcome
    http_status: int | None = None
    error_code: str = ""
    attempts: int = 0
    request_id: str = ""
    detail: str = ""
    finished_at: datetime | None = None


@dataclass
class Summary:
    """The job as the results file now stands, plus what this invocation did."""

    total_rows: int = 0
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    """Per input row, its latest outcome: earlier runs' and this one's."""
    error_codes: Counter[str] = field(default_factory=Counter)
    settled_before: int = 0
    """Rows an earlier run settled with an API answer (skipped this time); the plan's figure."""
    to_send: int = 0
    calls: int = 0
    rows_settled_by_calls: int = 0
    rate_limited: int = 0
    """429 answers for the per-minute window (pacing signals, not row failures)."""
    overloaded: int = 0
    """Overload answers from a gateway (a 503, a quick 502/504): pacing signals too."""
    final_pace: float | None = None
    """Calls per second the run was pacing at when it ended (None: unpaced)."""
    listing_calls: int = 0
    """Calls that listed campaigns' contacts (--check-enrollment); counted in `calls` too."""
    settled_by_listing: int = 0
    """Rows settled `not_enrolled` from a listing, without a DELETE (--check-enrollment)."""
    lost_then_not_enrolled: int = 0
    """`not_enrolled` after a lost answer: most likely removed by an earlier attempt."""
    stop_reason: StopReason = StopReason.COMPLETE
    stop_detail: str = ""
    """The stop in words, settings named as `JobConfig` names them."""
    stop_event: Event | None = None
    """The stop as data, for a caller that words its settings its own way (the CLI)."""
    quota_reset_at: datetime | None = None
    learnt_rate: str | None = None
    """An unknown per-minute limit found by probing, as `--rate` takes it (`300/min`)."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome_kinds: tuple[Outcome, ...] = RUN_OUTCOMES
    """The outcomes this kind of job has, in the order its summary lists them."""

    @property
    def unfinished(self) -> int:
        """Rows with no record at all yet."""
        return self.total_rows - sum(self.outcomes.values())

    @property
    def remaining(self) -> int:
        """Rows a rerun would still work on: the unfinished and the failed."""
        return self.unfinished + self.outcomes[Outcome.FAILED]

    @property
    def calls_per_settled_row(self) -> float | None:
        if not self.rows_settled_by_calls:
            return None
        return self.calls / self.rows_settled_by_calls

    @property
    def duration_seconds(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def exit_code(self) -> int:
        """The whole job's state: 0 clean, 1 needs a look, 75 rerun later, 130/143 interrupted."""
        stopped_early = self.stop_reason is not StopReason.COMPLETE and self.remaining > 0
        if stopped_early or self.unfinished > 0:
            return {StopReason.SIGINT: 130, StopReason.SIGTERM: 143}.get(self.stop_reason, 75)
        return 1 if any(self.outcomes[o] for o in NEEDS_A_LOOK) else 0
