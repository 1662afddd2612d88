"""`bulk-unenroll report`: what any results file says, and rows exported to fix and feed back."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import QUICK, Serve

from bulk_unenroll import report
from bulk_unenroll.errors import InputError
from bulk_unenroll.results.records import HEADER
from bulk_unenroll.sandbox import Sandbox, SandboxThread

FORMULA = "=HYPERLINK(1)"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    """A results file with removed, not_enrolled, rejected (two deleted campaigns, one whose
    id starts with '-' and so is escaped in the results) and invalid rows. Read-only."""
    tmp_path = tmp_path_factory.mktemp("finished")
    enrolled = [("cmp_live", new_uuid(i)) for i in range(1, 16)]
    gone = [("cmp_gone", new_uuid(i)) for i in range(100, 104)]
    gone += [("-dash_campaign", new_uuid(i)) for i in range(200, 203)]
    rows = [
        *enrolled,
        ("cmp_live", new_uuid(300)),
        *gone,
        ("cmp_live", FORMULA),
        ("cmp_live", "not-a-uuid"),
    ]
    src = write_csv(tmp_path / "input.csv", rows)
    out = tmp_path / "results.csv"
    with SandboxThread(Sandbox(enrolled)) as server:
        result = run_cli(["run", str(src), "--out", str(out), *QUICK], cli_env(server.base_url))
    assert result.returncode == 1, result.stderr
    return out, gone


Finished = tuple[Path, list[tuple[str, str]]]


def test_report_matches_the_results_file(finished_run: Finished) -> None:
    out, _ = finished_run
    statuses = Counter(r["status"] for r in read_results(out))
    result = run_cli(["report", str(out), "--json"], cli_env("http://127.0.0.1:9"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 25
    assert {k: v for k, v in report["outcomes"].items() if v} == dict(statuses)
    assert report["outcomes"]["rejected"] == 7 and report["outcomes"]["invalid"] == 2
    assert report["error_codes"] == {"campaign_not_found": 7, "enrollment_not_found": 1}
    assert report["first_finished_at"] <= report["last_finished_at"]
    assert report["selected_statuses"] == ["rejected", "failed", "invalid"]
    assert report["selected_rows"] == 9

    text = run_cli(["report", str(out), "--status", "rejected"], cli_env("http://127.0.0.1:9"))
    assert "25 rows recorded" in text.stdout
    assert "campaign_not_found 7" in text.stdout
    assert "(status rejected)" in text.stdout


def test_exported_rows_fed_back_as_input_are_sent(
    tmp_path: Path, serve: Serve, finished_run: Finished
) -> None:
    out, gone = finished_run
    assert any(r["campaign_id"] == "'-dash_campaign" for r in read_results(out))
    fix = tmp_path / "fix.csv"
    result = run_cli(
        ["report", str(out), "--status", "failed,rejected", "--export", str(fix)],
        cli_env("http://127.0.0.1:9"),
    )
    assert result.returncode == 0, result.stderr
    assert "exported 7 row(s)" in result.stderr
    exported = pl.read_csv(fix, infer_schema=False)
    assert exported.columns[:2] == ["campaign_id", "contact_id"]
    assert set(exported["status"]) == {"rejected"}
    # Ids come back exactly as they were sent: the results file's ' is gone.
    assert sorted(exported.select("campaign_id", "contact_id").iter_rows()) == sorted(gone)

    # The campaigns are fixed (they exist now): the export is a working input file.
    api = Sandbox(gone)
    server = serve(api)
    again = tmp_path / "fix-results.csv"
    rerun = run_cli(["run", str(fix), "--out", str(again), *QUICK], cli_env(server.base_url))
    assert rerun.returncode == 0, rerun.stderr
    assert set(api.state.removed) == set(gone)
    assert Counter(r["status"] for r in read_results(again)) == {"removed": 7}


@pytest.mark.parametrize("suffix", [".parquet", ".xlsx"])
def test_parquet_and_excel_exports_read_back_as_input(
    tmp_path: Path, finished_run: Finished, suffix: str
) -> None:
    out, gone = finished_run
    fix = tmp_path / f"fix{suffix}"
    env = cli_env("http://127.0.0.1:9")
    result = run_cli(["report", str(out), "--status", "rejected", "--export", str(fix)], env)
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(fix) if suffix == ".parquet" else pl.read_excel(fix)
    assert sorted(frame.select("campaign_id", "contact_id").iter_rows()) == sorted(gone)
    planned = run_cli(["plan", str(fix), "--log-format", "json"], env)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stderr.splitlines()[-1])
    assert (plan["to_send"], plan["invalid"], plan["campaigns"]) == (7, 0, 2)


def test_every_export_format_is_written_piece_by_piece_alike(
    tmp_path: Path, finished_run: Finished, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON, workbooks, Parquet and JSON lines hold the same rows whether the selection is
    read in one piece or in pieces of 2 rows; JSON byte for byte as polars writes it whole."""
    out, _ = finished_run
    statuses = report.parse_statuses("rejected,invalid,not_enrolled,removed")
    suffixes = (".json", ".xlsx", ".parquet", ".jsonl")

    def exported(folder: str) -> dict[str, list[dict[str, object]]]:
        rows = {}
        with report.open_report(out, statuses) as found:
            pieces = len(found.pieces)
            for suffix in suffixes:
                dest = tmp_path / folder / f"rows{suffix}"
                dest.parent.mkdir(exist_ok=True)
                assert report.export_rows(found, dest, io.BytesIO()).rows == 25
                rows[suffix] = read(dest)
        assert (pieces > 1) == (folder == "pieces")
        return rows

    def read(dest: Path) -> list[dict[str, object]]:
        if dest.suffix == ".xlsx":
            frame = pl.read_excel(dest)
        elif dest.suffix == ".parquet":
            frame = pl.read_parquet(dest)
        elif dest.suffix == ".json":
            frame = pl.read_json(dest)
        else:
            frame = pl.read_ndjson(dest)
        return frame.with_columns(pl.all().cast(pl.String).fill_null("")).to_dicts()

    whole = exported("whole")
    monkeypatch.setattr(report, "CHUNK_ROWS", 2)
    assert exported("pieces") == whole
    for rows in whole.values():
        assert rows == whole[".parquet"]
    assert {r["status"] for r in whole[".json"]} == {
        "removed",
        "not_enrolled",
        "rejected",
        "invalid",
    }
    written = (tmp_path / "pieces" / "rows.json").read_bytes()
    assert written == pl.read_parquet(tmp_path / "whole" / "rows.parquet").write_json().encode()


