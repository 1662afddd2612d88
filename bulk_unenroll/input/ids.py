"""Tidying id cells: what is safe to repair, why the rest is not an id, a key per pair."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from ..keys import CAMPAIGN, CONTACT, pair_key
from ..models import CONTACT_ID_RE

EXTRA = "extra"
"""A CSV row's first field beyond the header's, if it has one (a sign of shifted columns)."""
SENTINEL = "\x00extra"
"""The name that field is read under: one no header can clash with."""
UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
TOKEN_RE = r"^[A-Za-z0-9_-]{1,128}$"
CLEAN_CAMPAIGN_RE = r"^[a-z0-9_-]{1,128}$"
CLEAN_CONTACT_RE = CONTACT_ID_RE
"""Cells that need no tidying: lower-case, nothing around them."""
STRAY = " \t\r\n\u00a0\u200b\u200c\u200d\u2060\ufeff"
"""Trimmed from both ends of an id: spaces, no-break and zero-width characters, a stray BOM."""
QUOTED_RE = "^[\"'\u201c\u2018](.*)[\"'\u201d\u2019]$"
"""An id wrapped in quotes: ids never contain quotes, so unwrapping them is unambiguous."""
INVISIBLE_RE = "[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]"

EMPTY_ROW = "the row is empty"
GIANT_CELL = 1_000
"""Longer than any id by far: said as such (a pasted document, a broken export)."""
MAX_SHOWN = 200
"""Invalid cells are echoed in the results up to this many characters."""


def _ok(campaign: pl.Expr, contact: pl.Expr, extra: pl.Expr) -> pl.Expr:
    return (
        campaign.str.contains(TOKEN_RE)  # a UUID is a token too
        & contact.str.contains(UUID_RE)
        & (extra.is_null() | (extra.str.strip_chars(STRAY) == ""))
    ).fill_null(False)


def _unwrapped(expr: pl.Expr) -> pl.Expr:
    """Stray spaces, quotes around an id, or a spreadsheet's leading apostrophe, taken off."""
    inner = expr.str.strip_chars(STRAY).str.replace(QUOTED_RE, "$1").str.strip_chars(STRAY)
    return inner.str.strip_prefix("'").str.strip_chars(STRAY)


def _on_rows(
    df: pl.DataFrame, todo: pl.Series, fix: Callable[[pl.DataFrame], pl.DataFrame]
) -> pl.DataFrame:
    """`fix` applied to the rows where `todo` holds, the other rows untouched, order kept."""
    if not todo.any():
        return df
    if todo.all():
        return fix(df)
    index = "_i" + "_" * sum(c.startswith("_i") for c in df.columns)  # nested calls
    indexed = df.with_row_index(index)
    fixed = fix(indexed.filter(todo))
    return indexed.update(fixed, on=index, include_nulls=True).drop(index)


def _problem(name: str, expr: pl.Expr) -> pl.Expr:
    """Why an id cell is not an id, when there is more to say than "not an id"; or null."""
    length = expr.str.len_chars()
    return (
        pl.when(expr.is_null() | (expr == ""))
        .then(pl.lit(f"{name} is empty"))
        .when(expr.str.starts_with("=") | expr.str.starts_with("@"))
        .then(
            pl.lit(
                f"{name} is a spreadsheet formula, not a value; export the values "
                "(in Excel: Paste Special > Values) and retry"
            )
        )
        .when(length > GIANT_CELL)
        .then(pl.format(f"{name} is {{}} characters long: not an id", length))
        .when(expr.str.contains("\ufffd", literal=True))
        .then(
            pl.lit(
                f"{name} has bytes that are not UTF-8 text; save the file as CSV UTF-8 and retry"
            )
        )
        .when(expr.str.contains(INVISIBLE_RE))
        .then(
            pl.lit(
                f"{name} has an invisible character inside (a zero-width space or similar); "
                "retype the id"
            )
        )
        .when(expr.str.contains(r"\s"))
        .then(pl.lit(f"{name} has a space inside"))
        .when(expr.str.contains(r"[\x00-\x1f\x7f]"))
        .then(pl.lit(f"{name} has a control character inside"))
        .when(expr.str.contains(r"[^\x00-\x7f]"))
        .then(
            pl.lit(
                f"{name} has a character that is not plain ASCII (an accent, or a look-alike "
                "letter from another alphabet)"
            )
        )
        .when(expr.str.contains("[\"'\u201c\u201d\u2018\u2019]"))
        .then(pl.lit(f"{name} has quote characters inside"))
    )


