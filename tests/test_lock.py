"""Overlapping runs on one results file: the second leaves at once, naming the holder."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
from conftest import cli_env, run_cli
from helpers import Serve
from truth import check_truth, mixed_file, spawn_cli, wait_until

from bulk_unenroll import ResultsFileError
from bulk_unenroll.results.journal import Journal
from bulk_unenroll.sandbox import Faults


def test_second_journal_on_the_same_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    first = Journal(out)
    try:
        with pytest.raises(ResultsFileError) as caught:
            Journal(out)
        message = str(caught.value)
        assert "another run is using" in message
        assert f"pid {os.getpid()} on host" in message and socket.gethostname() in message
    finally:
        first.close()
    Journal(out).close()  # released on close


def test_overlapping_run_exits_at_once_and_a_kill_frees_the_lock(
    tmp_path: Path, serve: Serve
) -> None:
    mixed = mixed_file(tmp_path / "in.csv", 400, seed=13)
    api = mixed.sandbox(Faults(latency=0.05))  # slow, so the first run is still going
    env, out = cli_env(serve(api).base_url), tmp_path / "results.csv"
    args = ["run", str(mixed.path), "--out", str(out), "--rate", "400/s", "--concurrency", "4"]
    args.append("--yes")
    first = spawn_cli(args, env, tmp_path / "logs")
    try:
        wait_until(lambda: api.state.calls >= 10, first)
        holder = json.loads(out.with_name(out.name + ".lock").read_text())
        assert holder["pid"] == first.pid

        second = run_cli(args, env, timeout=30)

        assert second.returncode == 74, second.stdout + second.stderr
        assert "another run is using" in second.stderr
        assert f"pid {first.pid} on host" in second.stderr and holder["host"] in second.stderr
        assert first.poll() is None, "the first run goes on undisturbed"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)

    api.faults.latency = 0.0
    third = run_cli(args, env)  # the kernel released the dead run's lock

    assert third.returncode == 1, third.stdout + third.stderr
    check_truth(mixed, out, api)
    # Only the requests in flight when the first run was killed went out twice.
    assert sum(n > 1 for n in api.state.deletes.values()) <= 4
