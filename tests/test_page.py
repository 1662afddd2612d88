"""`bulk-unenroll report RESULTS --html FILE`: the report page's figures, read back from the
page as a person reads it, against the results file and the audit log; escaping, bounds and
bad input. The same page in a real browser: tests/test_page_browser.py (`make test-page`)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from conftest import API_KEY, cli_env, new_uuid, run_cli
from pagetext import HOSTILE, audit_lines, latest_records, make_page, read_page, run_with_429s

from bulk_unenroll.page import VerifyFigures, page_figures, render
from bulk_unenroll.page.timeline import MAX_BARS, Minute, timeline
from bulk_unenroll.results.records import HEADER
from bulk_unenroll.sandbox import Sandbox

ATTRIBUTE = '" onmouseover="alert(1)'


def assert_self_contained(html: str) -> None:
    page = read_page(html)
    assert page.fetches == [], "the page must open with no network"
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["img"] == 0
    assert page.tags["svg"] >= 1


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Sandbox]:
    return run_with_429s(tmp_path_factory.mktemp("page"))


@pytest.mark.slow
def test_the_page_shows_the_results_files_figures(real_run: tuple[Path, Path, Sandbox]) -> None:
    out, audit, api = real_run
    html, said = make_page(out, "--audit-log", str(audit))
    assert "wrote the report page" in said
    page = read_page(html)
    latest = latest_records(out)
    statuses = Counter(r["status"] for r in latest)

    totals = page.rows_by_first_cell("totals")
    for status in ("removed", "not_enrolled", "rejected", "failed", "invalid", "duplicate"):
        assert totals[status][1] == f"{statuses[status]:,}", status
    assert totals["rows"][1] == str(len(latest))

    campaigns = page.table("campaigns")
    names = campaigns[0][2:]
    for campaign, *cells in campaigns[1:]:
        mine = [r for r in latest if r["campaign_id"] == campaign]
        assert cells[0] == str(len(mine))
        assert cells[1:] == [str(sum(r["status"] == n for r in mine)) for n in names]
    assert {row[0] for row in campaigns[1:]} == {r["campaign_id"] for r in latest}

    look = [r for r in latest if r["status"] in ("rejected", "failed", "invalid")]
    listed = page.table("needs-a-look")[1:]
    assert sorted(int(row[0]) for row in listed) == sorted(int(r["row"]) for r in look)
    assert f"Rows that need a look ({len(look)})" in page.text["needs-a-look"]
    assert [row[2] for row in listed if row[3] == "invalid"] == [HOSTILE]

    lines = audit_lines(audit)
    assert len(lines) == api.state.calls
    limited = sum(line["result"] == "rate_limited" for line in lines)
    spent = sum(line["result"] == "quota_spent" for line in lines)
    assert limited > 0, "the sandbox's 3-per-second window answered 429s"
    timeline = page.text["timeline"]
    assert f"{limited:,} answered 429" in timeline
    assert f"{spent:,} said the daily quota was spent, and 0 left after waiting" in timeline
    ((number, _, _, calls, rate_limited, quota),) = page.table("timeline")[1:]
    assert (number, calls, rate_limited, quota) == ("1", str(len(lines)), str(limited), "")
    assert sum("answered 429" in title for title in page.svg_titles) >= 1
    assert f"{statuses['removed']} contacts were removed from 2 campaigns" in page.lead
    assert f"{len(lines)} API calls" in page.lead
    assert "Not verified" in page.text["verification"]
    assert {"Rows by outcome", "Calls per minute over the run"} <= set(page.svg_titles)
    assert f"{len(lines)} calls, at most" in timeline, "the chart's description"
    assert_self_contained(html)
    assert API_KEY not in html


def test_without_the_audit_log_the_timeline_counts_the_results_files_attempts(
    real_run: tuple[Path, Path, Sandbox],
) -> None:
    out, _, _ = real_run
    html, _ = make_page(out)
    page = read_page(html)
    attempts = sum(int(r["attempts"] or 0) for r in latest_records(out))
    ((_, _, _, calls, rate_limited, _),) = page.table("timeline")[1:]
    assert (calls, rate_limited) == (str(attempts), "0")
    assert "give it with --audit-log" in page.text["timeline"]


def test_a_results_file_resaved_by_a_spreadsheet_gives_the_same_figures(
    real_run: tuple[Path, Path, Sandbox], tmp_path: Path
) -> None:
    out, _, _ = real_run
    resaved = tmp_path / "results.csv"
    lines = out.read_text(encoding="utf-8").splitlines()
    records = [line.split(",") for line in lines]  # the run's cells hold no comma here
    resaved.write_text(
        "\ufeff"
        + "\r\n".join(";".join(r) for r in [[c.upper() for c in records[0]], *records[1:]]),
        encoding="utf-8",
    )
    same, again = read_page(make_page(out)[0]), read_page(make_page(resaved)[0])
    for section in ("totals", "campaigns", "needs-a-look", "timeline"):
        assert again.tables[section] == same.tables[section], section


# -- what customer files may hold ------------------------------------------------------------


def csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def test_hostile_ids_and_server_text_show_as_text_and_the_key_never_shows(
    tmp_path: Path,
) -> None:
    out = tmp_path / "<img src=x onerror=alert(1)>.csv"  # a file name is text too
    detail = f"</td></table><script>steal()</script> Bearer {API_KEY} {API_KEY[4:16]}"
    out.write_text(
        HEADER
        + f"1,{csv_cell(HOSTILE)},{csv_cell(ATTRIBUTE)},invalid,,,0,,bad id,2026-11-30T10:00:00Z\n"
        + f"2,cmp_a,{new_uuid(1)},rejected,404,{csv_cell('<b>code</b>')},1,req_1,"
        + f"{csv_cell(detail)},2026-11-30T10:00:01Z\n"
        + f"3,,{new_uuid(3)},invalid,,,0,,campaign_id is empty,2026-11-30T10:00:02Z\n",
        encoding="utf-8",
    )
    html, _ = make_page(out)
    assert_self_contained(html)
    assert "<script" not in html and "<b>" not in html
    assert API_KEY not in html and API_KEY[4:16] not in html
    page = read_page(html)
    listed = page.rows_by_first_cell("needs-a-look")
    assert listed["1"][:2] == [HOSTILE, ATTRIBUTE], "ids read back exactly, as text"
    assert listed["2"][3] == "<b>code</b>"
    assert listed["3"][0] == "(empty)", "an empty id is shown as such"
    assert listed["2"][4].startswith("</td></table><script>steal()</script> Bearer ***")
    assert HOSTILE in page.rows_by_first_cell("campaigns")
    assert "report '<img src=x onerror=alert(1)>.csv' --export" in page.text["needs-a-look"]


def test_a_pair_that_failed_counts_by_its_latest_answer(tmp_path: Path) -> None:
    """A rerun settled one failed pair; another failed twice: each counts once, as its
    latest record says (the rows' outcomes, as `report` counts them)."""
    at = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    settled, again = new_uuid(1), new_uuid(2)
    out = tmp_path / "results.csv"
    out.write_text(
        HEADER
        + f"1,cmp_a,{settled},failed,503,,6,,unavailable,2026-11-30T10:00:00Z\n"
        + f"2,cmp_a,{again},failed,503,,6,,unavailable,2026-11-30T10:00:01Z\n"
        + removed(3, at)
        + f"1,cmp_a,{settled},removed,204,,1,,,2026-11-30T11:00:00Z\n"
        + f"2,cmp_a,{again},failed,503,,6,,unavailable,2026-11-30T11:00:01Z\n",
        encoding="utf-8",
    )
    page = read_page(make_page(out)[0])
    totals = page.rows_by_first_cell("totals")
    assert (totals["removed"][1], totals["failed"][1], totals["rows"][1]) == ("2", "1", "3")
    assert [row[0] for row in page.table("needs-a-look")[1:]] == ["2"]
    assert page.rows_by_first_cell("campaigns")["cmp_a"][:2] == ["3", "2"]
    assert "20 API calls" in page.lead, "every attempt, the superseded records' too"
    assert page.lead.endswith("and 1 row needs a look.")


def test_a_large_results_file_gives_a_small_page_with_counts_of_the_rest(
    tmp_path: Path,
) -> None:
    n = 200_000
    start = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    i = pl.int_range(n)
    statuses = pl.Series(["removed"] * 8 + ["not_enrolled", "failed"])
    frame = pl.select(
        row=i + 1,
        campaign_id=pl.format("cmp_{}", (i % 300).cast(pl.String).str.zfill(3)),
        contact_id=pl.format("00000000-0000-4000-8000-{}", i.cast(pl.String).str.zfill(12)),
        status=pl.lit(statuses).gather(i % 10),
        http_status=pl.lit("204"),
        error_code=pl.lit(""),
        attempts=pl.lit("1"),
        request_id=pl.lit(""),
        detail=pl.lit(""),
        finished_at=(pl.lit(start) + pl.duration(milliseconds=i * 300)).dt.strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
    )
    out = tmp_path / "results.csv"
    frame.write_csv(out)
    html, _ = make_page(out)
    assert len(html.encode()) < 200_000, "aggregates and bounded lists only"
    page = read_page(html)
    failed = n // 10
    assert page.rows_by_first_cell("totals")["failed"][1] == f"{failed:,}"
    assert len(page.table("needs-a-look")) - 1 == 100
    assert f"{failed - 100:,} more not listed" in page.text["needs-a-look"]
    assert len(page.table("campaigns")) - 1 == 50
    listed_rows = sum(int(row[1].replace(",", "")) for row in page.table("campaigns")[1:])
    assert f"and 250 more campaigns with {n - listed_rows:,} rows" in page.text["campaigns"]
    # Row i is in campaign i % 300 with status i % 10: campaigns ending in 8 or 9 lost none.
    assert "were removed from 240 campaigns" in page.lead
    bars = [t for t in page.svg_titles if " calls" in t and "UTC, " in t]
    assert 0 < len(bars) <= MAX_BARS
    assert sum(int(t.split(": ")[1].split(" calls")[0].replace(",", "")) for t in bars) == n


# -- the timeline ----------------------------------------------------------------------------


def test_stretches_split_at_quiet_and_the_audit_log_gives_429s_and_quota_stops(
    tmp_path: Path,
) -> None:
    """A run that spent the daily quota, waited two hours for the reset (--wait-for-quota),
    then carried on."""
    out, audit = tmp_path / "results.csv", tmp_path / "audit.jsonl"
    first, second = datetime(2026, 11, 30, 10, 0, tzinfo=UTC), datetime(2026, 11, 30, 12, 0)
    second = second.replace(tzinfo=UTC)
    lines, records = [], [HEADER]
    for i in range(6):
        at = first + timedelta(minutes=i)
        result = "rate_limited" if i == 2 else ("quota_spent" if i == 5 else "removed")
        lines.append(audit_line(at, i + 1, result, pause=1.5 if result == "rate_limited" else 0))
        if result == "removed":
            records.append(removed(i + 1, at))
    for i in range(3):
        at = second + timedelta(minutes=i, seconds=30)
        lines.append(audit_line(at, 10 + i, "removed", quota=7000.0 if i == 0 else 0.0))
        records.append(removed(10 + i, at))
    out.write_text("".join(records), encoding="utf-8")
    audit.write_text("".join(lines) + '{"time": "2026-11-30T12:', encoding="utf-8")  # torn
    html, _ = make_page(out, "--audit-log", str(audit))
    page = read_page(html)
    stretches = page.table("timeline")[1:]
    assert [row[0] for row in stretches] == ["1", "2"]
    assert stretches[0][1:] == [
        "2026-11-30 10:00 UTC",
        "2026-11-30 10:06 UTC",
        "6",
        "1",
        "daily quota spent",
    ]
    assert stretches[1][1:] == [
        "2026-11-30 12:00 UTC",
        "2026-11-30 12:03 UTC",
        "3",
        "0",
        "waited for the daily quota",
    ]
    assert any(t.startswith("stretch 2 began 2026-11-30 12:00") for t in page.svg_titles)
    assert "in 2 stretches of work and 9 API calls" in page.lead
    assert "requests paused 2s in all" in page.text["timeline"]
    assert "1 said the daily quota was spent, and 1 left after waiting" in page.text["timeline"]
    marked = {t.split(", ")[0] for t in page.svg_titles if "quota spent or waited for" in t}
    assert marked == {"2026-11-30 10:04 UTC", "2026-11-30 12:00 UTC"}, "2-minute bars"


def audit_line(at: datetime, row: int, result: str, pause: float = 0.0, quota: float = 0.0) -> str:
    waited = {"pace": 0.1, "rate_limit_pause": pause, "retry_backoff": 0, "quota": quota}
    stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line = {"time": stamp, "row": row, "campaign_id": "cmp_a", "result": result, "waited": waited}
    return json.dumps(line) + "\n"


def removed(row: int, at: datetime) -> str:
    return f"{row},cmp_a,{new_uuid(row)},removed,204,,1,req,,{at:%Y-%m-%dT%H:%M:%SZ}\n"


def test_an_empty_audit_log_counts_no_calls(tmp_path: Path) -> None:
    out, audit = tmp_path / "results.csv", tmp_path / "audit.jsonl"
    out.write_text(HEADER + removed(1, datetime(2026, 11, 30, tzinfo=UTC)), encoding="utf-8")
    audit.write_bytes(b"")
    page = read_page(make_page(out, "--audit-log", str(audit))[0])
    assert page.table("timeline")[1][3] == "0", "the audit log saw no request"
    assert page.rows_by_first_cell("totals")["removed"][1] == "1"


def test_a_results_file_with_no_records_yet_says_so(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    out.write_text(HEADER, encoding="utf-8")
    page = read_page(make_page(out)[0])
    assert page.lead == "The results file results.csv holds no records yet: nothing was done."
    assert "No record has a readable time" in page.text["timeline"]
    assert "None: no row was rejected, failed or invalid" in page.text["needs-a-look"]


def test_a_month_long_job_still_draws_at_most_the_bars_a_chart_holds() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    minutes = [Minute(start + timedelta(hours=h), 10) for h in range(0, 24 * 30, 7)]
    drawn = timeline(minutes)
    assert 0 < len(drawn.bars) <= MAX_BARS
    assert sum(bar.calls for bar in drawn.bars) == drawn.calls == 10 * len(minutes)
    assert drawn.stretches_total == len(minutes), "7 hours of quiet between each"


def test_a_short_run_gets_bars_of_seconds() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    seconds = [Minute(start + timedelta(seconds=s), 25) for s in range(6)]
    drawn = timeline([Minute(start, 150)], fine=seconds)
    assert (drawn.bar_seconds, len(drawn.bars), drawn.calls) == (1, 6, 150)


# -- verify's section, and bad input ---------------------------------------------------------


@pytest.mark.slow
def test_the_verification_section_shows_what_verify_found(
    real_run: tuple[Path, Path, Sandbox],
) -> None:
    out, _, _ = real_run
    checked = VerifyFigures(
        checked_at=datetime(2026, 12, 2, 9, 30, tzinfo=UTC),
        pairs_checked=14,
        still_absent=12,
        enrolled_again=2,
        again_file="enrolled-again.csv",
    )
    page = read_page(render(page_figures(out, verify=checked)))
    section = page.text["verification"]
    assert "Checked every pair on or since 2026-12-02 09:30 UTC" in section
    assert "2 of 14 pairs checked are enrolled again" in section
    assert "enrolled-again.csv lists them to remove again" in section
    assert page.rows_by_first_cell("verification")["still not enrolled"] == ["12"]
    holds = VerifyFigures(None, 14, 14, 0, sampled=True)
    section = read_page(render(page_figures(out, verify=holds))).text["verification"]
    assert "a random sample" in section and "All 14 pairs checked are still not enrolled" in section


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--html", "{out}"], 2, "is the results file itself"),
        (["--html", "{tmp}/p.html", "--audit-log", "{tmp}/p.html"], 2, "is the --audit-log file"),
        (["--audit-log", "{tmp}/a.jsonl"], 2, "add --html FILE"),
        (["--html", "{tmp}/p.html", "--json"], 2, "--html writes the page alone"),
        (["--html", "{tmp}/p.html", "--audit-log", "{tmp}/none.jsonl"], 2, "--audit-log"),
        (["--html", "{tmp}/p.html", "--audit-log", "{tmp}/not-json.jsonl"], 2, "--audit-log"),
        (["--html", "{tmp}/no/such/dir/p.html"], 74, "cannot write --html"),
    ],
)
def test_bad_options_and_files_say_what_to_fix(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    out = tmp_path / "results.csv"
    out.write_text(HEADER + removed(1, datetime(2026, 11, 30, tzinfo=UTC)), encoding="utf-8")
    (tmp_path / "not-json.jsonl").write_text("row,campaign_id\n1,cmp_a\n", encoding="utf-8")
    filled = [a.format(out=out, tmp=tmp_path) for a in args]
    done = run_cli(["report", str(out), *filled], cli_env("http://x"))
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert out.read_text(encoding="utf-8").count("\n") == 2, "the results file is untouched"


def test_a_missing_results_file_is_a_clear_error(tmp_path: Path) -> None:
    done = run_cli(
        ["report", str(tmp_path / "none.csv"), "--html", str(tmp_path / "p.html")],
        cli_env("http://x"),
    )
    assert done.returncode == 74 and "cannot read" in done.stderr
    assert not (tmp_path / "p.html").exists()
