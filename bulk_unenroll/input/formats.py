"""What kind of file an input is, and how polars reads it: decided from its name, then
checked against its first bytes, so a Parquet file called `.csv` or a workbook called `.csv`
gets a message, not a parse error.

Text is read as UTF-8; bytes that are not UTF-8 (a Windows-1252 export) are replaced, which
is safe because ids are ASCII: a replaced byte can only sit in a column we ignore, or make
its id invalid with a reason that says how to re-save the file. UTF-16 (Excel's "Unicode
text") is transcoded to a temporary UTF-8 copy.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import polars as pl

from ..config import ReadOptions
from ..errors import InputError

SNIFF_BYTES = 64 * 1024
CSV_SUFFIXES = {".csv": None, ".txt": None, ".tsv": "\t", ".tab": "\t"}
EXCEL_SUFFIXES = (".xlsx", ".xlsm", ".xlsb", ".xls", ".ods")
PARQUET_SUFFIXES = (".parquet", ".pq")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
KNOWN = ".csv, .tsv, .txt, .csv.gz, .tsv.gz, .parquet, .xlsx, .xls, .ods, .jsonl or .ndjson"
SEPARATORS = (",", ";", "\t")

MAGIC = (
    (b"PAR1", "parquet", "a Parquet file"),
    (b"PK\x03\x04", "zip", "a zip archive (an .xlsx workbook is one)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole", "an Excel 97-2003 workbook (.xls)"),
    (b"%PDF", "pdf", "a PDF document"),
    (b"SQLite format 3\x00", "sqlite", "an SQLite database"),
    (b"\x89PNG", "image", "a PNG image"),
    (b"\xff\xd8\xff", "image", "a JPEG image"),
    (b"{\\rtf", "rtf", "an RTF document"),
)


# -- what kind of file is this -------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How to read one file, decided once from its name and first bytes."""

    kind: str
    """csv, parquet, excel, ndjson or json."""
    path: Path
    """The file to read: the input itself, or a UTF-8 copy of a UTF-16 input."""
    gz: bool = False
    separator: str = ","
    skip_lines: int = 0
    eol: str = "\n"


def _suffix_kind(path: Path) -> tuple[str | None, bool, str]:
    """(kind by name, named .gz, the suffix as shown in messages)."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    shown = (last or "(no suffix)") + (".gz" if gz else "")
    if last in CSV_SUFFIXES:
        return "csv", gz, shown
    if gz:
        return None, gz, shown
    if last in PARQUET_SUFFIXES:
        return "parquet", gz, shown
    if last in EXCEL_SUFFIXES:
        return "excel", gz, shown
    if last in JSON_SUFFIXES:
        return "json" if last == ".json" else "ndjson", gz, shown
    return None, gz, shown


def _content(head: bytes) -> tuple[str, str]:
    """(kind, description) of the first bytes: a magic number, a web page, or text."""
    for magic, kind, description in MAGIC:
        if head.startswith(magic):
            return kind, description
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:64].lower()
    if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<table")):
        return "html", "a web page or XML document"
    return "text", "text"


def _utf16(head: bytes) -> str | None:
    """The codec of UTF-16/32 text (Excel's "Unicode text"), from its BOM or its zero bytes."""
    for bom, codec in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if head.startswith(bom):
            return codec
    sample = head[:4096]
    if len(sample) >= 8:
        even, odd = sample[0::2], sample[1::2]
        if odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.05 * len(even):
            return "utf-16-le"
        if even.count(0) > 0.4 * len(even) and odd.count(0) < 0.05 * len(odd):
            return "utf-16-be"
    return None


def _open_bytes(path: Path, gz: bool) -> IO[bytes]:
    return cast(IO[bytes], gzip.open(path, "rb")) if gz else path.open("rb")


def _head(path: Path, gz: bool) -> bytes:
    """The first bytes of the file, decompressed when it is gzip."""
    with path.open("rb") as f:
        raw = f.read(SNIFF_BYTES)
    if not gz:
        return raw
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, SNIFF_BYTES)
    except zlib.error:
        raise InputError(
            f"{path} is not valid gzip data (it starts like gzip but cannot be decompressed); "
            "export it again"
        ) from None


def _transcode(path: Path, gz: bool, codec: str, dest: Path) -> None:
    decoder = codecs.getincrementaldecoder(codec)(errors="replace")
    with _open_bytes(path, gz) as src, dest.open("w", encoding="utf-8", newline="") as out:
        first = True
        while chunk := src.read(1 << 20):
            text = decoder.decode(chunk)
            if first:
                text, first = text.removeprefix("\ufeff"), False
            out.write(text)
        out.write(decoder.decode(b"", final=True))


def _lines(text: str, eol: str) -> list[str]:
    """Whole lines of the sniffed text (the last may be cut short, so it is dropped)."""
    lines = text.removeprefix("\ufeff").split(eol)
    return [line.rstrip("\r") for line in (lines[:-1] if len(lines) > 1 else lines)]


