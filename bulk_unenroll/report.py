"""The job's figures as data: the plan before a run, the summary after it, the report of any
results file, and the export of chosen rows as a new input file. Rendering lives in render.py.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import polars as pl

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
from .results.records import unescape
from .scrub import redact, redact_data

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
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(redact_data(data), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ResultsFileError(
            f"cannot write --summary-json {path}: {exc.strerror or exc}; the results file is intact"
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


def read_results(path: Path, columns: Sequence[str] = records.COLUMNS) -> pl.DataFrame:
    """The latest record of each pair the API answered for, and each row recorded without a
    call, in file order. Records are keyed as the run keys them: by pair for sent pairs
    (inputs change between runs), by row number and cells for invalid and duplicate rows.
    A torn last line (a killed run) is left out; a file re-saved by a spreadsheet is read.
    `columns` (with `row`, the ids and `status`) reads only those."""
    try:
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no such file")
        form = records.dialect(path)
        with records.whole(path, form) as readable:
            frame = records.scan(readable, form).select(columns).collect()
    except OSError as exc:
        raise ResultsFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except pl.exceptions.PolarsError as exc:
        raise ResultsFileError(f"cannot read {path}: {exc}") from None
    frame = frame.with_columns(pl.col("row").cast(pl.Int64, strict=False)).filter(
        pl.col("row").is_not_null()
    )
    without_call = pl.col("status").is_in([o.value for o in records.WITHOUT_CALL])
    return (
        pl.concat(
            [
                frame.with_row_index("i")
                .filter(~without_call)
                .unique(["campaign_id", "contact_id"], keep="last", maintain_order=True),
                frame.with_row_index("i")
                .filter(without_call)
                .unique(["row", "campaign_id", "contact_id"], keep="last", maintain_order=True),
            ]
        )
        .sort("i")
        .drop("i")
    )


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
    selection: pl.DataFrame = field(default_factory=pl.DataFrame, repr=False)
    """The selected rows as the results file has them (cells escaped), in row order."""

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


def _selection(frame: pl.DataFrame, statuses: tuple[Outcome, ...]) -> pl.DataFrame:
    return frame.filter(pl.col("status").is_in([o.value for o in statuses]))


def _kinds(counts: dict[str, int]) -> tuple[Outcome, ...]:
    """The statuses a report lists: a restore's when the file holds restore records."""
    return RESTORE_OUTCOMES if any(counts.get(o.value) for o in RESTORE_ONLY) else RUN_OUTCOMES


def build_report(path: Path, statuses: tuple[Outcome, ...] | None = None) -> ResultsReport:
    frame = read_results(path)
    selected = statuses or NEEDS_A_LOOK
    counts = dict(frame["status"].value_counts().iter_rows())
    codes = frame.filter(pl.col("error_code").fill_null("") != "")["error_code"]
    finished = frame["finished_at"].str.to_datetime(
        "%Y-%m-%dT%H:%M:%SZ", time_zone="UTC", strict=False
    )
    first, last = finished.min(), finished.max()
    return ResultsReport(
        path=path,
        rows=frame.height,
        outcomes={o.value: int(counts.get(o.value, 0)) for o in _kinds(counts)},
        error_codes=dict(sorted((str(k), int(v)) for k, v in codes.value_counts().iter_rows())),
        first_finished=first if isinstance(first, datetime) else None,
        last_finished=last if isinstance(last, datetime) else None,
        selected=selected,
        selected_rows=_selection(frame, selected).height,
        chosen=statuses is not None,
        selection=_selection(frame, selected).sort("row", maintain_order=True),
    )


def shown_rows(selection: pl.DataFrame, fmt: str) -> str:
    """The selected rows as CSV (cells as the results file has them, a spreadsheet runs
    none) or JSON lines (values as sent and answered, numbers as numbers)."""
    if fmt == "csv":
        return _scrubbed(selection.select(records.COLUMNS)).write_csv()
    numbers = [pl.col(c).cast(pl.Int64, strict=False) for c in ("http_status", "attempts")]
    texts = [unescape(c) for c in records.COLUMNS if c not in ("row", "http_status", "attempts")]
    rows = _scrubbed(selection.select(records.COLUMNS).with_columns(*numbers, *texts))
    return rows.write_ndjson() if rows.height else ""


def _scrubbed(rows: pl.DataFrame) -> pl.DataFrame:
    """Server text (error code, request id, detail) without pieces of a key: a results file
    written before scrubbing got stricter may hold some. Never the ids: they are the ledger's."""
    text = [c for c in ("error_code", "request_id", "detail") if c in rows.columns]
    return rows.with_columns(
        pl.col(c).map_elements(redact, return_dtype=pl.String, skip_nulls=True) for c in text
    )


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


def export_rows(report: ResultsReport, dest: Path) -> tuple[Export, str]:
    """Write the selected rows as a new input file (by suffix), or CSV text for `-`.

    Returns the figures and the text meant for stdout (empty unless `dest` is `-`). A default
    export (no --status) leaves out rows whose campaign does not exist: fed back, they would
    only be rejected again.
    """
    suffix = ".csv" if dest == STDOUT else dest.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise InputError(
            f"--export {dest}: unknown file type {suffix or '(no suffix)'!r}; "
            f"use {', '.join(EXPORT_SUFFIXES)}, or - for CSV on stdout"
        )
    if dest != STDOUT and dest.resolve() == report.path.resolve():
        raise InputError(f"--export {dest} is the results file itself; choose another path")
    frame = report.selection
    gone = _rejected_for_good()
    left_out = 0
    if not report.chosen:
        left_out = int(frame.select(gone.sum()).item())
        frame = frame.filter(~gone)
    for_good = int(frame.select(gone.sum()).item())
    for_csv = suffix == ".csv"
    rows = frame.select(
        _exported_id("campaign_id", for_csv),
        _exported_id("contact_id", for_csv),
        pl.col("row").alias("results_row"),
        "status",
        pl.col("error_code").fill_null(""),
        pl.col("detail").fill_null(""),
    )
    if not for_csv:
        # Context columns are read back as stored in the results file (escaped): undo that.
        rows = rows.with_columns(unescape("error_code"), unescape("detail"))
    rows = _scrubbed(rows)
    figures = Export(rows.height, report.selected, left_out, for_good)
    if dest == STDOUT:
        return figures, rows.write_csv()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp{suffix}")
    try:
        if suffix == ".csv":
            rows.write_csv(tmp)
        elif suffix == ".parquet":
            rows.write_parquet(tmp)
        elif suffix == ".jsonl":
            rows.write_ndjson(tmp)
        elif suffix == ".json":
            rows.write_json(tmp)
        else:
            rows.write_excel(tmp, worksheet="rows", autofit=True)
        tmp.replace(dest)
    except (OSError, pl.exceptions.PolarsError) as exc:
        tmp.unlink(missing_ok=True)
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot write --export {dest}: {message}") from None
    return figures, ""
