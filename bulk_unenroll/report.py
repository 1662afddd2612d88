"""The job's figures as data: the plan before a run, the summary after it, the report of any
results file, and the export of chosen rows as a new input file. Rendering lives in render.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final, Protocol

import polars as pl
import xlsxwriter

from .config import JobConfig
from .errors import InputError, ResultsFileError
from .input.ids import TOKEN_RE
from .limits import PLANS, Plan, days_needed
from .models import (
    CAMPAIGN_NOT_FOUND,
    NEEDS_A_LOOK,
    RESTORE_ONLY,
    RESTORE_OUTCOMES,
    RUN_OUTCOMES,
    Outcome,
    StopReason,
    Summary,
)
from .plan import NAMED_CAMPAIGNS_MAX, RowAction, SendPlan, listable
from .results import records
from .results.records import TIMESTAMP, stamp, unescape
from .scrub import redact_column, redact_data

SCHEMA_VERSION = 1
"""Bumped only when a key of the summary JSON changes meaning or goes away."""
TOP_CAMPAIGNS = 10
EXPORT_SUFFIXES = (".csv", ".parquet", ".xlsx", ".json", ".jsonl")
ROW_FORMATS = ("table", "csv", "jsonl")
STDOUT = Path("-")


# -- before: the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """How long the calls take at one pace, and over how many quota days."""

    label: str
    per_second: float
    sending_seconds: float
    per_day: int | None
    """Calls usable per quota day (the plan's quota less --reserve); None when unknown."""
    quota_days: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "per_minute": round(self.per_second * 60, 3),
            "sending_seconds": round(self.sending_seconds, 1),
            "calls_per_day": self.per_day,
            "quota_days": self.quota_days,
        }


@dataclass(frozen=True)
class PlanFigures:
    """What a run of this input against this results file would do, before it does it."""

    input: Path
    rows: int
    invalid: int
    duplicates: int
    settled_before: int
    to_send: int
    resend: int
    """Rows to send that an earlier run sent without getting a definite answer."""
    campaigns: int
    campaigns_exact: bool
    """False beyond 100,000 campaigns, where the reader's count is a close estimate."""
    top_campaigns: list[tuple[str, int]]
    invalid_examples: list[tuple[int, str]]
    estimates: list[Estimate]
    max_removals: int | None = None
    check: CheckFigures | None = None
    """--check-enrollment: what would be listed first."""

    @property
    def calls_needed(self) -> int:
        """One call per row to send; retries and 429s come on top."""
        return self.to_send

    def as_dict(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "rows": self.rows,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "settled_before": self.settled_before,
            "to_send": self.to_send,
            "resend": self.resend,
            "campaigns": self.campaigns,
            "top_campaigns": [{"campaign_id": c, "rows": n} for c, n in self.top_campaigns],
            "invalid_examples": [{"row": r, "reason": why} for r, why in self.invalid_examples],
            "calls_needed": self.calls_needed,
            "max_removals": self.max_removals,
            "estimates": [e.as_dict() for e in self.estimates],
            "check_enrollment": None if self.check is None else self.check.as_dict(),
        }


@dataclass(frozen=True)
class CheckFigures:
    """What `--check-enrollment` would list before any DELETE, and the fewest calls then."""

    campaigns: int
    """Campaigns to list: those with at least `MIN_ROWS` rows to send."""
    rows: int
    """Their rows to send."""
    other_rows: int
    """Rows of campaigns not listed: a DELETE each."""

    @property
    def fewest_calls(self) -> int:
        """One page per listed campaign and no enrolled pair: the best case."""
        return self.campaigns + self.other_rows

    def as_dict(self) -> dict[str, int]:
        return {
            "campaigns_listed": self.campaigns,
            "rows_listed": self.rows,
            "fewest_calls": self.fewest_calls,
        }


def check_figures(plan: SendPlan, to_send: int) -> CheckFigures:
    listed = [n for c, n in plan.campaign_counts.items() if listable(c, n)]
    return CheckFigures(len(listed), sum(listed), to_send - sum(listed))


