"""Everyday paths a user meets, through the real CLI: workbooks with several sheets, input
from stdin, `report` printing rows, the audit log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import cli_env, new_uuid, read_results, run_cli

from bulk_unenroll.sandbox import Sandbox, SandboxThread

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
