"""Everyday paths a user meets, through the real CLI: workbooks with several sheets, input
from stdin, `report` printing rows, the audit log."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import API_KEY, CLI_TIMEOUT, cli_env, new_uuid, read_results, run_cli
from helpers import QUICK_YES, Serve, sandbox_command

from bulk_unenroll.api.pacing import time_scale
from bulk_unenroll.config import ReadOptions
from bulk_unenroll.sandbox import Faults, Limits, Sandbox, SandboxThread, build_from_options

NO_API = cli_env("http://127.0.0.1:9/api-gateway")
U1, U2, U3 = new_uuid(1), new_uuid(2), new_uuid(3)


# -- workbooks with several sheets -------------------------------------------------------------


def _workbook(path: Path, sheets: dict[str, list[list[str]]]) -> Path:
    xlsxwriter = pytest.importorskip("xlsxwriter")
    with xlsxwriter.Workbook(path) as wb:
        for name, rows in sheets.items():
            sheet = wb.add_worksheet(name)
            for i, row in enumerate(rows):
                sheet.write_row(i, 0, row)
    return path


def test_a_notes_sheet_in_front_is_passed_over_for_the_one_with_ids(
    tmp_path: Path, serve: Serve
) -> None:
    book = _workbook(
        tmp_path / "requests.xlsx",
        {
            "Read me": [["Unsubscribe requests, March"], ["exported by Sam"]],
            "To remove": [["Campaign ID", "Contact ID"], ["cmp_a", U1], ["cmp_a", U2]],
        },
    )
    api = Sandbox([("cmp_a", U1), ("cmp_a", U2)])
    server = serve(api)
    out = tmp_path / "results.csv"
    result = run_cli(["run", str(book), "--out", str(out), *QUICK_YES], cli_env(server.base_url))
    assert result.returncode == 0, result.stderr
    assert "reading sheet 'To remove': the first sheet, 'Read me', has no id columns" in (
        result.stderr
    )
    assert sorted(r["status"] for r in read_results(out)) == ["removed", "removed"]
    assert not api.state.enrolled


def test_several_sheets_with_ids_are_named_and_sheet_is_matched_loosely(tmp_path: Path) -> None:
    ids = [["campaign_id", "contact_id"], ["cmp_a", U1]]
    book = _workbook(tmp_path / "book.xlsx", {"Notes": [["nothing"]], "March": ids, "April ": ids})
    out = str(tmp_path / "r.csv")
    ambiguous = run_cli(["plan", str(book)], NO_API)
    assert ambiguous.returncode == 2
    assert "Traceback" not in ambiguous.stderr
    assert "'March', 'April ' all have them: choose one with --sheet NAME" in ambiguous.stderr

    chosen = run_cli(["run", str(book), "--out", out, "--sheet", " april", "--dry-run"], NO_API)
    assert chosen.returncode == 0, chosen.stderr
    assert "to send                             1" in chosen.stderr


def test_a_workbook_without_id_columns_names_its_sheets(tmp_path: Path) -> None:
    book = _workbook(tmp_path / "book.xlsx", {"Notes": [["nothing"]], "Data": [["a", "b"]]})
    result = run_cli(["plan", str(book)], NO_API)
    assert result.returncode == 2
    assert "no contact_id column" in result.stderr
    assert "its sheets are: 'Notes', 'Data'; pick one with --sheet NAME" in result.stderr


# -- input from stdin --------------------------------------------------------------------------


def pipe_cli(args: list[str], rows: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`... | bulk-unenroll ARGS`: the rows arrive on a pipe, as in a shell pipeline."""
    return subprocess.run(
        [sys.executable, "-m", "bulk_unenroll", *args],
        input=rows,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def test_rows_piped_on_stdin_are_sent_and_a_rerun_resumes_by_pair(
    tmp_path: Path, serve: Serve
) -> None:
    pairs = [("cmp_a", new_uuid(i)) for i in range(1, 7)]
    api = Sandbox(pairs, limits=Limits(per_day=4, day_seconds=3600))
    server = serve(api)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = cli_env(server.base_url, TMPDIR=str(scratch))
    out = tmp_path / "results.csv"
    summary = tmp_path / "summary.json"
    text = "campaign_id,contact_id\n" + "".join(f"{c},{u}\n" for c, u in pairs)
    args = ["run", "-", "--out", str(out), "--summary-json", str(summary), *QUICK_YES]

    first = pipe_cli(args, text, env)
    assert first.returncode == 75, first.stderr  # the quota stop: 4 of 6 sent
    assert "plan for -:" in first.stderr
    assert json.loads(summary.read_text())["input"] == "-"
    assert len(read_results(out)) == 4
    assert list(scratch.iterdir()) == [], "the copy of stdin is removed at exit"

    api.limits.per_day = None  # the quota resets; the same rows come down the pipe, reordered
    reordered = "contact_id,campaign_id\n" + "".join(f"{u},{c}\n" for c, u in reversed(pairs))
    second = pipe_cli(args, reordered, env)
    assert second.returncode == 0, second.stderr
    assert "settled by an earlier run           4" in second.stderr
    assert sorted(r["status"] for r in read_results(out)) == ["removed"] * 6
    assert all(n == 1 for n in api.state.deletes.values()), "no pair sent twice"
    assert len(api.state.deletes) == 6 and not api.state.enrolled


def test_bad_rows_on_stdin_are_named_as_stdin(tmp_path: Path) -> None:
    header_only = pipe_cli(["plan", "-"], "campaign_id,contact_id\n", NO_API)
    assert header_only.returncode == 2
    assert header_only.stderr.strip() == (
        "error: stdin has a header but no data rows: nothing to do"
    )
    parquet = tmp_path / "pairs.parquet"
    pl.DataFrame({"campaign_id": ["cmp_a"], "contact_id": [U1]}).write_parquet(parquet)
    with parquet.open("rb") as stdin:
        piped = subprocess.run(
            [sys.executable, "-m", "bulk_unenroll", "plan", "-"],
            stdin=stdin,
            env=NO_API,
            capture_output=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
    assert piped.returncode == 0, piped.stderr
    assert b"to send                             1" in piped.stderr


# -- report prints the rows --------------------------------------------------------------------


@pytest.fixture(scope="module")
def results_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Removed rows, two rejected for good (a deleted campaign), a formula and a not-a-UUID
    (invalid), one not enrolled. Read-only."""
    tmp_path = tmp_path_factory.mktemp("report")
    enrolled = [("cmp_live", new_uuid(i)) for i in range(1, 5)]
    rows = [
        *enrolled,
        ("cmp_gone", new_uuid(50)),
        ("cmp_gone", new_uuid(51)),
        ("cmp_live", "=HYPERLINK(1)"),
        ("cmp_live", "not-a-uuid"),
        ("cmp_live", new_uuid(99)),
    ]
    src = tmp_path / "input.csv"
    src.write_text(
        "campaign_id,contact_id\n" + "".join(f"{c},{u}\n" for c, u in rows), encoding="utf-8"
    )
    out = tmp_path / "results.csv"
    # One at a time: row 6 leaves only after row 5's campaign_not_found, so it is never sent.
    args = ["run", str(src), "--out", str(out), *QUICK_YES, "--concurrency", "1"]
    with SandboxThread(Sandbox(enrolled)) as server:
        result = run_cli(args, cli_env(server.base_url))
    assert result.returncode == 1, result.stderr
    return out


def test_report_prints_the_rows_that_need_a_look(results_file: Path) -> None:
    result = run_cli(["report", str(results_file)], NO_API)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("row "))
    table = lines[header + 1 :]
    assert len(table) == 4  # two rejected, two invalid; one line each off a terminal
    assert f"cmp_gone     {new_uuid(50)}  rejected  404   campaign_not_found" in table[0]
    assert "=HYPERLINK(1)" in result.stdout and "'=HYPERLINK" not in result.stdout
    assert "contact_id is not a UUID" in result.stdout
    assert new_uuid(1) not in result.stdout  # removed rows are not selected


def test_report_rows_as_csv_and_json_lines_on_stdout(results_file: Path) -> None:
    as_csv = run_cli(["report", str(results_file), "--format", "csv"], NO_API)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["status"] for r in rows] == ["rejected", "rejected", "invalid", "invalid"]
    assert list(rows[0]) == list(read_results(results_file)[0])  # the results file's columns
    assert rows[2]["contact_id"] == "'=HYPERLINK(1)"  # CSV keeps a formula inert
    assert "selected rows                    4" in as_csv.stderr  # the counts, off stdout

    as_jsonl = run_cli(
        ["report", str(results_file), "--format", "jsonl", "--status", "rejected,invalid"], NO_API
    )
    assert as_jsonl.returncode == 0, as_jsonl.stderr
    records = [json.loads(line) for line in as_jsonl.stdout.splitlines()]
    assert [(r["row"], r["http_status"]) for r in records] == [
        (5, 404),
        (6, None),
        (7, None),
        (8, None),
    ]
    assert records[2]["contact_id"] == "=HYPERLINK(1)"  # the value itself, not the escape

    both = run_cli(["report", str(results_file), "--json", "--format", "csv"], NO_API)
    assert both.returncode == 2
    assert both.stderr.strip() == "error: --json and --format csv both write to stdout; choose one"


def test_export_to_stdout_leaves_out_dead_campaigns_and_says_so(
    results_file: Path, tmp_path: Path, serve: Serve
) -> None:
    exported = run_cli(["report", str(results_file), "--export", "-"], NO_API)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [r["status"] for r in rows] == ["invalid", "invalid"]
    assert "left out 2 rejected row(s) whose campaign does not exist (campaign_not_found)" in (
        exported.stderr
    )
    chosen = run_cli(["report", str(results_file), "--export", "-", "--status", "rejected"], NO_API)
    assert len(list(csv.DictReader(io.StringIO(chosen.stdout)))) == 2
    assert "2 of them were rejected because their campaign does not exist" in chosen.stderr

    # The campaign is restored: the chosen rows go straight back in through a pipe.
    api = Sandbox([("cmp_gone", new_uuid(50)), ("cmp_gone", new_uuid(51))])
    server = serve(api)
    out = tmp_path / "fix-results.csv"
    rerun = pipe_cli(
        ["run", "-", "--out", str(out), *QUICK_YES], chosen.stdout, cli_env(server.base_url)
    )
    assert rerun.returncode == 0, rerun.stderr
    assert not api.state.enrolled


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_exports_read_back_as_input(results_file: Path, tmp_path: Path, suffix: str) -> None:
    fix = tmp_path / f"fix{suffix}"
    result = run_cli(
        ["report", str(results_file), "--status", "rejected", "--export", str(fix)], NO_API
    )
    assert result.returncode == 0, result.stderr
    planned = run_cli(["plan", str(fix), "--log-format", "json"], NO_API)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stderr.splitlines()[-1])
    assert (plan["to_send"], plan["invalid"], plan["campaigns"]) == (2, 0, 1)


# -- the audit log -----------------------------------------------------------------------------


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_audit_log_has_one_line_per_request_and_why_it_waited(
    tmp_path: Path, serve: Serve
) -> None:
    pairs = [("cmp_a", new_uuid(i)) for i in range(1, 9)]
    # A strict 2-per-second window against --rate 10/s: 429s with Retry-After 1. The seed's
    # first roll makes the first request a 500: a retry after a backoff.
    api = Sandbox(
        pairs,
        limits=Limits(per_window=2, window=1.0),
        faults=Faults(html_500=0.2),
        seed=1,
    )
    server = serve(api)
    src = tmp_path / "input.csv"
    src.write_text(
        "campaign_id,contact_id\n" + "".join(f"{c},{u}\n" for c, u in pairs), encoding="utf-8"
    )
    out, audit = tmp_path / "results.csv", tmp_path / "audit.jsonl"
    args = ["run", str(src), "--out", str(out), "--audit-log", str(audit), "--yes"]
    result = run_cli([*args, "--rate", "10/s", "--max-retries", "20"], cli_env(server.base_url))
    assert result.returncode == 0, result.stderr

    lines = audit_lines(audit)
    assert len(lines) == api.state.calls, "one line per request the server saw"
    assert API_KEY not in audit.read_text(encoding="utf-8")
    assert set(lines[0]) == {
        "time", "row", "campaign_id", "contact_id", "attempt", "http_status", "error_code",
        "request_id", "error", "result", "duration_ms", "waited", "waited_for",
    }  # fmt: skip
    assert set(lines[0]["waited"]) == {
        "pace",
        "rate_limit_pause",
        "retry_backoff",
        "quota",
        "other",
    }
    assert lines[0]["time"].endswith("Z") and lines[0]["duration_ms"] >= 0
    # Each row's attempts in order; its last line is the answer the results file records.
    by_row: dict[int, list[dict[str, Any]]] = {}
    for line in lines:
        by_row.setdefault(line["row"], []).append(line)
    for record in read_results(out):
        attempts = by_row[int(record["row"])]
        assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
        assert attempts[-1]["request_id"] == record["request_id"]
        assert attempts[-1]["result"] == record["status"] == "removed"

    first = by_row[1]
    assert (first[0]["http_status"], first[0]["result"]) == (500, "transient")
    assert first[1]["waited"]["retry_backoff"] > 0
    limited = [line for line in lines if line["http_status"] == 429]
    assert limited and all(line["result"] == "rate_limited" for line in limited)
    for line in limited:  # the row's next attempt sat out the Retry-After pause
        after = by_row[line["row"]][line["attempt"]]
        assert after["waited"]["rate_limit_pause"] >= 0.5
    assert any(line["waited_for"] == "pace" for line in lines)

    # Append-only: a rerun (nothing left to send here) adds, never rewrites.
    before = audit.read_text(encoding="utf-8")
    again = run_cli([*args, "--rate", "10/s"], cli_env(server.base_url))
    assert again.returncode == 0, again.stderr
    assert audit.read_text(encoding="utf-8") == before


def test_an_audit_log_that_cannot_be_opened_stops_before_sending(
    tmp_path: Path, serve: Serve
) -> None:
    api = Sandbox([("cmp_a", U1)])
    server = serve(api)
    src = tmp_path / "input.csv"
    src.write_text(f"campaign_id,contact_id\ncmp_a,{U1}\n", encoding="utf-8")
    audit = tmp_path / "no-such-folder" / "audit.jsonl"
    result = run_cli(
        ["run", str(src), "--out", str(tmp_path / "r.csv"), "--audit-log", str(audit), *QUICK_YES],
        cli_env(server.base_url),
    )
    assert result.returncode == 74, result.stderr
    assert f"cannot open --audit-log {audit}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert api.state.calls == 0


# -- a rehearsal in the sandbox ----------------------------------------------------------------


@pytest.mark.slow
def test_a_rehearsal_with_a_short_day_shows_the_quota_stop_and_the_reset(tmp_path: Path) -> None:
    """`sandbox --limit-plan starter --day-seconds 10`: the day is 8,640 times shorter and so
    is the plan's minute, so the run (pace learnt from the headers) spends a day's 100 calls
    at once, waits for the reset and finishes: 150 rows take two quota days."""
    rows = [("cmp_a", new_uuid(i)) for i in range(1, 151)]
    src = tmp_path / "migration.csv"
    src.write_text(
        "campaign_id,contact_id\n" + "".join(f"{c},{u}\n" for c, u in rows), encoding="utf-8"
    )
    options = ["--enroll-from", str(src), "--limit-plan", "starter", "--day-seconds", "10"]
    with sandbox_command(tmp_path / "url", *options) as sandbox:
        out = tmp_path / "rehearsal.csv"
        # Quota days are 10 s slices of the clock. Begun late in one, the run would split its
        # first 100 calls over two days (60 + 90), never spend a day's quota and never wait:
        # start in the first 3 s of a day, so 100 calls (a fraction of a second) fit in it.
        if (into_day := time.time() % 10) > 3:
            time.sleep(10 - into_day)
        result = run_cli(
            ["run", str(src), "--out", str(out), "--wait-for-quota", "--yes"],
            cli_env(sandbox.url),
            timeout=60,
        )
    banner = sandbox.banner
    assert "time runs 8640x faster: a quota day of 100 calls lasts 10 s" in banner
    assert result.returncode == 0, result.stderr
    assert "starter plan, pacing at 1,411/s (the sandbox runs time 8640x faster)" in (result.stderr)
    assert "daily quota spent: waiting until the reset" in result.stderr
    assert sorted({r["status"] for r in read_results(out)}) == ["removed"]
    assert len(read_results(out)) == 150


def _sandbox_limits(**options: Any) -> Limits:
    """The limits `bulk-unenroll sandbox` would enforce with these options."""
    defaults = dict(
        enroll_from=None,
        enrolled_fraction=1.0,
        unknown_campaign=(),
        limit_plan=None,
        rate_limit=None,
        daily_quota=None,
        day_seconds=86_400.0,
        latency=0.0,
        faults="",
        require_key=None,
        seed=None,
    )
    return build_from_options(ReadOptions(), **{**defaults, **options}).limits


def test_a_short_day_shortens_the_plans_minute_but_not_a_rate_given_as_such() -> None:
    pro = _sandbox_limits(limit_plan="pro", day_seconds=300.0)
    assert (pro.per_window, pro.per_day, pro.time_scale) == (50, 1000, 288)
    assert pro.window == pytest.approx(60 / 288)
    given = _sandbox_limits(limit_plan="pro", rate_limit="5/s", day_seconds=300.0)
    assert (given.per_window, given.window, given.per_day, given.time_scale) == (5, 1.0, 1000, 1)
    assert _sandbox_limits(limit_plan="pro").time_scale == 1.0


def test_only_a_sandbox_on_this_machine_can_speed_a_run_up() -> None:
    faster = {"x-sandbox-time-scale": "288"}
    assert time_scale(faster, "http://127.0.0.1:40123/api-gateway") == 288
    assert time_scale(faster, "https://data.leadlex.com/functions/v1/api-gateway") is None
    assert time_scale({"x-sandbox-time-scale": "inf"}, "http://localhost:1/") is None
    assert time_scale({}, "http://localhost:1/") is None


# -- finding an unknown limit ------------------------------------------------------------------


@pytest.mark.solo
@pytest.mark.parametrize(
    ("per_second", "time_scale", "starting_at"),
    [
        pytest.param(100, 60, "49/s", id="the-api-minute"),
        pytest.param(50, 12, "9.8/s", id="a-gateway-second"),
    ],
)
def test_an_unknown_limit_is_found_and_shown_for_the_next_run(
    tmp_path: Path, serve: Serve, per_second: int, time_scale: float, starting_at: str
) -> None:
    """A custom tier (a daily limit of no published plan) in a sandbox running time faster,
    whose window of one second allows `per_second` calls. Running 60x faster, that second is
    the API's minute; running 12x faster, the minute is 5 s and the one-second window is a
    gateway's. The run starts at Pro's pace, probes up to the first 429, tells which window
    refused, holds what that window accepted and says what to pass as --rate."""
    # The first 429 comes at about the 72nd call (2.4 s) at 50/s and the 101st at 100/s: the
    # rest of 200 pairs shows the pace held after it.
    pairs = [("cmp_a", new_uuid(i)) for i in range(1, 201)]
    limits = Limits(
        per_window=per_second, window=1.0, per_day=5000, day_seconds=1440, time_scale=time_scale
    )
    api = Sandbox(pairs, limits=limits)
    server = serve(api)
    src = tmp_path / "input.csv"
    src.write_text(
        "campaign_id,contact_id\n" + "".join(f"{c},{u}\n" for c, u in pairs), encoding="utf-8"
    )
    summary = tmp_path / "summary.json"
    result = run_cli(
        ["run", str(src), "--out", str(tmp_path / "r.csv"), "--summary-json", str(summary)],
        cli_env(server.base_url),
    )
    assert result.returncode == 0, result.stderr
    assert f"daily limit 5,000 is no published plan: starting at pro's {starting_at}" in (
        result.stderr
    )
    assert api.state.rate_limited >= 1, "the probe never reached the limit: the test proves nothing"
    learnt = json.loads(summary.read_text())["learnt_rate"]
    assert learnt.endswith("/s"), "the window that refused is a second, not the API's minute"
    calls = int(learnt.removesuffix("/s"))
    assert 0 < calls <= per_second, "more than the window accepted"
    assert f"found the limit: the API accepted {calls} calls in 1s before its first 429" in (
        result.stderr
    )
    shown = [line.split() for line in result.stdout.splitlines() if "limit found" in line]
    assert shown == [["limit", "found", learnt, "(next", "time", "pass", "--rate", f"{learnt})"]]
    assert not api.state.enrolled
