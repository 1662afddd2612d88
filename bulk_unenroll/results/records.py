"""The results file's format, read and written in one place.

One record per line (cells never hold a line break), ten named columns. The journal writes
it; the journal (resume, compaction) and `report` read it back, `report` through `latest`
(the latest record per pair, streamed). A file a person re-saved in a spreadsheet (a
byte-order mark, semicolons, CRLF, an added or moved column) is read back by its column
names, so opening results in Excel never costs a resend.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
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
TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"
"""How a moment is written in a results file and its companions (locks, verify files)."""


def stamp(moment: datetime | None = None) -> str:
    """`moment` (by default now) as `TIMESTAMP`, in UTC."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime(TIMESTAMP)


def read_stamp(text: str) -> datetime:
    """A `TIMESTAMP` read back; ValueError when it has another form (a hand edit)."""
    return datetime.strptime(text, TIMESTAMP).replace(tzinfo=UTC)


def escape_cell(value: str) -> str:
    """Keep spreadsheet apps from running a cell as a formula (OWASP CSV injection), and
    keep line breaks out of cells: one record is one line, so a torn tail is always a
    partial last line. Valid ids never hold either; only echoed invalid cells and server
    messages change. `stored` is the same rule in polars."""
    if "\r" in value or "\n" in value:  # rare: skip the regex for the other cells
        value = re.sub(LINE_BREAK, " ", value)
    return "'" + value if value.startswith(FORMULA_START) else value


def unescape_cell(cell: str) -> str:
    """One cell as it was before `escape_cell` (`unescape` is the same rule in polars)."""
    return cell[1:] if cell.startswith("'") and escape_cell(cell[1:]) == cell else cell


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


def drop_records(path: Path, dst: IO[str], drop: pl.Series, expected: int) -> None:
    """Write `path`'s records to `dst` without those numbered in `drop` (sorted, 0-based,
    header not counted). A canonical file's kept records are copied byte for byte, line by
    line (fast, memory flat); one whose lines are not its records (a cell holding a line
    break, as a hand edit can leave) is rewritten record by record instead (`rewrite`).

    `expected`: the record count polars found; `rewrite` refuses a disagreement, so a file
    two readers split differently is never rewritten.
    """
    if _copy_lines(path, dst, drop) == expected:
        return
    dst.seek(0)
    dst.truncate()
    rewrite(path, Dialect(), dst, set(drop.to_list()), expected)


def _copy_lines(path: Path, dst: IO[str], drop: pl.Series) -> int:
    """Copy the header and every line not numbered in `drop` (nor blank); the lines read."""
    targets = iter(drop.to_list())
    target = next(targets, None)
    dst.flush()
    with path.open("rb") as src, open(dst.fileno(), "wb", closefd=False) as out:
        out.write(src.readline())
        count = 0
        for count, line in enumerate(src, start=1):
            if count - 1 == target:
                target = next(targets, None)
            elif line.strip(b"\r\n"):
                out.write(line)
        out.flush()
        os.fsync(out.fileno())
    return count


def _record_key() -> list[pl.Expr]:
    """One UInt128 per record naming what it speaks for: a sent pair (by its ids), or a row
    recorded without a call (by its number and cells). A later record with the same key
    supersedes it. 128 bits of hash: a collision is out of reach (see `keys.pair_key`).
    Beside it, the key's bucket (see `is_latest`)."""
    without_call = pl.col("status").is_in([o.value for o in WITHOUT_CALL])
    what = pl.struct("campaign_id", "contact_id", pl.when(without_call).then(pl.col("row")))
    high = what.hash(seed=0).cast(pl.UInt128) * pl.lit(1 << 64, dtype=pl.UInt128)
    low = what.hash(seed=1)
    return [(high + low.cast(pl.UInt128)).alias("key"), key_bucket(low).alias("bucket")]


def key_bucket(bits: pl.Expr) -> pl.Expr:
    """Which of KEY_BUCKETS a key falls in, from hash bits of it (see `is_latest`)."""
    return (bits % KEY_BUCKETS).cast(pl.UInt8)


def _numbered(lazy: pl.LazyFrame) -> pl.LazyFrame:
    """The records that are records (a row number and a status), numbered in file order."""
    numbered = lazy.with_columns(pl.col("row").cast(pl.Int64, strict=False))
    wanted = pl.col("row").is_not_null() & pl.col("status").is_not_null()
    return numbered.filter(wanted).with_row_index("i")


CSV_CHUNK_BYTES = 2 << 20
"""polars' CSV read-ahead, as the input reader holds it (input/source.py): a few hundred MB
less in flight on a big file, at no cost in speed."""
KEY_BUCKETS = 8
"""Keys are told apart bucket by bucket: each hash table holds an eighth of them."""


