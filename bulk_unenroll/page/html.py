"""The report page as one self-contained HTML file: pure rendering of `PageFigures`.

No script, no font, no style sheet or image from elsewhere: it opens from an e-mail
attachment with no network, and prints. Every piece of text goes through `charts.e`.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version

from ..models import Outcome
from ..text import duration
from .charts import COLOURS, LIMITED, QUOTA, e, outcome_bar, stretch_rows, timeline_chart
from .figures import PageFigures, VerifyFigures

MEANINGS = {
    Outcome.REMOVED.value: "removed from the campaign",
    Outcome.NOT_ENROLLED.value: "was not in the campaign: nothing to remove",
    Outcome.REJECTED.value: "refused by the API (a campaign that does not exist, say)",
    Outcome.FAILED.value: "no definite answer yet: rerunning the same command retries it",
    Outcome.INVALID.value: "not a valid id: never sent",
    Outcome.DUPLICATE.value: "repeats an earlier row: not sent again",
}
EMPTY = "(empty)"
"""An empty id cell, as the tables show it."""
STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1a1a1a;
max-width:60rem;margin:2rem auto;padding:0 1rem;background:#fff}
h1{font-size:1.6rem;margin:0 0 .4rem}h2{font-size:1.2rem;margin:2rem 0 .5rem;
border-bottom:1px solid #ccc;padding-bottom:.2rem}
.lead{font-size:1.1rem}.muted{color:#555}.ok{color:#1b5e20}.bad{color:#b71c1c}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.id{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.4em;vertical-align:middle}
svg.chart{width:100%;height:auto;font:11px system-ui,Arial,sans-serif;fill:#333}
figure{margin:.5rem 0}figcaption{font-size:.85rem;color:#555}
section{break-inside:avoid-page}
@media print{body{margin:0;max-width:none;font-size:10pt}h2{break-after:avoid}
tr,svg{break-inside:avoid}*{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def render(f: PageFigures, made_at: datetime | None = None) -> str:
    """The whole page."""
    made = (made_at or datetime.now(UTC)).astimezone(UTC)
    sections = [
        _header(f),
        _verification(f.verify, f.outcomes),
        _totals(f),
        _timeline(f),
        _campaigns(f),
        _needs_a_look(f),
        _error_codes(f),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Unenrollment report: {e(f.results_name)}</title><style>{STYLE}</style>"
        f'</head><body><main>{"".join(sections)}</main><footer><p class="muted">'
        f"Made by bulk-unenroll {e(version('bulk-unenroll'))} on {made:%Y-%m-%d %H:%M} UTC from "
        f"{e(f.results_name)}{_audit_note(f)}. This page holds everything it shows: no "
        "network is needed to open or print it.</p></footer></body></html>\n"
    )


def _audit_note(f: PageFigures) -> str:
    return "" if f.audit_name is None else f" and the audit log {e(f.audit_name)}"


def _table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    numeric: set[int],
    ids: frozenset[int] = frozenset(),
) -> str:
    """A table of text cells (escaped here); columns in `numeric` align right, columns in
    `ids` are ids (monospace, broken anywhere)."""
    kinds = {**dict.fromkeys(ids, " class=id"), **dict.fromkeys(numeric, " class=n")}

    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(
            f"<{tag}{kinds.get(i, '') if tag == 'td' else ''}>{e(v)}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>{body}</tbody></table>"


def sentence(f: PageFigures) -> str:
    """The job in one sentence."""
    if not f.rows:
        return f"The results file {f.results_name} holds no records yet: nothing was done."
    o, t = f.outcomes, f.timeline
    when = ""
    if t.start is not None and t.end is not None:
        span = duration((t.end - t.start).total_seconds())
        form = "%Y-%m-%d %H:%M:%S" if t.bar_seconds < 60 else "%Y-%m-%d %H:%M"
        when = f"Between {t.start:{form}} and {t.end:{form}} UTC ({span}), "
    stretches = "1 stretch" if t.stretches_total == 1 else f"{t.stretches_total:,} stretches"
    campaigns = "1 campaign" if f.removed_from == 1 else f"{f.removed_from:,} campaigns"
    text = (
        f"{when}bulk-unenroll worked through {f.rows:,} rows of {f.results_name} in "
        f"{stretches} of work and {t.calls:,} API calls: "
        f"{o[Outcome.REMOVED.value]:,} contacts were removed from {campaigns}, "
        f"{o[Outcome.NOT_ENROLLED.value]:,} were already not enrolled, and "
        f"{'1 row needs' if f.needs_a_look == 1 else f'{f.needs_a_look:,} rows need'} a look."
    )
    return text[0].upper() + text[1:]


def _header(f: PageFigures) -> str:
    return (
        f"<header><h1>Unenrollment report: {e(f.results_name)}</h1>"
        f'<p class="lead">{e(sentence(f))}</p></header>'
    )


def _verification(v: VerifyFigures | None, outcomes: dict[str, int]) -> str:
    """What `verify` found against the API, or that it has not run."""
    head = '<section id="verification"><h2>Checked against the API</h2>'
    if v is None:
        return (
            f'{head}<p class="muted">Not verified: this page shows what the API answered '
            "while the job ran. <code>bulk-unenroll verify</code> checks that the contacts "
            "recorded as removed are still gone.</p></section>"
        )
    how = "a random sample of the pairs" if v.sampled else "every pair"
    when = (
        ""
        if v.checked_at is None
        else f" on or since {v.checked_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    )
    verdict = (
        f'<p class="ok">All {v.pairs_checked:,} pairs checked are still not enrolled.</p>'
        if not v.enrolled_again
        else f'<p class="bad">{v.enrolled_again:,} of {v.pairs_checked:,} pairs checked are '
        "enrolled again (re-enrolled by someone since, or a removal that did not hold)"
        + (f"; {e(v.again_file)} lists them to remove again" if v.again_file else "")
        + ".</p>"
    )
    if v.unchecked:
        verdict += (
            f'<p class="bad">{v.unchecked:,} pairs were not checked (a campaign too large '
            "to list for its pairs, one that kept changing while read, or left out of a "
            "sample): the verify file says which.</p>"
        )
    rows = [
        ("pairs checked", f"{v.pairs_checked:,}"),
        ("still not enrolled", f"{v.still_absent:,}"),
        ("enrolled again", f"{v.enrolled_again:,}"),
        ("not checked", f"{v.unchecked:,}"),
        ("recorded removed", f"{outcomes.get(Outcome.REMOVED.value, 0):,}"),
    ]
    return (
        f"{head}<p>Checked {how}{e(when)}.</p>{verdict}{_table(('', 'pairs'), rows, {1})}</section>"
    )


def _totals(f: PageFigures) -> str:
    rows = []
    for name, count in f.outcomes.items():
        share = f"{100 * count / f.rows:.1f}%" if f.rows else ""
        rows.append(
            f'<tr><td><span class="swatch" style="background:{COLOURS[name]}"></span>'
            f"{e(name)}</td><td>{e(MEANINGS[name])}</td><td class=n>{count:,}</td>"
            f"<td class=n>{e(share)}</td></tr>"
        )
    rows.append(f"<tr><th>rows</th><td></td><th class=n>{f.rows:,}</th><td></td></tr>")
    chart = f"<figure>{outcome_bar(f.outcomes)}</figure>" if f.rows else ""
    return (
        '<section id="totals"><h2>Outcomes</h2>'
        f"{chart}<table><thead><tr><th>outcome</th><th>meaning</th><th class=n>rows</th>"
        f"<th class=n>share</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _campaigns(f: PageFigures) -> str:
    names = list(f.outcomes)
    rows = [
        (c.campaign_id or EMPTY, f"{c.rows:,}", *(f"{c.outcomes[n]:,}" for n in names))
        for c in f.campaigns
    ]
    more = f.campaigns_total - len(f.campaigns)
    rest = (
        f'<p class="muted">and {more:,} more campaigns with {f.other_campaign_rows:,} rows '
        "(the largest are listed).</p>"
        if more > 0
        else ""
    )
    numbers = set(range(1, len(names) + 2))
    table = _table(("campaign", "rows", *names), rows, numbers, frozenset({0})) if rows else ""
    return (
        f'<section id="campaigns"><h2>By campaign ({f.campaigns_total:,})</h2>'
        f"{table}{rest}</section>"
    )


def _timeline(f: PageFigures) -> str:
    t = f.timeline
    head = '<section id="timeline"><h2>Timeline</h2>'
    if not t.bars:
        return f'{head}<p class="muted">No record has a readable time.</p></section>'
    if t.from_audit:
        source = (
            f"From the audit log: every request when it left. {t.rate_limited:,} answered "
            f"429 (rate limited; requests paused {duration(t.paused)} in all), "
            f"{t.quota_spent:,} said the daily quota was spent, and {t.quota_waits:,} left "
            "after waiting for it to reset. A run that stopped at the quota (exit 75) leaves "
            "no line: it shows as the end of a stretch."
        )
    else:
        source = (
            "From the results file: each row's calls counted when it finished. "
            "429 pauses and quota stops are in the audit log (<code>run --audit-log</code>): "
            "give it with <code>--audit-log</code> to show them."
        )
    width = "" if t.bar_seconds == 60 else f" (each bar: {duration(t.bar_seconds)}, as a rate)"
    legend = (
        f'<span class="swatch" style="background:{LIMITED}"></span>answered 429 '
        f'<span class="swatch" style="background:{QUOTA}"></span>daily quota spent or waited '
        "for "
        "- - a new stretch of work began (a restart, or the end of a wait)"
    )
    more = t.stretches_total - len(t.stretches)
    rest = f'<p class="muted">and {more:,} more stretches.</p>' if more > 0 else ""
    table = _table(
        ("stretch", "from", "to", "calls", "429s", "daily quota"),
        stretch_rows(t.stretches),
        {0, 3, 4},
    )
    return (
        f"{head}<figure>{timeline_chart(t)}<figcaption>Calls per minute{e(width)}. "
        f"{legend}</figcaption></figure><p>{source}</p>"
        f"<p>Stretches of work (quiet for 10 minutes or more between them):</p>{table}{rest}"
        "</section>"
    )


def _needs_a_look(f: PageFigures) -> str:
    head = f'<section id="needs-a-look"><h2>Rows that need a look ({f.needs_a_look:,})</h2>'
    if not f.needs_a_look:
        return f'{head}<p class="ok">None: no row was rejected, failed or invalid.</p></section>'
    rows = [
        (
            f"{r.row:,}",
            r.campaign_id or EMPTY,
            r.contact_id or EMPTY,
            r.status,
            r.error_code,
            r.detail,
        )
        for r in f.listed
    ]
    head_row = ("row", "campaign", "contact", "status", "error code", "detail")
    table = _table(head_row, rows, {0}, frozenset({1, 2}))
    more = f.needs_a_look - len(f.listed)
    export = (
        f"<code>bulk-unenroll report {e(shlex.quote(f.results_name))} --export fix.csv</code> "
        "writes them "
        "as an input file to correct and feed back."
    )
    rest = f"The first {len(f.listed):,} by row; {more:,} more not listed. " if more > 0 else ""
    return f'{head}<p class="muted">{rest}{export}</p>{table}</section>'


def _error_codes(f: PageFigures) -> str:
    if not f.error_codes:
        return ""
    more = f.error_codes_total - len(f.error_codes)
    rest = f'<p class="muted">and {more:,} more codes.</p>' if more > 0 else ""
    rows = [(code, f"{n:,}") for code, n in f.error_codes]
    return (
        '<section id="error-codes"><h2>Error codes the API answered</h2>'
        f"{_table(('error code', 'rows'), rows, {1})}{rest}</section>"
    )
