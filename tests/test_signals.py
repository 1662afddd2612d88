"""SIGTERM and SIGINT on the real CLI: a clean stop, whole records, the way to continue."""

from __future__ import annotations

import re
import signal
from dataclasses import fields
from pathlib import Path

from conftest import cli_env, run_cli
from helpers import Serve
from truth import (
    check_truth,
    latest,
    mixed_file,
    read_whole_lines,
    spawn_cli,
    wait_until,
)

from bulk_unenroll import JobConfig
from bulk_unenroll.results.records import COLUMNS
from bulk_unenroll.sandbox import Faults

ROWS = 600


def _default_grace() -> float:
    default = next(f.default for f in fields(JobConfig) if f.name == "grace_period")
    assert isinstance(default, float)
    return default


GRACE = _default_grace()


def args_for(inp: Path, out: Path) -> list[str]:
    return ["run", str(inp), "--out", str(out), "--rate", "300/s", "--concurrency", "8", "--yes"]


def assert_whole(out: Path) -> list[dict[str, str]]:
    """Every line of the results file is a complete record."""
    data = out.read_bytes()
    assert data.endswith(b"\n")
    records = read_whole_lines(out)
    assert all(None not in r.values() and list(r) == list(COLUMNS) for r in records)
    return records


def test_sigterm_stops_cleanly_and_a_rerun_finishes(tmp_path: Path, serve: Serve) -> None:
    mixed = mixed_file(tmp_path / "in.csv", ROWS)
    api = mixed.sandbox(Faults(latency=0.02))
    env, out = cli_env(serve(api).base_url), tmp_path / "results.csv"
    proc = spawn_cli(args_for(mixed.path, out), env, tmp_path / "logs")
    wait_until(lambda: api.state.calls >= 50, proc)

    proc.send_signal(signal.SIGTERM)

    assert proc.wait(30) == 143
    records = assert_whole(out)
    assert 0 < len(records) < ROWS
    check_truth(mixed, out, api, complete=False)
    stdout = (tmp_path / "logs" / "stdout").read_text()
    assert f"{ROWS - len(latest(records)):,} row(s) left" in stdout
    assert " ".join(["bulk-unenroll", *args_for(mixed.path, out)]) in stdout

    rerun = run_cli(args_for(mixed.path, out), env)

    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    check_truth(mixed, out, api)
    # In-flight requests were let finish and recorded: nothing was sent twice.
    assert set(api.state.deletes.values()) == {1}


def test_sigint_says_what_is_left_and_how_to_continue(tmp_path: Path, serve: Serve) -> None:
    mixed = mixed_file(tmp_path / "in.csv", ROWS, seed=5)
    api = mixed.sandbox(Faults(latency=0.02))
    out = tmp_path / "results.csv"
    proc = spawn_cli(args_for(mixed.path, out), cli_env(serve(api).base_url), tmp_path / "logs")
    wait_until(lambda: api.state.calls >= 50, proc)

    proc.send_signal(signal.SIGINT)

    assert proc.wait(30) == 130
    records = assert_whole(out)
    check_truth(mixed, out, api, complete=False)
    stdout = (tmp_path / "logs" / "stdout").read_text()
    stderr = (tmp_path / "logs" / "stderr").read_text()
    assert "SIGINT received" in stderr
    match = re.search(r"([\d,]+) row\(s\) left", stdout)
    assert match, stdout
    assert int(match[1].replace(",", "")) == ROWS - len(latest(records))
    assert " ".join(["bulk-unenroll", *args_for(mixed.path, out)]) in stdout


def test_second_signal_exits_at_once_with_results_whole(tmp_path: Path, serve: Serve) -> None:
    mixed = mixed_file(tmp_path / "in.csv", ROWS, seed=9)
    api = mixed.sandbox()
    env, out, logs = cli_env(serve(api).base_url), tmp_path / "results.csv", tmp_path / "logs"
    proc = spawn_cli(args_for(mixed.path, out), env, logs)
    wait_until(lambda: api.state.calls >= 50, proc)
    api.faults.hang = 1.0  # from now on requests stay in flight (the timeout is 30 s)
    calls = api.state.calls
    wait_until(lambda: api.state.calls >= calls + 4, proc)

    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "SIGTERM received" in (logs / "stderr").read_text(), proc)
    proc.send_signal(signal.SIGTERM)

    # Well inside the 10 s grace period the first signal allows the hung requests.
    assert proc.wait(GRACE / 2) == 143
    assert "summary:" not in (logs / "stdout").read_text()
    assert_whole(out)
    check_truth(mixed, out, api, complete=False)

    api.faults.hang = 0.0
    rerun = run_cli(args_for(mixed.path, out), env)

    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    check_truth(mixed, out, api)


def test_second_sigint_before_any_answer_leaves_a_usable_file(tmp_path: Path, serve: Serve) -> None:
    mixed = mixed_file(tmp_path / "in.csv", 50, seed=2)
    api = mixed.sandbox(Faults(hang=1.0))
    env, out, logs = cli_env(serve(api).base_url), tmp_path / "results.csv", tmp_path / "logs"
    proc = spawn_cli(args_for(mixed.path, out), env, logs)
    wait_until(lambda: api.state.calls >= 4, proc)

    proc.send_signal(signal.SIGINT)
    wait_until(lambda: "SIGINT received" in (logs / "stderr").read_text(), proc)
    proc.send_signal(signal.SIGINT)

    assert proc.wait(GRACE / 2) == 130
    assert all(r["status"] in ("invalid", "duplicate") for r in assert_whole(out))
    api.faults.hang = 0.0
    assert run_cli(args_for(mixed.path, out), env).returncode == 1
    check_truth(mixed, out, api)
