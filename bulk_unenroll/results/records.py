"""The results file's format, read and written in one place.

One record per line (cells never hold a line break), ten named columns. The journal writes
it; the journal (resume, compaction) and `report` read it back. A file a person re-saved in a
spreadsheet (a byte-order mark, semicolons, CRLF, an added or moved column) is read back by
its column names, so opening results in Excel never costs a resend.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import polars as pl

from ..errors import ResultsFileError
from ..events import Said, Setting
from ..models import Outcome

COLUMNS = (
    "row",
    "campaign_id",
    "contact_id",
    "status",
    "http_status",
    "error_code",
    "attempts",
    "request_id",
    "detail",
    "finished_at",
)
HEADER = ",".join(COLUMNS) + "\n"
REQUIRED = frozenset(("row", "campaign_id", "contact_id", "status"))
"""What a re-saved file must still have to be read back as a results file."""
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
LINE_BREAK = r"\r\n|[\r\n]"
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

SETTLED = (
    Outcome.REMOVED,
    Outcome.NOT_ENROLLED,
    Outcome.REJECTED,
    Outcome.RESTORED,
    Outcome.ALREADY_ENROLLED,
)
"""Definite answers from the API about a pair: never sent again, never dropped."""
ANSWERED = (*SETTLED, Outcome.FAILED)
"""Records of a sent pair, keyed by the pair: inputs change between runs, pairs do not."""
WITHOUT_CALL = (Outcome.INVALID, Outcome.DUPLICATE)
"""Records of one input row, made without a call: keyed by row number and cells."""


def escape_cell(value: str) -> str:
    """Keep spreadsheet apps from running a cell as a formula (OWASP CSV injection), and
    keep line breaks out of cells: one record is one line, so a torn tail is always a
    partial last line. Valid ids never hold either; only echoed invalid cells and server
    messages change. `stored` is the same rule in polars."""
    if "\r" in value or "\n" in value:  # rare: skip the regex for the other cells
        value = re.sub(LINE_BREAK, " ", value)
    return "'" + value if value.startswith(FORMULA_START) else value


def stored(expr: pl.Expr) -> pl.Expr:
    """What `escape_cell` writes for each value (null as empty), as a polars expression."""
    flat = expr.fill_null("").str.replace_all(LINE_BREAK, " ")
    risky = pl.any_horizontal([flat.str.starts_with(s) for s in FORMULA_START])
    return pl.when(risky).then(pl.lit("'") + flat).otherwise(flat)


def unescape(column: str) -> pl.Expr:
    """Undo `escape_cell`'s formula guard, so ids read back exactly as they were sent."""
    col = pl.col(column)
    escaped = col.str.starts_with("'") & col.str.slice(1, 1).is_in(list(FORMULA_START))
    return pl.when(escaped).then(col.str.slice(1)).otherwise(col).alias(column)


@dataclass(frozen=True)
class Dialect:
    """How a results file is written: ours exactly, or as a spreadsheet re-saved it."""

    separator: str = ","
    bom: bool = False
    names: tuple[str, ...] = COLUMNS
    canonical: bool = True


def dialect(path: Path) -> Dialect:
    """Read the header line; refuse (touching nothing) a file that is no results file."""
    with path.open("rb") as f:
        head = f.readline(64 * 1024)
    if head == HEADER.encode():
        return Dialect()
    bom = head.startswith(codecs.BOM_UTF8)
    line = head.removeprefix(codecs.BOM_UTF8).rstrip(b"\r\n").decode("utf-8", "replace")
    for separator in (",", ";", "\t"):
        names = tuple(n.strip().lower() for n in next(csv.reader([line], delimiter=separator)))
        if set(names) >= REQUIRED and all(names.count(c) == 1 for c in REQUIRED):
            return Dialect(separator, bom, names, canonical=False)
    raise ResultsFileError(
        Said(
            (
                f"{path} exists but is not a bulk_unenroll results file: its first line is "
                f"{line[:80]!r}, and a results file's first line names the columns "
                f"{','.join(COLUMNS)}. Nothing was changed. If it is the results file of "
                "earlier runs that someone edited, put that header line back and rerun (its "
                "records are kept and nothing they settled is sent again); if it is another "
                "file, choose a new ",
                Setting.OUT,
            )
        )
    )


