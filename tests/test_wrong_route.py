"""A wrong --base-url found by a listing (verify, run --check-enrollment) is the setup's fault,
exit 3, as it is for a DELETE: a 404 without a documented error code before any answer showed
the route exists never leaves pairs `unchecked` as if their campaigns were unreadable."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import QUICK_YES, Serve

from bulk_unenroll.sandbox import Reply, Sandbox


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


class SaysNotFound(Sandbox):
    """An API that spells an unknown campaign's listing `404 not_found`, as its campaign-start
    page spells an unknown campaign (the reference's answer table: ambiguous)."""

    def _list_contacts(
        self, campaign: str, query: str, headers: dict[str, str], extra: dict[str, str]
    ) -> Reply:
        if campaign not in self.state.campaigns:
            return "answer", 404, {"Content-Type": "application/json"}, NOT_FOUND
        return super()._list_contacts(campaign, query, headers, extra)


NOT_FOUND = b'{"error":{"code":"not_found","message":"Not found"}}'


def test_verify_of_a_campaign_deleted_since_judges_the_others(tmp_path: Path, serve: Serve) -> None:
    """The file's first campaign gone, its listing's 404 unclear: the next listing shows the
    route, so the run goes on (a wrong URL is only taken after UNCLEAR_CAMPAIGNS such
    campaigns, or none that shows the route); its pairs stay unchecked, exit 1, never exit 3
    at every rerun (it always lists first)."""
    rows = [(f"cmp_{i % 3}", new_uuid(i)) for i in range(30)]
    env = cli_env(serve(Sandbox(rows)).base_url)
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"
    assert run_cli(["run", str(src), "--out", str(out), *QUICK_YES], env).returncode == 0
    gone = SaysNotFound(campaigns=["cmp_1", "cmp_2"])
    verdicts = tmp_path / "verify.csv"

    done = run_cli(
        ["verify", str(out), "--out", str(verdicts), *QUICK_YES[:2]],
        cli_env(serve(gone).base_url),
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "--base-url" not in done.stderr
    judged = Counter((r["campaign_id"], r["verdict"]) for r in read_results(verdicts))
    assert judged == {("cmp_0", "unchecked"): 10, ("cmp_1", "holds"): 10, ("cmp_2", "holds"): 10}


def test_run_check_enrollment_with_its_largest_campaign_deleted_goes_on(
    tmp_path: Path, serve: Serve
) -> None:
    """The largest campaign, listed first, is gone and its listing's 404 unclear: the other
    listing shows the route; the gone campaign's rows get their DELETEs (each unclear 404
    recorded for its own row), as without --check-enrollment."""
    rows = [("cmp_gone", new_uuid(i)) for i in range(1, 151)]
    rows += [("cmp_a", new_uuid(i)) for i in range(151, 271)]
    api = SaysNotFound(rows[150:170], campaigns=["cmp_a"], unknown_campaign_code="not_found")
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"
    args = ["run", str(src), "--out", str(out), "--check-enrollment", *QUICK_YES]

    done = run_cli(args, cli_env(serve(api).base_url))

    assert done.returncode == 1, done.stdout + done.stderr
    assert "--base-url" not in done.stderr
    statuses = Counter((r["campaign_id"], r["status"]) for r in read_results(out))
    assert statuses == {
        ("cmp_gone", "rejected"): 150,
        ("cmp_a", "removed"): 20,
        ("cmp_a", "not_enrolled"): 100,
    }


def test_verify_of_one_campaign_at_a_wrong_base_url_exits_3_and_judges_nothing(
    tmp_path: Path, serve: Serve
) -> None:
    """Fewer campaigns than UNCLEAR_CAMPAIGNS, none of which showed the route: at the end,
    nothing left could show it, so a wrong --base-url (never `unchecked` pairs, exit 1)."""
    rows = [("cmp_0", new_uuid(i)) for i in range(1, 11)]
    env = cli_env(serve(Sandbox(rows)).base_url)
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"
    assert run_cli(["run", str(src), "--out", str(out), *QUICK_YES], env).returncode == 0
    verdicts = tmp_path / "verify.csv"

    done = run_cli(
        ["verify", str(out), "--out", str(verdicts), *QUICK_YES[:2]],
        cli_env(wrong(env["LEADLEX_BASE_URL"])),
    )

    assert done.returncode == 3, done.stdout + done.stderr
    assert "--base-url" in done.stderr
    assert not verdicts.exists() or read_results(verdicts) == []