def estimates(calls: int, config: JobConfig) -> list[Estimate]:
    """Time and quota days at the given plan, or for every plan when it is not known."""
    if calls == 0:
        return []
    plans: list[Plan] = [config.plan] if config.plan is not None else list(PLANS.values())
    result = []
    for plan in plans:
        pace = config.pace(plan)
        assert pace is not None
        usable = plan.per_day - config.reserve
        label = plan.name if config.rate is None else f"{plan.name} quota, --rate {config.rate}"
        result.append(
            Estimate(
                label=label,
                per_second=pace.per_second,
                sending_seconds=calls / pace.per_second,
                per_day=max(0, usable),
                quota_days=days_needed(calls, plan.per_day, config.reserve),
            )
        )
    return result


def plan_figures(plan: SendPlan, summary: Summary, config: JobConfig) -> PlanFigures:
    """The plan's counts partition the rows: invalid + duplicates + settled + to send = rows."""
    earlier = summary.outcomes
    actions = plan.actions
    resend = int(
        actions.select(((pl.col("action") == RowAction.SEND) & pl.col("attempted")).sum()).item()
        or 0
    )
    to_send = plan.count(RowAction.SEND)
    return PlanFigures(
        input=config.input,
        rows=plan.total_rows,
        invalid=plan.count(RowAction.INVALID) + earlier[Outcome.INVALID],
        duplicates=plan.count(RowAction.DUPLICATE) + earlier[Outcome.DUPLICATE],
        settled_before=plan.count(RowAction.SETTLED),
        to_send=to_send,
        resend=resend,
        campaigns=max(plan.campaigns, len(plan.campaign_counts)),
        campaigns_exact=plan.campaigns <= NAMED_CAMPAIGNS_MAX,
        top_campaigns=list(plan.campaign_counts.items())[:TOP_CAMPAIGNS],
        invalid_examples=list(plan.invalid_examples),
        estimates=estimates(to_send, config),
        max_removals=config.max_removals,
        check=check_figures(plan, to_send) if config.check_enrollment else None,
    )


class Figures(Protocol):
    """Any command's plan figures, as the summary JSON's `plan` holds them."""

    def as_dict(self) -> dict[str, Any]: ...


# -- after: the summary as JSON --------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else stamp(moment)


def summary_dict(
    summary: Summary,
    *,
    command: str,
    input: Path | None = None,
    results: Path | None = None,
    figures: Figures | None = None,
    exit_code: int | None = None,
    error: str | None = None,
    continue_command: str | None = None,
    planned: bool = True,
) -> dict[str, Any]:
    """The summary with stable keys (documented in the README) for schedulers and logs: every
    key on every exit. `planned=False` (the run ended before its plan: no key, bad input, a
    busy results file) makes the row counts null: unknown, not zero."""
    s = summary
    per_row = s.calls_per_settled_row

    def known(value: Any) -> Any:
        return value if planned else None

    stop = s.stop_reason
    if error is not None and stop is StopReason.COMPLETE:
        stop = StopReason.ERROR
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "input": None if input is None else str(input),
        "results": None if results is None else str(results),
        "exit_code": s.exit_code if exit_code is None else exit_code,
        "error": error,
        "rows": known(s.total_rows),
        "outcomes": known({o.value: s.outcomes[o] for o in s.outcome_kinds}),
        "unfinished": known(s.unfinished),
        "remaining": known(s.remaining),
        "error_codes": dict(sorted(s.error_codes.items())),
        "settled_before": known(s.settled_before),
        "to_send": known(s.to_send),
        "calls": s.calls,
        "calls_per_settled_row": None if per_row is None else round(per_row, 4),
        "rate_limited": s.rate_limited,
        "overloaded": s.overloaded,
        "final_pace_per_second": None if s.final_pace is None else round(s.final_pace, 3),
        "learnt_rate": s.learnt_rate,
        "lost_then_not_enrolled": s.lost_then_not_enrolled,
        "listing_calls": s.listing_calls,
        "settled_by_listing": s.settled_by_listing,
        "stop_reason": stop.value,
        "stop_detail": s.stop_detail or (error or ""),
        "quota_reset_at": _iso(s.quota_reset_at) if stop is StopReason.QUOTA else None,
        "started_at": _iso(s.started_at),
        "finished_at": _iso(s.finished_at),
        "duration_seconds": None if s.started_at is None else round(s.duration_seconds, 3),
        "continue_command": continue_command if planned and s.remaining else None,
        "plan": None if figures is None else figures.as_dict(),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write whole or not at all: a scheduler never reads half a summary."""
    write_whole(path, json.dumps(redact_data(data), indent=2) + "\n", "--summary-json")


def write_whole(path: Path, text: str, option: str) -> None:
    """Write `text` to `path` (given as `option`) whole or not at all, by renaming a
    finished temporary file over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ResultsFileError(
            f"cannot write {option} {path}: {exc.strerror or exc}; the results file is intact"
        ) from None


