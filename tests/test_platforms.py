"""Platforms, simulated: Windows (no `flock`, `pread`, `pwrite`, user ids) imports the package
and shows --help, then every command stops with one sentence; macOS (no `O_TMPFILE`) runs and
rewrites the results file under a temporary name instead; an event loop that cannot receive
signals runs without them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest
from conftest import API_KEY, CLI_TIMEOUT, cli_env, new_uuid, read_results, write_csv
from helpers import QUICK_YES, Serve

from bulk_unenroll import (
    JobConfig,
    Outcome,
    Rate,
    RowResult,
    Secret,
    Summary,
    UnsupportedPlatform,
)
from bulk_unenroll.platforms import UNSUPPORTED, missing, require_posix, unnamed_files
from bulk_unenroll.results.journal import Journal
from bulk_unenroll.sandbox import Sandbox
from bulk_unenroll.send.runner import Job

SIMULATE = """
import os, sys
for name in sys.argv.pop(1).split(","):
    if name == "fcntl":
        sys.modules["fcntl"] = None  # `import fcntl` now fails, as on Windows
    else:
        delattr(os, name)
import bulk_unenroll  # must import whatever is missing
from bulk_unenroll.cli import main
main(prog_name="bulk-unenroll")
"""
"""`python -c SIMULATE LACKS ARGS...`: the CLI on a system without LACKS (comma-separated:
`fcntl` and names in `os`), removed before anything of the package is imported."""

WINDOWS = ("fcntl", "pread", "pwrite", "getuid", "O_TMPFILE")
MACOS = ("O_TMPFILE",)


def run_without(
    lacks: Sequence[str], args: Sequence[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SIMULATE, ",".join(lacks), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.slow
def test_windows_imports_and_helps_then_each_command_stops_with_one_sentence(
    tmp_path: Path,
) -> None:
    env = cli_env("http://127.0.0.1:9/api-gateway")  # nothing may be sent anywhere
    for args in (["--help"], ["--version"], ["run", "--help"], ["report", "--help"]):
        shown = run_without(WINDOWS, args, env)
        assert shown.returncode == 0, shown.stderr
        assert shown.stderr == ""

    pairs = [("cmp_abc", new_uuid(1))]
    unenroll = write_csv(tmp_path / "in.csv", pairs)
    out = tmp_path / "results.csv"
    commands = [
        ["run", str(unenroll), "--out", str(out), "--yes"],
        ["plan", str(unenroll)],
        ["report", str(out)],
        ["restore", str(out), "--out", str(tmp_path / "restored.csv"), "--yes"],
        ["sandbox", "--enroll-from", str(unenroll)],
    ]
    for args in commands:
        stopped = run_without(WINDOWS, args, env)
        assert stopped.returncode == 2, stopped.stderr
        assert stopped.stderr == f"error: {UNSUPPORTED}\n"
        assert stopped.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # no results, no lock


def test_what_windows_lacks_is_named_and_stops_the_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert missing() == []  # Linux, where the suite runs
    require_posix()
    monkeypatch.delattr(os, "pread")
    monkeypatch.setitem(sys.modules, "fcntl", None)
    assert missing() == ["fcntl", "os.pread"]
    monkeypatch.undo()

    monkeypatch.setattr(sys, "platform", "win32")  # whatever it happens to have
    config = JobConfig(
        input=write_csv(tmp_path / "in.csv", [("cmp_abc", new_uuid(1))]),
        out=tmp_path / "results.csv",
        api_key=Secret(API_KEY),
    )
    with pytest.raises(UnsupportedPlatform, match="inside WSL") as stopped:
        Job(config)
    assert stopped.value.exit_code == 2
    assert not config.out.exists()


def test_without_unnamed_files_a_rewrite_goes_through_a_named_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS: compaction writes `.rewriting`, renames it over the results file, leaves
    nothing behind, and `.sent` ends bound to the new file."""
    monkeypatch.delattr(os, "O_TMPFILE")
    assert not unnamed_files()
    renamed: list[str] = []
    replace = Path.replace

    def spy(self: Path, target: str | os.PathLike[str]) -> Path:
        renamed.append(self.name)
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", spy)
    out = tmp_path / "results.csv"
    pair = ("cmp_abc", new_uuid(7))
    journal = Journal(out)
    journal.record([RowResult(1, *pair, Outcome.FAILED, detail="HTTP 503")])
    journal.close()
    journal = Journal(out)  # a rerun settles the failed row; closing compacts
    journal.record([RowResult(1, *pair, Outcome.REMOVED, http_status=200)])
    journal.close()

    assert renamed == ["results.csv.rewriting"]
    assert [(r["row"], r["status"]) for r in read_results(out)] == [("1", "removed")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.csv.sent"]
    binding = (tmp_path / "results.csv.sent").read_text().split()[:3]
    assert binding == ["#results", f"{out.stat().st_dev}:{out.stat().st_ino}", "-"]


def test_macos_runs_end_to_end_and_compacts(tmp_path: Path, serve: Serve) -> None:
    """A rerun that settles a `failed` row (so closing compacts) on a system without
    `O_TMPFILE`, through the CLI as a user runs it."""
    pairs = [("cmp_abc", new_uuid(i)) for i in range(1, 6)]
    out = tmp_path / "results.csv"
    journal = Journal(out)
    journal.record([RowResult(2, *pairs[1], Outcome.FAILED, detail="HTTP 503")])
    journal.close()
    env = cli_env(serve(Sandbox(pairs)).base_url)

    done = run_without(
        MACOS,
        ["run", str(write_csv(tmp_path / "in.csv", pairs)), "--out", str(out), *QUICK_YES],
        env,
    )

    assert done.returncode == 0, done.stderr
    records = read_results(out)
    assert sorted(r["row"] for r in records) == ["1", "2", "3", "4", "5"]
    assert {r["status"] for r in records} == {"removed"}  # the failed record was compacted
    assert not (tmp_path / "results.csv.rewriting").exists()
    assert not (tmp_path / "results.csv.lock").exists()


def run_watching_signals(config: JobConfig) -> tuple[Summary, list[str]]:
    """A job as the CLI runs it (signals watched), with the events it told."""
    events: list[str] = []

    async def plan_and_run() -> Summary:
        job = Job(config, on_event=lambda event: events.append(str(event)), handle_signals=True)
        await job.plan()
        return await job.run()

    return anyio.run(plan_and_run, backend="asyncio"), events


def signals_config(tmp_path: Path, serve: Serve) -> tuple[JobConfig, Sandbox]:
    pairs = [("cmp_abc", new_uuid(i)) for i in range(1, 11)]
    api = Sandbox(pairs)
    config = JobConfig(
        input=write_csv(tmp_path / "in.csv", pairs),
        out=tmp_path / "results.csv",
        api_key=Secret(API_KEY),
        base_url=serve(api).base_url,
        rate=Rate(200, 1),
    )
    return config, api


UNWATCHED = "signals are not watched here"


def test_a_loop_without_signal_handlers_runs_without_them(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As asyncio's loop on Windows: add_signal_handler raises NotImplementedError."""
    monkeypatch.setattr(
        asyncio.SelectorEventLoop, "add_signal_handler", asyncio.BaseEventLoop.add_signal_handler
    )
    config, api = signals_config(tmp_path, serve)

    summary, events = run_watching_signals(config)

    assert summary.exit_code == 0 and not api.state.enrolled
    assert [e for e in events if UNWATCHED in e] == [
        f"{UNWATCHED} (no signal handlers): SIGINT and SIGTERM give the requests in flight "
        "no grace period; however the process ends, a rerun carries on (they are marked in "
        "the .sent file)"
    ]


def test_a_job_off_the_main_thread_runs_without_signal_receivers(
    tmp_path: Path, serve: Serve
) -> None:
    """A scheduler's worker thread: only the main thread may receive signals."""
    config, api = signals_config(tmp_path, serve)

    with ThreadPoolExecutor(1) as pool:
        summary, events = pool.submit(run_watching_signals, config).result(timeout=60)

    assert summary.exit_code == 0 and not api.state.enrolled
    assert len([e for e in events if UNWATCHED in e and "main thread" in e]) == 1
