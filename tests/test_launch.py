"""The fork server (tests/launch.py) launches the CLI as `python -m bulk_unenroll` does: the
same output, exit status, argv, environment and working directory, for every kind of ending.
Each case runs both ways in the same test, whatever BULK_UNENROLL_TEST_LAUNCH says; a small
stand-in program (PROBE) shows what a launched process sees as it starts and how it ends."""

from __future__ import annotations

import json
import os
import pty
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import launch
import pytest
from conftest import cli_env, new_uuid, read_results, write_csv
from helpers import QUICK, Serve

from bulk_unenroll.sandbox import Limits, Sandbox


def both(
    args: list[str], env: dict[str, str], module: str = launch.CLI
) -> Iterator[tuple[str, subprocess.CompletedProcess[str]]]:
    """The launch through the server, then the same launch with `python -m bulk_unenroll`."""
    for way in ("server", "exec"):
        with pytest.MonkeyPatch.context() as patch:
            choose(patch, way)
            yield way, launch.run_cli(args, env, timeout=60, module=module)


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


def test_a_launch_whose_attendant_was_killed_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's process that forked a launch and waits for it: killed, the test is told
    (not `int(b'')`)."""
    choose(monkeypatch, "server")
    env = cli_env("http://127.0.0.1:9/api-gateway")
    ready = tmp_path / "ready"
    with (tmp_path / "out").open("ab") as out, (tmp_path / "err").open("ab") as err:
        process = launch.spawn(
            ["sandbox", "--port", "0", "--ready-file", str(ready)], env, out, err
        )
    stat = Path(f"/proc/{process.pid}/stat").read_text()
    os.kill(int(stat.rsplit(")", 1)[1].split()[1]), signal.SIGKILL)
    try:
        with pytest.raises(ChildProcessError, match=r"attendant of .* ended first"):
            process.wait(30)
    finally:
        os.kill(process.pid, signal.SIGKILL)  # still running, now a child of init


def test_launches_from_many_threads_at_once_each_get_their_own_output() -> None:
    """Each launch's pipes are its own (an fd closed twice would close another thread's)."""
    env = cli_env("http://127.0.0.1:9/api-gateway")
    commands = [["--help"], ["run", "--help"], ["report", "--help"], ["verify", "--help"]] * 4
    with ThreadPoolExecutor(8) as pool:
        ended = list(pool.map(lambda args: launch.run_cli(args, env, timeout=60), commands))
    for args, done in zip(commands, ended, strict=True):
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout.startswith(f"Usage: bulk-unenroll {args[0]} ".replace("--help ", ""))


PROBE = "launch_probe"
PROBE_SOURCE = '''
"""A stand-in for the CLI: what a launched process sees as it starts, and endings of each kind."""
import atexit, json, os, re, signal, sys, tempfile, threading, time, warnings

import bulk_unenroll.cli  # as the CLI does, with what that changes (polars' threads, settings)


def fds():
    """Open file descriptors and what they are (not which pipe; the listing's own is closed
    by then)."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = re.sub(r"\\[\\d+\\]", "", os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return found


def seen():
    with open("/proc/self/status") as status, open("/proc/self/limits") as limits:
        process = [line for line in status if line.startswith(("Umask", "SigIgn", "SigBlk"))]
        process.append(limits.read())
    return {
        "pid": os.getpid(),
        "argv": [sys.argv, sys.orig_argv, sys.path, os.getcwd(), __name__],
        "env": dict(os.environ),
        "fds": fds(),
        "process": process + [os.getpgrp(), os.getsid(0)],
        "handlers": {str(n): repr(signal.getsignal(n)) for n in sorted(signal.valid_signals())},
        "stdio": [
            (s.isatty(), s.encoding, s.errors, s.line_buffering, s.write_through)
            for s in (sys.stdin, sys.stdout, sys.stderr)
        ],
        "at start": [time.tzname, tempfile.gettempdir(), repr(warnings.filters)],
    }


