"""Names the test files share: the sandbox fixture's type and the CLI's rate presets."""

from __future__ import annotations

from collections.abc import Callable

from bulk_unenroll.sandbox import Sandbox, SandboxThread

Serve = Callable[[Sandbox], SandboxThread]
"""The type of the `serve` fixture (tests/conftest.py): start a sandbox for one test."""

QUICK = ["--rate", "200/s"]
"""Fast enough that pacing never slows a test of a few dozen rows; still paced."""
QUICK_YES = [*QUICK, "--yes"]
"""The same, without the confirmation prompt."""
BURST = ["--rate", "1000/s", "--concurrency", "8", "--yes"]
"""Many rows at once: for tests whose sandbox answers slowly or with faults."""
