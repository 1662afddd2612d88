"""Telling the operator what is happening: the plan, events, progress and the summary."""

from __future__ import annotations

import sys
import time
from datetime import datetime

import click

from .config import JobConfig
from .models import Outcome, StopReason, Summary
from .reader import SendPlan
from .runner import Progress

PLAIN_EVERY = 30.0


def _n(value: int) -> str:
    return f"{value:,}"


class Console:
    """Plain text for now: lines on stderr, the summary on stdout."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._last_line = time.monotonic()

    def error(self, message: str) -> None:
        click.echo(f"error: {message}", err=True)

    def event(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"[{datetime.now():%H:%M:%S}] {message}", err=True)

    def plan(self, plan: SendPlan, summary: Summary, config: JobConfig) -> None:
        if self.quiet:
            return
        s = summary
        lines = [
            f"plan for {config.input}:",
            f"  rows read            {_n(s.total_rows)}",
            f"  invalid              {_n(s.outcomes[Outcome.INVALID] + plan.count(1))}",
            f"  duplicates           {_n(s.outcomes[Outcome.DUPLICATE] + plan.count(2))}",
            f"  settled earlier      {_n(s.settled_before)}",
            f"  to send              {_n(s.to_send)}",
            f"  campaigns            {_n(len(plan.campaign_counts))}",
        ]
        for row, reason in plan.invalid_examples:
            lines.append(f"    e.g. row {row}: {reason}")
        click.echo("\n".join(lines), err=True)

    def confirm(self, plan: SendPlan, summary: Summary) -> bool:
        if not sys.stdin.isatty():
            return True
        return click.confirm(
            f"remove up to {_n(summary.to_send)} enrollments from "
            f"{_n(len(plan.campaign_counts))} campaigns?",
            default=False,
            err=True,
        )

    def progress(self, p: Progress) -> None:
        if self.quiet or time.monotonic() - self._last_line < PLAIN_EVERY:
            return
        self._last_line = time.monotonic()
        s = p.summary
        self.event(
            f"progress: {_n(s.total_rows - s.remaining)}/{_n(s.total_rows)} rows done, "
            f"{_n(p.in_flight)} in flight, {p.pacer_state}"
        )

    def summary(self, s: Summary, command: str) -> None:
        lines = ["", "summary:"]
        for outcome in Outcome:
            lines.append(f"  {outcome.value:<14} {_n(s.outcomes[outcome])}")
        lines.append(f"  {'not yet done':<14} {_n(s.unfinished)}")
        if s.lost_then_not_enrolled:
            lines.append(
                f"  ({_n(s.lost_then_not_enrolled)} not_enrolled after a lost answer: "
                "most likely removed by an earlier attempt)"
            )
        per_row = s.calls_per_settled_row
        lines.append(
            f"  calls spent    {_n(s.calls)}"
            + (f" ({per_row:.3f} per settled row)" if per_row else "")
        )
        if s.rate_limited:
            lines.append(f"  429s           {_n(s.rate_limited)}")
        if s.stop_reason is not StopReason.COMPLETE:
            lines.append(f"stopped early: {s.stop_detail or s.stop_reason.value}")
        if s.quota_reset_at is not None:
            local = s.quota_reset_at.astimezone()
            lines.append(
                f"quota resets at {s.quota_reset_at:%Y-%m-%d %H:%M UTC} ({local:%H:%M %Z} local)"
            )
        if s.remaining:
            lines.append(f"{_n(s.remaining)} row(s) left; to continue run: {command}")
        click.echo("\n".join(lines))
