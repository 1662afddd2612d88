"""Reading (campaign, contact) pairs with polars: formats, columns, validation, the send plan.

The input is read twice, in batches, so memory stays flat however large it is: the first
pass keeps only 128-bit pair hashes to find duplicates and rows settled by an earlier run;
the second pass yields the rows to send, in file order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from .config import ReadOptions
from .errors import InputError
from .models import Enrollment, Outcome, RowResult

BATCH_ROWS = 200_000
CAMPAIGN, CONTACT = "campaign_id", "contact_id"
UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
TOKEN_RE = r"^[A-Za-z0-9_-]{1,128}$"
STRAY = " \t\r\n\u00a0\u200b\u200c\u200d\u2060\ufeff"
"""Trimmed from both ends of an id: spaces, no-break and zero-width characters, a stray BOM."""

MAX_SHOWN = 200
"""Invalid cells are echoed in the results up to this many characters."""

CAMPAIGN_NAMES = ("campaignid", "campaign", "campaignuuid")
CONTACT_NAMES = ("contactid", "contact", "contactuuid")

# Row actions decided by the plan.
SEND, INVALID, DUPLICATE, SETTLED, RECORDED = range(5)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _pick(found: list[str], wanted: str | None, defaults: tuple[str, ...], flag: str) -> str:
    if wanted is not None:
        if wanted in found:
            return wanted
        raise InputError(
            f"column {wanted!r} given by {flag} is not in the file; "
            f"the columns found are: {', '.join(map(repr, found)) or 'none'}"
        )
    for default in defaults:
        matches = [c for c in found if _squash(c) == default]
        if matches:
            return matches[0]
    raise InputError(
        f"no {defaults[0].replace('id', '_id')} column: the columns found are "
        f"{', '.join(map(repr, found)) or 'none'}; name the right one with {flag} NAME"
    )


@dataclass(frozen=True)
class Source:
    """An input file and how to read its two id columns as strings."""

    path: Path
    options: ReadOptions = ReadOptions()

    def _lazy(self) -> pl.LazyFrame:
        suffix = "".join(self.path.suffixes[-2:]).lower()
        try:
            if suffix.endswith(".parquet"):
                return pl.scan_parquet(self.path)
            if suffix.endswith((".csv", ".tsv", ".txt")):
                sep = self.options.delimiter or ("\t" if suffix.endswith(".tsv") else ",")
                return pl.scan_csv(self.path, infer_schema=False, separator=sep)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise InputError(f"cannot read {self.path}: {exc}") from None
        raise InputError(
            f"{self.path}: unknown file type {suffix or '(no suffix)'!r}; "
            "use a .csv, .tsv or .parquet file"
        )

    def columns(self) -> tuple[str, str | None]:
        """The campaign and contact column names (campaign is None with --campaign)."""
        try:
            found = self._lazy().collect_schema().names()
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise InputError(f"cannot read {self.path}: {exc}") from None
        contact = _pick(found, self.options.contact_column, CONTACT_NAMES, "--contact-column")
        if self.options.campaign is not None:
            return contact, None
        campaign = _pick(found, self.options.campaign_column, CAMPAIGN_NAMES, "--campaign-column")
        return contact, campaign

    def batches(self) -> Iterator[pl.DataFrame]:
        """Raw id strings, `campaign_id` and `contact_id`, in file order."""
        contact, campaign = self.columns()
        campaign_expr = (
            pl.lit(self.options.campaign) if campaign is None else pl.col(campaign)
        ).cast(pl.String)
        lazy = self._lazy().select(
            campaign_expr.alias(CAMPAIGN), pl.col(contact).cast(pl.String).alias(CONTACT)
        )
        try:
            yield from lazy.collect_batches(chunk_size=BATCH_ROWS)
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"cannot read {self.path}: {exc}") from None


def _trimmed(name: str) -> pl.Expr:
    return pl.col(name).str.strip_chars(STRAY)


def normalise(raw: pl.DataFrame) -> pl.DataFrame:
    """Trim ids, lower-case UUIDs, explain invalid rows, and hash each pair twice."""
    campaign, contact = _trimmed(CAMPAIGN), _trimmed(CONTACT)
    df = raw.with_columns(
        pl.when(campaign.str.contains(UUID_RE))
        .then(campaign.str.to_lowercase())
        .otherwise(campaign)
        .alias(CAMPAIGN),
        contact.str.to_lowercase().alias(CONTACT),
    )
    camp, cont = pl.col(CAMPAIGN), pl.col(CONTACT)
    reason = (
        pl.when(camp.is_null() | (camp == ""))
        .then(pl.lit("campaign_id is empty"))
        .when(cont.is_null() | (cont == ""))
        .then(pl.lit("contact_id is empty"))
        .when(~camp.str.contains(TOKEN_RE))
        .then(pl.lit("campaign_id must be a UUID or up to 128 letters, digits, '_' and '-'"))
        .when(~cont.str.contains(UUID_RE))
        .then(pl.lit("contact_id is not a UUID"))
    )
    pair = pl.concat_str([camp.fill_null(""), cont.fill_null("")], separator="\x1f")
    return df.with_columns(
        reason.alias("reason"), pair.hash(seed=0).alias("h1"), pair.hash(seed=1).alias("h2")
    )


def pair_hashes(campaign: pl.Expr, contact: pl.Expr) -> list[pl.Expr]:
    """The same two hashes as `normalise`, for ids read back from a results file."""
    pair = pl.concat_str([campaign.fill_null(""), contact.fill_null("")], separator="\x1f")
    return [pair.hash(seed=0).alias("h1"), pair.hash(seed=1).alias("h2")]


@dataclass
class History:
    """What earlier runs left: settled pairs, rows recorded without a call, pairs once sent."""

    settled: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(
            schema={"h1": pl.UInt64, "h2": pl.UInt64, "prev": pl.String}
        )
    )
    recorded_rows: pl.Series = field(default_factory=lambda: pl.Series("row", [], pl.Int64))
    attempted: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"h1": pl.UInt64, "h2": pl.UInt64})
    )


@dataclass
class SendPlan:
    """Per input row, what this run does with it; plus the counts a person wants first."""

    source: Path
    actions: pl.DataFrame
    """Per input row: `action` (u8), `prev` (earlier outcome), `attempted` (bool)."""
    campaign_counts: dict[str, int]
    invalid_examples: list[tuple[int, str]]

    @property
    def total_rows(self) -> int:
        return self.actions.height

    def count(self, action: int) -> int:
        return int((self.actions["action"] == action).sum())

    def settled_before(self) -> dict[Outcome, int]:
        prev = self.actions.filter(pl.col("action").is_in([SETTLED, RECORDED]))["prev"]
        return {Outcome(k): int(v) for k, v in prev.value_counts().iter_rows() if k is not None}


def build_plan(source: Source, history: History, examples: int = 5) -> SendPlan:
    """First pass: decide every row's action from hashes only."""
    parts: list[pl.DataFrame] = []
    invalid_examples: list[tuple[int, str]] = []
    offset = 0
    for raw in source.batches():
        df = normalise(raw)
        if len(invalid_examples) < examples:
            bad = df.with_row_index("i", offset + 1).filter(pl.col("reason").is_not_null())
            invalid_examples += [
                (int(i), str(r)) for i, r in bad.select("i", "reason").head(examples).iter_rows()
            ]
        parts.append(
            df.select(
                pl.col("reason").is_null().alias("valid"),
                "h1",
                "h2",
                pl.col(CAMPAIGN).cast(pl.Categorical),
            )
        )
        offset += raw.height
    if not parts:
        raise InputError(f"{source.path} has a header but no data rows: nothing to do")
    rows = pl.concat(parts)
    del parts
    rows = rows.with_columns(pl.int_range(1, rows.height + 1, dtype=pl.Int64).alias("row"))
    rows = rows.with_columns(
        (pl.col("valid") & ~pl.struct("h1", "h2").is_first_distinct()).alias("dup")
    )
    rows = rows.join(history.settled, on=["h1", "h2"], how="left", maintain_order="left")
    attempted = history.attempted.with_columns(pl.lit(True).alias("attempted"))
    rows = rows.join(attempted.unique(), on=["h1", "h2"], how="left", maintain_order="left")
    recorded = pl.col("row").is_in(history.recorded_rows.implode())
    action = (
        pl.when(~pl.col("valid") & recorded)
        .then(RECORDED)
        .when(~pl.col("valid"))
        .then(INVALID)
        .when(pl.col("dup") & recorded)
        .then(RECORDED)
        .when(pl.col("dup"))
        .then(DUPLICATE)
        .when(pl.col("prev").is_not_null())
        .then(SETTLED)
        .otherwise(SEND)
        .cast(pl.UInt8)
    )
    prev = (
        pl.when(action == RECORDED)
        .then(
            pl.when(pl.col("valid"))
            .then(pl.lit(Outcome.DUPLICATE.value))
            .otherwise(pl.lit(Outcome.INVALID.value))
        )
        .otherwise(pl.col("prev"))
    )
    actions = rows.select(
        action.alias("action"),
        prev.alias("prev"),
        pl.col("attempted").fill_null(False),
        pl.col(CAMPAIGN),
    )
    counts = actions.filter(pl.col("action") == SEND)[CAMPAIGN].value_counts(sort=True)
    campaign_rows = {str(k): int(v) for k, v in counts.head(1000).iter_rows()}
    return SendPlan(source.path, actions.drop(CAMPAIGN), campaign_rows, invalid_examples)


