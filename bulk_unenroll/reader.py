"""Reading (campaign, contact) pairs with polars: columns, validation, the send plan.

The input is read twice, in batches, so memory stays flat however large it is: the first
pass keeps a 16-byte pair key and a few bytes per row, then sorts the keys once to find
duplicates and rows settled by an earlier run; the second pass starts at the first row with
work and yields the rows to send, in file order. Which format a file is, and how polars
reads it, is `formats`' business.

Rows are data records numbered from 1 (a quoted field may span lines; a blank line is a
record, and an empty one). A row with fewer fields than the header has an empty id and is
invalid; a row with more is invalid too, since an unquoted separator inside a value shifts
every column after it and could pair the wrong ids.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .config import ReadOptions
from .errors import InputError
from .formats import Layout, as_text, explain, layout_of
from .models import Enrollment, Outcome, RowResult
from .records import stored

BATCH_ROWS = 200_000

# polars reads CSV ahead in chunks that grow with the file (about 400 MB in flight for a
# 740 MB file); 2 MiB chunks keep that near 150 MB at no cost in speed (measured with
# polars 2.1). A value the user set wins.
os.environ.setdefault("POLARS_CSV_CHUNK_SIZE", str(2 << 20))
CAMPAIGN, CONTACT = "campaign_id", "contact_id"
EXTRA = "extra"
"""A CSV row's first field beyond the header's, if it has one (a sign of shifted columns)."""
SENTINEL = "\x00extra"
"""The name that field is read under: one no header can clash with."""
UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
TOKEN_RE = r"^[A-Za-z0-9_-]{1,128}$"
CLEAN_CAMPAIGN_RE = r"^[a-z0-9_-]{1,128}$"
CLEAN_CONTACT_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
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

CAMPAIGN_NAMES = ("campaignid", "campaign", "campaignuuid")
CONTACT_NAMES = ("contactid", "contact", "contactuuid")
NAMED_CAMPAIGNS_MAX = 100_000
"""Campaign names remembered for the plan's display; further ones are shown by number."""

# Row actions decided by the plan.
SEND, INVALID, DUPLICATE, SETTLED, RECORDED = range(5)

OUTCOMES = list(Outcome)
OUTCOME_CODE = {o.value: i for i, o in enumerate(OUTCOMES)}
"""Outcomes as one byte per row in the plan (a String column would cost 16 bytes)."""
LOW_BITS = 1 << 32
"""Pair keys leave their low 32 bits free (see `pair_key`)."""


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _listing(found: list[str]) -> str:
    return ", ".join(map(repr, found)) or "none"


def _pick(found: list[str], wanted: str | None, defaults: tuple[str, ...], flag: str) -> str:
    if wanted is not None:
        if wanted in found:
            return wanted
        loose = [c for c in found if _squash(c) == _squash(wanted)]
        if len(loose) == 1:
            return loose[0]
        raise InputError(
            f"column {wanted!r} given by {flag} is not in the file; "
            f"the columns found are: {_listing(found)}"
        )
    for default in defaults:
        matches = [c for c in found if _squash(c) == default]
        if len(matches) > 1:
            raise InputError(
                f"columns {_listing(matches)} could all be the {defaults[0][:-2]} id; "
                f"name the right one with {flag} NAME"
            )
        if matches:
            return matches[0]
    hint = ""
    if any(re.fullmatch(UUID_RE, c.strip()) for c in found):
        hint = (
            " (the first line looks like data, not a header: add a header line such as "
            "campaign_id,contact_id)"
        )
    elif any("\ufffd" in c for c in found):
        hint = " (the header is not UTF-8 text: save the file as CSV UTF-8)"
    elif any(c.startswith("__UNNAMED__") for c in found):
        hint = " (the sheet's first row is taken as the header: delete any title rows above it)"
    elif len(found) == 1 and any(sep in found[0] for sep in ",;\t|"):
        hint = " (one column only: is the separator right? force it with --delimiter)"
    raise InputError(
        f"no {defaults[0][:-2]}_id column: the columns found are {_listing(found)}; "
        f"name the right one with {flag} NAME{hint}"
    )


def _check_campaign_option(value: str) -> str:
    """--campaign is checked before anything is read: a typo there is one error, not N rows."""
    campaign = value.strip(STRAY)
    if re.fullmatch(UUID_RE, campaign):
        return campaign.lower()
    if re.fullmatch(TOKEN_RE, campaign):
        return campaign
    raise InputError(
        f"--campaign {value!r} is not a campaign id: use the campaign's UUID or its id of up "
        "to 128 letters, digits, '_' and '-'"
    )


