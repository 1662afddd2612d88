"""Telling the operator what is happening: the plan, events, progress and the summary.

Three shapes of the same figures: a rich live display on a terminal; a plain line every N
seconds anywhere else (rich's live display prints nothing until the end when stderr is not a
terminal, so a multi-day cron job would log no progress at all); and one JSON object per line
for log collectors. Only results (a run's summary, a report) go to stdout.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.console import Console as RichConsole
from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .api.session import WAITING_FOR_QUOTA
from .events import Event, Setting
from .limits import SAFETY_MARGIN
from .models import Outcome, StopReason, Summary
from .report import TABLE_ROWS, CheckFigures, Estimate, PlanFigures, ResultsReport
from .results.records import unescape
from .scrub import redact, redact_data
from .send.runner import ENDS_WITH_AN_ERROR, Progress
from .text import describe_reset, duration, pace_text, per_unit, rate_text

LOG_FORMATS = ("text", "json")
PLAIN_EVERY = 30.0
RATE_WINDOW = 60.0
"""The rate shown is the rows finished over the last minute."""

EXIT_MEANINGS = {
    0: "done: every row removed, not enrolled or a duplicate (restore: restored or already "
    "enrolled)",
    1: "finished, but some rows are rejected, failed or invalid: see the results file",
    2: "usage or input error: fix the command or the input, then rerun",
    3: "aborted: the API refused the key or its permissions, or the API cannot be reached as "
    "set up (--base-url, --ca-bundle, proxy); rerun once it is fixed",
    70: "internal error (a bug): the results file is intact; please report it",
    74: "the results file could not be used: rows written so far are intact",
    75: "stopped early with rows left to do: rerun later to continue "
    "(the summary's stop_reason: quota, max_removals or api_down)",
    130: "interrupted: rerun to continue",
    143: "terminated: rerun to continue",
}


def flag(setting: Setting) -> str:
    """The CLI's name for a setting the library's events name: its flag (`--max-429-wait`)."""
    return "--" + setting.value.replace("_", "-")


def _n(value: int) -> str:
    return f"{value:,}"


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- progress figures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The figures every progress shape shows."""

    rows_total: int
    rows_done: int
    to_send: int
    sent_done: int
    in_flight: int
    rows_per_second: float | None
    pace_per_second: float | None
    eta_seconds: float | None
    pacer_state: str
    pause_until: datetime | None
    outcomes: dict[str, int]
    calls: int
    rate_limited: int
    quota_limit: int | None
    quota_remaining: int | None

    @property
    def percent(self) -> float:
        return 100.0 * self.rows_done / self.rows_total if self.rows_total else 100.0

    def pacer_text(self) -> str:
        """`sending`, or why the pacer holds and until when (local time)."""
        if self.pause_until is None:
            return self.pacer_state
        until = self.pause_until
        left = (until - datetime.now().astimezone()).total_seconds()
        clock = f"{until:%H:%M:%S}" if left < 20 * 3600 else f"{until:%Y-%m-%d %H:%M:%S}"
        return f"{self.pacer_state} until {clock} (in {duration(left)})"

    def eta_text(self) -> str:
        if self.pacer_state == WAITING_FOR_QUOTA:
            return "after the quota reset"
        if self.eta_seconds is None:
            return "unknown"
        if self.to_send == self.sent_done:
            return "done"
        end = datetime.now().astimezone() + timedelta(seconds=self.eta_seconds)
        return f"{duration(self.eta_seconds)} (around {end:%H:%M})"

    def rate_text(self) -> str:
        """Rows and calls in one unit, the pace's (the rows' when unpaced)."""
        rows, pace = self.rows_per_second, self.pace_per_second
        per = per_unit(pace if pace is not None and not math.isinf(pace) else rows)
        shown = rate_text(rows, "rows", per) if rows is not None else "measuring"
        return f"{shown} (pace {rate_text(pace, 'calls', per)})"

    def outcomes_text(self) -> str:
        return ", ".join(f"{name} {_n(count)}" for name, count in self.outcomes.items())

    def calls_text(self) -> str:
        text = f"{_n(self.calls)} calls, {_n(self.rate_limited)} x 429"
        if self.quota_remaining is not None and self.quota_limit is not None:
            text += f", quota left today {_n(self.quota_remaining)} of {_n(self.quota_limit)}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_total": self.rows_total,
            "rows_done": self.rows_done,
            "to_send": self.to_send,
            "sent_done": self.sent_done,
            "in_flight": self.in_flight,
            "rows_per_second": None
            if self.rows_per_second is None
            else round(self.rows_per_second, 3),
            "pace_per_second": None
            if self.pace_per_second is None
            else round(self.pace_per_second, 3),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds),
            "pacer_state": self.pacer_state,
            "pause_until": None
            if self.pause_until is None
            else self.pause_until.astimezone(UTC).isoformat(timespec="seconds"),
            "outcomes": self.outcomes,
            "calls": self.calls,
            "rate_limited": self.rate_limited,
            "quota_limit": self.quota_limit,
            "quota_remaining": self.quota_remaining,
        }


