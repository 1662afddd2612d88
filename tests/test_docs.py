"""The README is the manual: it must name every option, exit code and JSON key, and its
library API must work as shown."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from conftest import API_KEY, new_uuid, write_csv
from helpers import Serve

from bulk_unenroll import (
    Job,
    JobConfig,
    Outcome,
    Progress,
    Rate,
    Secret,
    StopReason,
    Summary,
    run_job,
    unenroll_file,
)
from bulk_unenroll.cli import main
from bulk_unenroll.events import Event
from bulk_unenroll.report import summary_dict
from bulk_unenroll.sandbox import Sandbox

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def _commands(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


def _section(name: str) -> str:
    """The README's reference section for one command."""
    start = README.index(f"### `bulk-unenroll {name}")
    end = min(i for i in (README.find("\n### ", start + 1), README.find("\n## ", start)) if i > 0)
    return README[start:end]


def test_every_option_of_every_command_is_in_the_readme() -> None:
    missing = []
    for path, command in _commands(main):
        section = _section(path[-1]) if path else README
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            for flag in [*param.opts, *param.secondary_opts]:
                where = README if flag in ("-h", "--help") else section
                if not _mentions(where, flag):
                    missing.append(f"{' '.join(('bulk-unenroll', *path))} {flag}")
    assert not missing, f"document these in README.md: {missing}"


def test_the_option_walk_sees_every_command() -> None:
    names = {path[-1] for path, _ in _commands(main) if path}
    assert names == {"run", "plan", "restore", "report", "verify", "sandbox"}
    run = main.commands["run"]
    assert "--summary-json" in {opt for p in run.params for opt in p.opts}


def test_every_exit_code_is_documented() -> None:
    table = README[README.index("## Exit codes") :]
    for code in (0, 1, 2, 3, 70, 74, 75, 130, 143):
        assert re.search(rf"^\| {code} \|", table, re.MULTILINE), f"exit code {code}"


def test_every_summary_json_key_is_documented() -> None:
    data = summary_dict(Summary(), command="run")
    section = README[README.index("### `--summary-json PATH`") :]
    for key in data:
        assert f"`{key}`" in section, f"summary key {key}"
    for key in ("calls_needed", "estimates", "top_campaigns", "invalid_examples", "resend"):
        assert f"`{key}`" in section, f"plan key {key}"
    for reason in StopReason:
        assert f"`{reason.value}`" in section


def test_the_readme_imports_exist() -> None:
    imports = re.findall(r"^from (bulk_unenroll[\w.]*) import (.+)$", README, re.MULTILINE)
    assert imports
    for module_name, names in imports:
        module = importlib.import_module(module_name)
        for name in names.split(","):
            assert hasattr(module, name.strip()), f"{module_name}.{name.strip()}"


# -- the library API, as the README shows it -------------------------------------------------


def _job(tmp_path: Path, serve: Serve) -> tuple[JobConfig, Sandbox]:
    enrolled = [("cmp_lib", new_uuid(i)) for i in range(30)]
    api = Sandbox(enrolled)
    server = serve(api)
    rows = [*enrolled, ("cmp_lib", new_uuid(99)), ("cmp_lib", "nope")]
    config = JobConfig(
        input=write_csv(tmp_path / "in.csv", rows),
        out=tmp_path / "results.csv",
        api_key=Secret(API_KEY),
        base_url=server.base_url,
        rate=Rate.parse("40/s"),
    )
    return config, api


def test_unenroll_file_with_a_progress_callback(tmp_path: Path, serve: Serve) -> None:
    config, api = _job(tmp_path, serve)
    seen: list[Progress] = []
    events: list[Event] = []
    summary = unenroll_file(config, on_progress=seen.append, on_event=events.append)
    assert summary.outcomes[Outcome.REMOVED] == 30 == len(api.state.removed)
    assert summary.outcomes[Outcome.NOT_ENROLLED] == 1
    assert summary.outcomes[Outcome.INVALID] == 1
    assert summary.exit_code == 1 and summary.remaining == 0
    # 31 calls paced at 40/s take longer than one 0.5 s progress tick.
    assert seen and all(p.summary is summary for p in seen)
    done = [p.finished_rows for p in seen]
    assert done == sorted(done) and done[-1] <= 31


@pytest.mark.asyncio
async def test_run_job_in_an_event_loop(tmp_path: Path, serve: Serve) -> None:
    config, api = _job(tmp_path, serve)
    summary = await run_job(config)
    assert summary.outcomes[Outcome.REMOVED] == 30 == len(api.state.removed)
    assert summary.calls == api.state.calls


@pytest.mark.asyncio
async def test_a_job_planned_and_closed_sends_nothing(tmp_path: Path, serve: Serve) -> None:
    config, api = _job(tmp_path, serve)
    job = Job(config)
    await job.plan()
    assert job.summary.to_send == 31
    job.close()  # releases the lock: the next job can take it
    summary = await run_job(config)
    assert summary.outcomes[Outcome.REMOVED] == 30
    assert api.state.calls == summary.calls
