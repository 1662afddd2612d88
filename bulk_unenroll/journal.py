"""The results file: append-only, flushed as rows finish, locked, read back for resume.

Beside it live two small companions: `<out>.lock` (one run at a time; the lock dies with its
process) and `<out>.sent` (pairs a request went out for, written before the request, so a
rerun after a crash knows which `enrollment_not_found` answers may be its own earlier work).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import polars as pl

from .errors import ResultsFileError
from .models import Enrollment, Outcome, RowResult
from .reader import CAMPAIGN, CONTACT, OUTCOME_CODE, History, pair_key
from .scrub import redact

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
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
FSYNC_EVERY = 1.0
PAIR_SETTLED = [o.value for o in (Outcome.REMOVED, Outcome.NOT_ENROLLED, Outcome.REJECTED)]
ROW_SETTLED = [o.value for o in (Outcome.INVALID, Outcome.DUPLICATE)]


def escape_cell(value: str) -> str:
    """Keep spreadsheet apps from running a cell as a formula (OWASP CSV injection), and
    keep line breaks out of cells: one record is one line, so a torn tail is always a
    partial last line, and csv and polars always agree on where records start. Valid ids
    never hold a line break; only echoed invalid cells and server messages lose theirs."""
    if "\r" in value or "\n" in value:
        value = " ".join(value.splitlines())
    return "'" + value if value.startswith(FORMULA_START) else value


def unescape(column: str) -> pl.Expr:
    """Undo `escape_cell`, so ids read back exactly as they were sent."""
    col = pl.col(column)
    escaped = col.str.starts_with("'") & col.str.slice(1, 1).is_in(list(FORMULA_START))
    return pl.when(escaped).then(col.str.slice(1)).otherwise(col).alias(column)


def _utc(moment: datetime | None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fail(path: Path, action: str, exc: OSError) -> ResultsFileError:
    return ResultsFileError(
        f"cannot {action} {path}: {exc.strerror or exc}. "
        "Rows written so far are intact; fix this (free space, permissions) and rerun."
    )


class Lock:
    """An exclusive lock on `<out>.lock` naming its holder; released when the process dies."""

    def __init__(self, out: Path) -> None:
        self.path = out.with_name(out.name + ".lock")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _fail(self.path, "create the lock file", exc) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 4096, 0).decode(errors="replace").strip()
            os.close(self._fd)
            raise ResultsFileError(
                f"another run is using {out} ({holder or 'holder unknown'}); "
                "wait for it to finish or stop it, then rerun"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, self._holder().encode(), 0)

    @staticmethod
    def _holder() -> str:
        started = _utc(None)
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": started})

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)


def _cut_torn_tail(path: Path) -> None:
    """A kill mid-write can leave half a line; drop it so the row is redone, not misread."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        chunk = min(size, 1 << 20)
        f.seek(size - chunk)
        tail = f.read(chunk)
        cut = tail.rfind(b"\n")
        f.truncate(size - chunk + cut + 1 if cut >= 0 else 0)


