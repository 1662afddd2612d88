"""The results file under stress: a full disk, an unwritable file, torn lines, compaction."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import API_KEY, cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import Serve
from truth import check_truth, mixed_file, read_whole_lines

from bulk_unenroll import (
    JobConfig,
    Outcome,
    Rate,
    ResultsFileError,
    RowResult,
    Secret,
    unenroll_file,
)
from bulk_unenroll.results.journal import Journal
from bulk_unenroll.results.records import HEADER
from bulk_unenroll.sandbox import Sandbox

FULL_AFTER = 20_000
"""Bytes a run may write per file before its "disk" is full (about 130 records)."""


def row(n: int, outcome: Outcome = Outcome.REMOVED, detail: str = "") -> RowResult:
    return RowResult(
        n,
        "cmp_abc123",
        new_uuid(n),
        outcome,
        http_status=200 if outcome is Outcome.REMOVED else None,
        attempts=1,
        request_id=f"req_{n:08x}",
        detail=detail,
        finished_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


@contextmanager
def disk_full_after(nbytes: int) -> Iterator[None]:
    """Writes past `nbytes` in any file fail (EFBIG), as on a full disk; works as root too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_full_disk_mid_run_stops_with_74_and_keeps_rows(tmp_path: Path, serve: Serve) -> None:
    mixed = mixed_file(tmp_path / "in.csv", 800, seed=4)
    api = mixed.sandbox()
    env = cli_env(serve(api).base_url)
    out = tmp_path / "results.csv"
    args = ["run", str(mixed.path), "--out", str(out), "--rate", "1000/s", "--concurrency", "8"]
    args.append("--yes")
    # The CLI in a process whose files cannot grow past FULL_AFTER bytes.
    limited = (
        "import resource, runpy, signal, sys; "
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FULL_AFTER}, {FULL_AFTER})); "
        "sys.argv = ['bulk-unenroll', *sys.argv[1:]]; "
        "runpy.run_module('bulk_unenroll', run_name='__main__')"
    )

    full = subprocess.run(
        [sys.executable, "-c", limited, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )

    assert full.returncode == 74, full.stdout + full.stderr
    assert "cannot write" in full.stderr and "results.csv" in full.stderr
    assert "Traceback" not in full.stderr and "internal error" not in full.stderr
    records = read_whole_lines(out)
    assert 0 < len(records) < 800
    check_truth(mixed, out, api, complete=False)  # the rows written so far are intact

    rerun = run_cli(args, env)

    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    check_truth(mixed, out, api)


def test_record_on_a_full_disk_raises_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    journal = Journal(out)
    journal.record([row(1), row(2)])
    size = out.stat().st_size

    with disk_full_after(size + 200):
        with pytest.raises(ResultsFileError) as caught:
            journal.record([row(n) for n in range(3, 40)])
        with pytest.raises(ResultsFileError):
            journal.close()  # the rest cannot be written either; files closed, lock released

    message = str(caught.value)
    assert "cannot write" in message and "results.csv" in message
    assert "intact" in message
    journal.close()  # safe twice
    records = read_whole_lines(out)
    assert [r["row"] for r in records[:2]] == ["1", "2"]
    Journal(out).close()  # the lock is free and the file reads back


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_results_file_on_a_full_device_fails_at_open(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    out.symlink_to("/dev/full")

    with pytest.raises(ResultsFileError, match="No space left"):
        Journal(out)
    with pytest.raises(ResultsFileError, match="No space left"):
        Journal(out)  # not "another run is using it": the lock was released


def test_unwritable_results_file_stops_with_74(tmp_path: Path, serve: Serve) -> None:
    pairs = [("cmp_abc123", new_uuid(i)) for i in range(1, 6)]
    api = Sandbox(pairs)
    inp = write_csv(tmp_path / "in.csv", pairs)
    out = tmp_path / "results.csv"
    out.mkdir()  # unwritable as a file even for root

    done = run_cli(["run", str(inp), "--out", str(out), "--yes"], cli_env(serve(api).base_url))

    assert done.returncode == 74, done.stdout + done.stderr
    assert "directory" in done.stderr
    assert api.state.calls == 0


def test_a_foreign_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    out = tmp_path / "contacts.csv"
    out.write_bytes(b"campaign_id,contact_id\ncmp_1,abc")  # no final newline

    with pytest.raises(ResultsFileError, match="not a bulk_unenroll results file"):
        Journal(out)

    assert out.read_bytes() == b"campaign_id,contact_id\ncmp_1,abc"


def test_torn_last_line_is_dropped_and_redone(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    journal = Journal(out)
    journal.record([row(1), row(2)])
    journal.close()
    whole = out.read_bytes()
    out.write_bytes(whole + b"3,cmp_abc123,00000000-0000-4000-8000-0000000000")

    journal = Journal(out)
    journal.close()

    assert out.read_bytes() == whole


def test_compaction_keeps_each_rows_latest_record(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    tricky = 'says "hi", then =cmd|x\nnext line'
    journal = Journal(out)
    journal.record([row(2), row(1, Outcome.FAILED, "HTTP 503"), row(3, Outcome.FAILED)])
    journal.close()

    journal = Journal(out)  # a rerun resolves the failed rows
    journal.record([row(3, Outcome.REMOVED, tricky), row(1, Outcome.NOT_ENROLLED)])
    journal.close()

    records = read_results(out)
    assert out.read_text().startswith(HEADER)
    # File order is kept: the superseded `failed` records are gone, the later ones stay.
    assert [(r["row"], r["status"]) for r in records] == [
        ("2", "removed"),
        ("3", "removed"),
        ("1", "not_enrolled"),
    ]
    assert records[1]["detail"] == tricky.replace("\n", " ")  # one record, one line
    assert records[1]["contact_id"] == new_uuid(3)
    assert records[2]["http_status"] == "" and records[0]["http_status"] == "200"


def test_library_raises_the_results_error_itself(tmp_path: Path, serve: Serve) -> None:
    pairs = [("cmp_abc123", new_uuid(i)) for i in range(1, 301)]
    api = Sandbox(pairs)
    config = JobConfig(
        input=write_csv(tmp_path / "in.csv", pairs),
        out=tmp_path / "results.csv",
        api_key=Secret(API_KEY),
        base_url=serve(api).base_url,
        rate=Rate(2000, 1),
    )

    with disk_full_after(8_000), pytest.raises(ResultsFileError, match="cannot write"):
        unenroll_file(config)  # not an ExceptionGroup from the task group inside

    summary = unenroll_file(config)  # the lock was released; the rerun finishes the job
    assert summary.exit_code == 0
    assert not api.state.enrolled
    assert all(r["status"] in ("removed", "not_enrolled") for r in read_results(config.out))


def test_a_rerun_with_nothing_to_send_still_tidies_superseded_failures(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    journal = Journal(out)
    journal.record([row(1, Outcome.FAILED, "HTTP 503"), row(2, Outcome.FAILED, "HTTP 503")])
    journal.close()
    # What a rerun killed after settling both rows leaves: two records per row.
    _, failed_1, failed_2 = out.read_text().splitlines(keepends=True)
    with out.open("a", encoding="utf-8") as f:
        f.write(failed_1.replace("failed", "removed") + failed_2.replace("failed", "not_enrolled"))

    Journal(out).close()  # the next run finds nothing left to send

    assert [(r["row"], r["status"]) for r in read_results(out)] == [
        ("1", "removed"),
        ("2", "not_enrolled"),
    ]
