"""The report page's figures: every number the page shows, computed in one function with
polars lazy aggregations, so a 10M-row results file costs the page aggregates and a bounded
number of listed rows, never the rows themselves. Rendering lives in `page.html`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from ..errors import InputError, ResultsFileError
from ..keys import CAMPAIGN, CONTACT
from ..models import NEEDS_A_LOOK, RUN_OUTCOMES, Outcome
from ..results import records
from ..results.records import TIMESTAMP, unescape
from ..scrub import redact
from .timeline import FINE_SPAN, Minute, Timeline, timeline

LISTED_ROWS = 100
"""Rows that need a look listed by name; the page gives the count of the rest."""
LISTED_CAMPAIGNS = 50
"""Campaigns with a table row of their own (the largest); the rest are summed in one line."""
LISTED_CODES = 20
DETAIL_CHARS = 200
"""A server message longer than this is cut on the page (the results file keeps it whole)."""
AUDIT_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"
LISTED_COLUMNS = ("row", CAMPAIGN, CONTACT, "status", "error_code", "detail")
LINE_ONLY = "\x1f"
"""A separator no audit line holds (JSON escapes control characters): one column, the line."""
NUMBER = r"(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)"


@dataclass(frozen=True)
class CampaignFigures:
    """One campaign's rows by latest outcome."""

    campaign_id: str
    rows: int
    outcomes: dict[str, int]


@dataclass(frozen=True)
class ListedRow:
    """A row that needs a look, ids as they were sent, server text scrubbed and cut."""

    row: int
    campaign_id: str
    contact_id: str
    status: str
    error_code: str
    detail: str


@dataclass(frozen=True)
class VerifyFigures:
    """What `verify` found when it checked the recorded answers against the API. The seam
    for `verify`: it builds these from its results, the page renders them when given."""

    checked_at: datetime | None
    """The oldest verdict's check: every pair was checked then or since."""
    pairs_checked: int
    still_absent: int
    enrolled_again: int
    unchecked: int = 0
    """Pairs verify could not check (a listing that cost too much or kept changing) or left
    out of a sample."""
    sampled: bool = False
    """A random sample per campaign was checked, not every pair."""
    again_file: str = ""
    """The input file `verify` wrote to remove the pairs found enrolled again."""


@dataclass(frozen=True)
class PageFigures:
    """Everything the page shows, and nothing more (aggregates and bounded lists)."""

    results_name: str
    rows: int
    outcomes: dict[str, int]
    error_codes: list[tuple[str, int]]
    error_codes_total: int
    campaigns: list[CampaignFigures]
    campaigns_total: int
    other_campaign_rows: int
    """Rows in the campaigns beyond the listed ones."""
    removed_from: int
    """Campaigns at least one contact was removed from."""
    listed: list[ListedRow]
    needs_a_look: int
    timeline: Timeline
    audit_name: str | None = None
    verify: VerifyFigures | None = field(default=None)


def page_figures(
    results: Path,
    audit_log: Path | None = None,
    *,
    verify: VerifyFigures | None = None,
    listed: int = LISTED_ROWS,
) -> PageFigures:
    """The one place the page's figures come from: a few streaming passes over the results
    file (and the audit log), each keeping only aggregates or a bounded list."""
    with _readable(results, audit_log) as found:
        fail = _failing(results, audit_log)
        every, latest = _timed(found.every), found.records
        groups = fail(latest.group_by("campaign_id", "status", "error_code").agg(pl.len()))
        ids = (unescape("campaign_id"), unescape("contact_id"), unescape("detail"))
        look = latest.filter(pl.col("status").is_in([o.value for o in NEEDS_A_LOOK]))
        rows = fail(look.select(LISTED_COLUMNS).sort("row").head(listed).with_columns(*ids))
        minutes = fail(_results_slots(every, "1m"))
        counted = minutes if audit_log is None else fail(_slots(every, audit_log, "1m"))
        fine = None
        if _short(counted):
            fine = _minutes(fail(_slots(every, audit_log, "1s")))  # bars narrower than a minute
    return _figures(
        results.name,
        groups,
        rows,
        timeline(_minutes(minutes), None if audit_log is None else _minutes(counted), fine),
        audit_name=None if audit_log is None else audit_log.name,
        verify=verify,
    )


def _short(minutes: pl.DataFrame) -> bool:
    """A run shorter than `FINE_SPAN`: its chart gets bars narrower than a minute."""
    first, last = minutes["minute"].min(), minutes["minute"].max()
    return isinstance(first, datetime) and isinstance(last, datetime) and last - first < FINE_SPAN