# -- any results file: report and export -----------------------------------------------------


def parse_statuses(text: str | None) -> tuple[Outcome, ...] | None:
    """`failed,rejected` to outcomes; None selects nothing in particular."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = {o.value for o in Outcome}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise InputError(
            f"--status {text!r}: {', '.join(map(repr, unknown)) or 'nothing'} is not a status; "
            f"choose from {', '.join(o.value for o in Outcome)} (comma-separated)"
        )
    return tuple(Outcome(n) for n in dict.fromkeys(names))


TABLE_ROWS = 100
"""Rows a report shows as a table; `--format csv` or `jsonl` prints them all."""
CHUNK_ROWS = 500_000
"""Selected rows read, sorted and written at a time: a listing's memory, whatever the size."""
SPOOL_ROW_GROUP = 50_000
"""Rows per Parquet row group in the spool: what its writer holds, and what a piece's read
skips or takes at a time."""
SHEET_ROWS: Final = 1_048_575
"""Rows an Excel worksheet holds below its header."""
SPOOL_COMPRESSION: Final = "lz4"
"""The spool is read back once, soon: zstd's smaller file cost a fifth more time to write."""


@dataclass
class ResultsReport:
    """What a results file says, whichever run wrote it."""

    path: Path
    rows: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)
    first_finished: datetime | None = None
    last_finished: datetime | None = None
    selected: tuple[Outcome, ...] = NEEDS_A_LOOK
    selected_rows: int = 0
    chosen: bool = False
    """The user named the statuses (--status); else the default, the rows that need a look."""
    first_rows: pl.DataFrame = field(default_factory=pl.DataFrame, repr=False)
    """The first TABLE_ROWS selected rows as the results file has them (cells escaped)."""
    chosen_records: pl.LazyFrame = field(default_factory=pl.LazyFrame, repr=False)
    """Every selected record, in file order; readable while the report is open."""
    pieces: list[tuple[int | None, int | None]] = field(default_factory=list, repr=False)
    """Row number ranges [low, high) holding about CHUNK_ROWS selected rows each."""
    rejected_for_good: int = 0
    """Selected rows rejected because their campaign does not exist."""

    def selection(self) -> Iterator[pl.DataFrame]:
        """The selected rows in row order (file order among equal rows), cells escaped, piece
        by piece: they are spooled once to a Parquet file, then each piece is read back and
        sorted on its own. Flat memory at any size; one pass over the results file."""
        with tempfile.TemporaryDirectory(prefix="bulk-unenroll-") as tmp:
            spool = Path(tmp) / "selected.parquet"
            self.chosen_records.sink_parquet(
                spool, row_group_size=SPOOL_ROW_GROUP, compression=SPOOL_COMPRESSION
            )
            for low, high in self.pieces or [(None, None)]:
                rows = pl.col("row")
                inside = (rows >= low if low is not None else pl.lit(True)) & (
                    rows < high if high is not None else pl.lit(True)
                )
                yield _in_row_order(pl.scan_parquet(spool).filter(inside).collect())

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "command": "report",
            "results": str(self.path),
            "rows": self.rows,
            "outcomes": self.outcomes,
            "error_codes": self.error_codes,
            "first_finished_at": _iso(self.first_finished),
            "last_finished_at": _iso(self.last_finished),
            "selected_statuses": [o.value for o in self.selected],
            "selected_rows": self.selected_rows,
        }


def _kinds(counts: dict[str, int]) -> tuple[Outcome, ...]:
    """The statuses a report lists: a restore's when the file holds restore records."""
    return RESTORE_OUTCOMES if any(counts.get(o.value) for o in RESTORE_ONLY) else RUN_OUTCOMES


