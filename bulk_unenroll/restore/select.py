"""What a restore does: the pairs a run's results file marks `removed` (its latest record of
each pair), narrowed by the filters, less those an earlier restore into the same file settled,
grouped by campaign into Add Contacts batches of at most 500."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from ..config import ReadOptions
from ..errors import InputError, ResultsFileError
from ..input.ids import normalise
from ..input.source import Source
from ..keys import CAMPAIGN, CONTACT, OUTCOMES, is_in, pair_key
from ..models import Enrollment, Outcome
from ..results import records
from ..results.history import History
from ..results.records import TIMESTAMP, unescape
from ..send.runner import MAY_HAVE_REMOVED

BATCH_MAX = 500
"""Most contact ids one Add Contacts call takes (the API answers 400 too_many_contacts above)."""
RUN_ONLY = (Outcome.REMOVED, Outcome.NOT_ENROLLED)
"""Statuses only a run writes: a file holding them is a run's results, not a restore's."""


@dataclass(frozen=True)
class Filters:
    """Which of the removed pairs to restore; empty: all of them."""

    campaigns: frozenset[str] = frozenset()
    since: datetime | None = None
    """Only pairs removed at or after this moment (their `finished_at`, UTC)."""
    until: datetime | None = None
    """Only pairs removed before this moment."""
    pairs: Path | None = None
    """Only pairs listed in this input file (read like any input)."""
    read: ReadOptions = ReadOptions()
    """How to read `pairs`."""

    def described(self) -> list[str]:
        """The filters in words, for the plan."""
        said = []
        if self.campaigns:
            said.append("campaign " + ", ".join(sorted(self.campaigns)))
        if self.since is not None:
            said.append(f"removed at or after {self.since:%Y-%m-%d %H:%M:%S} UTC")
        if self.until is not None:
            said.append(f"removed before {self.until:%Y-%m-%d %H:%M:%S} UTC")
        if self.pairs is not None:
            said.append(f"listed in {self.pairs}")
        return said


@dataclass(frozen=True)
class Batch:
    """One Add Contacts call: pairs of one campaign, in the order RESULTS recorded them."""

    campaign_id: str
    pairs: tuple[Enrollment, ...]


@dataclass
class RestorePlan:
    """What a restore of RESULTS into its own results file does, before it does it."""

    results: Path
    removed: int
    """Pairs RESULTS marks `removed` (latest record per pair)."""
    filtered_out: int
    """Removed pairs the filters leave out."""
    settled_before: Counter[Outcome] = field(default_factory=Counter)
    """Pairs an earlier restore into the same file settled (not sent again)."""
    todo: pl.DataFrame = field(default_factory=pl.DataFrame)
    """The pairs to send, in sending order (campaign by campaign): `row`, `campaign_id`,
    `contact_id`, `attempted`, `failed`. Rows become `Enrollment`s one batch at a time."""
    unlisted_rows: int = 0
    """Rows of --pairs that are no valid pair (they select nothing)."""
    lost_then_not_enrolled: int = 0
    """Pairs RESULTS marks `not_enrolled` after a lost answer: most likely removed by the run,
    but not certainly, so never restored (re-enrolling a contact who was not enrolled is worse
    than leaving one out)."""

    @property
    def total(self) -> int:
        """Pairs this restore is about: settled before plus to send."""
        return sum(self.settled_before.values()) + self.to_send

    @property
    def to_send(self) -> int:
        return self.todo.height

    @property
    def resend(self) -> int:
        """Pairs an earlier restore sent without getting a definite answer."""
        return int(self.todo["attempted"].sum()) if self.to_send else 0

    @property
    def failed_before(self) -> int:
        return int(self.todo["failed"].sum()) if self.to_send else 0

    def campaign_counts(self) -> Counter[str]:
        if not self.to_send:
            return Counter()
        counts = self.todo.group_by(CAMPAIGN, maintain_order=True).len()
        return Counter(dict(counts.iter_rows()))

    @property
    def calls(self) -> int:
        """Add Contacts calls needed: one per BATCH_MAX pairs of a campaign, rounded up."""
        return sum(-(-n // BATCH_MAX) for n in self.campaign_counts().values())

    def batches(self) -> Iterator[Batch]:
        """The batches to send, in order."""
        if not self.to_send:
            return
        for (campaign,), group in self.todo.group_by(CAMPAIGN, maintain_order=True):
            for chunk in group.iter_slices(BATCH_MAX):
                pairs = (Enrollment(*record) for record in chunk.iter_rows())
                yield Batch(str(campaign), tuple(pairs))


def removed_pairs(results: Path) -> tuple[pl.DataFrame, int]:
    """The pairs RESULTS marks `removed` by its latest record of each pair: `row`,
    `campaign_id`, `contact_id` (as sent) and `finished_at` (UTC), in file order; and how many
    it marks `not_enrolled` after a lost answer."""
    if not results.is_file():
        where = "is a folder" if results.is_dir() else "does not exist"
        raise InputError(
            f"RESULTS {results} {where}: give the results file (--out) of the run to undo"
        )
    lost = (pl.col("status") == Outcome.NOT_ENROLLED.value) & pl.col("detail").str.starts_with(
        MAY_HAVE_REMOVED
    )
    try:
        with records.read_errors(results), records.latest(results) as latest:
            frame = (
                latest.records.filter((pl.col("status") == Outcome.REMOVED.value) | lost)
                .select(
                    "row",
                    unescape(CAMPAIGN),
                    unescape(CONTACT),
                    pl.col("finished_at").str.to_datetime(TIMESTAMP, time_zone="UTC", strict=False),
                    lost.fill_null(False).alias("lost"),
                )
                .collect(engine="streaming")
            )
    except ResultsFileError as exc:
        raise InputError(
            f"cannot restore from {results}: it cannot be read as a bulk_unenroll results file "
            f"({str(exc).split(': ', 1)[-1].split('. ')[0]}); give the results file (--out) of "
            "the run to undo. Nothing was sent"
        ) from None
    removed = frame.filter(~pl.col("lost")).drop("lost")
    return removed, frame.height - removed.height


def _listed(pairs: Path, read: ReadOptions) -> tuple[pl.Series, int]:
    """The pair keys --pairs lists, and how many of its rows are no valid pair."""
    keys, invalid = [], 0
    for raw in Source(pairs, read).batches():
        tidy = normalise(raw)
        valid = tidy.filter(pl.col("reason").is_null())
        invalid += tidy.height - valid.height
        keys.append(valid.select(pair_key(pl.col(CAMPAIGN), pl.col(CONTACT)))["key"])
    listed = pl.concat(keys) if keys else pl.Series("key", [], pl.UInt128)
    return listed.unique().sort(), invalid


def _filtered(frame: pl.DataFrame, filters: Filters) -> tuple[pl.DataFrame, int]:
    """The removed pairs the filters keep, and the count of --pairs rows that are no pair."""
    if filters.campaigns:
        frame = frame.filter(pl.col(CAMPAIGN).is_in(sorted(filters.campaigns)))
    if filters.since is not None:
        frame = frame.filter(pl.col("finished_at") >= filters.since)
    if filters.until is not None:
        frame = frame.filter(pl.col("finished_at") < filters.until)
    unlisted = 0
    if filters.pairs is not None:
        listed, unlisted = _listed(filters.pairs, filters.read)
        frame = frame.filter(is_in(listed, frame["key"]))
    return frame, unlisted


def check_restore_file(history: History, out: Path) -> None:
    """Refuse to write restore records into a run's results file (it would mix two ledgers)."""
    if history.outcomes_recorded() & set(RUN_ONLY):
        raise InputError(
            f"--out {out} records removals: it is a run's results file, not a restore's. "
            "Give the restore a results file of its own (a new path, e.g. restore-results.csv)"
        )


