"""The send plan: what each input row will do (send, invalid, duplicate, settled before).

The input is read twice, in batches, so memory stays flat however large it is: the first
pass keeps a 16-byte pair key and a few bytes per row, then sorts the keys once to find
duplicates and rows settled by an earlier run; the second pass starts at the first row with
work and yields the rows to send, in file order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import polars as pl

from .errors import InputError
from .input.ids import EMPTY_ROW, MAX_SHOWN, normalise
from .input.source import Source
from .keys import (
    CAMPAIGN,
    CONTACT,
    LOW_BITS,
    OUTCOME_CODE,
    OUTCOMES,
    empty_keys,
    is_in,
    nulls,
    pair_key,
    settled_code,
)
from .models import Enrollment, Outcome, RowResult
from .results.history import History
from .results.records import stored

NAMED_CAMPAIGNS_MAX = 100_000
"""Campaign names remembered for the plan's display; further ones are shown by number."""


class RowAction(IntEnum):
    """What the plan decided for a row; stored as one byte per row."""

    SEND = 0
    INVALID = 1
    DUPLICATE = 2
    SETTLED = 3
    RECORDED = 4


@dataclass
class SendPlan:
    """Per input row, what this run does with it; plus the counts a person wants first."""

    source: Path
    actions: pl.DataFrame
    """Per input row: `action` (u8), `prev` (earlier outcome code, u8), `attempted` (bool)."""
    campaign_counts: dict[str, int]
    """Rows to send per campaign, the largest 1,000 campaigns."""
    invalid_examples: list[tuple[int, str]]
    campaigns: int = 0
    """Campaigns with rows to send (by 32-bit hash: exact but for a very rare collision)."""
    ignored_tail: int = 0
    """Empty rows at the very end (blank lines a file often ends with): not rows at all."""

    @property
    def total_rows(self) -> int:
        return self.actions.height

    def count(self, action: int) -> int:
        return int((self.actions["action"] == action).sum())

    def failed_before(self) -> int:
        """Rows to send whose pair the results file shows as `failed`."""
        return int(((self.actions["action"] == RowAction.SEND) & self.actions["failed"]).sum())

    def settled_before(self) -> dict[Outcome, int]:
        prev = self.actions.filter(pl.col("action").is_in([RowAction.SETTLED, RowAction.RECORDED]))[
            "prev"
        ]
        return {OUTCOMES[k]: int(v) for k, v in prev.value_counts().iter_rows() if k is not None}


class _CampaignCodes:
    """A 4-byte hash per row stands for its campaign, so the plan never holds the ids.

    Names are remembered for the first NAMED_CAMPAIGNS_MAX campaigns only. The codes are
    used for the counts shown before a run, where a rare 32-bit collision merely merges
    two campaigns in a display; nothing is decided by them.
    """

    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    def codes(self, campaigns: pl.Series, valid: pl.Series) -> pl.Series:
        frame = pl.DataFrame([campaigns.alias(CAMPAIGN), valid.alias("valid")])
        code = (pl.col(CAMPAIGN).hash() % (1 << 32)).cast(pl.UInt32)
        codes = frame.select(pl.when(pl.col("valid")).then(code).alias("campaign"))["campaign"]
        if len(self.names) < NAMED_CAMPAIGNS_MAX:
            new = [c for c in codes.unique().drop_nulls().to_list() if c not in self.names]
            if new:
                named = (
                    frame.with_columns(codes)
                    .filter(pl.col("campaign").is_in(new))
                    .unique("campaign", keep="first")
                )
                for name, value in named.select(CAMPAIGN, "campaign").iter_rows():
                    if len(self.names) < NAMED_CAMPAIGNS_MAX:
                        self.names[value] = name
        return codes

    def name(self, code: int) -> str:
        return self.names.get(code, f"(campaign #{code})")


SORT_SLICE = 1_000_000
"""Sorted keys are worked through this many at a time, to keep the temporaries small."""