@dataclass(frozen=True)
class Source:
    """An input file and how to read its two id columns as strings."""

    path: Path
    options: ReadOptions = ReadOptions()
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _scratch(self) -> Path:
        """A private temporary folder, removed with this Source (or at exit)."""
        folder = Path(tempfile.mkdtemp(prefix="bulk-unenroll-"))
        weakref.finalize(self, shutil.rmtree, folder, True)
        return folder

    def _layout(self) -> Layout:
        if "layout" not in self._memo:
            self._memo["layout"] = layout_of(self.path, self.options, self._scratch)
        layout: Layout = self._memo["layout"]
        return layout

    def _fail(self, exc: Exception) -> InputError:
        return explain(self.path, self._layout(), exc)

    def _csv(self, names: list[str] | None) -> pl.LazyFrame:
        lay = self._layout()
        schema = None if names is None else dict.fromkeys([*names, SENTINEL], pl.String)
        return pl.scan_csv(
            lay.path,
            separator=lay.separator,
            skip_lines=lay.skip_lines,
            eol_char=lay.eol,
            infer_schema=False,
            encoding="utf8-lossy",
            schema=schema,
            missing_columns="insert" if schema else None,
            truncate_ragged_lines=True,
        )

    def _excel(self, columns: list[str] | None = None) -> pl.DataFrame:
        """The sheet as strings (Excel's numbers as typed: 12345, not 12345.0); with no
        `columns`, only its header row."""
        import fastexcel

        path = self._layout().path
        try:
            reader = fastexcel.read_excel(path)
            sheet = self._sheet(reader)
            if columns is None:
                frame = reader.load_sheet(sheet, n_rows=0, dtypes="string").to_polars()
            else:
                data = reader.load_sheet(sheet, use_columns=columns, dtypes="string")
                frame = data.to_polars()
        except fastexcel.FastExcelError as exc:
            raise InputError(
                f"cannot read {path} as a workbook ({str(exc).strip().splitlines()[0]}); "
                "if it is password-protected save an unprotected copy, otherwise open it in "
                "Excel and save it again as .xlsx or CSV UTF-8"
            ) from None
        if not frame.width:
            raise InputError(
                f"sheet {sheet!r} of {path} is empty; choose another with --sheet NAME"
                f" (its sheets are: {_listing(reader.sheet_names)})"
            )
        return frame

    def _sheet(self, reader: Any) -> str:
        """The sheet to read: --sheet (ignoring case and spaces around it), else the first
        one with the id columns. A notes sheet in front is passed over when exactly one
        other sheet has them; with several, the user chooses."""
        if "sheet" in self._memo:
            chosen: str = self._memo["sheet"]
            return chosen
        path, names, wanted = self._layout().path, list(reader.sheet_names), self.options.sheet
        if not names:
            raise InputError(f"{path} has no sheets")
        if wanted is not None:
            loose = [n for n in names if n.strip().casefold() == wanted.strip().casefold()]
            if wanted not in names and len(loose) != 1:
                raise InputError(
                    f"{path} has no sheet named {wanted!r}; its sheets are: {_listing(names)}"
                )
            chosen = wanted if wanted in names else loose[0]
        else:

            def has_ids(name: str) -> bool:
                header = reader.load_sheet(name, n_rows=0, dtypes="string").to_polars()
                try:
                    self._pick_columns(header.columns)
                except InputError:
                    return False
                return True

            chosen = names[0]
            if len(names) > 1 and not has_ids(chosen):
                others = [n for n in names[1:] if has_ids(n)]
                if len(others) > 1:
                    raise InputError(
                        f"the first sheet of {path}, {chosen!r}, has no id columns, and the "
                        f"sheets {_listing(others)} all have them: choose one with --sheet NAME"
                    )
                if others:
                    chosen = others[0]
                    self._memo["sheet_note"] = (
                        f"reading sheet {chosen!r}: the first sheet, {names[0]!r}, has no id "
                        "columns (--sheet NAME picks another)"
                    )
                else:
                    self._memo["sheet_hint"] = (
                        f" (no sheet of this workbook has them; its sheets are: "
                        f"{_listing(names)}; pick one with --sheet NAME)"
                    )
        self._memo["sheet"] = chosen
        return chosen

    @property
    def sheet_note(self) -> str | None:
        """Which sheet was read, when it is not the first: worth telling the user."""
        note: str | None = self._memo.get("sheet_note")
        return note

    def _found(self) -> tuple[list[str], dict[str, pl.DataType]]:
        if "schema" not in self._memo:
            lay = self._layout()
            try:
                if lay.kind == "csv":
                    schema = self._csv(None).collect_schema()
                elif lay.kind == "parquet":
                    schema = pl.scan_parquet(lay.path).collect_schema()
                elif lay.kind == "excel":
                    schema = self._excel().schema
                elif lay.kind == "ndjson":
                    schema = pl.scan_ndjson(lay.path, infer_schema_length=1000).collect_schema()
                else:
                    schema = pl.read_json(lay.path, infer_schema_length=1000).schema
            except (OSError, pl.exceptions.PolarsError) as exc:
                raise self._fail(exc) from None
            self._memo["schema"] = (schema.names(), dict(schema))
        found: tuple[list[str], dict[str, pl.DataType]] = self._memo["schema"]
        return found

    def columns(self) -> tuple[str, str | None]:
        """The contact and campaign column names (campaign is None with --campaign)."""
        if self.options.campaign is not None:
            _check_campaign_option(self.options.campaign)
        found, _ = self._found()
        try:
            return self._pick_columns(found)
        except InputError as exc:
            hint = self._memo.get("sheet_hint")
            if hint is None:
                raise
            raise InputError(f"{exc}{hint}") from None

    def _pick_columns(self, found: list[str]) -> tuple[str, str | None]:
        contact = _pick(found, self.options.contact_column, CONTACT_NAMES, "--contact-column")
        if self.options.campaign is not None:
            return contact, None
        campaign = _pick(found, self.options.campaign_column, CAMPAIGN_NAMES, "--campaign-column")
        if campaign == contact:
            raise InputError(
                f"column {contact!r} cannot hold both the campaign and the contact ids; "
                "name them with --campaign-column and --contact-column"
            )
        return contact, campaign

    def _lazy(self) -> pl.LazyFrame:
        """The id columns as strings (`campaign_id`, `contact_id`, `extra`), not yet read."""
        contact, campaign = self.columns()
        lay = self._layout()
        names, types = self._found()
        wanted = [contact] if campaign is None else [campaign, contact]
        texts = [as_text(c, types[c]).alias(c) for c in wanted]
        extra = pl.lit(None, pl.String)
        if lay.kind == "csv":
            lazy = self._csv(names)
            extra = pl.col(SENTINEL)
        elif lay.kind == "parquet":
            lazy = pl.scan_parquet(lay.path).select(texts)
        elif lay.kind == "ndjson":
            lazy = pl.scan_ndjson(lay.path, schema=dict.fromkeys(wanted, pl.String))
        elif lay.kind == "json":
            lazy = pl.read_json(lay.path, schema=dict.fromkeys(wanted, pl.String)).lazy()
        else:
            lazy = self._excel(wanted).select(texts).lazy()
        given = pl.lit(self.options.campaign, pl.String)
        return lazy.select(
            (given if campaign is None else pl.col(campaign)).alias(CAMPAIGN),
            pl.col(contact).alias(CONTACT),
            extra.alias(EXTRA),
        )

    def _read(self, query: Callable[[pl.LazyFrame], pl.LazyFrame]) -> Iterator[pl.DataFrame]:
        try:
            yield from query(self._lazy()).collect_batches(chunk_size=BATCH_ROWS)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise self._fail(exc) from None

    def batches(self, start: int = 0) -> Iterator[pl.DataFrame]:
        """Raw id strings, `campaign_id`, `contact_id` and `extra`, in file order, from data
        row `start` (0-based; polars finds it without parsing the rows before it)."""
        return self._read(lambda lazy: lazy.slice(start) if start else lazy)

    def row_count(self) -> int | None:
        """The file's data rows, counted apart from the batched read; None for workbooks and
        JSON, which are read whole. A CSV is counted by streaming one column in batches:
        polars' own count (`pl.len()`) maps the whole file, +570 MiB of peak memory for 10M
        rows (740 MB), where this pass stays within what the batched read takes anyway."""
        kind = self._layout().kind
        if kind not in ("csv", "parquet", "ndjson"):
            return None
        try:
            if kind == "csv":
                one_column = self._read(lambda lazy: lazy.select(CONTACT))
                return sum(batch.height for batch in one_column)
            return int(self._lazy().select(pl.len()).collect().item())
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise self._fail(exc) from None

    def normalised(self) -> Iterator[pl.DataFrame]:
        """`normalise`d batches: the per-row work runs in polars' engine, beside the reading."""
        for frame in self._read(lambda lazy: lazy.select(_fast_columns())):
            yield _finish(frame)


