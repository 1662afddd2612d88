"""The results file as a ledger: appended and flushed as rows finish, locked, read back.

Beside it live two companions that belong to it alone: `<out>.lock` (one run at a time;
removed when the run ends, so only a killed run leaves one) and `<out>.sent` (pairs a request
went out for, written before the request, so a rerun after a crash knows which
`enrollment_not_found` answers may be its own earlier work). `.sent` starts with the identity
of the results file it belongs to: when the results file is moved, deleted or replaced, old
marks never speak for a new job.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import polars as pl

from ..errors import ResultsFileError
from ..events import Said, Setting
from ..keys import CAMPAIGN, CONTACT, LOW_BITS, OUTCOME_CODE, pair_key
from ..models import Enrollment, Outcome, RowResult
from ..platforms import try_lock, unnamed_files
from ..scrub import redact
from ..text import duration
from . import records
from .history import History
from .records import escape_cell, read_stamp, stamp, unescape

FSYNC_EVERY = 1.0
BINDING = "#results {:>41} {:>41}\n"
"""First line of `.sent`: the (device:inode) of its results file, and of the file about to
replace it while a rewrite is under way. Fixed width, so it is updated in place."""


def _fail(path: Path, action: str, exc: OSError) -> ResultsFileError:
    return ResultsFileError(
        f"cannot {action} {path}: {exc.strerror or exc}. "
        "Rows written so far are intact; fix this (free space, permissions) and rerun."
    )


def companion(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


class Lock:
    """An exclusive lock on `<out>.lock` naming its holder; released when the process dies.

    The file is removed on release, so none is left behind. A run that opened it just before
    it went checks, once locked, that the name still leads to the file it locked.
    """

    def __init__(self, out: Path) -> None:
        self.path = companion(out, ".lock")
        while True:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise _fail(self.path, "create the lock file", exc) from None
            if not try_lock(self._fd):
                holder = os.pread(self._fd, 4096, 0).decode(errors="replace").strip()
                os.close(self._fd)
                raise ResultsFileError(
                    f"another run is using {out} ({holder_in_words(holder)}); "
                    "wait for it to finish or stop it, then rerun"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(self._fd)  # its holder removed it as we opened it: take the new one
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, self._holder().encode(), 0)

    @staticmethod
    def _holder() -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": stamp()})

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)


def holder_in_words(recorded: str) -> str:
    """`pid 4242 on host web1 since 2026-01-31 23:59:59 UTC (5m ago)` from a lock's JSON (the
    results file's, or an input claim's, which adds `, writing RESULTS`)."""
    try:
        holder = json.loads(recorded)
        since = read_stamp(holder["since"])
        words = f"pid {int(holder['pid'])} on host {holder['host']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
    ago = duration((datetime.now(UTC) - since).total_seconds(), up=True)
    words += f" since {since:%Y-%m-%d %H:%M:%S} UTC ({ago} ago)"
    return words + (f", writing {holder['results']}" if holder.get("results") else "")


def _identity(status: os.stat_result) -> str:
    return f"{status.st_dev}:{status.st_ino}"


def _binding(sent: Path) -> list[str] | None:
    """The identities a `.sent` file is bound to; None for a file from before bindings."""
    with sent.open("rb") as f:
        first = f.readline(200).decode("ascii", "replace")
    if not first.startswith("#results "):
        return None
    return [part for part in first.split()[1:] if part != "-"]


def _bind(sent: Path, current: str, following: str = "-") -> None:
    fd = os.open(sent, os.O_WRONLY)
    try:
        os.pwrite(fd, BINDING.format(current, following).encode(), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _marks_of(out: Path) -> Path | None:
    """`.sent` if it belongs to `out` (read-only check, for --dry-run), else None."""
    sent = companion(out, ".sent")
    if not sent.exists():
        return None
    bound = _binding(sent)
    return sent if bound is None or _identity(out.stat()) in bound else None


def _read_history(results: Path, form: records.Dialect, sent: Path | None) -> tuple[History, int]:
    """Settled pairs, rows recorded without a call, pairs once sent; and the failed count.

    Streams both files and keeps 16 bytes per settled record, so the results of a 10M-row
    run read back in a few hundred MB.
    """
    status = pl.col("status")
    code = pl.coalesce(  # not replace_strict: that one is not streamed, and held every status
        [pl.when(status == value).then(pl.lit(c, pl.UInt8)) for value, c in OUTCOME_CODE.items()]
    )
    settled = [OUTCOME_CODE[o.value] for o in records.SETTLED]
    without_call = [OUTCOME_CODE[o.value] for o in records.WITHOUT_CALL]
    row = pl.col("row").cast(pl.Int64, strict=False)
    cells = pair_key(pl.col(CAMPAIGN).fill_null(""), pl.col(CONTACT).fill_null(""))
    lazy = records.scan(results, form).select(
        pair_key(unescape(CAMPAIGN), unescape(CONTACT)),
        code.alias("prev"),
        (cells + row.clip(0, 1 << 31).cast(pl.UInt128)).alias("row_key"),
    )
    frames = pl.collect_all(
        [
            lazy.filter(pl.col("prev").is_in(settled)).select("key", "prev"),
            lazy.filter(pl.col("prev").is_in(without_call)).select("row_key"),
            lazy.filter(pl.col("prev") == OUTCOME_CODE[Outcome.FAILED.value]).select("key"),
        ],
        engine="streaming",
    )
    failed_keys, recorded = frames.pop()["key"], frames.pop()["row_key"]
    sent_keys: Iterator[pl.DataFrame] = iter(())
    if sent is not None and sent.stat().st_size:
        sent_keys = (
            pl.scan_csv(  # a line without a delta (older files) is a mark: +1
                sent,
                has_header=False,
                comment_prefix="#",
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
    out = Path(os.path.realpath(out))
    if not out.is_file() or not out.stat().st_size:
        return History()
    form = records.dialect(out)
    try:
        with records.whole(out, form) as readable:
            return _read_history(readable, form, _marks_of(out))[0]
    except pl.exceptions.PolarsError as exc:
        raise ResultsFileError(f"cannot read back {out}: {exc}") from None


class Journal:
    """Owns the results file and its companions for one run.

    `out` may be a symbolic link: the file it leads to is locked, read and rewritten, so
    two names for one file share one lock and one set of companions.
    """

    def __init__(self, out: Path) -> None:
        if out.is_dir():
            raise ResultsFileError(
                Said((Setting.OUT, f" {out} is a directory; give a file path such as results.csv"))
            )
        if not out.parent.exists():
            raise ResultsFileError(
                Said((Setting.OUT, f" {out}: folder {out.parent} does not exist"))
            )
        self.out = out = Path(os.path.realpath(out))
        self.sent_path = companion(out, ".sent")
        self.notices: list[str] = []
        """What opening found and did that the user should hear about."""
        self._lock = Lock(out)
        self.history = History()
        self._failed_before = 0
        self._closed = False
        opened: list[IO[str]] = []
        try:
            companion(out, ".rewriting").unlink(missing_ok=True)  # left by a kill mid-rewrite
            existed = out.exists() and out.stat().st_size > 0
            form = records.dialect(out) if existed else records.Dialect()  # before any change
            if not existed:
                # At once, not with the first record: a run killed before any row finished
                # leaves `.sent` pairs that the rerun must read back beside a valid file.
                out.write_text(records.HEADER, encoding="utf-8")
            self._adopt_marks(existed)
            if not form.canonical:
                self._make_canonical(form)
            records.mend_tail(out)
            self._results: IO[str] = out.open("a", encoding="utf-8", newline="")
            opened.append(self._results)
            self.history, self._failed_before = _read_history(
                out, records.Dialect(), self.sent_path
            )
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

    def _adopt_marks(self, existed: bool) -> None:
        """Keep `.sent` only if it belongs to this results file; start it bound to it."""
        sent, here = self.sent_path, _identity(self.out.stat())
        if sent.exists():
            bound = _binding(sent)
            if not existed:
                sent.unlink()
                self.notices.append(
                    f"removed {sent.name}: its results file is gone (moved or deleted), "
                    "so its marks belong to an earlier job"
                )
            elif bound is None:  # written before bindings: bind it where it stands
                records.mend_tail(sent)
                bound_copy = companion(self.out, ".sent.binding")
                bound_copy.write_bytes(BINDING.format(here, "-").encode() + sent.read_bytes())
                bound_copy.replace(sent)
            elif here not in bound:
                aside = companion(self.out, f".sent.orphaned-{stamp().replace(':', '')}")
                sent.replace(aside)
                self.notices.append(
                    f"set {sent.name} aside as {aside.name}: it belongs to another file that "
                    f"stood at {self.out.name} (replaced or re-saved), so its marks are not "
                    "used; rows it marked are sent again if their results say nothing"
                )
            elif bound != [here]:
                _bind(sent, here)  # a rewrite ended between its rename and the binding
        if not sent.exists():
            sent.write_text(BINDING.format(here, "-"), encoding="utf-8")
        else:
            records.mend_tail(sent)

    def _make_canonical(self, form: records.Dialect) -> None:
        """A results file re-saved by a spreadsheet: keep the original beside it as a
        backup, and continue with the same records in the form this tool writes."""
        when = stamp().replace(":", "").replace("-", "")
        backup = self.out.with_name(f"{self.out.stem}.resaved-{when}{self.out.suffix}")
        try:
            os.link(self.out, backup)  # the original file itself, under a second name
        except OSError:
            shutil.copy2(self.out, backup)
        self._replace(lambda dst: records.rewrite(self.out, form, dst))
        self.notices.append(
            f"{self.out.name} was re-saved by another program ({self._describe(form)}): its "
            f"records were read back and the file rewritten in this tool's form; the file as "
            f"it was is kept as {backup.name}"
        )

    @staticmethod
    def _describe(form: records.Dialect) -> str:
        changes = []
        if form.bom:
            changes.append("a byte-order mark")
        if form.separator != ",":
            changes.append(f"{form.separator!r} between cells")
        if form.names != records.COLUMNS:
            changes.append("columns added, removed or moved")
        return ", ".join(changes) or "other line endings or quoting"

    def _replace(self, write: Callable[[IO[str]], None]) -> None:
        """Write a new version of the results file and swap it in atomically, with `.sent`
        bound to both while the swap is under way. The new version is written unnamed
        where the system allows (Linux `O_TMPFILE`), so a kill mid-rewrite leaves nothing
        behind; elsewhere (macOS) as `.rewriting`, which the next run removes."""
        tmp = companion(self.out, ".rewriting")
        mode = stat.S_IMODE(self.out.stat().st_mode)
        new = None
        if unnamed_files():
            with contextlib.suppress(OSError):  # a file system without it: the named way
                new = self._write_unnamed(write, tmp, mode)
        try:
            if new is None:
                with tmp.open("w", encoding="utf-8", newline="") as dst:
                    os.fchmod(dst.fileno(), mode)
                    write(dst)
                    new = _identity(os.fstat(dst.fileno()))
            _bind(self.sent_path, _identity(self.out.stat()), new)
            tmp.replace(self.out)
            _bind(self.sent_path, new)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_unnamed(self, write: Callable[[IO[str]], None], tmp: Path, mode: int) -> str:
        """Write into a file with no name, then give it the name `tmp`; its identity."""
        folder = os.open(self.out.parent, os.O_RDONLY)
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, mode, dir_fd=folder)
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as dst:
                write(dst)
                tmp.unlink(missing_ok=True)
                # With a dir_fd, link() follows the /proc link to the file (AT_SYMLINK_FOLLOW).
                os.link(f"/proc/self/fd/{fd}", tmp.name, dst_dir_fd=folder)
                return _identity(os.fstat(fd))
        finally:
            os.close(folder)

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
                    stamp(r.finished_at),
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
        self.mark_all_sent((enrollment,), delta)

    def mark_all_sent(self, enrollments: Iterable[Enrollment], delta: int = 1) -> None:
        """`mark_sent` for every pair of a batch request, in one flush."""
        try:
            self._sent_csv.writerows(
                (escape_cell(e.campaign_id), escape_cell(e.contact_id), delta) for e in enrollments
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
        """Sync, then drop `failed` records that a later record of the same pair superseded.
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
                self.compact()
        finally:
            self._lock.release()

    def compact(self) -> None:
        """Drop each `failed` record that a later record of the same pair supersedes; keep
        everything else (every definite answer, every row recorded without a call) in file
        order. Only the pair keys are held (17 bytes a record); records are copied line by line,
        byte for byte."""
        try:
            status = pl.col("status")
            key = pair_key(unescape(CAMPAIGN), unescape(CONTACT))
            answered = status.is_in([o.value for o in records.ANSWERED])
            os.environ.setdefault("POLARS_CSV_CHUNK_SIZE", str(records.CSV_CHUNK_BYTES))
            frame = (
                records.scan(self.out, records.Dialect())
                .select(  # the place in this frame is the record's number
                    pl.when(answered).then(key).alias("key"),
                    records.key_bucket(key // pl.lit(LOW_BITS, pl.UInt128)).alias("bucket"),
                    (status == Outcome.FAILED.value).alias("failed"),
                )
                .collect(engine="streaming")
            )
            latest = records.is_latest(frame.get_column("key"), frame.get_column("bucket"))
            superseded = (frame.get_column("failed") & ~latest).arg_true()
            if superseded.is_empty():
                return
            self._replace(lambda dst: records.drop_records(self.out, dst, superseded, frame.height))
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise ResultsFileError(
                f"cannot tidy {self.out} (it is intact, `failed` records may repeat): {exc}"
            ) from None
