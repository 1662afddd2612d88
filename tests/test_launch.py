"""The fork server (tests/launch.py) launches the CLI as `python -m bulk_unenroll` does: the
same output, exit status, argv, environment and working directory, for every kind of ending.
Each case runs both ways in the same test, whatever BULK_UNENROLL_TEST_LAUNCH says."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import launch
import pytest
from conftest import cli_env, new_uuid, read_results, write_csv
from helpers import QUICK, Serve

from bulk_unenroll.sandbox import Sandbox


def both(
    args: list[str], env: dict[str, str]
) -> Iterator[tuple[str, subprocess.CompletedProcess[str]]]:
    """The launch through the server, then the same launch with `python -m bulk_unenroll`."""
    for way in ("server", "exec"):
        with pytest.MonkeyPatch.context() as patch:
            choose(patch, way)
            yield way, launch.run_cli(args, env, timeout=60)


def choose(patch: pytest.MonkeyPatch, way: str) -> None:
    """Launch `way`, whatever BULK_UNENROLL_TEST_LAUNCH says for the rest of the suite."""
    if way == "exec":
        patch.setenv(launch.MODE_ENV, "exec")
    else:
        patch.delenv(launch.MODE_ENV, raising=False)


def test_help_usage_errors_and_bad_input_end_the_same_both_ways(tmp_path: Path) -> None:
    env = cli_env("http://127.0.0.1:9/api-gateway")
    cases = [
        ["--help"],
        ["run", "--no-such-flag"],
        ["run", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r.csv")],
        ["report", str(tmp_path / "missing.csv")],
    ]
    for args in cases:
        (_, served), (_, executed) = both(args, env)
        assert (served.returncode, served.stdout, served.stderr) == (
            executed.returncode,
            executed.stdout,
            executed.stderr,
        ), args
    assert [c.returncode for _, c in both(cases[1], env)] == [2, 2]


@pytest.mark.parametrize("way", ["server", "exec"])
def test_a_stopped_run_sees_its_argv_environment_and_directory(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """argv reaches the continue command, the environment reaches the client (the key, the
    base URL), the working directory resolves a relative input, the exit status is the run's."""
    rows = [("cmp_a", new_uuid(i)) for i in range(1, 13)]
    write_csv(tmp_path / "in.csv", rows)
    monkeypatch.chdir(tmp_path)
    choose(monkeypatch, way)
    api = Sandbox(rows)
    args = ["run", "in.csv", "--out", "r.csv", *QUICK, "--max-removals", "3", "--yes"]

    done = launch.run_cli(args, cli_env(serve(api).base_url), timeout=60)

    assert done.returncode == 75, done.stderr
    assert len(api.state.removed) == 3
    assert [r["status"] for r in read_results(tmp_path / "r.csv")].count("removed") == 3
    assert f"to continue, run: bulk-unenroll {' '.join(args)}" in done.stdout


@pytest.mark.parametrize("way", ["server", "exec"])
def test_a_launch_past_its_timeout_is_killed_and_raises_as_subprocess_does(
    monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    choose(monkeypatch, way)
    env = cli_env("http://127.0.0.1:9/api-gateway")
    with pytest.raises(subprocess.TimeoutExpired):
        launch.run_cli(["sandbox", "--port", "0"], env, timeout=3)


@pytest.mark.parametrize("way", ["server", "exec"])
def test_a_started_process_can_be_polled_signalled_and_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    choose(monkeypatch, way)
    env = cli_env("http://127.0.0.1:9/api-gateway")
    ready = tmp_path / "ready"
    with (tmp_path / "out").open("ab") as out, (tmp_path / "err").open("ab") as err:
        process = launch.spawn(
            ["sandbox", "--port", "0", "--ready-file", str(ready)], env, out, err
        )
    for _ in range(600):
        if ready.exists() and ready.read_text().endswith("\n"):
            break
        assert process.poll() is None, (tmp_path / "err").read_text()
        time.sleep(0.05)
    assert process.poll() is None
    for timeout in (0, 0.2):
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout)
    process.send_signal(signal.SIGKILL)
    assert process.wait(10) == -signal.SIGKILL == process.returncode
    assert "listening on http://127.0.0.1:" in (tmp_path / "out").read_text()


def test_launches_from_many_threads_at_once_each_get_their_own_output() -> None:
    """Each launch's pipes are its own (an fd closed twice would close another thread's)."""
    env = cli_env("http://127.0.0.1:9/api-gateway")
    commands = [["--help"], ["run", "--help"], ["report", "--help"], ["verify", "--help"]] * 4
    with ThreadPoolExecutor(8) as pool:
        ended = list(pool.map(lambda args: launch.run_cli(args, env, timeout=60), commands))
    for args, done in zip(commands, ended, strict=True):
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout.startswith(f"Usage: bulk-unenroll {args[0]} ".replace("--help ", ""))
