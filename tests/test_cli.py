"""The command line as an operator meets it: plan, confirm, progress, summary, exit codes.

Every test runs the real CLI as a subprocess against a sandbox on loopback.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import QUICK, Serve, sandbox_command

from bulk_unenroll.sandbox import Limits, Sandbox
from bulk_unenroll.text import duration


def _pairs(n: int, campaign: str, start: int) -> list[tuple[str, str]]:
    return [(campaign, new_uuid(start + i)) for i in range(n)]


def mixed_input(tmp_path: Path) -> tuple[Path, Sandbox]:
    """30 enrolled, 5 not enrolled, 4 in a deleted campaign, 3 malformed, 2 duplicates."""
    enrolled = _pairs(20, "cmp_alpha", 1_000) + _pairs(10, "cmp_beta", 2_000)
    not_enrolled = _pairs(5, "cmp_alpha", 3_000)
    deleted = _pairs(4, "cmp_gone", 4_000)
    malformed = [("cmp_alpha", "not-a-uuid"), ("", new_uuid(5_000)), ("cmp/../x", new_uuid(5_001))]
    rows = [*enrolled, *not_enrolled, *deleted, *malformed, enrolled[0], enrolled[11]]
    src = write_csv(tmp_path / "input.csv", rows)
    return src, Sandbox(enrolled)


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- plan before -----------------------------------------------------------------------------


def test_plan_and_summary_json_agree_with_the_run(tmp_path: Path, serve: Serve) -> None:
    src, api = mixed_input(tmp_path)
    server = serve(api)
    env = cli_env(server.base_url)
    out = tmp_path / "results.csv"
    plan_json, run_json = tmp_path / "plan.json", tmp_path / "run.json"

    planned = run_cli(["plan", str(src), "--summary-json", str(plan_json)], env)
    assert planned.returncode == 0, planned.stderr
    assert api.state.calls == 0
    assert re.search(r"to send\s+39\n", planned.stderr)
    assert "row 40: contact_id is not a UUID" in planned.stderr
    dry = run_cli(["run", str(src), "--out", str(out), "--dry-run"], env)
    assert dry.returncode == 0 and not out.exists()
    assert dry.stderr == planned.stderr  # `plan` is `run --dry-run`

    ran = run_cli(
        ["run", str(src), "--out", str(out), *QUICK, "--summary-json", str(run_json)], env
    )
    assert ran.returncode == 1, ran.stderr
    assert "[y/N]" not in ran.stderr  # no terminal, no prompt

    plan = json.loads(plan_json.read_text())["plan"]
    summary = json.loads(run_json.read_text())
    statuses = Counter(r["status"] for r in read_results(out))
    assert plan["rows"] == summary["rows"] == sum(statuses.values()) == 44
    assert plan["invalid"] == statuses["invalid"] == 3
    assert plan["duplicates"] == statuses["duplicate"] == 2
    sent = statuses["removed"] + statuses["not_enrolled"] + statuses["rejected"]
    assert plan["to_send"] == sent == summary["to_send"] == 39
    assert plan["campaigns"] == 3
    assert summary["outcomes"] == {
        "removed": 30,
        "not_enrolled": 5,
        "rejected": 4,
        "failed": 0,
        "invalid": 3,
        "duplicate": 2,
    }
    assert {k: v for k, v in summary["outcomes"].items() if v} == dict(statuses)
    assert summary["exit_code"] == 1 and summary["remaining"] == 0
    assert summary["error_codes"]["enrollment_not_found"] == 5
    assert summary["calls"] == api.state.calls
    assert summary["stop_reason"] == "complete" and summary["continue_command"] is None
    assert "summary: all 44 rows" in ran.stdout and "exit code 1" in ran.stdout

    # The plan of a rerun sees every row settled by the run.
    again = run_cli(["plan", str(src), "--out", str(out), "--summary-json", str(plan_json)], env)
    replan = json.loads(plan_json.read_text())["plan"]
    assert again.returncode == 0
    assert replan["settled_before"] == 39 and replan["to_send"] == 0
    assert "nothing to send" in again.stderr


def test_plan_estimates_time_and_quota_days(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", _pairs(2_500, "cmp_a", 1))
    env = cli_env("http://127.0.0.1:9")
    every = run_cli(["plan", str(src), "--log-format", "json"], env)
    assert every.returncode == 0, every.stderr
    (plan,) = [line for line in _json_lines(every.stderr) if line["type"] == "plan"]
    days = {e["label"]: e["quota_days"] for e in plan["estimates"]}
    assert days == {"starter": 25, "pro": 3, "org": 1}

    pro = run_cli(["plan", str(src), "--plan", "pro", "--reserve", "500"], env)
    assert pro.returncode == 0, pro.stderr
    assert "starter" not in pro.stderr
    # 2,500 calls at 98% of 50/min; 500 a day left after the reserve.
    assert duration(2_500 / (50 * 0.98) * 60) in pro.stderr
    assert "5 (500/day)" in pro.stderr


def test_plan_says_how_many_invalid_rows_it_did_not_list(tmp_path: Path) -> None:
    rows = [*_pairs(3, "cmp_a", 1), *[("cmp_a", f"bad-{i}") for i in range(7)]]
    src = write_csv(tmp_path / "in.csv", rows)
    planned = run_cli(["plan", str(src)], cli_env("http://127.0.0.1:9"))
    assert planned.returncode == 0, planned.stderr
    listed = re.findall(r"^ +row \d+: contact_id is not a UUID", planned.stderr, re.M)
    assert len(listed) == 5
    assert re.search(r"invalid \(never sent\)\s+7\n", planned.stderr)
    assert "      ... and 2 more\n" in planned.stderr

    few = write_csv(tmp_path / "few.csv", rows[:5])  # every invalid row listed: no "more"
    assert "more" not in run_cli(["plan", str(few)], cli_env("http://127.0.0.1:9")).stderr


# -- confirm on a terminal -------------------------------------------------------------------


@contextlib.contextmanager
def terminal(args: Sequence[str], env: dict[str, str]) -> Iterator[_Terminal]:
    term = _Terminal(args, env)
    try:
        yield term
    finally:
        term.close()


class _Terminal:
    """The CLI with stdin, stdout and stderr on a pseudo-terminal, as a person runs it."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bulk_unenroll", *args],
            env={**env, "TERM": "xterm-256color"},
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.output = b""

    def read_until(self, marker: bytes | None, timeout: float = 60) -> str:
        """Read until `marker` shows (or, with None, until the process closes the terminal)."""
        deadline = time.monotonic() + timeout
        while marker is None or marker not in self.output:
            assert time.monotonic() < deadline, self.output.decode(errors="replace")
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the other side is closed
                chunk = b""
            if not chunk:
                assert marker is None, self.output.decode(errors="replace")
                break
            self.output += chunk
        return self.output.decode(errors="replace")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