def _read_history(out: Path, sent: Path) -> tuple[History, int]:
    """Settled pairs, rows recorded without a call, pairs once sent; and the failed count.

    Streams both files and keeps 16 bytes per settled record, so the results of a 10M-row
    run read back in a few hundred MB.
    """
    status = pl.col("status")
    code = pl.coalesce(  # not replace_strict: that one is not streamed, and held every status
        [pl.when(status == value).then(pl.lit(c, pl.UInt8)) for value, c in OUTCOME_CODE.items()]
    )
    pair_settled = [OUTCOME_CODE[s] for s in PAIR_SETTLED]
    row_settled = [OUTCOME_CODE[s] for s in ROW_SETTLED]
    records = pl.scan_csv(out, infer_schema=False).select(
        pl.col("row").cast(pl.Int64, strict=False),
        pair_key(unescape(CAMPAIGN), unescape(CONTACT)),
        code.alias("prev"),
    )
    frames = pl.collect_all(
        [
            records.filter(pl.col("prev").is_in(pair_settled)).select("key", "prev"),
            records.filter(pl.col("prev").is_in(row_settled)).select("row"),
            records.filter(pl.col("prev") == OUTCOME_CODE[Outcome.FAILED.value]).select("key"),
        ],
        engine="streaming",
    )
    failed_keys, recorded = frames.pop()["key"], frames.pop()["row"]
    sent_keys: Iterator[pl.DataFrame] = iter(())
    if sent.exists() and sent.stat().st_size:
        sent_keys = (
            pl.scan_csv(  # a line without a delta (older files) is a mark: +1
                sent,
                has_header=False,
                schema={CAMPAIGN: pl.String, CONTACT: pl.String, "delta": pl.String},
                missing_columns="insert",
            )
            .select(
                pair_key(unescape(CAMPAIGN), unescape(CONTACT)),
                pl.col("delta").cast(pl.Int32, strict=False).fill_null(1),
            )
            .collect_batches(chunk_size=500_000)
        )
    # The settled frame is handed over, not kept here: from_records frees it once sorted.
    history = History.from_records(frames.pop(), recorded, sent_keys, failed_keys)
    return history, len(failed_keys)


def read_history(out: Path) -> History:
    """Read-only look at an earlier run's results, for --dry-run (no lock, nothing changed)."""
    if not out.exists() or not out.stat().st_size:
        return History()
    _check_header(out)
    sent = out.with_name(out.name + ".sent")
    with out.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        whole_lines = f.read(1) == b"\n"
    if whole_lines:
        return _read_history(out, sent)[0]
    with tempfile.TemporaryDirectory() as tmp:  # a torn last line: read a copy without it
        copy = Path(tmp) / "results.csv"
        shutil.copyfile(out, copy)
        _cut_torn_tail(copy)
        return _read_history(copy, sent)[0]


