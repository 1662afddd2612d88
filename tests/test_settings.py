"""The library and the CLI read the same settings: the README's Python example, run as a user
runs it, goes where `LEADLEX_BASE_URL` points."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from conftest import API_KEY, cli_env, new_uuid, write_csv
from helpers import Serve

import bulk_unenroll
from bulk_unenroll import InputError, Job, JobConfig
from bulk_unenroll.config import DEFAULT_BASE_URL
from bulk_unenroll.sandbox import Limits, Sandbox

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _readme_block(after: str) -> str:
    start = README.index("```python", README.index(after)) + len("```python\n")
    return README[start : README.index("```", start)]


def test_the_readme_library_example_goes_where_leadlex_base_url_points(
    tmp_path: Path, serve: Serve
) -> None:
    pairs = [("cmp_lib", new_uuid(i)) for i in range(3)]
    api = Sandbox(pairs, limits=Limits(per_day=1_000))
    server = serve(api)
    write_csv(tmp_path / "unenroll.csv", pairs)
    result = subprocess.run(
        [sys.executable, "-c", _readme_block("### Synchronous: `unenroll_file`")],
        cwd=tmp_path,
        env=cli_env(server.base_url),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(api.state.removed) == 3
    assert (tmp_path / "unenroll-results.csv").exists()
    assert re.search(r"0 0$", result.stdout.strip())  # remaining 0, exit code 0
    assert API_KEY not in result.stdout + result.stderr


def test_from_env_reads_what_the_cli_reads(tmp_path: Path) -> None:
    env = {"LEADLEX_API_KEY": "wbk_from_env", "LEADLEX_BASE_URL": "http://127.0.0.1:9/gw"}
    config = JobConfig.from_env(tmp_path / "in.csv", tmp_path / "r.csv", environ=env, reserve=5)
    assert config.base_url == "http://127.0.0.1:9/gw"
    assert config.api_key.reveal() == "wbk_from_env" and config.reserve == 5
    chosen = JobConfig.from_env(
        tmp_path / "in.csv", tmp_path / "r.csv", environ=env, base_url="https://gw.example/x"
    )
    assert chosen.base_url == "https://gw.example/x"  # an explicit setting wins over the env
    key_file = tmp_path / "key"
    key_file.write_text("wbk_from_file\n")
    production = JobConfig.from_env(
        tmp_path / "in.csv", tmp_path / "r.csv", environ={}, api_key_file=key_file
    )
    assert production.base_url == DEFAULT_BASE_URL
    assert production.api_key.reveal() == "wbk_from_file"
    with pytest.raises(InputError, match="no API key: set the LEADLEX_API_KEY"):
        JobConfig.from_env(tmp_path / "in.csv", tmp_path / "r.csv", environ={})


def test_what_job_plan_returns_is_exported() -> None:
    returned = typing.get_type_hints(Job.plan)["return"]
    assert returned.__name__ in bulk_unenroll.__all__
    assert getattr(bulk_unenroll, returned.__name__) is returned
    assert f"`{returned.__name__}`" in README
