"""A restore's plan as figures (data, for `--summary-json` and `--log-format json`) and as the
lines the terminal shows, with the warning a person must read before saying yes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import JobConfig
from ..render import estimate_lines
from ..report import TOP_CAMPAIGNS, Estimate, estimates
from .select import BATCH_MAX, Filters, RestorePlan, Unnamed

AFRESH = (
    "a restored enrollment starts the campaign afresh: the contact's step progress is not "
    "brought back, so it gets the campaign's emails again from the first step"
)


@dataclass(frozen=True)
class RestoreFigures:
    """What a restore would do, before it does it."""

    results: Path
    removed: int
    filtered_out: int
    filters: list[str]
    unlisted_rows: int
    lost_then_not_enrolled: int
    unnamed: Unnamed
    settled_before: int
    to_send: int
    resend: int
    campaigns: int
    top_campaigns: list[tuple[str, int]]
    calls_needed: int
    source: str
    estimates: list[Estimate]

    def as_dict(self) -> dict[str, Any]:
        return {
            "results": str(self.results),
            "removed": self.removed,
            "filtered_out": self.filtered_out,
            "filters": self.filters,
            "lost_then_not_enrolled": self.lost_then_not_enrolled,
            "removed_without_a_pair": self.unnamed.count,
            "settled_before": self.settled_before,
            "to_send": self.to_send,
            "resend": self.resend,
            "campaigns": self.campaigns,
            "top_campaigns": [{"campaign_id": c, "pairs": n} for c, n in self.top_campaigns],
            "calls_needed": self.calls_needed,
            "source": self.source,
            "starts_afresh": AFRESH,
            "estimates": [e.as_dict() for e in self.estimates],
        }


def restore_figures(
    plan: RestorePlan, filters: Filters, source: str, config: JobConfig
) -> RestoreFigures:
    counts = plan.campaign_counts()
    calls = plan.calls
    return RestoreFigures(
        results=plan.results,
        removed=plan.removed,
        filtered_out=plan.filtered_out,
        filters=filters.described(),
        unlisted_rows=plan.unlisted_rows,
        lost_then_not_enrolled=plan.lost_then_not_enrolled,
        unnamed=plan.unnamed,
        settled_before=sum(plan.settled_before.values()),
        to_send=plan.to_send,
        resend=plan.resend,
        campaigns=len(counts),
        top_campaigns=counts.most_common(TOP_CAMPAIGNS),
        calls_needed=calls,
        source=source,
        estimates=estimates(calls, config),
    )


def _n(value: int) -> str:
    return f"{value:,}"


def restore_lines(f: RestoreFigures) -> list[str]:
    lines = [
        f"restore plan for {f.results}:",
        f"  pairs it marks removed       {_n(f.removed):>10}",
    ]
    if f.filters:
        lines.append(f"  left out by the filters      {_n(f.filtered_out):>10}")
        lines += [f"      only pairs {said}" for said in f.filters]
    if f.unlisted_rows:
        lines.append(f"      ({_n(f.unlisted_rows)} row(s) of --pairs are no valid pair)")
    if f.lost_then_not_enrolled:
        lines += [
            f"  not restored: {_n(f.lost_then_not_enrolled)} pair(s) it marks not_enrolled after "
            "a lost answer (most likely",
            "      removed by the run, but not certainly; `bulk-unenroll report RESULTS --status "
            "not_enrolled` lists them)",
        ]
    if f.unnamed.count:
        lines += [
            f"  not restored: {_n(f.unnamed.count)} record(s) marked removed without a "
            f"campaign_id or contact_id (the first at row {f.unnamed.first}):",
            "      no pair to restore them to (was the file edited?)",
        ]
    lines += [
        f"  settled by an earlier restore{_n(f.settled_before):>10}",
        f"  to restore                   {_n(f.to_send):>10}"
        + (f"   ({_n(f.resend)} sent before without a definite answer)" if f.resend else ""),
        f"  campaigns                    {_n(f.campaigns):>10}",
    ]
    width = max([len(c) for c, _ in f.top_campaigns] + [10])
    for campaign, pairs in f.top_campaigns:
        calls = math.ceil(pairs / BATCH_MAX)
        lines.append(f"      {campaign:<{width}}  {_n(pairs):>8} pairs in {_n(calls)} call(s)")
    if f.campaigns > len(f.top_campaigns):
        lines.append(f"      ... and {_n(f.campaigns - len(f.top_campaigns))} more campaigns")
    if not f.to_send:
        lines.append("nothing to restore.")
        return lines
    lines += [
        f"  calls needed                 {_n(f.calls_needed):>10}",
        f"      (one Add Contacts call per {BATCH_MAX} pairs of a campaign; retries and 429s "
        "come on top)",
    ]
    lines += estimate_lines(f.estimates)
    lines += [f"  source: {f.source!r}", f"note: {AFRESH}."]
    return lines