def _shown(value: str | None) -> str:
    if value is None:
        return ""
    return value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "..."


def work_batches(
    source: Source, plan: SendPlan
) -> Iterator[tuple[list[Enrollment], list[RowResult]]]:
    """Second pass: rows to send, and the rows settled without a call, batch by batch."""
    offset = 0
    for raw in source.batches():
        df = normalise(raw)
        acts = plan.actions.slice(offset, df.height)
        df = pl.concat([df, acts], how="horizontal").with_row_index("row", offset + 1)
        offset += raw.height
        send = df.filter(pl.col("action") == SEND)
        enrollments = [
            Enrollment(row, campaign, contact, attempted)
            for row, campaign, contact, attempted in send.select(
                "row", CAMPAIGN, CONTACT, "attempted"
            ).iter_rows()
        ]
        records: list[RowResult] = []
        for row, action, campaign, contact, reason in (
            df.filter(pl.col("action").is_in([INVALID, DUPLICATE]))
            .select("row", "action", CAMPAIGN, CONTACT, "reason")
            .iter_rows()
        ):
            if action == INVALID:
                records.append(
                    RowResult(
                        row, _shown(campaign), _shown(contact), Outcome.INVALID, detail=reason
                    )
                )
            else:
                records.append(
                    RowResult(
                        row,
                        campaign,
                        contact,
                        Outcome.DUPLICATE,
                        detail="same campaign and contact as an earlier row; not sent again",
                    )
                )
        yield enrollments, records
