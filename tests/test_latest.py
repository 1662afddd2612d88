"""Results files read streamed (`records.latest`, `report`, compaction): the figures and rows
equal a plain reading of the same file, record by record, in every form a file comes in."""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from conftest import cli_env, new_uuid, run_cli

from bulk_unenroll import report
from bulk_unenroll.errors import ResultsFileError
from bulk_unenroll.models import RUN_OUTCOMES, Outcome
from bulk_unenroll.results import records
from bulk_unenroll.results.journal import Journal
from bulk_unenroll.results.records import COLUMNS, HEADER
from bulk_unenroll.scrub import redact, redact_column, remember

WITHOUT_CALL = ("invalid", "duplicate")
ANSWERS = {
    "removed": ("200", ""),
    "not_enrolled": ("404", "enrollment_not_found"),
    "rejected": ("404", "campaign_not_found"),
    "failed": ("503", "service_unavailable"),
    "invalid": ("", ""),
    "duplicate": ("", ""),
}


def history(seed: int, n: int = 400) -> list[list[str]]:
    """Records of several runs over a few pairs: failed ones answered later, invalid and
    duplicate rows recorded again under the same or another row number, escaped cells."""
    rnd = random.Random(seed)
    pairs = [(rnd.choice(("cmp_a", "cmp_b", "'-cmp_c")), new_uuid(i)) for i in range(n // 3)]
    rows = []
    for i in range(n):
        status = rnd.choice([*ANSWERS, "failed", "removed"])
        campaign, contact = rnd.choice(pairs)
        if status in WITHOUT_CALL and rnd.random() < 0.5:
            contact = rnd.choice(("not-a-uuid", "'=1+1", ""))
        http, code = ANSWERS[status]
        second = rnd.randrange(60)
        row = str(rnd.randrange(1, n // 4))
        rows.append(
            [
                row,
                campaign,
                contact,
                status,
                http,
                code,
                "1",
                f"req_{i}" if http else "",
                rnd.choice(("", "'=HYPERLINK(1)", "upstream, timed out")),
                f"2026-01-0{1 + i % 9}T00:00:{second:02d}Z",
            ]
        )
    return rows


def plain_latest(lines: list[list[str]]) -> list[dict[str, str]]:
    """The rules of the file, the plain way: the last record per pair (per row and cells for
    a row recorded without a call), in file order."""
    last: dict[tuple[str, ...], int] = {}
    for at, cells in enumerate(lines):
        record = dict(zip(COLUMNS, cells, strict=True))
        if record["status"] in WITHOUT_CALL:
            last[(record["row"], record["campaign_id"], record["contact_id"], "row")] = at
        else:
            last[(record["campaign_id"], record["contact_id"])] = at
    return [dict(zip(COLUMNS, lines[at], strict=True)) for at in sorted(last.values())]


def write_canonical(path: Path, lines: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([COLUMNS, *lines])
    return path


def write_resaved(path: Path, lines: list[list[str]]) -> Path:
    """As a spreadsheet saves it: a byte-order mark, semicolons, CRLF, columns moved and
    renamed in case, a column added."""
    order = ["status", *[c for c in COLUMNS if c != "status"]]
    with path.open("w", newline="", encoding="utf-8") as f:
        f.write(codecs.BOM_UTF8.decode())
        writer = csv.writer(f, delimiter=";", lineterminator="\r\n")
        writer.writerow(["Note", *(c.title() for c in order)])
        for cells in lines:
            record = dict(zip(COLUMNS, cells, strict=True))
            writer.writerow(["x", *(record[c] for c in order)])
    return path


def write_torn(path: Path, lines: list[list[str]]) -> Path:
    """A run killed mid-record: the last record is cut short (and is not a record)."""
    write_canonical(path, lines)
    path.write_bytes(path.read_bytes() + b"7,cmp_a,00000000-0000-4000-8000-00000000")
    return path


def expected_figures(latest: list[dict[str, str]]) -> dict[str, object]:
    statuses = Counter(r["status"] for r in latest)
    codes = Counter(r["error_code"] for r in latest if r["error_code"])
    finished = sorted(r["finished_at"] for r in latest)
    return {
        "rows": len(latest),
        "outcomes": {o.value: statuses[o.value] for o in RUN_OUTCOMES},
        "error_codes": dict(sorted(codes.items())),
        "first_finished_at": finished[0],
        "last_finished_at": finished[-1],
    }


def in_row_order(latest: list[dict[str, str]], statuses: set[str]) -> list[list[str]]:
    chosen = [r for r in latest if r["status"] in statuses]
    return [[r[c] for c in COLUMNS] for r in sorted(chosen, key=lambda r: int(r["row"]))]


@pytest.mark.parametrize("form", [write_canonical, write_resaved, write_torn])
@pytest.mark.parametrize("seed", [1, 2])
def test_report_figures_and_rows_equal_a_plain_reading(
    tmp_path: Path, form: Callable[[Path, list[list[str]]], Path], seed: int
) -> None:
    lines = history(seed)
    latest = plain_latest(lines)
    assert len(latest) < len(lines), "the file must hold superseded records"
    path = form(tmp_path / "results.csv", lines)
    env = cli_env("http://127.0.0.1:9")

    result = run_cli(["report", str(path), "--json", "--status", "failed,invalid"], env)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert {k: figures[k] for k in expected_figures(latest)} == expected_figures(latest)
    chosen = in_row_order(latest, {"failed", "invalid"})
    assert figures["selected_rows"] == len(chosen)

    listing = run_cli(["report", str(path), "--status", "failed,invalid", "--format", "csv"], env)
    assert listing.returncode == 0, listing.stderr
    header, *shown = csv.reader(io.StringIO(listing.stdout))
    assert header == list(COLUMNS)
    assert shown == chosen


def test_selected_rows_read_in_pieces_equal_one_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows beyond CHUNK_ROWS are sorted piece by piece: the pieces join up in row order,
    and every export format holds each row once."""
    lines = history(3, n=600)
    latest = plain_latest(lines)
    path = write_canonical(tmp_path / "results.csv", lines)
    statuses = (Outcome.REMOVED, Outcome.FAILED, Outcome.INVALID)
    chosen = in_row_order(latest, {o.value for o in statuses})
    monkeypatch.setattr(report, "CHUNK_ROWS", 7)

    with report.open_report(path, statuses) as found:
        assert len(found.pieces) > 5
        listing = io.BytesIO()
        report.write_rows(found, "csv", listing)
        _, *shown = csv.reader(io.StringIO(listing.getvalue().decode()))
        assert shown == chosen
        first = found.first_rows.select(pl.col("row").cast(pl.String), *COLUMNS[1:])
        assert first.fill_null("").rows() == [tuple(r) for r in chosen[: report.TABLE_ROWS]]
        for suffix in (".csv", ".jsonl", ".parquet"):
            dest = tmp_path / f"fix{suffix}"
            figures = report.export_rows(found, dest, io.BytesIO())
            assert figures.rows == len(chosen)
            if suffix == ".csv":
                rows = pl.read_csv(dest, infer_schema=False)
            else:
                rows = pl.read_ndjson(dest) if suffix == ".jsonl" else pl.read_parquet(dest)
            assert rows["results_row"].cast(pl.Int64).to_list() == [int(r[0]) for r in chosen]


def test_latest_is_the_last_record_of_each_pair_in_file_order(tmp_path: Path) -> None:
    """The shared lazy reading other commands build on: every column, superseded records
    gone, `i` in file order."""
    lines = history(4)
    path = write_resaved(tmp_path / "results.csv", lines)
    with records.latest(path) as latest:
        read = latest.records.collect()
    assert read["i"].is_sorted()
    got = read.select(pl.col("row").cast(pl.String), *COLUMNS[1:]).fill_null("").rows()
    assert got == [tuple(r.values()) for r in plain_latest(lines)]


def failed_then_answered(path: Path, quoted: bool = False) -> list[str]:
    """Three pairs failed, then two of them answered; cells quoted where no quotes are
    needed, as other CSV writers do."""
    detail = '"upstream said ""no"""' if not quoted else '"two\nlines"'
    lines = [
        f"1,cmp_a,{new_uuid(1)},failed,503,,1,,{detail},2026-01-01T00:00:00Z",
        f'2,cmp_a,{new_uuid(2)},failed,503,,1,,"HTTP 503",2026-01-01T00:00:00Z',
        f"3,cmp_a,{new_uuid(3)},failed,503,,1,,HTTP 503,2026-01-01T00:00:00Z",
        "4,cmp_a,bad,invalid,,,0,,'=1+1,2026-01-01T00:00:00Z",
        f"1,cmp_a,{new_uuid(1)},removed,204,,1,req_1,,2026-01-02T00:00:00Z",
        f"3,cmp_a,{new_uuid(3)},not_enrolled,404,enrollment_not_found,1,req_3,,2026-01-02T00:00:00Z",
    ]
    path.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return lines


def test_compaction_keeps_every_other_record_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    lines = failed_then_answered(out)
    Journal(out).close()  # failed records before: closing drops the superseded ones
    kept = [line for i, line in enumerate(lines) if i not in (0, 2)]
    assert out.read_text(encoding="utf-8") == HEADER + "\n".join(kept) + "\n"


def test_compaction_rewrites_a_file_whose_lines_are_not_its_records(tmp_path: Path) -> None:
    """A hand-edited file with a line break inside a quoted cell: its records are rewritten
    one per line, and only the superseded `failed` records are gone."""
    out = tmp_path / "results.csv"
    failed_then_answered(out, quoted=True)
    Journal(out).close()
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["row"], r["status"]) for r in rows] == [
        ("2", "failed"),
        ("4", "invalid"),
        ("1", "removed"),
        ("3", "not_enrolled"),
    ]
    assert len(out.read_text(encoding="utf-8").splitlines()) == 5


def test_a_results_file_that_is_not_one_is_refused_by_report(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("name,email\nann,a@example.com\n", encoding="utf-8")
    opening = report.open_report(path)
    with pytest.raises(ResultsFileError, match="is not a bulk_unenroll results file"):
        opening.__enter__()


def test_columns_are_scrubbed_as_each_value_would_be() -> None:
    key = "wbk_live_0123456789abcdef"
    remember(key)
    values = [
        None,
        "",
        "req_1",
        f"echo {key[:12]} back",
        "Authorization: Bearer abc.def",
        "plain text",
        key,
    ]
    scrubbed = redact_column(pl.Series(values, dtype=pl.String)).to_list()
    assert scrubbed == [None if v is None else redact(v) for v in values]
    assert all(key[:8] not in (v or "") for v in scrubbed)


def test_facts_are_the_latest_records_columns(tmp_path: Path) -> None:
    """`facts` (the narrow one-pass reading the figures use) and `records` (every column)
    speak of the same records."""
    lines = history(5)
    path = write_canonical(tmp_path / "results.csv", lines)
    with records.latest(path) as latest:
        facts = latest.facts("status", "i")
        read = latest.records.select("status", "i").collect()
    assert facts.columns == ["status", "i"]
    assert facts.equals(read)
    assert facts["status"].to_list() == [r["status"] for r in plain_latest(lines)]


def test_records_sharing_half_a_key_are_told_apart_by_the_other_half() -> None:
    """Which record supersedes which is decided on all 128 bits of the key: two pairs whose
    hashes agree in 64 bits (rare, but certain somewhere in enough large files) both stay."""
    high, low = 1 << 64, 7
    keys = pl.Series([high + low, 2 * high + low, high + low, 5, None], dtype=pl.UInt128)
    bucket = records.key_bucket(pl.lit(low, pl.UInt64))
    buckets = pl.select(bucket.repeat_by(len(keys)).explode()).to_series()
    latest = records.is_latest(keys, buckets)
    assert latest.to_list() == [False, True, True, True, True]
