"""Names the test files share: the sandbox fixture's type, the CLI's rate presets, and the
sandbox command started as a user starts it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bulk_unenroll.sandbox import Sandbox, SandboxThread

Serve = Callable[[Sandbox], SandboxThread]
"""The type of the `serve` fixture (tests/conftest.py): start a sandbox for one test."""

QUICK = ["--rate", "200/s"]
"""Fast enough that pacing never slows a test of a few dozen rows; still paced."""
QUICK_YES = [*QUICK, "--yes"]
"""The same, without the confirmation prompt."""
BURST = ["--rate", "1000/s", "--concurrency", "8", "--yes"]
"""Many rows at once: for tests whose sandbox answers slowly or with faults."""


@dataclass
class SandboxCommand:
    """A `bulk-unenroll sandbox` process as a user starts it."""

    url: str = ""
    banner: str = ""
    """What it printed (stdout and stderr), once it has stopped."""


@contextlib.contextmanager
def sandbox_command(
    ready: Path, *options: str, program: Sequence[str] = (sys.executable, "-m", "bulk_unenroll")
) -> Iterator[SandboxCommand]:
    """Start the sandbox command with `options`, wait for the base URL it writes to `ready`,
    and stop it afterwards."""
    proc = subprocess.Popen(
        [*program, "sandbox", *options, "--ready-file", str(ready)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started = SandboxCommand()
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text().endswith("\n"):
            assert proc.poll() is None and time.monotonic() < deadline, "sandbox did not start"
            time.sleep(0.05)
        started.url = ready.read_text().strip()
        yield started
    finally:
        proc.terminate()
        started.banner, _ = proc.communicate(timeout=10)