def test_a_terminal_run_asks_first_and_no_sends_nothing(tmp_path: Path, serve: Serve) -> None:
    src, api = mixed_input(tmp_path)
    server = serve(api)
    out = tmp_path / "results.csv"
    with terminal(["run", str(src), "--out", str(out), *QUICK], cli_env(server.base_url)) as term:
        term.read_until(b"remove up to 39 enrollments from 3 campaigns? [y/N]")
        assert api.state.calls == 0
        term.type("n\n")
        term.read_until(None)
        assert term.proc.wait(30) == 130
    assert api.state.calls == 0
    assert "cancelled at the prompt; nothing was sent" in term.output.decode()


def test_a_terminal_run_shows_the_live_display(tmp_path: Path, serve: Serve) -> None:
    src, api = mixed_input(tmp_path)
    server = serve(api)
    out = tmp_path / "results.csv"
    args = ["run", str(src), "--out", str(out), "--rate", "40/s", "--max-removals", "10"]
    with terminal(args, cli_env(server.base_url)) as term:
        term.read_until(b"remove up to 10 enrollments from 3 campaigns? [y/N]")
        term.type("y\n")
        screen = term.read_until(None)
        assert term.proc.wait(30) == 75
    assert "\x1b[" in screen  # rich drew on the terminal
    for label in ("rows (", "rate", "ETA", "outcomes", "calls", "pacer"):
        assert label in screen
    assert "stopped after --max-removals 10" in screen
    assert len(api.state.removed) == 10


