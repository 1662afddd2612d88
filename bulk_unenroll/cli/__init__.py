"""The command line: flags and environment to a JobConfig, the job's story to the terminal,
its result to an exit code. No HTTP, no polars, no business rules here. `base` holds the
command group, the options commands share and how a command runs; each other module adds
its command to the group (`send`: `plan` and `run`)."""

from . import report, restore, sandbox, send, verify  # noqa: F401  (each adds its command)
from .base import main

__all__ = ["main"]
