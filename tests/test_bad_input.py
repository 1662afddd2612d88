"""Broken and oddly made input files, through the real CLI: each gets its one right answer.

The corpus is `tests/bad_inputs/`, its answers in `answers.toml`: a file-level problem exits 2
with a message that says what to do and sends nothing; a row-level problem makes that row
`invalid` with the reason in `detail` while the other rows are sent.
"""

from __future__ import annotations

import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import QUICK_YES, Serve

from bulk_unenroll.sandbox import Sandbox

CORPUS = Path(__file__).parent / "bad_inputs"
ANSWERS: dict[str, dict[str, Any]] = tomllib.loads((CORPUS / "answers.toml").read_text())
REFUSED = sorted(name for name, answer in ANSWERS.items() if "refused" in answer)
READ = sorted(name for name, answer in ANSWERS.items() if "sent" in answer)
DRY_ENV = cli_env("http://127.0.0.1:9/api-gateway")


def test_every_corpus_file_has_an_answer() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name not in ("answers.toml", ".gitattributes")}
    assert files == set(ANSWERS)


def assert_refused(result: Any, says: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "one clear line"


@pytest.mark.parametrize("name", REFUSED)
def test_a_broken_file_is_refused_before_anything_is_sent(
    name: str, tmp_path: Path, serve: Serve
) -> None:
    says = ANSWERS[name]["refused"]
    src = str(CORPUS / name)
    api = Sandbox(campaigns=["cmp_spring"])
    server = serve(api)
    out = tmp_path / "results.csv"
    with ThreadPoolExecutor(2) as pool:  # a dry run (no key) and a real run, side by side
        dry = pool.submit(
            run_cli, ["run", src, "--out", str(tmp_path / "dry.csv"), "--dry-run"], DRY_ENV
        )
        real = pool.submit(
            run_cli, ["run", src, "--out", str(out), *QUICK_YES], cli_env(server.base_url)
        )
    assert_refused(dry.result(), says)
    assert_refused(real.result(), says)
    assert api.state.calls == 0
    assert not out.exists() or not read_results(out)


@pytest.mark.parametrize("name", READ)
def test_an_odd_file_is_read_and_its_bad_rows_explained(
    name: str, tmp_path: Path, serve: Serve
) -> None:
    answer = ANSWERS[name]
    sent = {tuple(pair) for pair in answer["sent"]}
    invalid = {int(row): words for row, words in answer.get("invalid", {}).items()}
    api = Sandbox(campaigns={campaign for campaign, _ in sent})  # nothing enrolled: not_enrolled
    server = serve(api)
    out = tmp_path / "results.csv"

    result = run_cli(
        ["run", str(CORPUS / name), "--out", str(out), *QUICK_YES], cli_env(server.base_url)
    )

    assert "Traceback" not in result.stderr
    assert result.returncode == (1 if invalid else 0), result.stderr
    assert set(api.state.deletes) == sent
    assert all(count == 1 for count in api.state.deletes.values())
    records = sorted(read_results(out), key=lambda r: int(r["row"]))
    assert [int(r["row"]) for r in records] == list(range(1, len(sent) + len(invalid) + 1))
    for record in records:
        row = int(record["row"])
        if row in invalid:
            assert record["status"] == "invalid", record
            assert invalid[row] in record["detail"], record
        else:
            assert record["status"] == "not_enrolled", record


def test_a_bad_campaign_option_is_a_usage_error_not_a_row_per_contact(
    tmp_path: Path, serve: Serve
) -> None:
    src = write_csv(
        tmp_path / "contacts.csv", [(new_uuid(i),) for i in range(1, 50)], ("contact_id",)
    )
    api = Sandbox(campaigns=["cmp_spring"])
    server = serve(api)
    out = tmp_path / "results.csv"
    result = run_cli(
        ["run", str(src), "--out", str(out), "--campaign", "cmp spring", *QUICK_YES],
        cli_env(server.base_url),
    )
    assert_refused(result, "--campaign 'cmp spring' is not a campaign id")
    assert api.state.calls == 0
    assert not out.exists()


def test_a_missing_sheet_names_the_sheets_there_are(tmp_path: Path) -> None:
    xlsxwriter = pytest.importorskip("xlsxwriter")
    book = tmp_path / "export.xlsx"
    with xlsxwriter.Workbook(book) as wb:
        wb.add_worksheet("Contacts").write_row(0, 0, ["campaign_id", "contact_id"])
        wb.add_worksheet("Notes")
    result = run_cli(
        ["run", str(book), "--out", str(tmp_path / "r.csv"), "--sheet", "Sheet1", "--dry-run"],
        DRY_ENV,
    )
    assert_refused(result, "has no sheet named 'Sheet1'; its sheets are: 'Contacts', 'Notes'")


def test_a_10_mb_cell_is_one_invalid_row_and_does_not_bloat_the_results(
    tmp_path: Path, serve: Serve
) -> None:
    good = ("cmp_spring", new_uuid(1))
    src = tmp_path / "giant.csv"
    src.write_text(
        "campaign_id,contact_id,note\n"
        f"cmp_spring,{'f' * (10 << 20)},x\n"
        f'{good[0]},{good[1]},"{"a" * (10 << 20)}"\n',
        encoding="utf-8",
    )
    api = Sandbox(campaigns=["cmp_spring"])
    server = serve(api)
    out = tmp_path / "results.csv"

    result = run_cli(["run", str(src), "--out", str(out), *QUICK_YES], cli_env(server.base_url))

    assert result.returncode == 1, result.stderr
    first, second = read_results(out)
    assert first["status"] == "invalid"
    assert first["detail"] == "contact_id is 10485760 characters long: not an id"
    assert len(first["contact_id"]) < 300, "the shown value is cut short"
    assert second["status"] == "not_enrolled"
    assert set(api.state.deletes) == {good}
    assert out.stat().st_size < 10_000


def test_a_million_duplicate_rows_are_planned_as_one_call(tmp_path: Path) -> None:
    src = tmp_path / "dupes.csv"
    line = f"cmp_spring,{new_uuid(7)}\n"
    src.write_text("campaign_id,contact_id\n" + line * 1_000_000, encoding="utf-8")

    result = run_cli(["run", str(src), "--out", str(tmp_path / "r.csv"), "--dry-run"], DRY_ENV)

    assert result.returncode == 0, result.stderr
    plan = result.stdout + result.stderr
    assert "1,000,000" in plan  # rows read
    assert "999,999" in plan  # duplicates, sent once
