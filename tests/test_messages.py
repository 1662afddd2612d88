"""Help and messages as an operator reads them: examples and exit codes in --help, shell
completion, the lock holder in words, an error said once, one figure per meaning, one unit
per line, and a final frame that says the run is over."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, new_uuid, run_cli, write_csv
from helpers import Serve
from test_cli import terminal

from bulk_unenroll.render import EXIT_MEANINGS, Snapshot
from bulk_unenroll.sandbox import Sandbox

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
NO_SERVER = cli_env("http://127.0.0.1:9/api-gateway")


def _pairs(n: int, campaign: str = "cmp_a") -> list[tuple[str, str]]:
    return [(campaign, new_uuid(i + 1)) for i in range(n)]


@pytest.mark.parametrize("command", [[], ["run"], ["plan"], ["report"], ["sandbox"]])
def test_help_shows_examples_and_the_exit_codes(command: list[str]) -> None:
    result = run_cli([*command, "--help"], NO_SERVER)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    examples = text[text.index("Examples:") :]
    assert f"bulk-unenroll {command[0] if command else 'plan'} " in examples
    if command in ([], ["run"]):
        for code, meaning in EXIT_MEANINGS.items():
            assert re.search(rf"^\s+{code}\s+{re.escape(meaning[:30])}", text, re.MULTILINE)
        assert "rerun the same command later on 75, 130, 143" in text


def test_shell_completion_works_as_the_readme_shows() -> None:
    assert 'eval "$(_BULK_UNENROLL_COMPLETE=bash_source bulk-unenroll)"' in README
    source = run_cli([], {**NO_SERVER, "_BULK_UNENROLL_COMPLETE": "bash_source"})
    assert source.returncode == 0
    assert "complete -o nosort -F _bulk_unenroll_completion bulk-unenroll" in source.stdout
    env = {**NO_SERVER, "_BULK_UNENROLL_COMPLETE": "bash_complete", "COMP_CWORD": "1"}
    commands = run_cli([], {**env, "COMP_WORDS": "bulk-unenroll r"})
    assert commands.stdout.split() == ["plain,report", "plain,restore", "plain,run"]
    options = run_cli([], {**env, "COMP_WORDS": "bulk-unenroll run --pl", "COMP_CWORD": "2"})
    assert "plain,--plan" in options.stdout.split()
    # The installed command completes the same way.
    installed = Path(sys.executable).with_name("bulk-unenroll")
    direct = subprocess.run(
        [str(installed)],
        env={**env, "COMP_WORDS": "bulk-unenroll r"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert direct.stdout.split() == ["plain,report", "plain,restore", "plain,run"]


def test_the_lock_holder_is_named_in_words(tmp_path: Path, serve: Serve) -> None:
    pairs = _pairs(5)
    server = serve(Sandbox(pairs))
    src = write_csv(tmp_path / "in.csv", pairs)
    out = tmp_path / "r.csv"
    env = cli_env(server.base_url)
    # 1 call a minute: the first run holds the lock long after its first call.
    holder = subprocess.Popen(
        [
            *(sys.executable, "-m", "bulk_unenroll", "run", str(src), "--out", str(out)),
            *("--rate", "1/min", "--progress-interval", "0.5"),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stderr is not None
        deadline = time.monotonic() + 60
        while "progress:" not in holder.stderr.readline():
            assert time.monotonic() < deadline and holder.poll() is None
        args = ["run", str(src), "--out", str(out), "--rate", "1/min"]
        same_input = run_cli(args, env)
        same_results = run_cli([*args, "--allow-same-input"], env)
    finally:
        holder.terminate()
        holder.communicate(timeout=30)
    in_words = (
        rf"pid {holder.pid} on host {re.escape(socket.gethostname())} since "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+s ago\)"
    )
    assert same_results.returncode == 74
    message = same_results.stderr.strip().splitlines()[-1]  # after the --allow-same-input warning
    assert re.fullmatch(
        rf"error: another run is using {re.escape(str(out))} \({in_words}\); "
        "wait for it to finish or stop it, then rerun",
        message,
    ), message
    assert same_input.returncode == 74
    message = same_input.stderr.strip()
    assert re.match(
        rf"error: another run is using {re.escape(str(src))} \({in_words}, writing "
        rf"{re.escape(str(out.resolve()))}\): two runs on one input",
        message,
    ), message


def test_an_exit_3_error_is_printed_once(tmp_path: Path, serve: Serve) -> None:
    pairs = _pairs(5)
    server = serve(Sandbox(pairs, api_key="wbk_the_right_one"))
    src = write_csv(tmp_path / "in.csv", pairs)
    result = run_cli(
        ["run", str(src), "--out", str(tmp_path / "r.csv"), "--rate", "100/s"],
        cli_env(server.base_url),
    )
    assert result.returncode == 3
    output = result.stdout + result.stderr
    assert output.count("key was rejected") == 1, output
    assert "error: the API key was rejected" in result.stderr
    assert "exit code 3" in result.stdout


def test_rows_settled_before_have_one_name_and_one_figure(tmp_path: Path, serve: Serve) -> None:
    pairs = _pairs(6)
    server = serve(Sandbox(pairs))
    rows = [*pairs, ("cmp_a", "not-a-uuid"), pairs[0]]  # 6 to send, 1 invalid, 1 duplicate
    src = write_csv(tmp_path / "in.csv", rows)
    args = ["run", str(src), "--out", str(tmp_path / "r.csv"), "--rate", "100/s"]
    assert run_cli(args, cli_env(server.base_url)).returncode == 1
    again = run_cli(args, cli_env(server.base_url))
    assert again.returncode == 1
    text = again.stdout + again.stderr
    assert "settled before, skipped" not in text
    figures = re.findall(r"settled by an earlier run\s+(\d+)", text)
    assert figures == ["6", "6"], text  # the plan's and the summary's


def test_the_rate_line_uses_one_unit() -> None:
    def line(rows: float, pace: float) -> str:
        snap = Snapshot(
            *(10, 5, 10, 5, 1, rows, pace, 5.0, "sending", None, {}, 5, 0, None, None),
        )
        return snap.rate_text()

    assert line(1.02, 0.98) == "61.2 rows/min (pace 58.8 calls/min)"
    assert line(0.9, 3.4) == "0.9 rows/s (pace 3.4 calls/s)"
    assert line(4.0, float("inf")) == "4.0 rows/s (pace unlimited)"


def _pacer_states(screen: str) -> list[str]:
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    return [state.strip() for state in re.findall(r"^pacer +([^\r\n]+)", plain, re.MULTILINE)]


def test_the_final_frame_says_the_run_stopped(tmp_path: Path, serve: Serve) -> None:
    pairs = _pairs(20)
    server = serve(Sandbox(pairs))
    src = write_csv(tmp_path / "in.csv", pairs)
    out = tmp_path / "r.csv"
    args = ["run", str(src), "--out", str(out), "--rate", "40/s", "--yes"]
    with terminal([*args, "--max-removals", "5"], cli_env(server.base_url)) as term:
        screen = term.read_until(None)
        assert term.proc.wait(30) == 75
    assert _pacer_states(screen)[-1] == "stopped (max removals)", screen
    with terminal(args, cli_env(server.base_url)) as term:
        screen = term.read_until(None)
        assert term.proc.wait(30) == 0
    assert _pacer_states(screen)[-1] == "finished", screen


def test_the_plan_says_why_the_pace_is_98_percent(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", _pairs(3))
    result = run_cli(["plan", str(src), "--plan", "pro"], NO_SERVER)
    assert result.returncode == 0
    assert "49.0/min" in result.stderr
    note = " ".join(line.strip() for line in result.stderr.splitlines()[-2:])
    assert note == (
        "(each pace is 98% of the plan's limit or --rate: the margin absorbs network jitter, "
        "so the API's strict per-minute window never answers 429)"
    )