def _facts(latest: records.Latest) -> tuple[pl.DataFrame, pl.Series]:
    """What the figures need of every record, and whether it is the latest of its pair: a few
    bytes each, read in one pass."""
    return latest.marked(
        pl.col("status").cast(pl.Categorical),
        pl.col("error_code").cast(pl.Categorical),
        pl.col("finished_at").str.to_datetime(TIMESTAMP, time_zone="UTC", strict=False),
        "row",
        "i",
    )


def _is_selected(statuses: tuple[Outcome, ...]) -> pl.Expr:
    """Whether a record's status is one of `statuses` (a string or a categorical column:
    compared as it is, never cast: a cast of 10 million categoricals took 0.25 s)."""
    return pl.col("status").is_in([o.value for o in statuses])


def _in_row_order(piece: pl.DataFrame) -> pl.DataFrame:
    """A piece sorted by row, file order among equal rows: a stable sort by row alone when
    the piece is in file order (as spooled), three times faster than sorting by both."""
    if piece.get_column("i").is_sorted():
        return piece.sort("row", maintain_order=True)
    return piece.sort("row", "i")


def _pieces(rows: pl.Series) -> list[tuple[int | None, int | None]]:
    """Row ranges of about CHUNK_ROWS of these row numbers each (all of them at once when
    they are fewer)."""
    bounds = rows.drop_nulls().sort().gather_every(CHUNK_ROWS).unique(maintain_order=True)
    starts = bounds.to_list()
    if len(starts) < 2:
        return []
    return list(zip(starts, [*starts[1:], None], strict=True))


def _first_rows(chosen: pl.DataFrame) -> pl.DataFrame:
    """The TABLE_ROWS lowest (row, i) of the selection (polars' top_k over millions of
    rows held another copy of them; the rows at or below the 100th lowest number are few)."""
    rows = chosen.get_column("row")
    if rows.is_empty():
        return chosen
    last = rows.bottom_k(TABLE_ROWS).max()
    return chosen.filter(pl.col("row") <= last).sort("row", "i").head(TABLE_ROWS)


def _first(moment: object) -> datetime | None:
    return moment if isinstance(moment, datetime) else None


def _figures(
    path: Path, facts: pl.DataFrame, latest: pl.Series, chosen: pl.Series
) -> ResultsReport:
    """Every figure of the report, from the facts of every record (`latest`: whether each
    still speaks; `chosen`: whether it is a selected latest one). Masks, not copies: the
    latest records may be 10 million; each figure filters only the column it reads."""
    counts = dict(facts.get_column("status").filter(latest).value_counts().iter_rows())
    codes = facts.get_column("error_code").filter(latest).value_counts()
    codes = codes.filter(pl.col("error_code").cast(pl.String).fill_null("") != "")
    finished = facts.get_column("finished_at").filter(latest)
    return ResultsReport(
        path=path,
        rows=int(latest.sum()),
        outcomes={o.value: int(counts.get(o.value, 0)) for o in _kinds(counts)},
        error_codes=dict(sorted((str(k), int(v)) for k, v in codes.iter_rows())),
        first_finished=_first(finished.min()),
        last_finished=_first(finished.max()),
        selected_rows=int(chosen.sum()),
        pieces=_pieces(facts.get_column("row").filter(chosen)),
        rejected_for_good=int((facts.select(_rejected_for_good()).to_series() & chosen).sum()),
    )


@contextlib.contextmanager
def open_report(path: Path, statuses: tuple[Outcome, ...] | None = None) -> Iterator[ResultsReport]:
    """The report of a results file: its figures from one streaming pass over the latest
    record of each pair (`records.latest`), its selected rows read when asked for."""
    selected = statuses or NEEDS_A_LOOK
    with contextlib.ExitStack() as stack:
        with records.read_errors(path):
            latest = stack.enter_context(records.latest(path))
            facts, speaks = _facts(latest)
            chosen = facts.select(_is_selected(selected)).to_series() & speaks
            found = _figures(path, facts, speaks, chosen)
            first = _first_rows(pl.DataFrame([facts[c].filter(chosen) for c in ("row", "i")]))
            del facts, speaks, chosen  # a few bytes a record: gone before any row is read
            found.first_rows = latest.read(first.get_column("i")).sort("row", "i")
        found.selected, found.chosen = selected, statuses is not None
        found.chosen_records = latest.records.filter(_is_selected(selected))
        yield found


