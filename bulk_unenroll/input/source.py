"""The input file as (campaign, contact) strings: which columns and sheet hold the ids.

Rows are data records numbered from 1 (a quoted field may span lines; a blank line is a
record, and an empty one). A row with fewer fields than the header has an empty id and is
invalid; a row with more is invalid too, since an unquoted separator inside a value shifts
every column after it and could pair the wrong ids. Which format a file is, and how polars
reads it, is `formats`' business.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..config import ReadOptions
from ..errors import InputError
from ..keys import CAMPAIGN, CONTACT
from .formats import Layout, as_text, explain, layout_of
from .ids import EXTRA, SENTINEL, STRAY, TOKEN_RE, UUID_RE, fast_columns, finish

BATCH_ROWS = 200_000
CSV_CHUNK_BYTES = 2 << 20
"""polars reads CSV ahead in chunks that grow with the file (about 400 MB in flight for a
740 MB file); 2 MiB chunks keep that near 150 MB at no cost in speed (measured with
polars 2.1). Set when a CSV is first scanned, not on import; a value the user set wins."""

CAMPAIGN_NAMES = ("campaignid", "campaign", "campaignuuid")
CONTACT_NAMES = ("contactid", "contact", "contactuuid")


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
        os.environ.setdefault("POLARS_CSV_CHUNK_SIZE", str(CSV_CHUNK_BYTES))
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
        for frame in self._read(lambda lazy: lazy.select(fast_columns())):
            yield finish(frame)


# -- validating and hashing ids -----------------------------------------------------------