def is_latest(keys: pl.Series, bucket: pl.Series) -> pl.Series:
    """Per record, whether no later record has its key (`bucket`: `key_bucket` of the key)."""
    latest = pl.repeat(True, len(keys), dtype=pl.Boolean, eager=True).alias("latest")
    for b in range(KEY_BUCKETS):
        where = (bucket == b).arg_true()
        latest.scatter(where, keys.gather(where).is_last_distinct())
    return latest


def spooled(lazy: pl.LazyFrame) -> pl.DataFrame:
    """`lazy` collected through a Parquet file: polars' streaming `collect` of a CSV scan
    kept 1.5 GB resident to pick 300,000 rows out of a 1.4 GB file; a sink stays flat."""
    with tempfile.TemporaryDirectory(prefix="bulk-unenroll-") as tmp:
        spool = Path(tmp) / "rows.parquet"
        lazy.sink_parquet(spool)
        return pl.read_parquet(spool)


def kept_rows(frame: pl.DataFrame, kept: pl.Series) -> pl.DataFrame:
    """The rows of `frame` that `kept` marks, copied column by column, each column of
    `frame` freed once copied (`frame` is left empty): never two copies of millions of rows.
    A null in `kept` (a filter on a missing cell) keeps nothing, as in a frame's filter."""
    kept = kept.fill_null(False)  # polars' all() skips nulls: a null must not pass as kept
    every, columns = bool(kept.all()), []
    for name in frame.columns:
        column = frame.drop_in_place(name)
        columns.append(column if every else column.filter(kept))
        del column  # before the next column is taken out
    return pl.DataFrame(columns)


class Latest:
    """The records of a results file that still speak: the latest of each pair, and of each
    row recorded without a call. See `latest`."""

    def __init__(self, numbered: pl.LazyFrame) -> None:
        self._numbered = numbered
        self._superseded: pl.Series | None = None

    def marked(self, *columns: pl.Expr | str) -> tuple[pl.DataFrame, pl.Series]:
        """`columns` of every record, in file order, and beside them whether each still
        speaks (the latest of its key), from one streaming pass that also finds the
        superseded records. Keep the columns narrow (codes, numbers, categoricals): they are
        held for every record, beside one 16-byte key. Nothing is copied: filter each column
        by the mask as it is used (a copy of the latest records held 240 MiB more at 10M
        records, and so does a frame operation on the columns with the mask among them:
        polars copies the whole frame into one chunk to line them up)."""
        os.environ.setdefault("POLARS_CSV_CHUNK_SIZE", str(CSV_CHUNK_BYTES))
        frame = self._numbered.select(*_record_key(), *columns).collect(engine="streaming")
        latest = is_latest(frame.get_column("key"), frame.get_column("bucket"))
        self._superseded = latest.not_().arg_true()
        return frame.drop("key", "bucket"), latest

    def facts(self, *columns: pl.Expr | str) -> pl.DataFrame:
        """`columns` of every latest record, in file order (`marked`, the others left out)."""
        return kept_rows(*self.marked(*columns))

    def read(self, at: pl.Series) -> pl.DataFrame:
        """Every column of the records numbered `at` (a few: the file is read no further
        than the last of them)."""
        if at.is_empty():
            return self._numbered.head(0).collect()
        upto = self._numbered.head(int(at.max()) + 1)  # type: ignore[arg-type]
        return spooled(upto.filter(pl.col("i").is_in(at.implode())))

    @property
    def every(self) -> pl.LazyFrame:
        """Every record, superseded ones too (each was a call), numbered as in `records`."""
        return self._numbered

    @property
    def records(self) -> pl.LazyFrame:
        """Every column of the latest records, for polars' streaming engine (`i` numbers the
        records in file order; `row` is Int64, the rest strings as stored, cells escaped)."""
        if self._superseded is None:
            self.marked()
        assert self._superseded is not None
        if self._superseded.is_empty():
            return self._numbered
        return self._numbered.filter(~pl.col("i").is_in(self._superseded.implode()))


@contextlib.contextmanager
def read_errors(path: Path) -> Iterator[None]:
    """A failure to read `path` (no such file, unreadable, not CSV) as one clear
    ResultsFileError naming it, whichever reader met it."""
    try:
        yield
    except OSError as exc:
        raise ResultsFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except pl.exceptions.PolarsError as exc:
        raise ResultsFileError(f"cannot read {path}: {exc}") from None


@contextlib.contextmanager
def latest(path: Path) -> Iterator[Latest]:
    """The latest record of each pair the API answered for, and of each row recorded without
    a call, streamed: the one reading of a results file that report, export and any command
    that follows share.

    The rules of the file: records are keyed as the run keys them (by pair for sent pairs,
    since inputs change between runs; by row number and cells for invalid and duplicate
    rows); a torn last line (a killed run) is left out; a file re-saved by a spreadsheet is
    read by its column names. Valid while the context is open (a torn file is read from a
    mended copy). Raises OSError or PolarsError (no such file, unreadable).
    """
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such file")
    form = dialect(path)
    with whole(path, form) as readable:
        yield Latest(_numbered(scan(readable, form)))