def _explained(bad: pl.DataFrame) -> pl.DataFrame:
    """Rows still invalid after tidying, with the first problem of each as `reason`."""
    camp, cont = pl.col(CAMPAIGN), pl.col(CONTACT)
    extra = pl.col(EXTRA).str.strip_chars(STRAY)
    reason = (
        pl.when(extra.is_not_null() & (extra != ""))
        .then(
            pl.lit(
                "the row has more fields than the header: is there an unquoted separator "
                "inside a value?"
            )
        )
        .when((camp.is_null() | (camp == "")) & (cont.is_null() | (cont == "")))
        .then(pl.lit(EMPTY_ROW))
        .otherwise(
            pl.coalesce(
                _problem(CAMPAIGN, camp),
                _problem(CONTACT, cont),
                pl.when(~camp.str.contains(TOKEN_RE)).then(
                    pl.lit("campaign_id must be a UUID or up to 128 letters, digits, '_' and '-'")
                ),
                pl.when(~cont.str.contains(UUID_RE)).then(
                    pl.lit("contact_id is not a UUID (8-4-4-4-12 hexadecimal digits)")
                ),
            )
        )
    )
    return bad.with_columns(reason.alias("reason"))


def _tidied(rows: pl.DataFrame) -> pl.DataFrame:
    """The slow path, for cells that are not already clean: repair what is safe to repair
    (spaces, quotes, upper-case UUIDs), explain what is still wrong, key what is valid."""
    camp, cont = pl.col(CAMPAIGN), pl.col(CONTACT)
    rows = rows.with_columns(_unwrapped(camp), _unwrapped(cont))
    rows = rows.with_columns(
        pl.when(camp.str.contains(UUID_RE)).then(camp.str.to_lowercase()).otherwise(camp),
        pl.when(cont.str.contains(UUID_RE)).then(cont.str.to_lowercase()).otherwise(cont),
    )
    ok = rows.select(_ok(camp, cont, pl.col(EXTRA))).to_series()
    rows = _on_rows(rows, ~ok, _explained)
    valid = pl.col("reason").is_null()
    return rows.with_columns(pl.when(valid).then(pair_key(camp, cont)).alias("key"))


def fast_columns() -> list[pl.Expr]:
    """The ids as read, a null `reason`, the pair's key, and whether the ids are clean
    already (a lower-case token and a lower-case UUID, nothing around them)."""
    camp, cont = pl.col(CAMPAIGN).cast(pl.String), pl.col(CONTACT).cast(pl.String)
    clean = camp.str.contains(CLEAN_CAMPAIGN_RE) & cont.str.contains(CLEAN_CONTACT_RE)
    return [
        camp,
        cont,
        pl.col(EXTRA).cast(pl.String),
        pl.lit(None, pl.String).alias("reason"),
        pair_key(camp, cont),
        (clean & pl.col(EXTRA).is_null()).fill_null(False).alias("_clean"),
    ]


def finish(df: pl.DataFrame) -> pl.DataFrame:
    """Send the rows that are not clean down the slow path."""
    todo = ~df["_clean"]
    return _on_rows(df.drop("_clean"), todo, _tidied).select(CAMPAIGN, CONTACT, "reason", "key")


def normalise(raw: pl.DataFrame) -> pl.DataFrame:
    """Trim ids, lower-case UUIDs, explain invalid rows, and key each valid pair.

    Adds `reason` (null for a valid row) and `key` (the pair's 128-bit hash, null when
    invalid). Most cells are already clean: two regular expressions prove it, and only the
    other rows take the slower path.
    """
    if EXTRA not in raw.columns:
        raw = raw.with_columns(pl.lit(None, pl.String).alias(EXTRA))
    return finish(raw.select(fast_columns()))


# -- what earlier runs left, and the plan --------------------------------------------------