# -- validating and hashing ids -----------------------------------------------------------


def pair_key(campaign: pl.Expr, contact: pl.Expr) -> pl.Expr:
    """A 96-bit hash of the pair, as a UInt128 whose low 32 bits are zero.

    One column, cheap to sort and search. Sixty-four bits would collide once in a few
    hundred thousand 10M-row runs, and a collision silently skips a pair; 96 bits would
    take billions of years of runs. The free low bits carry a row number while the plan
    sorts the keys, and an outcome code in the history (`History.settled`).
    """
    pair = pl.struct(campaign.alias(CAMPAIGN), contact.alias(CONTACT))
    high = pair.hash(seed=0).cast(pl.UInt128) * pl.lit(1 << 64, dtype=pl.UInt128)
    low = pair.hash(seed=1)
    return (high + (low - low % LOW_BITS).cast(pl.UInt128)).alias("key")


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


def _fast_columns() -> list[pl.Expr]:
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


def _finish(df: pl.DataFrame) -> pl.DataFrame:
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
    return _finish(raw.select(_fast_columns()))


# -- what earlier runs left, and the plan --------------------------------------------------


def _nulls(name: str, n: int, dtype: pl.DataType) -> pl.Series:
    return pl.Series(name, [], dtype).extend_constant(None, n)