def _by_pair(
    batches: list[pl.Series], rows: int, history: History
) -> tuple[pl.Series, pl.Series, pl.Series, pl.Series]:
    """Per row: repeats an earlier row's pair (dup), earlier outcome (prev), sent before,
    and last recorded `failed`.

    `batches` hold each valid row's key plus its row index in the free low bits (emptied
    here, so only the sorted copy outlives the sort). Sorted, a pair's rows stand
    together, first row first, and the history is searched in order.
    """
    dup = pl.Series("dup", [], pl.Boolean).extend_constant(False, rows)
    prev = nulls("prev", rows, pl.UInt8())
    attempted = pl.Series("attempted", [], pl.Boolean).extend_constant(False, rows)
    failed = pl.Series("failed", [], pl.Boolean).extend_constant(False, rows)
    tagged = pl.concat([empty_keys(), *batches], rechunk=False)
    batches.clear()
    tagged = tagged.sort()
    before: int | None = None
    for start in range(0, len(tagged), SORT_SLICE):
        part = pl.DataFrame({"tagged": tagged.slice(start, SORT_SLICE)}).select(
            (pl.col("tagged") - pl.col("tagged") % LOW_BITS).alias("key"),
            (pl.col("tagged") % LOW_BITS).cast(pl.UInt32).alias("row"),
        )
        key, row = part["key"], part["row"]
        previous = pl.concat([pl.Series("key", [before], pl.UInt128), key.head(len(key) - 1)])
        repeat = (key == previous).fill_null(False)
        before = key[-1]
        dup = dup.scatter(row.filter(repeat), True)
        prev = prev.scatter(row, settled_code(history.settled, key, in_order=True))
        sent = is_in(history.attempted, key, in_order=True)
        attempted = attempted.scatter(row.filter(sent), True)
        failed = failed.scatter(row.filter(is_in(history.failed, key, in_order=True)), True)
    return dup, prev, attempted, failed


def build_plan(source: Source, history: History, examples: int = 5) -> SendPlan:
    """First pass: decide every row's action from hashes and a few bytes per row."""
    campaigns = _CampaignCodes()
    rows, tagged, invalid_examples = _read_rows(source, history, campaigns, examples)
    rows = rows.with_columns(*_by_pair(tagged, rows.height, history))
    del tagged
    filled = (~rows["blank"]).arg_true()
    if not len(filled):
        raise InputError(f"{source.path} has a header but only empty rows: nothing to do")
    ignored_tail = rows.height - (int(filled[-1]) + 1)
    rows = rows.head(rows.height - ignored_tail)
    invalid_examples = [(row, why) for row, why in invalid_examples if row <= rows.height]
    actions = _actions(rows)
    del rows
    to_send = actions.filter(pl.col("action") == RowAction.SEND)["campaign"]
    counts = to_send.drop_nulls().value_counts(sort=True)
    campaign_rows = {}
    for code, n in counts.head(1000).iter_rows():
        campaign_rows[campaigns.name(code)] = int(n)
    return SendPlan(
        source.path,
        actions.drop("campaign"),
        campaign_rows,
        invalid_examples,
        campaigns=counts.height,
        ignored_tail=ignored_tail,
    )