def _detect_separator(lines: list[str], preferred: str | None) -> str:
    """The separator that splits the header, and the lines after it into as many fields.

    Agreement comes first: in `Kampagne, ID;Kontakt, ID` the comma is more frequent, but
    only the semicolon splits the data lines the same way.
    """

    def fields(line: str, sep: str) -> int:
        return re.sub(r'"[^"]*"', "", line).count(sep)

    header, rest = lines[0], [line for line in lines[1:51] if line.strip()]
    scores = {}
    for sep in SEPARATORS:
        count = fields(header, sep)
        if count:
            agree = sum(fields(line, sep) == count for line in rest)
            scores[sep] = (agree, count, sep == preferred)
    if not scores:
        return preferred or ","
    return max(SEPARATORS, key=lambda sep: scores.get(sep, (-1, 0, False)))


def _wrong_content(path: Path, shown: str, content: str, description: str) -> InputError:
    fixes = {
        "parquet": "rename it to end in .parquet",
        "zip": "if it is an Excel workbook rename it to .xlsx; if it is a zip archive, "
        "unzip it and pass the file inside",
        "ole": "rename it to .xls, or open it in Excel and save it as CSV UTF-8",
        "html": "open it in Excel and save it as CSV UTF-8 or .xlsx",
        "text": "rename it to .csv (or .tsv, .jsonl) to match what it holds",
    }
    fix = fixes.get(content, "export the campaign/contact list as CSV and pass that")
    return InputError(f"{path} is {description}, not what its name {shown!r} says: {fix}")


def layout_of(path: Path, options: ReadOptions, scratch: Callable[[], Path]) -> Layout:  # noqa: C901, PLR0912, PLR0915
    """Decide how to read `path`; `scratch` gives a folder for a UTF-8 copy when needed."""
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a folder; pass the input file itself")
    kind, gz, shown = _suffix_kind(path)
    try:
        size = path.stat().st_size
        head = _head(path, gz) if size else b""
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not size:
        raise InputError(
            f"{path} is empty (0 bytes): expected a header line naming the campaign_id and "
            "contact_id columns, then one row per pair"
        )
    if not gz and head.startswith(b"\x1f\x8b"):
        if kind == "csv":
            gz, head = True, _head(path, True)
        else:
            raise _wrong_content(path, shown, "gzip", "gzip-compressed data")
    content, description = _content(head)
    if kind is None:
        looks = "" if content == "text" else f" (it looks like {description})"
        raise InputError(
            f"{path}: unknown file type {shown!r}{looks}; use a {KNOWN} file (the name's "
            "suffix says how to read it)"
        )
    if kind == "parquet":
        if content != "parquet":
            raise _wrong_content(path, shown, content, description)
        with path.open("rb") as f:
            f.seek(-4, 2)
            if f.read(4) != b"PAR1":
                raise InputError(
                    f"{path} is a truncated or damaged Parquet file (its footer is missing); "
                    "export it again"
                )
        return Layout("parquet", path)
    if kind == "excel":
        if content not in ("zip", "ole"):
            raise _wrong_content(path, shown, content, description)
        return Layout("excel", path)
    codec = _utf16(head)
    if content != "text" and codec is None:
        raise _wrong_content(path, shown, content, description)
    if codec is None and b"\x00" in head:
        offset = head.index(b"\x00")
        raise InputError(
            f"{path} is not a text file: it holds binary data (a zero byte at offset "
            f"{offset:,}); export the list as CSV and pass that"
        )
    source = path
    if codec is not None:
        source = scratch() / "input-utf8.txt"
        _transcode(path, gz, codec, source)
        gz = False
        with source.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    text = head.decode("utf-8", errors="replace")
    if not text.strip("\ufeff \t\r\n"):
        raise InputError(f"{path} holds only blank lines: expected a header line and rows")
    if kind in ("ndjson", "json"):
        first = text.lstrip("\ufeff \t\r\n")[:1]
        if kind == "json" and first == "[":
            return Layout("json", source, gz)
        if first != "{":
            raise InputError(
                f"{path} is not JSON lines: each line must be one object such as "
                '{"campaign_id": "...", "contact_id": "..."}'
            )
        return Layout("ndjson", source, gz)
    eol = "\r" if "\n" not in text and "\r" in text else "\n"
    lines = _lines(text, eol)
    skip = 0
    forced = options.delimiter
    sep_line = re.fullmatch(r"\s*sep=(.)\s*", lines[0])
    if sep_line:  # Excel's own hint line, "sep=;"
        forced = forced or sep_line[1]
        skip, lines = 1, lines[1:]
        if not any(line.strip() for line in lines):
            raise InputError(f"{path} holds only Excel's 'sep=' line: expected a header and rows")
    preferred = CSV_SUFFIXES.get(Path(path.name.removesuffix(".gz")).suffix.lower())
    separator = forced or _detect_separator(lines, preferred)
    return Layout("csv", source, gz, separator, skip, eol)


