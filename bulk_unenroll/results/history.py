"""What earlier runs left, read from the results file as sorted keys (the resume index)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from ..keys import LOW_BITS, OUTCOMES, empty_keys, is_in, settled_code
from ..models import Outcome


@dataclass
class History:
    """What earlier runs left: settled pairs, rows recorded without a call, pairs once sent.

    Held as sorted UInt128 arrays that each input batch searches by bisection: 16 bytes per
    earlier record, no hash table over millions of them, and the input's order untouched.
    """

    settled: pl.Series = field(default_factory=empty_keys)
    """Sorted pair keys plus the outcome code in their low bits (`key + code`). A pair
    settled more than once counts as its first outcome in `Outcome` order (removed first)."""
    recorded: pl.Series = field(default_factory=empty_keys)
    """Sorted `row_key`s of rows recorded without a call (invalid, duplicate): a record
    speaks for the row with the same number and the same cells, not for whatever row of
    another input has that number now."""
    attempted: pl.Series = field(default_factory=empty_keys)
    """Sorted keys of pairs sent before without a settled record since."""
    failed: pl.Series = field(default_factory=empty_keys)
    """Sorted keys of pairs whose latest record is `failed` (a rerun retries them)."""

    @classmethod
    def from_records(
        cls,
        settled: pl.DataFrame,
        recorded: pl.Series,
        sent: Iterable[pl.DataFrame],
        failed: pl.Series | None = None,
    ) -> History:
        """From records in any order: `settled` has `key` and `prev` (outcome code); `sent`
        has `key` and `delta` per line of the `.sent` file (+1 a request went out, -1 that
        mark taken back), in batches (millions after a long run). A pair still counts as
        sent while its marks outnumber its take-backs."""
        entries = settled.select(
            (pl.col("key") + pl.col("prev").cast(pl.UInt128)).alias("key")
        ).to_series()
        del settled
        entries = entries.drop_nulls().sort()  # sorting a bare u128 column is cheap
        unanswered = [  # most sent pairs are settled since: only the others are kept
            lines.filter(settled_code(entries, lines["key"]).is_null()) for lines in sent
        ]
        empty = pl.DataFrame({"key": empty_keys(), "delta": pl.Series([], dtype=pl.Int32)})
        marks = pl.concat([empty, *unanswered])
        attempted = (
            marks.drop_nulls("key")
            .group_by("key")
            .agg(pl.col("delta").sum())
            .filter(pl.col("delta") > 0)["key"]
            .sort()
        )
        failed = empty_keys() if failed is None else failed.drop_nulls()
        failed = failed.filter(settled_code(entries, failed).is_null()).unique().sort()
        recorded = recorded.drop_nulls().unique().sort().alias("key")
        return cls(entries, recorded, attempted.alias("key"), failed.alias("key"))

    def was_recorded(self, row_keys: pl.Series) -> pl.Series:
        return is_in(self.recorded, row_keys).alias("recorded")

    def prev(self, keys: pl.Series) -> pl.Series:
        """Per key, the earlier outcome code if the pair was settled, else null."""
        return settled_code(self.settled, keys)

    def outcomes_recorded(self) -> set[Outcome]:
        """The settled outcomes the file holds: tells a run's results from a restore's."""
        entries = self.settled.to_frame("entry")
        codes = entries.select((pl.col("entry") % LOW_BITS).cast(pl.UInt8).unique())["entry"]
        return {OUTCOMES[code] for code in codes}