def _read_rows(
    source: Source, history: History, campaigns: _CampaignCodes, examples: int
) -> tuple[pl.DataFrame, list[pl.Series], list[tuple[int, str]]]:
    """Read the input once: a few flags per row (valid, campaign code, blank, recorded
    before), each valid row's pair key tagged with its row index, and the first invalid rows
    as examples. Refuses a partial read, an input with no rows, one with too many."""
    tagged: list[pl.Series] = []
    flags: list[pl.DataFrame] = []
    invalid_examples: list[tuple[int, str]] = []
    blank_reasons = [EMPTY_ROW] + ([f"{CONTACT} is empty"] if source.options.campaign else [])
    offset = 0
    for df in source.normalised():
        valid = df["reason"].is_null()
        if len(invalid_examples) < examples and not valid.all():
            bad = df.with_row_index("i", offset + 1).filter(pl.col("reason").is_not_null())
            invalid_examples += [
                (int(i), str(r)) for i, r in bad.select("i", "reason").head(examples).iter_rows()
            ]
        index = pl.int_range(offset, offset + df.height, dtype=pl.UInt64).cast(pl.UInt128)
        tagged.append(df.select(pl.col("key") + index).to_series().drop_nulls())
        blank = df["reason"].is_in(blank_reasons).fill_null(False).alias("blank")
        recorded = pl.Series("recorded", [], pl.Boolean).extend_constant(False, df.height)
        if len(history.recorded):
            recorded = history.was_recorded(_row_keys(df, offset + 1))
        flags.append(
            pl.DataFrame(
                [valid.alias("valid"), campaigns.codes(df[CAMPAIGN], valid), blank, recorded]
            )
        )
        offset += df.height
    expected = source.row_count()
    if expected is not None and offset != expected:
        raise InputError(  # never plan from a partial read (an interrupt polars swallowed)
            f"reading {source.path} stopped after {offset:,} of its {expected:,} rows "
            "(was it interrupted, or changed while read?); nothing was sent: rerun"
        )
    if not offset:
        raise InputError(f"{source.path} has a header but no data rows: nothing to do")
    if offset >= LOW_BITS:
        raise InputError(f"{source.path} has more than {LOW_BITS - 1:,} rows; split it")
    return pl.concat(flags), tagged, invalid_examples[:examples]


def _actions(rows: pl.DataFrame) -> pl.DataFrame:
    """Each row's action and the outcome it was settled or recorded with before, from its
    flags (what `_read_rows` and `_by_pair` found)."""
    dup_row = pl.col("valid") & pl.col("dup")
    settled_as = pl.col("prev")
    action = (
        pl.when(~pl.col("valid") & pl.col("recorded"))
        .then(RowAction.RECORDED)
        .when(~pl.col("valid"))
        .then(RowAction.INVALID)
        .when(dup_row & pl.col("recorded"))
        .then(RowAction.RECORDED)
        .when(dup_row)
        .then(RowAction.DUPLICATE)
        .when(settled_as.is_not_null())
        .then(RowAction.SETTLED)
        .otherwise(RowAction.SEND)
        .cast(pl.UInt8)
    )
    prev_outcome = (
        pl.when(action == RowAction.RECORDED)
        .then(
            pl.when(pl.col("valid"))
            .then(OUTCOME_CODE[Outcome.DUPLICATE.value])
            .otherwise(OUTCOME_CODE[Outcome.INVALID.value])
        )
        .otherwise(settled_as)
        .cast(pl.UInt8)
    )
    return rows.select(
        action.alias("action"), prev_outcome.alias("prev"), "attempted", "failed", "campaign"
    )


def shown(cell: pl.Expr) -> pl.Expr:
    """A cell as a record shows it: invalid cells are echoed, cut at MAX_SHOWN characters."""
    cell = cell.fill_null("")
    long = cell.str.len_chars() > MAX_SHOWN
    return pl.when(long).then(cell.str.slice(0, MAX_SHOWN) + "...").otherwise(cell)


def row_key(campaign: pl.Expr, contact: pl.Expr, row: pl.Expr) -> pl.Expr:
    """Row number and cells as a record without a call stores them (see `History.recorded`)."""
    cells = pair_key(stored(shown(campaign)), stored(shown(contact)))
    return (cells + row.cast(pl.UInt128)).alias("row_key")