def spool(stream: IO[bytes], folder: Path) -> Path:
    """Copy a stream (stdin) into `folder`, named for what its first bytes say it is.

    The reader goes over its input twice, and a pipe can be read only once. Text is taken as
    CSV (the separator is detected), a line starting with `{` as JSON lines.
    """
    staged = folder / "stdin.part"
    with staged.open("wb") as out:
        head = stream.read(SNIFF_BYTES)
        out.write(head)
        shutil.copyfileobj(stream, out, 1 << 20)
    content, _ = _content(head)
    suffix = {"parquet": ".parquet", "zip": ".xlsx", "ole": ".xls"}.get(content, ".csv")
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if content == "text" and first in (b"{", b"["):
        suffix = ".jsonl" if first == b"{" else ".json"
    return staged.rename(folder / f"stdin{suffix}")


# -- reading ids as text ------------------------------------------------------------------


def as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """A column as id strings: integers without `.0`, no scientific notation, UUID bytes."""
    col = pl.col(name)
    if dtype == pl.String:
        return col
    if (
        dtype.is_integer()
        or dtype in (pl.Categorical, pl.Null, pl.Boolean)
        or isinstance(dtype, pl.Enum)
    ):
        return col.cast(pl.String)
    if isinstance(dtype, pl.Decimal):
        return col.cast(pl.String).str.replace(r"\.0+$", "")
    if dtype.is_float():
        whole = (col == col.round(0)) & (col.abs() < 1e38)
        return (
            pl.when(whole)
            .then(col.cast(pl.Decimal(38, 0), strict=False).cast(pl.String))
            .otherwise(col.cast(pl.String))
        )
    if dtype == pl.Binary:
        hexed = col.bin.encode("hex")
        uuid = pl.concat_str(
            [hexed.str.slice(a, b - a) for a, b in ((0, 8), (8, 12), (12, 16), (16, 20))]
            + [hexed.str.slice(20, 12)],
            separator="-",
        )
        return pl.when(col.bin.size() == 16).then(uuid).otherwise(col.cast(pl.String, strict=False))
    raise InputError(
        f"column {name!r} holds {dtype} values, not ids; pick another column with "
        "--campaign-column / --contact-column"
    )


def explain(path: Path, lay: Layout, exc: Exception) -> InputError:
    """One clear line for a file polars cannot read: where, and how to fix it."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if lay.gz and "end of file" in first:
        return InputError(
            f"{path} is cut short (its gzip data ends early); copy or export it again"
        )
    if isinstance(exc, OSError):
        return InputError(f"cannot read {path}: {exc.strerror or first}")
    if lay.kind == "parquet":
        return InputError(f"{path} is not a readable Parquet file ({first}); export it again")
    if lay.kind in ("ndjson", "json"):
        where = _bad_json_line(lay.path, lay.gz) if lay.kind == "ndjson" else None
        at = f" at line {where}" if where else ""
        return InputError(f"{path} is not valid JSON{at} ({first}); fix or re-export that line")
    if lay.kind == "csv":
        line = _unclosed_quote_line(lay.path, lay.gz, lay.eol)
        if line is not None:
            return InputError(
                f"{path}: the quote opened on line {line:,} is never closed, so the rest of "
                'the file would be one field; fix that line (a value with a " must be quoted '
                'as "...""...")'
            )
        field = re.match(r"could not parse `(.*?)` as dtype", str(exc), re.DOTALL)
        if field:
            text = field[1][:60]
            line = _line_with(lay.path, lay.gz, text.split("\n")[0].encode())
            at = f" on line {line:,}" if line else ""
            return InputError(
                f"{path}: the field {text!r}{at} starts with a quote but goes on after the "
                'closing one; quote the whole value and double the quotes inside ("a ""b"" c")'
            )
    return InputError(f"cannot read {path}: {first}")


def _line_with(path: Path, gz: bool, text: bytes) -> int | None:
    with _open_bytes(path, gz) as f:
        for number, line in enumerate(f, 1):
            if text in line:
                return number
    return None


def _bad_json_line(path: Path, gz: bool) -> int | None:
    with _open_bytes(path, gz) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    json.loads(line)
                except ValueError:
                    return number
    return None


def _unclosed_quote_line(path: Path, gz: bool, eol: str) -> int | None:
    """The line where a quote opens and is never closed (an odd count to the end)."""
    inside, opened_at = False, 0
    with _open_bytes(path, gz) as f:
        lines = f if eol == "\n" else iter(f.read().split(eol.encode()))
        for number, line in enumerate(lines, 1):
            if line.count(b'"') % 2:
                opened_at = number if not inside else opened_at
                inside = not inside
    return opened_at if inside else None
