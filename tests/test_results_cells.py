"""A results cell holds one line: line breaks in a detail never reach the file, so reading it
back (and compacting it) keeps the right records."""

from __future__ import annotations

from pathlib import Path

from conftest import new_uuid, read_results

from bulk_unenroll.models import Outcome, RowResult
from bulk_unenroll.results.journal import Journal
from bulk_unenroll.results.records import escape_cell


def test_line_breaks_never_reach_a_results_cell() -> None:
    assert escape_cell("bad\rcell\r\nnext\nline") == "bad cell next line"
    assert escape_cell("=\n1") == "'= 1"


def test_compaction_with_a_carriage_return_in_a_detail_keeps_the_right_records(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results.csv"
    journal = Journal(out)
    journal.record(
        [
            RowResult(1, "cmp_x", new_uuid(1), Outcome.FAILED, detail="gateway said\rno"),
            RowResult(2, "cmp_x", new_uuid(2), Outcome.REMOVED, detail="ok"),
        ]
    )
    journal.close()
    journal = Journal(out)
    journal.record([RowResult(1, "cmp_x", new_uuid(1), Outcome.REMOVED)])
    journal.close()

    assert [(r["row"], r["status"]) for r in read_results(out)] == [
        ("2", "removed"),
        ("1", "removed"),
    ]
