"""What a scheduler relies on: `--summary-json` has every documented key on every exit, and a
`--reserve` that leaves no calls is a usage error, not a quota stop repeated every night."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import Serve

from bulk_unenroll.sandbox import Limits, Sandbox

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
UNKNOWN_BEFORE_PLANNING = ("rows", "outcomes", "unfinished", "remaining", "settled_before")


def documented_keys() -> set[str]:
    """The first column of the README's `--summary-json` table."""
    section = README[README.index("### `--summary-json PATH`") :]
    table = section[section.index("| key |") : section.index("\n\n", section.index("| key |"))]
    keys: set[str] = set()
    for line in table.splitlines()[2:]:
        keys.update(re.findall(r"`(\w+)`", line.split("|")[1]))
    return keys


def _pairs(n: int) -> list[tuple[str, str]]:
    return [("cmp_a", new_uuid(i + 1)) for i in range(n)]


@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        ("no key", 2, "no API key"),
        ("missing column", 2, "--contact-column"),
        ("missing input", 2, "missing.csv"),
        ("bad rate", 2, "is not a rate"),
        ("foreign results file", 74, "not a bulk_unenroll results file"),
    ],
)
def test_summary_json_has_every_documented_key_on_an_early_failure(
    tmp_path: Path, case: str, code: int, says: str
) -> None:
    src = write_csv(tmp_path / "in.csv", _pairs(3))
    out, summary_file = tmp_path / "r.csv", tmp_path / "s.json"
    env = cli_env("http://127.0.0.1:9/api-gateway")
    args = ["run", str(src), "--out", str(out), "--summary-json", str(summary_file)]
    if case == "no key":
        del env["LEADLEX_API_KEY"]
    elif case == "missing column":
        args += ["--contact-column", "nope"]
    elif case == "missing input":
        args[1] = str(tmp_path / "missing.csv")
    elif case == "bad rate":
        args += ["--rate", "fast"]
    else:
        write_csv(out, [("1", "2")], header=("a", "b"))
    result = run_cli(args, env)
    assert result.returncode == code, result.stderr
    data = json.loads(summary_file.read_text())
    assert set(data) == documented_keys()
    assert data["exit_code"] == code and says in data["error"]
    assert data["stop_reason"] == "error" and data["stop_detail"] == data["error"]
    for key in UNKNOWN_BEFORE_PLANNING:
        assert data[key] is None, key  # unknown, not zero
    assert data["calls"] == 0 and data["plan"] is None and data["duration_seconds"] is None
    assert data["input"] == args[1] and data["results"] == str(out)


def test_summary_json_keys_are_the_same_on_a_finished_run(tmp_path: Path, serve: Serve) -> None:
    pairs = _pairs(4)
    server = serve(Sandbox(pairs))
    src = write_csv(tmp_path / "in.csv", pairs)
    summary_file = tmp_path / "s.json"
    args = ["run", str(src), "--out", str(tmp_path / "r.csv"), "--rate", "100/s"]
    result = run_cli([*args, "--summary-json", str(summary_file)], cli_env(server.base_url))
    assert result.returncode == 0, result.stderr
    data = json.loads(summary_file.read_text())
    assert set(data) == documented_keys()
    assert data["remaining"] == 0 and data["stop_reason"] == "complete"


def test_a_reserve_of_the_whole_plan_is_a_usage_error(tmp_path: Path, serve: Serve) -> None:
    api = Sandbox(_pairs(5))
    server = serve(api)
    src = write_csv(tmp_path / "in.csv", _pairs(5))
    summary_file = tmp_path / "s.json"
    for command in (["plan", str(src)], ["run", str(src), "--out", str(tmp_path / "r.csv")]):
        result = run_cli(
            [
                *command,
                "--plan",
                "starter",
                "--reserve",
                "100",
                "--summary-json",
                str(summary_file),
            ],
            cli_env(server.base_url),
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (
            "error: --reserve 100 leaves no calls: the starter plan allows 100 calls a day; "
            "keep fewer than 100 in reserve (for example --reserve 10)"
        )
        assert json.loads(summary_file.read_text())["exit_code"] == 2
    assert api.state.calls == 0


def test_a_reserve_of_the_whole_learnt_limit_is_a_usage_error(tmp_path: Path, serve: Serve) -> None:
    pairs = _pairs(30)
    api = Sandbox(pairs, limits=Limits(per_day=100))
    server = serve(api)
    src = write_csv(tmp_path / "in.csv", pairs)
    out, summary_file = tmp_path / "r.csv", tmp_path / "s.json"
    args = ["run", str(src), "--out", str(out), "--summary-json", str(summary_file)]
    result = run_cli([*args, "--reserve", "100"], cli_env(server.base_url))
    assert result.returncode == 2, result.stderr
    message = (
        "--reserve 100 leaves no calls: the API reports a daily limit of 100 calls (the starter "
        "plan); keep fewer than 100 in reserve (for example --reserve 10)"
    )
    assert result.stderr.count(message) == 1
    assert "exit code 2" in result.stdout
    data = json.loads(summary_file.read_text())
    assert data["exit_code"] == 2 and data["error"] == message and data["stop_reason"] == "error"
    # The one call that told us is recorded like any answer; nothing else was sent.
    assert api.state.calls == 1 == len(read_results(out)) == len(api.state.removed)
    assert data["remaining"] == 29

    again = run_cli([*args, "--reserve", "10", "--rate", "100/s"], cli_env(server.base_url))
    assert again.returncode == 0, again.stderr
    assert len(api.state.removed) == 30 and api.state.calls == 30