def build_restore_plan(results: Path, history: History, filters: Filters) -> RestorePlan:
    """The plan: removed pairs, filtered, less what `history` (the restore's own results
    file) settled; the rest in batches of at most BATCH_MAX per campaign."""
    frame, lost = removed_pairs(results)
    frame = frame.with_columns(pair_key(pl.col(CAMPAIGN), pl.col(CONTACT)))
    removed = frame.height
    frame, unlisted = _filtered(frame, filters)
    plan = RestorePlan(results, removed, removed - frame.height, unlisted_rows=unlisted)
    plan.lost_then_not_enrolled = lost
    prev = history.prev(frame["key"])
    frame = frame.with_columns(
        prev.alias("prev"),
        is_in(history.attempted, frame["key"]).alias("attempted"),
        is_in(history.failed, frame["key"]).alias("failed"),
    )
    for code, count in frame["prev"].drop_nulls().value_counts().iter_rows():
        plan.settled_before[OUTCOMES[code]] += int(count)
    todo = frame.filter(pl.col("prev").is_null()).with_row_index("i")
    first_seen = pl.col("i").min().over(CAMPAIGN)
    plan.todo = todo.sort([first_seen, "i"]).select(
        pl.col("row").cast(pl.Int64), CAMPAIGN, CONTACT, "attempted", "failed"
    )
    return plan


def default_source(results: Path, now: datetime) -> str:
    """What the restore tells the API it is (`source`): the results file and the date."""
    return f"bulk-unenroll restore of {os.path.basename(results)} ({now:%Y-%m-%d})"