def test_a_workbook_export_over_a_worksheets_rows_stops_before_writing(
    tmp_path: Path, finished_run: Finished, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = finished_run
    monkeypatch.setattr(report, "SHEET_ROWS", 8)
    dest = tmp_path / "fix.xlsx"
    with report.open_report(out, report.parse_statuses("rejected,invalid")) as found:
        with pytest.raises(
            InputError, match=r"9 rows to export, more than a worksheet holds \(8\)"
        ):
            report.export_rows(found, dest, io.BytesIO())
        assert report.export_rows(found, tmp_path / "fix.csv", io.BytesIO()).rows == 9
    assert list(tmp_path.iterdir()) == [tmp_path / "fix.csv"]


def test_csv_export_keeps_a_formula_inert(tmp_path: Path, finished_run: Finished) -> None:
    out, _ = finished_run
    csv_fix, parquet_fix = tmp_path / "bad.csv", tmp_path / "bad.parquet"
    env = cli_env("http://127.0.0.1:9")
    for dest in (csv_fix, parquet_fix):
        result = run_cli(["report", str(out), "--status", "invalid", "--export", str(dest)], env)
        assert result.returncode == 0, result.stderr
    # Not an id, so never sent; in a CSV a spreadsheet would run it, so it keeps its '.
    assert "'" + FORMULA in set(pl.read_csv(csv_fix, infer_schema=False)["contact_id"])
    assert FORMULA in set(pl.read_parquet(parquet_fix)["contact_id"])


def test_report_reads_a_killed_runs_file(tmp_path: Path) -> None:
    """An uncompacted file (a failed row later removed) with a torn last line."""
    out = tmp_path / "results.csv"
    lines = [
        f"1,cmp_a,{new_uuid(1)},failed,503,service_unavailable,6,req_1,x,2026-01-01T10:00:00Z",
        f"2,cmp_a,{new_uuid(2)},removed,200,,1,req_2,,2026-01-01T10:00:05Z",
        f"1,cmp_a,{new_uuid(1)},removed,200,,1,req_3,,2026-01-01T11:00:00Z",
        f"3,cmp_a,{new_uuid(3)},remo",
    ]
    out.write_text(HEADER + "\n".join(lines), encoding="utf-8")
    result = run_cli(["report", str(out), "--json"], cli_env("http://127.0.0.1:9"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 2
    assert report["outcomes"]["removed"] == 2 and report["outcomes"]["failed"] == 0
    assert report["first_finished_at"] == "2026-01-01T10:00:05Z"
    assert report["last_finished_at"] == "2026-01-01T11:00:00Z"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--status", "removed,gone"], 2, "'gone' is not a status"),
        (["--export", "fix.txt"], 2, "use .csv, .parquet, .xlsx, .json, .jsonl"),
        (["--export", "{out}"], 2, "is the results file itself"),
        *(
            (["--export", f"{{tmp}}/missing/fix{suffix}"], 2, "No such file or directory")
            for suffix in (".xlsx", ".json", ".parquet", ".csv")
        ),
    ],
)
def test_report_usage_errors(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    out = tmp_path / "results.csv"
    out.write_text(HEADER, encoding="utf-8")
    args = [a.replace("{out}", str(out)).replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli(["report", str(out), *args], cli_env("http://127.0.0.1:9"))
    assert result.returncode == code
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_report_of_a_foreign_file_exits_74(tmp_path: Path) -> None:
    env = cli_env("http://127.0.0.1:9")
    other = write_csv(tmp_path / "input.csv", [("cmp_a", new_uuid(1))])
    foreign = run_cli(["report", str(other)], env)
    assert foreign.returncode == 74
    assert "not a bulk_unenroll results file" in foreign.stderr
    missing = run_cli(["report", str(tmp_path / "nope.csv")], env)
    assert missing.returncode == 74 and "cannot read" in missing.stderr
