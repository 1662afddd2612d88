"""Everyday paths a user meets, through the real CLI: workbooks with several sheets, input
from stdin, `report` printing rows, the audit log."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from conftest import CLI_TIMEOUT, cli_env, new_uuid, read_results, run_cli

from bulk_unenroll.sandbox import Limits, Sandbox, SandboxThread

Serve = Callable[[Sandbox], SandboxThread]
FAST = ["--rate", "200/s", "--yes"]
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
    result = run_cli(["run", str(book), "--out", str(out), *FAST], cli_env(server.base_url))
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
    args = ["run", "-", "--out", str(out), "--summary-json", str(summary), *FAST]

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