def _figures(
    name: str,
    groups: pl.DataFrame,
    rows: pl.DataFrame,
    drawn: Timeline,
    *,
    audit_name: str | None,
    verify: VerifyFigures | None,
) -> PageFigures:
    """The page's figures from the aggregates: rows per (campaign, outcome, error code)."""
    status = pl.col("status")
    outcomes = dict(groups.group_by("status").agg(pl.col("len").sum()).iter_rows())
    by_campaign = groups.group_by("campaign_id").agg(
        pl.col("len").sum().alias("rows"),
        *(pl.col("len").filter(status == o.value).sum().alias(o.value) for o in RUN_OUTCOMES),
    )
    top = by_campaign.sort(["rows", "campaign_id"], descending=[True, False]).head(LISTED_CAMPAIGNS)
    codes = (
        groups.filter(pl.col("error_code").fill_null("") != "")
        .group_by("error_code")
        .agg(pl.col("len").sum())
        .sort(["len", "error_code"], descending=[True, False])
    )
    return PageFigures(
        results_name=name,
        rows=sum(outcomes.values()),
        outcomes={o.value: int(outcomes.get(o.value, 0)) for o in RUN_OUTCOMES},
        error_codes=[(redact(str(c)), int(n)) for c, n in codes.head(LISTED_CODES).iter_rows()],
        error_codes_total=codes.height,
        campaigns=[
            _campaign(r) for r in top.with_columns(unescape("campaign_id")).iter_rows(named=True)
        ],
        campaigns_total=by_campaign.height,
        other_campaign_rows=int(by_campaign["rows"].sum()) - int(top["rows"].sum()),
        removed_from=by_campaign.filter(pl.col(Outcome.REMOVED.value) > 0).height,
        listed=[_listed(r) for r in rows.iter_rows(named=True)],
        needs_a_look=sum(int(outcomes.get(o.value, 0)) for o in NEEDS_A_LOOK),
        timeline=drawn,
        audit_name=audit_name,
        verify=verify,
    )


def _failing(results: Path, audit: Path | None) -> Callable[[pl.LazyFrame], pl.DataFrame]:
    """Collect one query with the streaming engine (memory stays flat at any size), a read
    error becoming a clear one. One query at a time: run side by side, each would hold its
    own buffers, and a plan shared between them is held whole in memory."""

    def collect(query: pl.LazyFrame) -> pl.DataFrame:
        try:
            return query.collect(engine="streaming")
        except OSError as exc:
            raise ResultsFileError(f"cannot read {results}: {exc.strerror or exc}") from None
        except pl.exceptions.PolarsError as exc:
            also = "" if audit is None else f" and --audit-log {audit}"
            raise ResultsFileError(f"cannot read {results}{also}: {exc}") from None

    return collect


# -- reading ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _readable(results: Path, audit_log: Path | None) -> Iterator[records.Latest]:
    """The results file's latest records (`records.latest`: its one reading), once the audit
    log is known to be one."""
    with records.read_errors(results), records.latest(results) as found:
        if audit_log is not None:
            _audit_log(audit_log)
        found.marked()  # the pass that finds the superseded records, its errors named here
        yield found


def _timed(lazy: pl.LazyFrame) -> pl.LazyFrame:
    """Records with their finish as a datetime (`at`) and their calls as a number."""
    return lazy.with_columns(
        pl.col("finished_at").str.to_datetime(TIMESTAMP, time_zone="UTC", strict=False).alias("at"),
        pl.col("attempts").cast(pl.Int64, strict=False).fill_null(0),
    )


def _slots(every: pl.LazyFrame, audit_log: Path | None, unit: str) -> pl.LazyFrame:
    """Calls per `unit` as the audit log tells them, else as the results file does."""
    return _results_slots(every, unit) if audit_log is None else _audit_slots(audit_log, unit)


def _results_slots(every: pl.LazyFrame, unit: str) -> pl.LazyFrame:
    """Calls per `unit` (`1m`, `1s`) as the results file tells them: each record's attempts,
    counted when it finished (every record, superseded `failed` ones too: they were calls)."""
    return (
        every.filter(pl.col("at").is_not_null())
        .group_by(pl.col("at").dt.truncate(unit).alias("minute"))
        .agg(
            pl.col("attempts").sum().alias("calls"),
            pl.lit(0, pl.UInt32).alias("rate_limited"),
            pl.lit(0, pl.UInt32).alias("quota_spent"),
            pl.lit(0.0).alias("paused"),
            pl.lit(0, pl.UInt32).alias("quota_waits"),
        )
    )


