"""Reruns resume: settled rows are never sent again, failed rows are retried, one record per row."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import Serve

from bulk_unenroll.sandbox import Faults, Sandbox


def pairs(n: int, campaign: str = "cmp_resume") -> list[tuple[str, str]]:
    return [(campaign, new_uuid(i + 1)) for i in range(n)]


def test_failed_rows_are_retried_and_the_file_keeps_one_record_per_row(
    serve: Serve, tmp_path: Path
) -> None:
    rows = pairs(20)  # fewer than the circuit breaker's threshold of failures in a row
    api = Sandbox(rows, faults=Faults(html_500=1.0))
    server = serve(api)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "results.csv"
    args = ["run", str(src), "--out", str(out), "--rate", "500/s", "--max-retries", "0", "--yes"]

    first = run_cli(args, cli_env(server.base_url))
    assert first.returncode == 1, first.stderr
    assert Counter(r["status"] for r in read_results(out)) == {"failed": 20}
    assert not api.state.removed

    api.faults.html_500 = 0.0
    second = run_cli(args, cli_env(server.base_url))
    assert second.returncode == 0, second.stderr
    records = read_results(out)
    assert sorted(int(r["row"]) for r in records) == list(range(1, 21))
    assert {r["status"] for r in records} == {"removed"}
    assert set(api.state.removed) == set(rows)


def test_settled_pairs_are_never_sent_again(serve: Serve, tmp_path: Path) -> None:
    rows = pairs(30)
    api = Sandbox(rows[:20])
    server = serve(api)
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "results.csv"
    args = ["run", str(src), "--out", str(out), "--rate", "500/s", "--yes"]

    assert run_cli(args, cli_env(server.base_url)).returncode == 0
    calls = api.state.calls
    again = run_cli(args, cli_env(server.base_url))
    assert again.returncode == 0, again.stderr
    assert api.state.calls == calls
    assert all(count == 1 for count in api.state.deletes.values())
    assert len(read_results(out)) == 30


def test_rows_added_to_the_input_later_are_sent_on_the_next_run(
    serve: Serve, tmp_path: Path
) -> None:
    rows = pairs(30)
    api = Sandbox(rows)
    server = serve(api)
    out = tmp_path / "results.csv"
    src = write_csv(tmp_path / "in.csv", rows[:10])
    args = ["run", str(src), "--out", str(out), "--rate", "500/s", "--yes"]
    assert run_cli(args, cli_env(server.base_url)).returncode == 0

    write_csv(src, rows)  # a nightly export that grew
    result = run_cli(args, cli_env(server.base_url))
    assert result.returncode == 0, result.stderr
    assert set(api.state.removed) == set(rows)
    assert max(api.state.deletes.values()) == 1
    assert Counter(r["status"] for r in read_results(out)) == {"removed": 30}


def test_dry_run_compares_with_the_results_and_sends_nothing(serve: Serve, tmp_path: Path) -> None:
    rows = pairs(10)
    api = Sandbox(rows)
    server = serve(api)
    src = write_csv(tmp_path / "in.csv", [*rows, rows[0], ("cmp_resume", "nope")])
    out = tmp_path / "results.csv"
    result = run_cli(["run", str(src), "--out", str(out), "--dry-run"], cli_env(server.base_url))
    assert result.returncode == 0, result.stderr
    assert api.state.calls == 0
    assert not out.exists()
    assert "to send" in result.stderr


def test_failed_rows_a_stopped_rerun_did_not_reach_still_count_as_failed(
    serve: Serve, tmp_path: Path
) -> None:
    """The summary says what the results file says, even when the rerun stops early."""
    rows = pairs(12)
    api = Sandbox(rows, faults=Faults(html_500=1.0))
    server = serve(api)
    src = write_csv(tmp_path / "in.csv", rows)
    out, summary = tmp_path / "results.csv", tmp_path / "summary.json"
    args = ["run", str(src), "--out", str(out), "--rate", "500/s", "--max-retries", "0", "--yes"]
    assert run_cli(args, cli_env(server.base_url)).returncode == 1

    api.faults.html_500 = 0.0
    second = run_cli(
        [*args, "--concurrency", "1", "--max-removals", "5", "--summary-json", str(summary)],
        cli_env(server.base_url),
    )
    assert second.returncode == 75, second.stderr
    on_file = Counter(r["status"] for r in read_results(out) if r["status"] != "failed")
    data = json.loads(summary.read_text())
    assert on_file == {"removed": 5}
    assert data["outcomes"]["removed"] == 5
    assert data["outcomes"]["failed"] == 7