def _found_at(sorted_keys: pl.Series, keys: pl.Series, *, in_order: bool = False) -> pl.Series:
    """Per key, the first entry of `sorted_keys` at or after it (null if none).

    Keys not `in_order` are searched in sorted order and the answers put back in theirs:
    bisecting with sorted keys walks memory in order, four times faster than at random.
    """
    if sorted_keys.is_empty():
        return _nulls("entry", len(keys), pl.UInt128())
    order = None if in_order else keys.arg_sort(nulls_last=True)
    pos = sorted_keys.search_sorted(keys if order is None else keys.gather(order))
    found = sorted_keys.gather(pos.clip(upper_bound=len(sorted_keys) - 1))
    found = pl.DataFrame({"entry": found, "beyond": pos >= len(sorted_keys)}).select(
        pl.when(~pl.col("beyond")).then(pl.col("entry")).alias("entry")
    )["entry"]
    if order is None:
        return found
    return _nulls("entry", len(keys), pl.UInt128()).scatter(order, found)


def _is_in(sorted_keys: pl.Series, keys: pl.Series, *, in_order: bool = False) -> pl.Series:
    """Whether each key is in `sorted_keys` (bisection: no hash table of millions)."""
    entry = _found_at(sorted_keys, keys, in_order=in_order)
    return (entry == keys).fill_null(False).alias("found")


def _empty_keys() -> pl.Series:
    return pl.Series("key", [], pl.UInt128)


@dataclass
class History:
    """What earlier runs left: settled pairs, rows recorded without a call, pairs once sent.

    Held as sorted UInt128 arrays that each input batch searches by bisection: 16 bytes per
    earlier record, no hash table over millions of them, and the input's order untouched.
    """

    settled: pl.Series = field(default_factory=_empty_keys)
    """Sorted pair keys plus the outcome code in their low bits (`key + code`). A pair
    settled more than once counts as its first outcome in `Outcome` order (removed first)."""
    recorded: pl.Series = field(default_factory=_empty_keys)
    """Sorted `row_key`s of rows recorded without a call (invalid, duplicate): a record
    speaks for the row with the same number and the same cells, not for whatever row of
    another input has that number now."""
    attempted: pl.Series = field(default_factory=_empty_keys)
    """Sorted keys of pairs sent before without a settled record since."""
    failed: pl.Series = field(default_factory=_empty_keys)
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
            lines.filter(_settled_code(entries, lines["key"]).is_null()) for lines in sent
        ]
        empty = pl.DataFrame({"key": _empty_keys(), "delta": pl.Series([], dtype=pl.Int32)})
        marks = pl.concat([empty, *unanswered])
        attempted = (
            marks.drop_nulls("key")
            .group_by("key")
            .agg(pl.col("delta").sum())
            .filter(pl.col("delta") > 0)["key"]
            .sort()
        )
        failed = _empty_keys() if failed is None else failed.drop_nulls()
        failed = failed.filter(_settled_code(entries, failed).is_null()).unique().sort()
        recorded = recorded.drop_nulls().unique().sort().alias("key")
        return cls(entries, recorded, attempted.alias("key"), failed.alias("key"))

    def was_recorded(self, row_keys: pl.Series) -> pl.Series:
        return _is_in(self.recorded, row_keys).alias("recorded")

    def prev(self, keys: pl.Series) -> pl.Series:
        """Per key, the earlier outcome code if the pair was settled, else null."""
        return _settled_code(self.settled, keys)


