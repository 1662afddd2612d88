"""What a run needs from the operating system, and one sentence where it is missing.

Linux and macOS (POSIX) run the tool. The ledger's guarantees rest on `flock` locks that the
kernel drops when a process dies, on `pread`/`pwrite` and on user ids for the private claims
folder; Windows has none of them, so there every command stops at start and points to WSL,
while `import bulk_unenroll` and `--help` still work (nothing here is imported at the top).
The one difference between Linux and macOS, a file written without a name (`O_TMPFILE`), has a
named fallback: `unnamed_files`.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from .errors import UnsupportedPlatform

UNSUPPORTED = (
    "bulk-unenroll runs on Linux and macOS, not on Windows itself: run it inside WSL "
    "(Windows Subsystem for Linux, `wsl --install`), where it works as on Linux"
)
POSIX_CALLS = ("pread", "pwrite", "getuid")


def missing() -> list[str]:
    """What this system lacks of what a run needs; empty on Linux and macOS."""
    lacks = [] if importlib.util.find_spec("fcntl") else ["fcntl"]
    return lacks + [f"os.{name}" for name in POSIX_CALLS if not hasattr(os, name)]


def require_posix() -> None:
    """Stop before anything is read, locked or sent where the tool cannot run safely."""
    if sys.platform == "win32" or missing():
        raise UnsupportedPlatform(UNSUPPORTED)


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on an open file without waiting; False while another process
    holds it. The kernel drops it when the process dies, so a kill never leaves it held."""
    require_posix()
    import fcntl  # here, so that the package imports where there is none

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unnamed_files() -> bool:
    """Whether a file can be written with no name and named once whole (Linux: `O_TMPFILE`
    and /proc/self/fd); macOS cannot, and writes it under a temporary name instead."""
    return hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