def tail_state(path: Path, form: Dialect | None = None) -> tuple[int, bool]:
    """(size, whether it ends mid-record). A record is torn only if its last line lacks the
    newline *and* is incomplete: a file saved without a final newline keeps its last record.
    A re-saved file (`form` not canonical) was written whole by the program that saved it."""
    if form is not None and not form.canonical:
        return path.stat().st_size, False
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0, False
        f.seek(max(0, size - (1 << 16)))
        tail = f.read()
    if tail.endswith(b"\n"):
        return size, False
    last = tail[tail.rfind(b"\n") + 1 :].decode("utf-8", "replace")
    cells = next(csv.reader([last]), [])
    whole = len(cells) == len(COLUMNS) and TIMESTAMP_RE.fullmatch(cells[-1]) is not None
    return size, not whole


def mend_tail(path: Path) -> None:
    """Cut a torn last record (a kill mid-write: the row is redone, not misread); end a whole
    one with its newline, so the next record starts on a line of its own."""
    size, torn = tail_state(path)
    if size == 0:
        return
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        if not torn:
            f.write(b"\n")
            return
        chunk = min(size, 1 << 20)
        f.seek(size - chunk)
        cut = f.read(chunk).rfind(b"\n")
        f.truncate(size - chunk + cut + 1 if cut >= 0 else 0)


@contextlib.contextmanager
def whole(path: Path, form: Dialect) -> Iterator[Path]:
    """The file to read without changing it: itself, or a copy without a torn last record."""
    if not tail_state(path, form)[1]:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bulk-unenroll-") as tmp:
        copy = Path(tmp) / "results.csv"
        shutil.copyfile(path, copy)
        mend_tail(copy)
        yield copy


def scan(path: Path, form: Dialect | None = None) -> pl.LazyFrame:
    """The records as strings under the canonical column names, in file order."""
    form = form or dialect(path)
    lazy = pl.scan_csv(path, separator=form.separator, infer_schema=False)
    if form.canonical:
        return lazy
    original = lazy.collect_schema().names()  # polars' spelling (BOM dropped, case kept)
    by_name = {name.strip().lower(): name for name in original}
    return lazy.select(
        pl.col(by_name[c]).alias(c) if c in by_name else pl.lit(None, pl.String).alias(c)
        for c in COLUMNS
    )


def rewrite(
    path: Path, form: Dialect, dst: IO[str], skip: Collection[int] = (), expected: int | None = None
) -> None:
    """Write `path`'s records to `dst` in canonical form, leaving out record numbers in
    `skip` (0-based, header not counted). Streams: memory stays flat at any size.

    `expected`: the record count another reader found; a disagreement is refused, so a
    file two readers split differently is never rewritten.
    """
    encoding = "utf-8-sig" if form.bom else "utf-8"
    with path.open(encoding=encoding, newline="", errors="replace") as src:
        records = csv.reader(src, delimiter=form.separator)
        header = [name.strip().lower() for name in next(records)]
        where = [header.index(c) if c in header else None for c in COLUMNS]
        writer = csv.writer(dst, lineterminator="\n")
        writer.writerow(COLUMNS)
        count = 0
        for index, record in enumerate(records):
            count = index + 1
            if index in skip or not any(record):
                continue
            cells = ["" if i is None or i >= len(record) else record[i] for i in where]
            writer.writerow([re.sub(LINE_BREAK, " ", cell) for cell in cells])
        if expected is not None and count != expected:
            raise OSError(f"it reads as {count:,} or {expected:,} records")
        dst.flush()
        os.fsync(dst.fileno())