def _audit_slots(path: Path, unit: str) -> pl.LazyFrame:
    """Calls per `unit` as the audit log tells them: one line per request, with its answer
    and what it waited for (a second or more for the quota: it waited for the reset).

    Each line is read as text and its few fields picked out by name: polars' JSON-lines
    reader holds the whole file in memory (2 GiB for 10M requests), the CSV reader streams.
    Ids and server text are JSON strings, so a quote inside them is escaped and never
    matches a field's name; a line that is not one of the log's is left out."""
    line = pl.col("line")
    return (
        pl.scan_csv(
            path, has_header=False, separator=LINE_ONLY, quote_char=None, schema={"line": pl.String}
        )
        .select(
            _field(line, "time", '"([^"]+)"')
            .str.to_datetime(AUDIT_FORMAT, time_zone="UTC", strict=False)
            .alias("time"),
            _field(line, "result", '"([a-z_]+)"').alias("result"),
            _field(line, "rate_limit_pause", NUMBER).cast(pl.Float64, strict=False).alias("paused"),
            _field(line, "quota", NUMBER).cast(pl.Float64, strict=False).alias("quota"),
        )
        .filter(pl.col("time").is_not_null())
        .group_by(pl.col("time").dt.truncate(unit).alias("minute"))
        .agg(
            pl.len().alias("calls"),
            (pl.col("result") == "rate_limited").sum().alias("rate_limited"),
            (pl.col("result") == "quota_spent").sum().alias("quota_spent"),
            pl.col("paused").fill_null(0).sum(),
            (pl.col("quota").fill_null(0) >= 1).sum().alias("quota_waits"),
        )
    )


def _field(line: pl.Expr, name: str, value: str) -> pl.Expr:
    return line.str.extract(f'"{name}"\\s*:\\s*{value}')


def _audit_log(path: Path) -> None:
    """Refuse an audit log that cannot be read, or a file that is none (a results file given
    by mistake, say). A torn last line (a killed run) needs no care: it is read as text, and
    a line without its time is left out."""
    try:
        with path.open("rb") as f:
            _check_audit(path, f.readline(64 * 1024))
    except OSError as exc:
        raise InputError(
            f"cannot read --audit-log {path}: {exc.strerror or exc}; leave out --audit-log "
            "to make the page from the results file alone"
        ) from None


def _check_audit(path: Path, first: bytes) -> None:
    """Refuse a file that is no audit log (a results file given by mistake, say)."""
    try:
        line = json.loads(first) if first.endswith(b"\n") else {"time": "", "result": ""}
    except ValueError:
        line = None
    if not first or (isinstance(line, dict) and {"time", "result"} <= line.keys()):
        return
    raise InputError(
        f"--audit-log {path} is not an audit log: its first line is "
        f"{first[:80].decode('utf-8', 'replace')!r}, and an audit log (run --audit-log) has one "
        "JSON object per line with `time` and `result`. Give the file the run wrote, or leave "
        "out --audit-log to make the page from the results file alone"
    )


# -- shaping ---------------------------------------------------------------------------------


def _campaign(row: dict[str, object]) -> CampaignFigures:
    return CampaignFigures(
        campaign_id=str(row["campaign_id"] or ""),
        rows=int(str(row["rows"])),
        outcomes={o.value: int(str(row[o.value])) for o in RUN_OUTCOMES},
    )


def _listed(row: dict[str, object]) -> ListedRow:
    detail = redact(str(row["detail"] or ""))
    if len(detail) > DETAIL_CHARS:
        detail = detail[: DETAIL_CHARS - 1] + "…"
    return ListedRow(
        row=int(str(row["row"])),
        campaign_id=str(row["campaign_id"] or ""),
        contact_id=str(row["contact_id"] or ""),
        status=str(row["status"]),
        error_code=redact(str(row["error_code"] or "")),
        detail=detail,
    )


def _minutes(frame: pl.DataFrame) -> list[Minute]:
    return [
        Minute(
            at=r["minute"],
            calls=int(r["calls"] or 0),
            rate_limited=int(r["rate_limited"] or 0),
            quota_spent=int(r["quota_spent"] or 0),
            paused=float(r["paused"] or 0.0),
            quota_waits=int(r["quota_waits"] or 0),
        )
        for r in frame.sort("minute").iter_rows(named=True)
    ]
