"""What the benchmarks share: input pairs, a sandbox in its own process, timed child runs."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API_KEY = "wbk_bench_key"
ROOT = Path(__file__).resolve().parents[1]
"""The checkout: children run from here so `-m bench.*` resolves wherever we were started."""
CAMPAIGNS = 20


def pairs(n: int, start: int = 0) -> list[tuple[str, str]]:
    """N distinct (campaign, contact) pairs, the same in the server and the client."""
    return [
        (str(uuid.UUID(int=1 + i % CAMPAIGNS, version=4)), str(uuid.UUID(int=10**6 + i, version=4)))
        for i in range(start, start + n)
    ]


def write_input(path: Path, rows: Sequence[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("campaign_id", "contact_id"))
        writer.writerows(rows)
    return path


@dataclass
class ServerStats:
    calls: int = 0
    rate_limited: int = 0
    quota_refused: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    removed: int = 0
    admitted: list[float] = field(default_factory=list)

    def achieved_per_second(self) -> float:
        """Admitted calls per second, from the first arrival to the last."""
        times = self.admitted
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def window_counts(self, window: float) -> list[int]:
        """For each admitted call, the calls admitted in the `window` seconds ending with it
        (a strict sliding window's view)."""
        times, counts, first = self.admitted, [], 0
        for last, t in enumerate(times):
            while times[first] <= t - window:
                first += 1
            counts.append(last - first + 1)
        return counts

    def busiest_window(self, window: float) -> int:
        """The most calls admitted in any `window` seconds."""
        return max(self.window_counts(window), default=0)


class Server:
    """`python -m bench.server` in its own process; `.stats` is filled in on exit."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.args = args
        self.base_url = ""
        self.stats = ServerStats()

    def __enter__(self) -> Server:
        ready = self.workdir / "server-url"
        ready.unlink(missing_ok=True)
        self._stats_file = self.workdir / "server-stats.json"
        self._stats_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "bench.server", "--ready-file", str(ready)]
        command += ["--stats-file", str(self._stats_file), *self.args]
        self._process = subprocess.Popen(command, cwd=ROOT)
        deadline = time.monotonic() + 60
        while not ready.exists() or not ready.read_text().endswith("\n"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark sandbox did not start")
            time.sleep(0.05)
        self.base_url = ready.read_text().strip()
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.send_signal(signal.SIGTERM)
        self._process.wait(30)
        if self._stats_file.exists():
            self.stats = ServerStats(**json.loads(self._stats_file.read_text()))


@dataclass
class ChildRun:
    returncode: int
    wall: float
    cpu: float
    """User + system CPU seconds of the child, from the kernel's own accounting (wait4)."""
    stdout: str
    stderr: str


def cli_env(base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLEX_")}
    env.update(LEADLEX_API_KEY=API_KEY, LEADLEX_BASE_URL=base_url)
    return env


def run_child(command: Sequence[str], env: dict[str, str], timeout: float = 600) -> ChildRun:
    """Run a child to the end; its wall time and the CPU the kernel charged it."""
    started = time.monotonic()
    process = subprocess.Popen(
        list(command),
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    wall = time.monotonic() - started
    return ChildRun(process.returncode, wall, 0.0, stdout, stderr)


@contextlib.contextmanager
def children_cpu() -> Iterator[list[float]]:
    """CPU seconds used by children reaped inside the block (appended to the yielded list)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    box: list[float] = []
    yield box
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    box.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))


def timed_child(command: Sequence[str], env: dict[str, str], timeout: float = 600) -> ChildRun:
    """A child run with its CPU seconds (only this child may be reaped meanwhile)."""
    with children_cpu() as cpu:
        run = run_child(command, env, timeout)
    run.cpu = cpu[0]
    return run


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bulk_unenroll", *args]


def process_cpu(pid: int) -> float:
    """CPU seconds a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def report(title: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Print a benchmark's figures as aligned lines (and return them for the summary)."""
    print(f"\n== {title}", flush=True)
    for name, value in figures.items():
        shown = (
            f"{value:,.3f}"
            if isinstance(value, float)
            else f"{value:,}"
            if isinstance(value, int)
            else str(value)
        )
        print(f"  {name:<42} {shown}", flush=True)
    return figures