def _check_header(out: Path) -> None:
    with out.open(encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if first != HEADER:
        raise ResultsFileError(
            f"{out} exists but is not a bulk_unenroll results file "
            f"(its first line is {first.strip()[:80]!r}); choose another --out"
        )


class Journal:
    """Owns the results file and its companions for one run."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.sent_path = out.with_name(out.name + ".sent")
        if out.is_dir():
            raise ResultsFileError(
                f"--out {out} is a directory; give a file path such as results.csv"
            )
        if not out.parent.exists():
            raise ResultsFileError(f"--out {out}: folder {out.parent} does not exist")
        self._lock = Lock(out)
        self.history = History()
        self._failed_before = 0
        self._closed = False
        opened: list[IO[str]] = []
        try:
            if out.exists() and out.stat().st_size:
                _check_header(out)  # before cutting anything: it may be someone else's file
                _cut_torn_tail(out)
            self._results: IO[str] = out.open("a", encoding="utf-8", newline="")
            opened.append(self._results)
            if self._results.tell() == 0:
                # At once, not with the first record: a run killed before any row finished
                # leaves `.sent` pairs that the rerun must read back beside a valid file.
                self._results.write(HEADER)
                self._results.flush()
            if self.sent_path.exists():
                _cut_torn_tail(self.sent_path)
            self.history, self._failed_before = _read_history(out, self.sent_path)
            self._sent: IO[str] = self.sent_path.open("a", encoding="utf-8", newline="")
        except BaseException as exc:
            for f in opened:
                with contextlib.suppress(OSError):
                    f.close()
            self._lock.release()
            if isinstance(exc, OSError):
                raise _fail(out, "open", exc) from None
            if isinstance(exc, pl.exceptions.PolarsError):
                raise ResultsFileError(f"cannot read back {out}: {exc}") from None
            raise
        self._csv = csv.writer(self._results, lineterminator="\n")
        self._sent_csv = csv.writer(self._sent, lineterminator="\n")
        self._synced_at = time.monotonic()
        self._dirty = False

    def record(self, results: Iterable[RowResult]) -> None:
        """Append finished rows and flush, so a kill loses only what is still in flight."""
        try:
            self._csv.writerows(
                (
                    r.row,
                    escape_cell(r.campaign_id),
                    escape_cell(r.contact_id),
                    r.outcome.value,
                    "" if r.http_status is None else r.http_status,
                    escape_cell(redact(r.error_code)),  # server text: never a piece of the key
                    r.attempts,
                    escape_cell(redact(r.request_id)),
                    escape_cell(redact(r.detail)),
                    _utc(r.finished_at),
                )
                for r in results
            )
            self._results.flush()
        except OSError as exc:
            raise _fail(self.out, "write", exc) from None
        self._dirty = True
        self.sync_if_due()

    def mark_sent(self, enrollment: Enrollment, delta: int = 1) -> None:
        """Written before the request leaves: survives a kill with the request in flight.

        `delta=-1` takes the mark back when every answer this run got was definite (a 429,
        a 401, a refused connection) and the row is left for a rerun: nothing was applied,
        so the rerun must not say an earlier attempt may have removed it.
        """
        try:
            self._sent_csv.writerow(
                (escape_cell(enrollment.campaign_id), escape_cell(enrollment.contact_id), delta)
            )
            self._sent.flush()
        except OSError as exc:
            raise _fail(self.sent_path, "write", exc) from None
        self._dirty = True

    def sync_if_due(self, force: bool = False) -> None:
        """fsync at most once a second: power loss costs at most a second of records."""
        if not self._dirty or (not force and time.monotonic() - self._synced_at < FSYNC_EVERY):
            return
        try:
            os.fsync(self._results.fileno())
            os.fsync(self._sent.fileno())
        except OSError as exc:
            raise _fail(self.out, "sync", exc) from None
        self._synced_at, self._dirty = time.monotonic(), False

    def close(self) -> None:
        """Sync, then fold superseded `failed` records so each row has one record again.
        After a failed write it still closes both files and unlocks; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            error: ResultsFileError | None = None
            try:
                self.sync_if_due(force=True)
            except ResultsFileError as exc:
                error = exc
            for f, path in ((self._results, self.out), (self._sent, self.sent_path)):
                try:
                    f.close()  # closes the file even when its last flush fails
                except OSError as exc:
                    error = error or _fail(path, "write", exc)
            if error is not None:
                raise error
            # Also when this run wrote nothing: a rerun killed after settling failed rows
            # leaves them recorded twice, and the next run may find nothing left to send.
            if self._failed_before:
                compact(self.out)
        finally:
            self._lock.release()


def compact(out: Path) -> None:
    """Drop records a later one superseded, keeping file order; atomic via rename.

    Only the row column is loaded; records stream through the csv module, so memory stays
    flat for results files of millions of rows.
    """
    tmp = out.with_name(out.name + ".compacting")
    try:
        rows = pl.scan_csv(out, infer_schema=False).select("row").collect()["row"]
        superseded = set((~rows.is_last_distinct()).arg_true().to_list())
        if not superseded:
            return
        with (
            out.open(encoding="utf-8", newline="") as src,
            tmp.open("w", encoding="utf-8", newline="") as dst,
        ):
            records = csv.reader(src)
            writer = csv.writer(dst, lineterminator="\n")
            writer.writerow(next(records))
            count = 0
            for index, record in enumerate(records):
                count = index + 1
                if index not in superseded:
                    writer.writerow(record)
            if count != rows.len():  # never rename a file the two readers disagree on
                raise OSError(f"it reads as {count:,} or {rows.len():,} records")
            dst.flush()
            os.fsync(dst.fileno())
        tmp.replace(out)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError | pl.exceptions.PolarsError):
            raise
        raise ResultsFileError(
            f"cannot tidy {out} (it is intact, rows may repeat): {exc}"
        ) from None