def _settled_code(entries: pl.Series, keys: pl.Series, *, in_order: bool = False) -> pl.Series:
    entry = pl.DataFrame({"entry": _found_at(entries, keys, in_order=in_order), "key": keys})
    code = pl.col("entry") % LOW_BITS
    same_pair = (pl.col("entry") - code) == pl.col("key")
    return entry.select(pl.when(same_pair).then(code.cast(pl.UInt8)).alias("prev"))["prev"]


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
        return int(((self.actions["action"] == SEND) & self.actions["failed"]).sum())

    def settled_before(self) -> dict[Outcome, int]:
        prev = self.actions.filter(pl.col("action").is_in([SETTLED, RECORDED]))["prev"]
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
    prev = _nulls("prev", rows, pl.UInt8())
    attempted = pl.Series("attempted", [], pl.Boolean).extend_constant(False, rows)
    failed = pl.Series("failed", [], pl.Boolean).extend_constant(False, rows)
    tagged = pl.concat([_empty_keys(), *batches], rechunk=False)
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
        prev = prev.scatter(row, _settled_code(history.settled, key, in_order=True))
        sent = _is_in(history.attempted, key, in_order=True)
        attempted = attempted.scatter(row.filter(sent), True)
        failed = failed.scatter(row.filter(_is_in(history.failed, key, in_order=True)), True)
    return dup, prev, attempted, failed


def build_plan(source: Source, history: History, examples: int = 5) -> SendPlan:
    """First pass: decide every row's action from hashes and a few bytes per row."""
    tagged: list[pl.Series] = []
    flags: list[pl.DataFrame] = []
    invalid_examples: list[tuple[int, str]] = []
    campaigns = _CampaignCodes()
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
    invalid_examples = invalid_examples[:examples]
    dup, prev, attempted, failed = _by_pair(tagged, offset, history)
    rows = pl.concat(flags).with_columns(dup, prev, attempted, failed)
    flags.clear()
    filled = (~rows["blank"]).arg_true()
    if not len(filled):
        raise InputError(f"{source.path} has a header but only empty rows: nothing to do")
    ignored_tail = rows.height - (int(filled[-1]) + 1)
    rows = rows.head(rows.height - ignored_tail)
    invalid_examples = [(row, why) for row, why in invalid_examples if row <= rows.height]
    dup_row = pl.col("valid") & pl.col("dup")
    settled_as = pl.col("prev")
    action = (
        pl.when(~pl.col("valid") & pl.col("recorded"))
        .then(RECORDED)
        .when(~pl.col("valid"))
        .then(INVALID)
        .when(dup_row & pl.col("recorded"))
        .then(RECORDED)
        .when(dup_row)
        .then(DUPLICATE)
        .when(settled_as.is_not_null())
        .then(SETTLED)
        .otherwise(SEND)
        .cast(pl.UInt8)
    )
    prev_outcome = (
        pl.when(action == RECORDED)
        .then(
            pl.when(pl.col("valid"))
            .then(OUTCOME_CODE[Outcome.DUPLICATE.value])
            .otherwise(OUTCOME_CODE[Outcome.INVALID.value])
        )
        .otherwise(settled_as)
        .cast(pl.UInt8)
    )
    actions = rows.select(
        action.alias("action"), prev_outcome.alias("prev"), "attempted", "failed", "campaign"
    )
    del rows
    to_send = actions.filter(pl.col("action") == SEND)["campaign"]
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
    work = plan.actions["action"].is_in([SEND, INVALID, DUPLICATE])
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
        todo = acts["action"].is_in([SEND, INVALID, DUPLICATE])
        if not todo.any():
            continue
        rows = pl.concat([raw, acts], how="horizontal").with_row_index("row", start + 1)
        rows = rows.filter(todo)
        df = pl.concat(
            [normalise(rows), rows.select("row", "action", "attempted", "failed")],
            how="horizontal",
        )
        invalid = pl.col("action") == INVALID
        df = df.with_columns(
            pl.when(invalid).then(shown(pl.col(c))).otherwise(pl.col(c)).alias(c)
            for c in (CAMPAIGN, CONTACT)
        )
        send = df.filter(pl.col("action") == SEND)
        enrollments = [
            Enrollment(row, campaign, contact, attempted, failed)
            for row, campaign, contact, attempted, failed in send.select(
                "row", CAMPAIGN, CONTACT, "attempted", "failed"
            ).iter_rows()
        ]
        records: list[RowResult] = []
        for row, action, campaign, contact, reason in (
            df.filter(pl.col("action") != SEND)
            .select("row", "action", CAMPAIGN, CONTACT, "reason")
            .iter_rows()
        ):
            if action == INVALID:
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