def end(how):
    atexit.register(print, "exit handler ran")
    print("unflushed", end="")
    if how == "message":
        sys.exit("stopped: a reason")
    if how == "code":
        sys.exit(3)
    if how == "interrupt":
        raise KeyboardInterrupt
    if how == "error":
        raise ValueError("broken")
    if how == "thread":
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
        sys.exit(0)
    if how == "killed":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)


if sys.argv[1] == "seen":
    text = json.dumps(seen())
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            f.write(text)
    else:
        print(text)
else:
    end(sys.argv[1])
'''


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """PROBE, in the working directory: `python -m launch_probe` runs it."""
    (tmp_path / f"{PROBE}.py").write_text(PROBE_SOURCE)
    monkeypatch.chdir(tmp_path)
    return PROBE


def seen_both_ways(env: dict[str, str]) -> list[dict[str, object]]:
    seen = [json.loads(done.stdout) for _, done in both(["seen"], env, PROBE)]
    for each in seen:
        each.pop("pid")  # each launch its own
    return seen


def test_a_launch_starts_as_python_m_starts_it(probe: str) -> None:
    """argv and sys.path, environment, file descriptors (none of the server's), signal
    dispositions, umask and limits, stdio, what is read as Python starts."""
    served, executed = seen_both_ways(cli_env("http://127.0.0.1:9/api-gateway"))
    assert served == executed
    assert sorted(served["fds"]) == ["0", "1", "2"]  # type: ignore[call-overload]


@pytest.mark.parametrize("how", ["message", "code", "interrupt", "error", "thread", "killed", "-"])
def test_a_launch_ends_as_python_ends_a_program(probe: str, how: str) -> None:
    """Exit status, the message or traceback, the exit handlers, the final flush, the wait for
    threads, a death by SIGINT after an uncaught KeyboardInterrupt. A traceback is compared by
    its first and last lines (the frames that start the program differ)."""
    ended = {}
    for way, done in both([how], cli_env("http://127.0.0.1:9/api-gateway"), PROBE):
        lines = done.stderr.splitlines()
        ended[way] = (done.returncode, done.stdout, lines[:1], lines[-1:])
    assert ended["server"] == ended["exec"]
    code, stdout, *_ = ended["exec"]
    assert code == {"message": 1, "code": 3, "interrupt": -signal.SIGINT, "error": 1}.get(
        how, -signal.SIGTERM if how == "killed" else 0
    )
    last = {"killed": "unflushed", "thread": "thread finished\nexit handler ran\n"}
    assert stdout.endswith(last.get(how, "exit handler ran\n")), stdout


@pytest.fixture
def own_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Launches through a server of this test's own, started with the environment the test
    has set by its first launch."""
    monkeypatch.setattr(launch, "_server_of_this_process", None)
    yield
    if launch._server_of_this_process is not None:
        launch._server_of_this_process.stop()


def test_a_launch_on_a_terminal_sees_one_and_has_the_pid_the_test_sees(
    tmp_path: Path, probe: str, monkeypatch: pytest.MonkeyPatch, own_server: None
) -> None:
    """stdout on a terminal is line buffered, as Python sets it up at start (PYTHONUNBUFFERED
    would make it unbuffered, both ways)."""
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    env = cli_env("http://127.0.0.1:9/api-gateway")
    master, terminal = pty.openpty()
    seen = {}
    try:
        for way in ("server", "exec"):
            choose(monkeypatch, way)
            with os.fdopen(os.dup(terminal), "wb") as out, (tmp_path / "err").open("ab") as err:
                process = launch.spawn(["seen", "seen.json"], env, out, err, module=probe)
            assert process.wait(60) == 0, (tmp_path / "err").read_text()
            seen[way] = json.loads((tmp_path / "seen.json").read_text())
            assert seen[way].pop("pid") == process.pid
    finally:
        os.close(terminal)
        os.close(master)
    assert seen["server"] == seen["exec"]
    assert seen["server"]["stdio"][1][::3] == [True, True]  # a terminal, line buffered


def test_a_launch_takes_what_the_test_process_has_at_launch_not_at_the_servers_start(
    probe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changed after the server started: a variable read as Python starts, the umask, a
    resource limit, an ignored signal (`nohup`). Such a launch is a real one."""
    choose(monkeypatch, "server")
    env = cli_env("http://127.0.0.1:9/api-gateway")
    assert launch.run_cli(["--help"], env, timeout=60).returncode == 0  # the server is up
    monkeypatch.setenv("PYTHONIOENCODING", "latin-1")
    umask = os.umask(0o027)
    files, most = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (files - 1, most))
    hangup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        served, executed = seen_both_ways(cli_env("http://127.0.0.1:9/api-gateway"))
    finally:
        signal.signal(signal.SIGHUP, hangup)
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, most))
        os.umask(umask)
    assert served == executed
    assert served["stdio"][1][1] == "iso8859-1"  # type: ignore[index]
    assert "Umask:\t0027\n" in served["process"]  # type: ignore[operator]


def test_local_times_are_in_the_launchs_time_zone(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TZ is read once, as a process starts: the daily quota's reset is shown in local time."""
    rows = [("cmp_a", new_uuid(i)) for i in range(1, 4)]
    write_csv(tmp_path / "in.csv", rows)
    shown = {}
    for way in ("server", "exec"):
        choose(monkeypatch, way)
        api = Sandbox(rows, limits=Limits(per_day=2, day_seconds=3600))
        env = cli_env(serve(api).base_url, TZ="JST-9")
        args = ["run", str(tmp_path / "in.csv"), "--out", str(tmp_path / f"{way}.csv"), *QUICK]
        done = launch.run_cli([*args, "--yes"], env, timeout=60)
        assert done.returncode == 75, done.stderr
        shown[way] = re.findall(r"\(([\d:]+ \w+) local\)", done.stdout + done.stderr)
    assert shown["server"] == shown["exec"]
    assert shown["exec"] and all(local.endswith(" JST") for local in shown["exec"])


LIFETIME = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import launch
from concurrent.futures import ThreadPoolExecutor

def help_status(_):
    return launch.run_cli(["--help"], os.environ, 60).returncode

with ThreadPoolExecutor(8) as pool:
    ended = list(pool.map(help_status, range(8)))
mine = [p for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/stat")
        and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())]
print(ended, len(mine), launch._server().pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_test_process_has_one_server_and_it_ends_with_the_test_process(tmp_path: Path) -> None:
    """However many threads launch first at once; however the test process ends (killed here,
    as a timeout or a crash would: the server must not outlive it)."""
    env = {k: v for k, v in os.environ.items() if k != launch.MODE_ENV}
    tests = str(Path(__file__).parent)
    with (tmp_path / "stderr").open("w") as stderr:  # a pipe would stay open in the server
        done = subprocess.run(
            [sys.executable, "-c", LIFETIME, tests],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=120,
        )
    assert done.returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()
    ended, servers, pid = re.fullmatch(r"(\[.*\]) (\d+) (\d+)\n", done.stdout).groups()  # type: ignore[union-attr]
    assert (ended, servers) == (str([0] * 8), "1")
    deadline = time.monotonic() + 10
    while _alive(int(pid)):
        if time.monotonic() > deadline:
            os.kill(int(pid), signal.SIGKILL)
            pytest.fail("the launch server outlived its test process")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_a_server_that_died_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    choose(monkeypatch, "server")
    env = cli_env("http://127.0.0.1:9/api-gateway")
    assert launch.run_cli(["--help"], env, timeout=60).returncode == 0
    dead = launch._server()
    os.kill(dead.pid, signal.SIGKILL)
    assert dead.ended(timeout=30)
    assert launch.run_cli(["--help"], env, timeout=60).returncode == 0
    assert launch._server() is not dead