class RateMeter:
    """Rows finished per second over the last minute of progress snapshots."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, rows: int) -> float | None:
        self._samples.append((now, rows))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        first_at, first_rows = self._samples[0]
        if now - first_at < 2.0:
            return None
        return (rows - first_rows) / (now - first_at)


def snapshot(p: Progress, meter: RateMeter) -> Snapshot:
    s = p.summary
    rate = meter.add(time.monotonic(), p.finished_rows)
    left = max(0, s.to_send - p.finished_rows)
    speed = rate if rate else p.pace_per_second
    pause_until = None
    if p.pause_left is not None and p.pause_left > 0:
        pause_until = datetime.now().astimezone() + timedelta(seconds=p.pause_left)
    return Snapshot(
        rows_total=s.total_rows,
        rows_done=s.total_rows - s.unfinished,
        to_send=s.to_send,
        sent_done=p.finished_rows,
        in_flight=p.in_flight,
        rows_per_second=rate,
        pace_per_second=p.pace_per_second,
        eta_seconds=left / speed if speed else None,
        pacer_state=p.pacer_state,
        pause_until=pause_until,
        outcomes={o.value: s.outcomes[o] for o in s.outcome_kinds},
        calls=s.calls,
        rate_limited=s.rate_limited,
        quota_limit=p.quota_limit,
        quota_remaining=p.quota_remaining,
    )


def live_view(snap: Snapshot) -> RenderableType:
    """The terminal display: a bar, then one labelled line per figure."""
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(1, snap.rows_total), completed=snap.rows_done, width=50),
        Text(f"{_n(snap.rows_done)} / {_n(snap.rows_total)} rows ({snap.percent:.1f}%)"),
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("rate", Text(f"{snap.rate_text()}, {_n(snap.in_flight)} in flight"))
    grid.add_row("ETA", Text(snap.eta_text()))
    grid.add_row("outcomes", Text(snap.outcomes_text()))
    grid.add_row("calls", Text(snap.calls_text()))
    grid.add_row("pacer", Text(snap.pacer_text()))
    return Group(bar, grid)


def plain_line(snap: Snapshot) -> str:
    """The same figures on one line, for logs."""
    return (
        f"progress: {_n(snap.rows_done)}/{_n(snap.rows_total)} rows ({snap.percent:.1f}%); "
        f"rate {snap.rate_text()}; ETA {snap.eta_text()}; {snap.outcomes_text()}; "
        f"{snap.calls_text()}; {_n(snap.in_flight)} in flight; {snap.pacer_text()}"
    )


# -- the console -----------------------------------------------------------------------------


def plan_lines(f: PlanFigures) -> list[str]:
    lines = [
        f"plan for {f.input}:",
        f"  rows read                  {_n(f.rows):>10}",
        f"  invalid (never sent)       {_n(f.invalid):>10}",
    ]
    lines += [f"      row {row}: {reason}" for row, reason in f.invalid_examples]
    if f.invalid > len(f.invalid_examples) > 0:
        lines.append(f"      ... and {_n(f.invalid - len(f.invalid_examples))} more")
    lines += [
        f"  duplicates (sent once)     {_n(f.duplicates):>10}",
        f"  settled by an earlier run  {_n(f.settled_before):>10}",
        f"  to send                    {_n(f.to_send):>10}"
        + (f"   ({_n(f.resend)} sent before without a definite answer)" if f.resend else ""),
        f"  campaigns                  {_campaigns(f):>10}",
    ]
    width = max([len(c) for c, _ in f.top_campaigns] + [10])
    lines += [f"      {c:<{width}}  {_n(rows):>8} rows" for c, rows in f.top_campaigns]
    shown = sum(rows for _, rows in f.top_campaigns)
    if f.to_send > shown:
        more = ("" if f.campaigns_exact else "about ") + _n(f.campaigns - len(f.top_campaigns))
        lines.append(f"      ... and {more} more campaigns ({_n(f.to_send - shown)} rows)")
    if not f.to_send:
        lines.append("nothing to send.")
        return lines
    lines.append(
        f"  calls needed               {_n(f.calls_needed):>10}   "
        "(one per row; retries and 429s come on top)"
    )
    if f.check is not None:
        lines += _check_lines(f.check)
    lines += estimate_lines(f.estimates)
    if f.max_removals is not None:
        lines.append(f"  stops after {_n(f.max_removals)} removals (--max-removals)")
    return lines


def estimate_lines(estimates: list[Estimate]) -> list[str]:
    """Sending time and quota days at each pace the plan considers."""
    lines = [f"  {'at':<34}{'pace':>11}  {'sending time':>12}  {'quota days':>10}"]
    for e in estimates:
        days = "never" if e.quota_days is None else _n(e.quota_days)
        per_day = f" ({_n(e.per_day or 0)}/day)"
        pace = "unlimited" if math.isinf(e.per_second) else f"{e.per_second * 60:,.1f}/min"
        sending = "-" if math.isinf(e.per_second) else duration(e.sending_seconds)
        lines.append(f"  {e.label:<34}{pace:>11}  {sending:>12}  {days:>10}{per_day}")
    if any(not math.isinf(e.per_second) for e in estimates):
        lines += [
            f"  (each pace is {SAFETY_MARGIN:.0%} of the plan's limit or --rate: the margin "
            "absorbs",
            "   network jitter, so the API's strict per-minute window never answers 429)",
        ]
    if len(estimates) > 1:
        lines.append(
            "  (the plan is not known yet: a run learns it from the API's first answer; "
            "--plan picks one)"
        )
    return lines


def confirm_question(f: PlanFigures) -> str:
    """What a person at a terminal is asked before a run sends."""
    up_to = f.to_send if f.max_removals is None else min(f.to_send, f.max_removals)
    return f"remove up to {_n(up_to)} enrollments from {_campaigns(f)} campaigns?"


def _check_lines(c: CheckFigures) -> list[str]:
    """The calls --check-enrollment expects, beside the one DELETE per row without it."""
    if not c.campaigns:
        return ["  with --check-enrollment   no campaign has 2 or more rows to send: no listing"]
    others = f"; {_n(c.other_rows)} rows of other campaigns: a DELETE each" if c.other_rows else ""
    return [
        f"  with --check-enrollment    {_n(c.fewest_calls):>10}   at the fewest, "
        "+ 1 DELETE per enrolled pair",
        f"      ({_n(c.campaigns)} campaign(s) with {_n(c.rows)} rows listed first: 1 call per "
        "100 contacts",
        "       enrolled in each, +1 to re-check a list longer than a page; a listing stops",
        f"       before its calls reach its campaign's rows to send{others})",
    ]


def _campaigns(f: PlanFigures) -> str:
    return _n(f.campaigns) if f.campaigns_exact else f"about {_n(f.campaigns)}"


def summary_lines(s: Summary, command: str, exit_code: int) -> list[str]:
    """The job as the results file now stands, then what this run did, then what is next."""
    lines = ["", f"summary: all {_n(s.total_rows)} rows, as the results file now stands"]
    for outcome in s.outcome_kinds:
        lines.append(f"  {outcome.value:<24}{_n(s.outcomes[outcome]):>10}")
    lines.append(f"  {'not yet done':<24}{_n(s.unfinished):>10}")
    lines.append("this run:")
    lines.append(f"  {'settled by an earlier run':<25}{_n(s.settled_before):>9}")
    per_row = s.calls_per_settled_row
    lines.append(
        f"  {'calls spent':<24}{_n(s.calls):>10}"
        + (f"   ({per_row:.3f} per settled row)" if per_row is not None else "")
    )
    if s.listing_calls or s.settled_by_listing:
        lines.append(
            f"  {'listing calls':<24}{_n(s.listing_calls):>10}   ({_n(s.settled_by_listing)} "
            "rows settled not_enrolled from listings, without a DELETE)"
        )
    lines.append(f"  {'429 answers':<24}{_n(s.rate_limited):>10}")
    if s.overloaded:
        lines.append(
            f"  {'overload answers':<24}{_n(s.overloaded):>10}   (the gateway shed calls: "
            f"the run slowed to {pace_text(s.final_pace)})"
        )
    if s.learnt_rate:
        lines.append(
            f"  {'limit found':<24}{s.learnt_rate:>10}   (next time pass --rate {s.learnt_rate})"
        )
    if s.error_codes:
        codes = ", ".join(f"{code} {_n(n)}" for code, n in sorted(s.error_codes.items()))
        lines.append(f"  {'error codes':<24}{codes}")
    lines.append(f"  {'duration':<24}{duration(s.duration_seconds):>10}")
    if s.lost_then_not_enrolled:
        lines.append(
            f"  {_n(s.lost_then_not_enrolled)} not_enrolled after a lost answer (no answer, or "
            "a 500/502/504/546): most likely removed by that earlier attempt"
        )
    if s.stop_reason not in (StopReason.COMPLETE, *ENDS_WITH_AN_ERROR):  # the error says why
        lines.append(f"stopped early: {s.stop_detail or s.stop_reason.value}")
    quota_stop = s.stop_reason is StopReason.QUOTA
    if quota_stop and s.quota_reset_at is not None and "resets" not in s.stop_detail:
        lines.append(f"daily quota resets {describe_reset(s.quota_reset_at)}")
    if s.remaining:
        lines.append(f"{_n(s.remaining)} row(s) left to do; to continue, run: {command}")
    lines.append(f"exit code {exit_code}: {EXIT_MEANINGS.get(exit_code, '')}".rstrip(": "))
    return lines


TABLE_COLUMNS = ("row", "campaign_id", "contact_id", "status", "http_status", "error_code")


def rows_table(r: ResultsReport) -> RenderableType:
    """The first selected rows, with why each ended as it did."""
    if not r.selected_rows:
        return Text("no rows with the selected status")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in TABLE_COLUMNS:
        short = name in ("row", "status", "http_status")
        table.add_column("http" if name == "http_status" else name, no_wrap=short)
    table.add_column("detail")
    shown = r.first_rows.with_columns(
        unescape(c) for c in (*TABLE_COLUMNS[1:], "detail") if c != "http_status"
    )
    for record in shown.iter_rows(named=True):
        cells = [str(record[name] or "") for name in (*TABLE_COLUMNS, "detail")]
        cells[-2:] = map(redact, cells[-2:])  # server text; never the ids
        table.add_row(*map(Text, cells))
    more = r.selected_rows - min(r.selected_rows, TABLE_ROWS)
    if not more:
        return table
    return Group(
        table,
        Text(f"... and {_n(more)} more: --format csv (or jsonl) prints them all"),
    )


def report_lines(r: ResultsReport) -> list[str]:
    lines = [f"results file {r.path}: {_n(r.rows)} rows recorded"]
    for name, count in r.outcomes.items():
        lines.append(f"  {name:<24}{_n(count):>10}")
    if r.error_codes:
        codes = ", ".join(f"{code} {_n(n)}" for code, n in r.error_codes.items())
        lines.append(f"  {'error codes':<24}{codes}")
    if r.first_finished is not None and r.last_finished is not None:
        span = (r.last_finished - r.first_finished).total_seconds()
        lines.append(
            f"  {'finished':<24}{r.first_finished:%Y-%m-%d %H:%M:%S} to "
            f"{r.last_finished:%Y-%m-%d %H:%M:%S} UTC ({duration(span)})"
        )
    chosen = ", ".join(o.value for o in r.selected)
    lines.append(f"  {'selected rows':<24}{_n(r.selected_rows):>10}   (status {chosen})")
    if r.outcomes.get(Outcome.FAILED.value):
        lines.append("failed rows are retried by rerunning the same command with the same --out")
    return lines


class Console:
    """Where each message goes, in which shape; quiet keeps errors and the final result."""

    def __init__(
        self,
        *,
        quiet: bool = False,
        log_format: str = "text",
        progress_interval: float = PLAIN_EVERY,
        interactive: bool | None = None,
    ) -> None:
        self.quiet = quiet
        self.json = log_format == "json"
        self.interval = progress_interval
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._rich = RichConsole(stderr=True, highlight=False)
        self._live: Live | None = None
        self._meter = RateMeter()
        self._last_line = time.monotonic()

    # -- shapes ------------------------------------------------------------------------------

    def emit(self, kind: str, **fields: Any) -> None:
        """One JSON object per line on stderr."""
        data = redact_data({"type": kind, "time": _iso_now(), **fields})
        line = json.dumps(data, ensure_ascii=False)
        click.echo(line, err=True)

    def _line(self, text: str) -> None:
        stamped = redact(f"[{datetime.now():%H:%M:%S}] {text}")
        if self._live is not None:
            self._rich.print(Text(stamped))
        else:
            click.echo(stamped, err=True)

    # -- messages ----------------------------------------------------------------------------

    def error(self, message: str, exit_code: int | None = None) -> None:
        if self.json:
            self.emit("error", message=message, exit_code=exit_code)
        else:
            click.echo(redact(f"error: {message}"), err=True)

    def event(self, event: Event) -> None:
        if self.quiet:
            return
        message = event.describe(flag)
        if self.json:
            self.emit("event", message=message)
        else:
            self._line(message)

    def plan(self, figures: PlanFigures, *, dry_run: bool) -> None:
        """On stderr, like every message: stdout carries only a run's summary and reports.
        A dry run's plan is its result, so --quiet does not hide it."""
        self.show_plan(plan_lines(figures), figures.as_dict(), dry_run=dry_run)

    def show_plan(self, lines: list[str], data: dict[str, Any], *, dry_run: bool) -> None:
        """Any command's plan: its lines, or its `plan` JSON object."""
        if self.json:
            if dry_run or not self.quiet:
                self.emit("plan", **data)
            return
        if self.quiet and not dry_run:
            return
        click.echo("\n".join(lines), err=True)

    def ask(self, question: str) -> bool:
        """Yes or no from a person at a terminal; cron, CI and pipes are never prompted."""
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            return True
        try:
            return click.confirm(question, default=False, err=True)
        except click.Abort:
            click.echo("", err=True)
            return False

    @contextlib.contextmanager
    def running(self, latest: Callable[[], Progress]) -> Iterator[None]:
        """The live display, on a terminal only, for as long as the run sends."""
        if not self.interactive or self.json or self.quiet:
            yield
            return
        self._live = Live(
            Text("starting..."),
            console=self._rich,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start(refresh=True)
        try:
            yield
        finally:
            live, self._live = self._live, None
            with contextlib.suppress(Exception):
                live.update(live_view(snapshot(latest(), self._meter)), refresh=True)
            live.stop()

    def progress(self, p: Progress) -> None:
        if self.quiet:
            return
        snap = snapshot(p, self._meter)
        if self._live is not None:
            self._live.update(live_view(snap), refresh=True)
            return
        if time.monotonic() - self._last_line < self.interval:
            return
        self._last_line = time.monotonic()
        if self.json:
            self.emit("progress", **snap.as_dict())
        else:
            self._line(plain_line(snap))

    def summary(self, s: Summary, command: str, data: dict[str, Any]) -> None:
        """Printed even with --quiet: it is the run's result."""
        if self.json:
            self.emit("summary", **data)
        else:
            click.echo(redact("\n".join(summary_lines(s, command, data["exit_code"]))))

    def report(self, r: ResultsReport, as_json: bool, rows: str = "table") -> None:
        """The figures and a table of the selected rows on stdout; with `rows` csv or jsonl
        the figures go to stderr, so stdout carries only the rows. Scrubbed too: a results
        file written before scrubbing got stricter may hold pieces of a key."""
        if as_json:
            click.echo(json.dumps(redact_data(r.as_dict()), indent=2))
            return
        click.echo(redact("\n".join(report_lines(r))), err=rows != "table")
        if rows == "table":
            click.echo("")
            if sys.stdout.isatty():  # long cells fold to the terminal's width
                RichConsole(highlight=False).print(rows_table(r))
                return
            wide = RichConsole(highlight=False, width=10_000)  # a file or pipe: whole lines
            with wide.capture() as table:
                wide.print(rows_table(r))
            click.echo("\n".join(line.rstrip() for line in table.get().splitlines()))
