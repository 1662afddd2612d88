"""The library says what happened as data and names the settings it advises about as
`JobConfig` does; only the CLI words them as its flags. So the layers below the CLI hold no
flag in the words they say, and every setting an event can name is a field and a flag."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import click
import pytest

from bulk_unenroll.cli import main
from bulk_unenroll.config import JobConfig, RetryPolicy
from bulk_unenroll.errors import ResultsFileError
from bulk_unenroll.events import MaxRemovalsReached, QuotaSpent, Said, Setting
from bulk_unenroll.render import flag

PACKAGE = Path(__file__).parent.parent / "bulk_unenroll"
LIBRARY = ["send", "api", "results", "plan.py", "events.py"]
"""What runs a job for a library user as much as for the CLI."""
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def said_strings(path: Path) -> list[str]:
    """The string literals of `path` that code says (docstrings, strings standing alone as
    statements, left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def library_files() -> list[Path]:
    files: list[Path] = []
    for name in LIBRARY:
        where = PACKAGE / name
        files += sorted(where.rglob("*.py")) if where.is_dir() else [where]
    return files


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_spells_no_command_line_flag(path: Path) -> None:
    flags = [s for s in said_strings(path) if FLAG.search(s)]
    assert not flags, f"{path.name} says {flags}: name a Setting in an event instead"


def test_the_flag_check_finds_a_flag_in_a_string() -> None:
    assert FLAG.search("stopped after --max-removals 5")
    assert not FLAG.search("a well-known 2026-12-01 x--y")


def test_every_setting_is_a_config_field_and_a_run_flag() -> None:
    fields = {f.name for kind in (JobConfig, RetryPolicy) for f in dataclasses.fields(kind)}
    run = main.commands["run"]
    assert isinstance(run, click.Command)
    flags = {opt for param in run.params for opt in param.opts}
    for setting in Setting:
        assert setting.value in fields, f"{setting} is no JobConfig field"
        assert flag(setting) in flags, f"{flag(setting)} is no flag of `run`"


def test_an_event_names_settings_as_its_reader_does() -> None:
    stop = MaxRemovalsReached(5)

    assert str(stop) == "stopped after max_removals 5"
    assert stop.describe(flag) == "stopped after --max-removals 5"


def test_a_wait_for_the_quota_is_told_as_it_stood_when_said() -> None:
    from datetime import UTC, datetime, timedelta

    at = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    waiting = QuotaSpent(20, None, at, waiting_until=at + timedelta(hours=2))

    assert "keeping --reserve 20" in waiting.describe(flag)
    assert "in 2h00m, then carrying on (--wait-for-quota)" in waiting.describe(flag)


def test_an_error_keeps_its_event_for_the_cli_to_word() -> None:
    error = ResultsFileError(Said(("choose a new ", Setting.OUT)))

    assert str(error) == "choose a new out"
    assert error.describe(flag) == "choose a new --out"
    assert ResultsFileError("plain words").describe(flag) == "plain words"