# -- during: progress ------------------------------------------------------------------------


def test_piped_progress_is_plain_lines(tmp_path: Path, serve: Serve) -> None:
    rows = _pairs(40, "cmp_a", 1)
    server = serve(Sandbox(rows))
    src = write_csv(tmp_path / "in.csv", rows)
    args = ["run", str(src), "--out", str(tmp_path / "r.csv"), "--rate", "25/s"]
    result = run_cli([*args, "--progress-interval", "0.5"], cli_env(server.base_url))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "progress:" in line]
    assert len(lines) >= 2
    assert all("rows (" in line and "ETA" in line and "removed" in line for line in lines)
    assert "\x1b" not in result.stderr + result.stdout  # no terminal codes in a log


def test_json_log_lines_parse_and_match_the_summary_file(tmp_path: Path, serve: Serve) -> None:
    rows = _pairs(30, "cmp_a", 1)
    server = serve(Sandbox(rows[:20]))
    src = write_csv(tmp_path / "in.csv", rows)
    out, summary_file = tmp_path / "r.csv", tmp_path / "s.json"
    result = run_cli(
        [
            *("run", str(src), "--out", str(out), "--rate", "25/s", "--log-format", "json"),
            *("--progress-interval", "0.5", "--summary-json", str(summary_file)),
        ],
        cli_env(server.base_url),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = _json_lines(result.stderr)
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "plan" and kinds[-1] == "summary" and "progress" in kinds
    progress = next(line for line in lines if line["type"] == "progress")
    assert {"rows_done", "rows_total", "eta_seconds", "outcomes", "pacer_state"} <= set(progress)
    summary = {k: v for k, v in lines[-1].items() if k not in ("type", "time")}
    assert summary == json.loads(summary_file.read_text())
    assert summary["outcomes"]["removed"] == 20


def test_quiet_prints_only_the_summary(tmp_path: Path, serve: Serve) -> None:
    rows = _pairs(10, "cmp_a", 1)
    server = serve(Sandbox(rows))
    src = write_csv(tmp_path / "in.csv", rows)
    args = ["run", str(src), "--out", str(tmp_path / "r.csv"), *QUICK, "--quiet"]
    result = run_cli([*args, "--progress-interval", "0.5"], cli_env(server.base_url))
    assert result.returncode == 0
    assert result.stderr == ""
    assert re.search(r"removed\s+10\n", result.stdout)


# -- after: max removals, quota, exit codes --------------------------------------------------


def test_max_removals_stops_cleanly_and_a_rerun_continues(tmp_path: Path, serve: Serve) -> None:
    rows = _pairs(25, "cmp_a", 1)
    api = Sandbox(rows)
    server = serve(api)
    src = write_csv(tmp_path / "in.csv", rows)
    out, summary_file = tmp_path / "r.csv", tmp_path / "s.json"
    args = ["run", str(src), "--out", str(out), *QUICK, "--summary-json", str(summary_file)]
    first = run_cli([*args, "--max-removals", "7"], cli_env(server.base_url))
    assert first.returncode == 75, first.stderr
    summary = json.loads(summary_file.read_text())
    assert summary["stop_reason"] == "max_removals" and summary["remaining"] == 18
    assert summary["outcomes"]["removed"] == 7 == len(api.state.removed)
    assert "--max-removals 7" in summary["continue_command"]
    assert "18 row(s) left to do; to continue, run: bulk-unenroll run" in first.stdout
    second = run_cli(args, cli_env(server.base_url))
    assert second.returncode == 0, second.stderr
    assert Counter(r["status"] for r in read_results(out)) == {"removed": 25}


def test_quota_stop_says_when_it_resets(tmp_path: Path, serve: Serve) -> None:
    rows = _pairs(12, "cmp_a", 1)
    server = serve(Sandbox(rows, limits=Limits(per_day=5)))
    src = write_csv(tmp_path / "in.csv", rows)
    summary_file = tmp_path / "s.json"
    args = ["run", str(src), "--out", str(tmp_path / "r.csv"), *QUICK]
    result = run_cli([*args, "--summary-json", str(summary_file)], cli_env(server.base_url))
    assert result.returncode == 75, result.stderr
    summary = json.loads(summary_file.read_text())
    assert summary["stop_reason"] == "quota" and summary["quota_reset_at"].endswith("Z")
    assert "UTC" in result.stdout and "local" in result.stdout and ", in " in result.stdout
    assert "to continue, run: bulk-unenroll run" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--rate", "fast"], 2, "is not a rate"),
        (["--contact-column", "nope"], 2, "--contact-column"),
    ],
)
def test_usage_errors_exit_2_in_one_line(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    src = write_csv(tmp_path / "in.csv", _pairs(3, "cmp_a", 1))
    out = tmp_path / "r.csv"
    result = run_cli(["run", str(src), "--out", str(out), *args], cli_env("http://127.0.0.1:9"))
    assert result.returncode == code
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_foreign_results_file_exits_74(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", _pairs(3, "cmp_a", 1))
    out = write_csv(tmp_path / "r.csv", [("1", "2")], header=("a", "b"))
    result = run_cli(["run", str(src), "--out", str(out), *QUICK], cli_env("http://127.0.0.1:9"))
    assert result.returncode == 74
    assert "not a bulk_unenroll results file" in result.stderr


def test_a_rejected_key_exits_3_and_never_shows_the_key(tmp_path: Path, serve: Serve) -> None:
    rows = _pairs(10, "cmp_a", 1)
    server = serve(Sandbox(rows, api_key="wbk_the_right_one"))
    src = write_csv(tmp_path / "in.csv", rows)
    summary_file = tmp_path / "s.json"
    args = ["run", str(src), "--out", str(tmp_path / "r.csv"), *QUICK]
    result = run_cli([*args, "--summary-json", str(summary_file)], cli_env(server.base_url))
    assert result.returncode == 3
    assert "key was rejected" in result.stderr
    summary = json.loads(summary_file.read_text())
    assert summary["exit_code"] == 3 and "rejected" in summary["error"]
    for text in (result.stdout, result.stderr, summary_file.read_text()):
        assert API_KEY not in text


BOOM = f"""
import sys
from bulk_unenroll.send import runner
from bulk_unenroll.cli import main

async def boom(self, *, dry_run=False):
    raise ValueError("unexpected state near Bearer {API_KEY} and {API_KEY}")

runner.Job.plan = boom
sys.argv = ["bulk-unenroll", "run", sys.argv[1], "--out", sys.argv[2]]
main()
"""


@pytest.mark.parametrize("debug", ["", "1"])
def test_an_unexpected_exception_is_one_line_and_exit_70(tmp_path: Path, debug: str) -> None:
    src = write_csv(tmp_path / "in.csv", _pairs(3, "cmp_a", 1))
    result = subprocess.run(
        [sys.executable, "-c", BOOM, str(src), str(tmp_path / "r.csv")],
        env=cli_env("http://127.0.0.1:9", BULK_UNENROLL_DEBUG=debug),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 70
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("internal error: ValueError: unexpected state near Bearer ***")
    assert "the results file is intact; please report this" in last
    assert ("Traceback" in result.stderr) == (debug == "1")
    assert API_KEY not in result.stderr + result.stdout


# -- rehearse offline ------------------------------------------------------------------------


def test_a_rehearsal_against_the_sandbox_command(tmp_path: Path) -> None:
    rows = _pairs(40, "cmp_a", 1) + _pairs(20, "cmp_b", 500)
    src = write_csv(tmp_path / "in.csv", rows)
    options = ["--enroll-from", str(src), "--enrolled-fraction", "0.5", "--seed", "7"]
    with sandbox_command(tmp_path / "url", *options, "--unknown-campaign", "cmp_b") as sandbox:
        url, out = sandbox.url, tmp_path / "r.csv"
        result = run_cli(["run", str(src), "--out", str(out), *QUICK], cli_env(url))
    banner = sandbox.banner
    assert f"--base-url {url}" in banner  # the operator is told where to point a run
    assert result.returncode == 1, result.stderr
    statuses = Counter(r["status"] for r in read_results(out))
    assert statuses["rejected"] == 20
    assert statuses["removed"] + statuses["not_enrolled"] == 40
    assert 5 < statuses["removed"] < 35  # about half were enrolled
