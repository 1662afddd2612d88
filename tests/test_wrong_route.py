"""A wrong --base-url found by a listing (verify, run --check-enrollment) is the setup's fault,
exit 3, as it is for a DELETE: a 404 without a documented error code before any answer showed
the route exists never leaves pairs `unchecked` as if their campaigns were unreadable."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import QUICK_YES, Serve

from bulk_unenroll.sandbox import Sandbox


def wrong(base_url: str) -> str:
    return base_url.removesuffix("/api-gateway") + "/api-gatewy"


@pytest.mark.parametrize("wrong_route", ["not_found", "bare"])
def test_verify_at_a_wrong_base_url_exits_3_and_judges_nothing(
    tmp_path: Path, serve: Serve, wrong_route: str
) -> None:
    rows = [(f"cmp_{i % 3}", new_uuid(i)) for i in range(1, 31)]
    api = Sandbox(rows, wrong_route=wrong_route)
    env = cli_env(serve(api).base_url)
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"
    assert run_cli(["run", str(src), "--out", str(out), *QUICK_YES], env).returncode == 0
    verdicts = tmp_path / "verify.csv"

    done = run_cli(
        ["verify", str(out), "--out", str(verdicts), *QUICK_YES[:2]],
        cli_env(wrong(api_url := env["LEADLEX_BASE_URL"])),
    )

    assert done.returncode == 3, done.stdout + done.stderr
    assert "--base-url" in done.stderr
    assert not verdicts.exists() or read_results(verdicts) == []
    right = run_cli(["verify", str(out), "--out", str(verdicts), *QUICK_YES[:2]], cli_env(api_url))
    assert right.returncode == 0, right.stdout + right.stderr
    assert Counter(r["verdict"] for r in read_results(verdicts)) == {"holds": 30}


def test_run_check_enrollment_at_a_wrong_base_url_exits_3_and_settles_nothing(
    tmp_path: Path, serve: Serve
) -> None:
    rows = [(f"cmp_{i % 2}", new_uuid(i)) for i in range(1, 201)]
    api = Sandbox(rows[:20])
    base_url = serve(api).base_url
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"
    args = ["run", str(src), "--out", str(out), "--check-enrollment", *QUICK_YES]

    done = run_cli(args, cli_env(wrong(base_url)))

    assert done.returncode == 3, done.stdout + done.stderr
    assert "--base-url" in done.stderr
    assert read_results(out) == [] and not api.state.deletes
    right = run_cli(args, cli_env(base_url))
    assert right.returncode == 0, right.stdout + right.stderr
    statuses = Counter(r["status"] for r in read_results(out))
    assert statuses == {"removed": 20, "not_enrolled": 180}