def _row_keys(df: pl.DataFrame, first_row: int) -> pl.Series:
    """`row_key` of each row of a normalised batch numbered from `first_row`. A valid pair is
    stored as it is (unless its campaign id starts with '-', which a record escapes), so its
    pair key serves; only the other rows go the slow way, cells tidied as a record shows them."""
    rows = pl.int_range(first_row, first_row + pl.len(), dtype=pl.UInt64).alias("n")
    frame = df.select(CAMPAIGN, CONTACT, "key", rows)
    keys = frame.select((pl.col("key") + pl.col("n").cast(pl.UInt128)).alias("row_key"))
    slow = (df["reason"].is_not_null() | df[CAMPAIGN].str.starts_with("-")).fill_null(True)
    if not slow.any():
        return keys["row_key"]
    fixed = frame.filter(slow).select(row_key(pl.col(CAMPAIGN), pl.col(CONTACT), pl.col("n")))
    return keys["row_key"].scatter(slow.arg_true(), fixed["row_key"])


DUPLICATE_DETAIL = "same campaign and contact as an earlier row; not sent again"


def work_batches(
    source: Source, plan: SendPlan
) -> Iterator[tuple[list[Enrollment], list[RowResult]]]:
    """Second pass: rows to send, and the rows settled without a call, batch by batch.

    Rows before the first one with work (settled by an earlier run) are skipped unread and
    batches with nothing to do are not validated again, so a resumed run reaches its first
    request quickly.
    """
    work = plan.actions["action"].is_in([RowAction.SEND, RowAction.INVALID, RowAction.DUPLICATE])
    if not work.any():
        return
    offset = int(work.arg_true()[0])
    for raw in source.batches(offset):
        acts = plan.actions.slice(offset, raw.height)
        if offset + raw.height > plan.total_rows + plan.ignored_tail:
            raise _changed(source)
        raw = raw.head(acts.height)  # not the ignored empty rows at the end
        start, offset = offset, offset + raw.height
        if not raw.height:
            continue
        todo = acts["action"].is_in([RowAction.SEND, RowAction.INVALID, RowAction.DUPLICATE])
        if not todo.any():
            continue
        rows = pl.concat([raw, acts], how="horizontal").with_row_index("row", start + 1)
        rows = rows.filter(todo)
        df = pl.concat(
            [normalise(rows), rows.select("row", "action", "attempted", "failed")],
            how="horizontal",
        )
        invalid = pl.col("action") == RowAction.INVALID
        df = df.with_columns(
            pl.when(invalid).then(shown(pl.col(c))).otherwise(pl.col(c)).alias(c)
            for c in (CAMPAIGN, CONTACT)
        )
        send = df.filter(pl.col("action") == RowAction.SEND)
        enrollments = [
            Enrollment(row, campaign, contact, attempted, failed)
            for row, campaign, contact, attempted, failed in send.select(
                "row", CAMPAIGN, CONTACT, "attempted", "failed"
            ).iter_rows()
        ]
        records: list[RowResult] = []
        for row, action, campaign, contact, reason in (
            df.filter(pl.col("action") != RowAction.SEND)
            .select("row", "action", CAMPAIGN, CONTACT, "reason")
            .iter_rows()
        ):
            if action == RowAction.INVALID:
                records.append(
                    RowResult(
                        row,
                        campaign,
                        contact,
                        Outcome.INVALID,
                        detail=reason or "not a valid pair",
                    )
                )
            else:
                records.append(
                    RowResult(row, campaign, contact, Outcome.DUPLICATE, detail=DUPLICATE_DETAIL)
                )
        yield enrollments, records
    if offset != plan.total_rows:
        raise _changed(source)


def _changed(source: Source) -> InputError:
    return InputError(
        f"{source.path} changed while it was being read (its row count differs from the "
        "plan's); nothing more was sent: rerun with the file left alone"
    )


MIN_ROWS = 2
"""A campaign with fewer rows to send is never listed: its first page costs as much as its
one DELETE."""


def listable(campaign: str, rows: int) -> bool:
    """Worth listing: rows enough, and a name the plan knows (not `(campaign #code)`, its
    stand-in past the campaigns it names)."""
    return rows >= MIN_ROWS and not campaign.startswith("(campaign #")
