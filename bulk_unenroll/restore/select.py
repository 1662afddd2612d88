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
from ..keys import CAMPAIGN, CONTACT, OUTCOMES, is_in, pair_key, rows_by_campaign
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


@dataclass(frozen=True)
class Unnamed:
    """Records marked `removed` without a campaign or contact id (a hand-edited file): no pair
    to restore. `first` is the first one's row."""

    count: int = 0
    first: int | None = None


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
    unnamed: Unnamed = Unnamed()
    """Records marked `removed` that name no pair (not counted in `removed`)."""

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
        campaigns = self.todo.get_column(CAMPAIGN).to_frame()  # the column alone: no copy
        counts = campaigns.group_by(CAMPAIGN, maintain_order=True).len()
        return Counter(dict(counts.iter_rows()))

    @property
    def calls(self) -> int:
        """Add Contacts calls needed: one per BATCH_MAX pairs of a campaign, rounded up."""
        return sum(-(-n // BATCH_MAX) for n in self.campaign_counts().values())

    def batches(self) -> Iterator[Batch]:
        """The batches to send, in order."""
        if not self.to_send:
            return
        for campaign, at in rows_by_campaign(self.todo.get_column(CAMPAIGN)):
            for start in range(0, len(at), BATCH_MAX):  # gathered a batch at a time
                chunk = self.todo[at.slice(start, BATCH_MAX)]
                yield Batch(str(campaign), tuple(Enrollment(*r) for r in chunk.iter_rows()))


@dataclass
class Removed:
    """What a results file says was removed: see `removed_pairs`."""

    pairs: pl.DataFrame
    """The removed pairs --campaign keeps (all when it is not given), as `removed_pairs` says."""
    removed: int
    """Pairs the file marks `removed`, whatever the filters."""
    lost: int
    """Pairs it marks `not_enrolled` after a lost answer."""
    unnamed: Unnamed
    """Records it marks `removed` that name no pair (not in `removed`)."""


def removed_pairs(results: Path, filters: Filters) -> Removed:
    """The pairs RESULTS marks `removed` by its latest record of each pair, in file order:
    `row`, `campaign_id` (categorical) and `contact_id` as sent, their `key`, and whether
    the time and campaign filters keep them (`kept`); how many it marks `not_enrolled` after
    a lost answer; the records marked removed that name no pair. About 64 bytes a pair: the
    ids, which a restore sends, and a key. With --campaign, only that campaign's pairs are
    held (the others are counted while the latest records are found: a plan of one campaign
    of a 10M-record run held 8M pairs)."""
    if not results.is_file():
        where = "is a folder" if results.is_dir() else "does not exist"
        raise InputError(
            f"RESULTS {results} {where}: give the results file (--out) of the run to undo"
        )
    lost = (pl.col("status") == Outcome.NOT_ENROLLED.value) & pl.col("detail").str.starts_with(
        MAY_HAVE_REMOVED
    )
    removed = pl.col("status") == Outcome.REMOVED.value
    campaign, contact = unescape(CAMPAIGN), unescape(CONTACT)
    named = ((campaign.str.len_bytes() > 0) & (contact.str.len_bytes() > 0)).fill_null(False)
    wanted, counts = pl.lit(True), None
    try:
        with records.read_errors(results), records.latest(results) as latest:
            if filters.campaigns:
                counts = latest.marked(
                    (removed & named).alias("removed"),
                    lost.fill_null(False).alias("lost"),
                    pl.when(removed & ~named).then(pl.col("row")).alias("unnamed"),
                )
                wanted = campaign.is_in(sorted(filters.campaigns))
            frame = records.spooled(
                latest.records.filter((removed | lost) & wanted).select(
                    "row",
                    campaign.cast(pl.Categorical),
                    contact,
                    pair_key(campaign, contact),
                    _kept(filters, campaign).alias("kept"),
                    lost.fill_null(False).alias("lost"),
                    named.alias("named"),
                )
            )
    except ResultsFileError as exc:
        raise InputError(
            f"cannot restore from {results}: it cannot be read as a bulk_unenroll results file "
            f"({str(exc).split(': ', 1)[-1].split('. ')[0]}); give the results file (--out) of "
            "the run to undo. Nothing was sent"
        ) from None
    was_lost, has_pair = frame.drop_in_place("lost"), frame.drop_in_place("named")
    nameless = frame["row"].filter(~has_pair & ~was_lost)
    pairs = records.kept_rows(frame, has_pair & ~was_lost)
    if counts is None:
        return Removed(pairs, pairs.height, int(was_lost.sum()), _unnamed(nameless))
    facts, speaks = counts
    return Removed(
        pairs,
        int((facts.get_column("removed") & speaks).sum()),
        int((facts.get_column("lost") & speaks).sum()),
        _unnamed(facts.get_column("unnamed").filter(speaks).drop_nulls()),
    )


def _unnamed(rows: pl.Series) -> Unnamed:
    """How many records `rows` (the rows of those naming no pair) are, and the first's row."""
    return Unnamed(rows.len(), rows.head(1).item() if rows.len() else None)


def _kept(filters: Filters, campaign: pl.Expr) -> pl.Expr:
    """Whether --campaign, --since and --until keep a removed pair (`campaign`: its id)."""
    kept = pl.lit(True)
    if filters.campaigns:
        kept &= campaign.is_in(sorted(filters.campaigns))
    finished = pl.col("finished_at").str.to_datetime(TIMESTAMP, time_zone="UTC", strict=False)
    if filters.since is not None:
        kept &= (finished >= filters.since).fill_null(False)
    if filters.until is not None:
        kept &= (finished < filters.until).fill_null(False)
    return kept


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


def check_restore_file(history: History, out: Path) -> None:
    """Refuse to write restore records into a run's results file (it would mix two ledgers)."""
    if history.outcomes_recorded() & set(RUN_ONLY):
        raise InputError(
            f"--out {out} records removals: it is a run's results file, not a restore's. "
            "Give the restore a results file of its own (a new path, e.g. restore-results.csv)"
        )


def build_restore_plan(results: Path, history: History, filters: Filters) -> RestorePlan:
    """The plan: removed pairs, filtered, less what `history` (the restore's own results
    file) settled; the rest in batches of at most BATCH_MAX per campaign. Masks, not copies:
    the pairs may be most of a 10-million-row run."""
    found = removed_pairs(results, filters)
    frame = found.pairs
    kept, unlisted = frame.drop_in_place("kept"), 0
    if filters.pairs is not None:
        listed, unlisted = _listed(filters.pairs, filters.read)
        kept &= is_in(listed, frame["key"])
    plan = RestorePlan(
        results,
        found.removed,
        found.removed - int(kept.sum()),
        unlisted_rows=unlisted,
        lost_then_not_enrolled=found.lost,
        unnamed=found.unnamed,
    )
    keys = frame.drop_in_place("key")
    prev = history.prev(keys)
    for code, count in prev.filter(kept).drop_nulls().value_counts().iter_rows():
        plan.settled_before[OUTCOMES[code]] += int(count)
    frame = frame.with_columns(
        is_in(history.attempted, keys).alias("attempted"),
        is_in(history.failed, keys).alias("failed"),
    )
    plan.todo = records.kept_rows(frame, kept & prev.is_null())
    return plan


def default_source(results: Path, now: datetime) -> str:
    """What the restore tells the API it is (`source`): the results file and the date."""
    return f"bulk-unenroll restore of {os.path.basename(results)} ({now:%Y-%m-%d})"
