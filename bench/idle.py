"""Idle cost: CPU the tool uses while it waits out a quota reset or a rate-limit pause.

    python -m bench.idle [--wait S] [--quota-only | --pause-only]

Two CLI runs at once, each against its own sandbox process:
- quota: a daily quota of 20 that resets `--wait` seconds after the server starts; the run has
  40 rows and `--wait-for-quota`, so it spends the quota at once and then sleeps until the reset;
- pause: a strict window of 5 calls a minute and `--rate 10/s`; the 6th call draws a 429 with
  Retry-After of about a minute, and every worker pauses.
The child's CPU time is read from /proc when the tool announces the wait and again shortly
before it ends; CPU / wall time is the share of one core it used while idle. Target: < 1%.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import ROOT, Server, cli, cli_env, pairs, process_cpu, report, write_input


def idle_share(
    command: Sequence[str], env: dict[str, str], announce: str, wait: float
) -> dict[str, Any]:
    """Run the CLI; from its `announce` line, measure CPU over the next `wait` seconds."""
    process = subprocess.Popen(
        list(command),
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    announced = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if announce in line:
                announced.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not announced.wait(60):
            raise SystemExit(f"the tool never said {announce!r}: {''.join(lines)[-2000:]}")
        time.sleep(0.5)  # let the workers settle into their sleep
        cpu0, t0 = process_cpu(process.pid), time.monotonic()
        time.sleep(wait)
        cpu1, t1 = process_cpu(process.pid), time.monotonic()
        code = process.wait(wait + 120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        reader.join(5)
    if code not in (0, 1):
        raise SystemExit(f"the tool failed ({code}): {''.join(lines)[-2000:]}")
    used = cpu1 - cpu0
    return {
        "idle wall time measured, s": t1 - t0,
        "CPU used meanwhile, s": used,
        "share of one core, %": used / (t1 - t0) * 100,
        "CPU per idle minute, s": used / (t1 - t0) * 60,
    }


def quota_wait(wait: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inp = write_input(work / "in.csv", pairs(40))
        day_start = time.time() + 1  # the server is up within a second; a day lasts `wait` + 5
        with Server(
            work,
            "--pairs",
            "40",
            "--per-day",
            "20",
            "--day-seconds",
            str(wait + 5),
            "--day-start",
            str(day_start),
        ) as server:
            command = cli("run", str(inp), "--out", str(work / "out.csv"), "--rate", "100/s")
            command += ["--wait-for-quota", "--yes"]
            left = day_start + wait + 5 - time.time()
            return idle_share(command, cli_env(server.base_url), "waiting until", left - 4)


def rate_pause(wait: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inp = write_input(work / "in.csv", pairs(10))
        with Server(work, "--pairs", "10", "--rate-limit", "5/min") as server:
            command = cli("run", str(inp), "--out", str(work / "out.csv"), "--rate", "10/s")
            command += ["--yes"]
            return idle_share(
                command, cli_env(server.base_url), "pausing all workers", min(wait, 55.0)
            )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wait", type=float, default=60.0, help="Seconds until the reset.")
    parser.add_argument("--quota-only", action="store_true")
    parser.add_argument("--pause-only", action="store_true")
    args = parser.parse_args(argv)
    jobs = {}
    with ThreadPoolExecutor(2) as pool:
        if not args.pause_only:
            jobs["quota"] = pool.submit(quota_wait, args.wait)
        if not args.quota_only:
            jobs["pause"] = pool.submit(rate_pause, args.wait)
        figures: dict[str, Any] = {}
        if "quota" in jobs:
            figures["quota"] = report(
                "idle cost while waiting for a quota reset (--wait-for-quota)",
                jobs["quota"].result(),
            )
        if "pause" in jobs:
            figures["pause"] = report(
                "idle cost while paused by a 429 (Retry-After ~60 s)", jobs["pause"].result()
            )
    return figures


if __name__ == "__main__":
    main()