def write_rows(report: ResultsReport, fmt: str, out: IO[bytes]) -> None:
    """The selected rows as CSV (cells as the results file has them, a spreadsheet runs
    none) or JSON lines (values as sent and answered, numbers as numbers), piece by piece."""
    numbers = [pl.col(c).cast(pl.Int64, strict=False) for c in ("http_status", "attempts")]
    texts = [c for c in records.COLUMNS if c not in ("row", "http_status", "attempts")]
    for n, chunk in enumerate(report.selection()):
        rows = chunk.select(records.COLUMNS)
        if fmt == "csv":
            _scrubbed(rows).write_csv(out, include_header=n == 0)
        elif rows.height:
            _scrubbed(_unescaped(rows.with_columns(*numbers), texts)).write_ndjson(out)
    out.flush()


def _unescaped(rows: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """`unescape` the columns of `rows` that hold an escaped cell (a column of millions of
    plain cells is left as it is, not copied)."""
    escaped = rows.select(pl.col(columns).str.starts_with("'").any()).row(0)
    return rows.with_columns(unescape(c) for c, some in zip(columns, escaped, strict=True) if some)


def _scrubbed(rows: pl.DataFrame) -> pl.DataFrame:
    """Server text (error code, request id, detail) without pieces of a key: a results file
    written before scrubbing got stricter may hold some. Never the ids: they are the ledger's."""
    text = [c for c in ("error_code", "request_id", "detail") if c in rows.columns]
    return rows.with_columns(redact_column(rows.get_column(c)) for c in text)


def _rejected_for_good() -> pl.Expr:
    """Rows whose campaign the API said does not exist: sent again, they are rejected again."""
    return (pl.col("status") == Outcome.REJECTED.value) & pl.col("error_code").is_in(
        list(CAMPAIGN_NOT_FOUND)
    )


@dataclass(frozen=True)
class Export:
    rows: int
    statuses: tuple[Outcome, ...]
    left_out: int = 0
    """Rows rejected for good that a default export leaves out."""
    for_good: int = 0
    """Exported rows rejected for good (the user chose --status rejected)."""


def _exported_id(column: str, for_csv: bool) -> pl.Expr:
    """Ids exactly as they were sent; in CSV, a non-id that a spreadsheet would run stays inert."""
    plain = unescape(column)
    if not for_csv:
        return plain
    stored = pl.col(column)
    return (
        pl.when(plain.str.contains(TOKEN_RE) | (plain == stored))
        .then(plain)
        .otherwise(stored)
        .alias(column)
    )


def _exported(chunk: pl.DataFrame, report: ResultsReport, for_csv: bool) -> pl.DataFrame:
    """One piece of the selection as rows of a new input file."""
    if not report.chosen:
        chunk = chunk.filter(~_rejected_for_good())
    ids = ("campaign_id", "contact_id")
    escaped = chunk.select(pl.col(ids).str.starts_with("'").any()).row(0, named=True)
    rows = chunk.select(
        *(_exported_id(c, for_csv) if escaped[c] else c for c in ids),  # none: as stored
        pl.col("row").alias("results_row"),
        "status",
        pl.col("error_code").fill_null(""),
        pl.col("detail").fill_null(""),
    )
    if not for_csv:
        # Context columns are read back as stored in the results file (escaped): undo that.
        rows = _unescaped(rows, ["error_code", "detail"])
    return _scrubbed(rows)


def _write_pieces(pieces: Iterator[pl.DataFrame], suffix: str, out: IO[bytes]) -> int:
    """Write CSV or JSON lines piece by piece; the rows written."""
    written = 0
    for n, rows in enumerate(pieces):
        if suffix == ".csv":
            rows.write_csv(out, include_header=n == 0)
        else:
            rows.write_ndjson(out)
        written += rows.height
    out.flush()
    return written


def _write_parquet(pieces: Iterator[pl.DataFrame], tmp: Path) -> int:
    """Each piece to a part file of its own (Arrow IPC: read back once, written in half the
    time of Parquet), then the parts streamed into one Parquet file."""
    with tempfile.TemporaryDirectory(prefix="bulk-unenroll-", dir=tmp.parent) as parts:
        written, names = 0, []
        for n, rows in enumerate(pieces):
            names.append(Path(parts) / f"{n:06d}.arrow")
            rows.write_ipc(names[-1], compression="uncompressed")
            written += rows.height
        pl.scan_ipc(names).sink_parquet(tmp)
    return written


def _write_workbook(pieces: Iterator[pl.DataFrame], out: IO[bytes]) -> int:
    """One worksheet written row by row in xlsxwriter's constant-memory mode, each row on
    disk once written: polars' `write_excel` holds every cell (a full sheet of 1,048,575 rows
    peaked at 2.3 GiB, 455 MiB of it the frame; this writer adds nothing to the frame's)."""
    options = {"constant_memory": True, "strings_to_numbers": False}
    options |= {"strings_to_formulas": False, "strings_to_urls": False}
    written, width = 0, 0
    with xlsxwriter.Workbook(out, options) as book:
        sheet = book.add_worksheet("rows")
        sheet.freeze_panes(1, 0)
        sheet.set_column(0, 1, 38)  # a UUID and a little
        for n, rows in enumerate(pieces):
            if n == 0:
                sheet.write_row(0, 0, rows.columns)
                width = rows.width
            for values in rows.iter_rows():
                written += 1
                sheet.write_row(written, 0, values)
        sheet.autofilter(0, 0, written, max(width - 1, 0))
    return written


def _write_json(pieces: Iterator[pl.DataFrame], out: IO[bytes]) -> int:
    """One JSON array, piece by piece: each piece's objects as polars writes them, joined by
    commas, so the file is the one `write_json` of every row at once would give (a test
    holds them byte for byte)."""
    written = 0
    out.write(b"[")
    for rows in pieces:
        if rows.height:
            # Its JSON lines with the line breaks turned into commas (a JSON text holds no raw
            # line break): 0.33 s for 800,000 rows where `write_json` took 0.53 s.
            piece = io.BytesIO()
            rows.write_ndjson(piece)
            out.write(b"," if written else b"")
            out.write(piece.getvalue()[:-1].replace(b"\n", b","))
            written += rows.height
    out.write(b"]")
    return written


def export_rows(report: ResultsReport, dest: Path, stdout: IO[bytes]) -> Export:
    """Write the selected rows as a new input file (by suffix), or as CSV to `stdout` for `-`.

    A default export (no --status) leaves out rows whose campaign does not exist: fed back,
    they would only be rejected again. Every format is written piece by piece (flat memory at
    any size); a workbook holds at most SHEET_ROWS rows.
    """
    suffix = ".csv" if dest == STDOUT else dest.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise InputError(
            f"--export {dest}: unknown file type {suffix or '(no suffix)'!r}; "
            f"use {', '.join(EXPORT_SUFFIXES)}, or - for CSV on stdout"
        )
    if dest != STDOUT and dest.resolve() == report.path.resolve():
        raise InputError(f"--export {dest} is the results file itself; choose another path")
    left_out = 0 if report.chosen else report.rejected_for_good
    for_good = report.rejected_for_good if report.chosen else 0
    pieces = (_exported(chunk, report, suffix == ".csv") for chunk in report.selection())
    if dest == STDOUT:
        return Export(_write_pieces(pieces, suffix, stdout), report.selected, left_out, for_good)
    exported = report.selected_rows - left_out
    if suffix == ".xlsx" and exported > SHEET_ROWS:
        raise InputError(
            f"--export {dest}: {exported:,} rows to export, more than a worksheet holds "
            f"({SHEET_ROWS:,}); export to .csv or .parquet, or choose fewer with --status"
        )
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp{suffix}")
    try:
        if suffix == ".parquet":
            written = _write_parquet(pieces, tmp)
        else:
            with tmp.open("wb") as out:
                if suffix == ".json":
                    written = _write_json(pieces, out)
                elif suffix == ".xlsx":
                    written = _write_workbook(pieces, out)
                else:
                    written = _write_pieces(pieces, suffix, out)
        tmp.replace(dest)
    except (OSError, pl.exceptions.PolarsError) as exc:
        tmp.unlink(missing_ok=True)
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot write --export {dest}: {message}") from None
    return Export(written, report.selected, left_out, for_good)
