"""`run --check-enrollment` end to end: the CLI as a subprocess against the sandbox on
loopback, judged by the sandbox's own state (what it removed, what its second client changed,
what is still enrolled).

The rule under test: a listing settles a pair `not_enrolled` only if the pair was not enrolled
(never, or removed by another client); every enrolled pair is removed; nothing is sent twice.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import httpx
import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import QUICK_YES, Serve, sandbox_command
from truth import spawn_cli, wait_until

from bulk_unenroll.api.listing import CampaignLister, End, Listing
from bulk_unenroll.models import Enrollment, Summary
from bulk_unenroll.results.journal import Journal
from bulk_unenroll.sandbox import Faults, Limits, Pair, Sandbox
from bulk_unenroll.send.check import FRESH, EnrollmentCheck

LISTED = "not in the campaign's contact listing"


def contacts(n: int, start: int = 1) -> list[str]:
    return [new_uuid(start + i) for i in range(n)]


def cross(path: Path, campaigns: list[str], people: list[str]) -> list[Pair]:
    """The cleanup file of the issue: these contacts, from every one of these campaigns."""
    pairs = [(c, p) for c in campaigns for p in people]
    write_csv(path, pairs)
    return pairs


def others(campaign: str, n: int, start: int) -> list[Pair]:
    """Enrollments of contacts the input does not name (they fill the campaign's pages)."""
    return [(campaign, new_uuid(start + i)) for i in range(n)]


def judge(out: Path, pairs: list[Pair], enrolled: set[Pair], api: Sandbox) -> Counter[str]:
    """Every row recorded and true to what the sandbox saw; counts per status and `listed`."""
    final = {int(r["row"]): r for r in read_results(out)}
    assert sorted(final) == list(range(1, len(pairs) + 1)), "every row recorded once"
    st, counts = api.state, Counter[str]()
    for row, record in final.items():
        pair = pairs[row - 1]
        assert (record["campaign_id"], record["contact_id"]) == pair
        status = record["status"]
        counts[status] += 1
        if status == "removed":
            assert pair in st.removed
        else:
            assert status == "not_enrolled", record
            assert pair not in enrolled or pair in st.churned_out, f"enrolled {pair}: {record}"
        if record["attempts"] == "0":
            counts["listed"] += 1
            assert status == "not_enrolled" and LISTED in record["detail"], record
            assert pair not in st.deletes, "settled from a listing, yet sent"
    assert not set(pairs) & st.enrolled, "an enrolled pair was left enrolled"
    assert max(st.deletes.values(), default=1) == 1, "a pair was sent twice"
    return counts


def run_args(inp: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(inp), "--out", str(out), "--check-enrollment", *QUICK_YES, *extra]


def test_a_cross_product_is_settled_by_listings_and_deletes_of_the_enrolled(
    tmp_path: Path, serve: Serve
) -> None:
    """Listed campaigns cost a page per 100 enrollments (+1 re-read past one page); a huge
    campaign stops after its first page, a campaign with one row is never listed."""
    people = contacts(120)
    pairs = cross(tmp_path / "in.csv", ["cmp_a", "cmp_b", "cmp_huge"], people)
    pairs.append(("cmp_single", people[0]))
    write_csv(tmp_path / "in.csv", pairs)
    enrolled = {
        *[("cmp_a", p) for p in people[:12]],
        *[("cmp_b", p) for p in people[50:55]],
        *[("cmp_huge", p) for p in people[:3]],
        ("cmp_single", people[0]),
    }
    api = Sandbox([*enrolled, *others("cmp_a", 150, 5000), *others("cmp_huge", 15_000, 90_000)])
    out, summary = tmp_path / "out.csv", tmp_path / "summary.json"
    audit = tmp_path / "audit.jsonl"
    done = run_cli(
        run_args(
            tmp_path / "in.csv", out, "--summary-json", str(summary), "--audit-log", str(audit)
        ),
        cli_env(serve(api).base_url),
    )
    assert done.returncode == 0, done.stderr
    counts = judge(out, pairs, enrolled, api)
    assert counts["removed"] == len(enrolled)
    assert counts["listed"] == (120 - 12) + (120 - 5), "cmp_huge and cmp_single were not listed"
    data = json.loads(summary.read_text())
    listing_calls = 3 + 1 + 1  # cmp_a: 2 pages + page 1 again; cmp_b: 1; cmp_huge: page 1
    assert data["listing_calls"] == listing_calls == api.state.pages
    assert data["settled_by_listing"] == counts["listed"]
    assert data["calls"] == listing_calls + 12 + 5 + 120 + 1 == api.state.calls
    pages = [line for line in map(json.loads, audit.read_text().splitlines()) if not line["row"]]
    assert len(pages) == listing_calls
    assert {(p["result"], p["contact_id"], p["http_status"]) for p in pages} == {
        ("listed", "", 200)
    }
    assert "campaign cmp_huge not listed" in done.stdout + done.stderr
    assert "listed 2 campaign(s) in 5 call(s)" in done.stdout + done.stderr


@pytest.mark.parametrize("seed", [1, 2])
def test_a_second_client_changing_the_lists_never_gets_an_enrolled_pair_settled(
    tmp_path: Path, serve: Serve, seed: int
) -> None:
    people = contacts(400)
    campaigns = ["cmp_a", "cmp_b", "cmp_c"]
    pairs = cross(tmp_path / "in.csv", campaigns, people)
    enrolled = {(c, p) for c in campaigns for p in people[seed::2]}
    filler = [pair for n, c in enumerate(campaigns) for pair in others(c, 50, 10_000 * (n + 1))]
    api = Sandbox([*filler, *enrolled], churn=0.5, seed=seed)
    done = run_cli(
        run_args(tmp_path / "in.csv", tmp_path / "out.csv"), cli_env(serve(api).base_url)
    )
    assert done.returncode == 0, done.stderr
    counts = judge(tmp_path / "out.csv", pairs, enrolled, api)
    assert api.state.churned_out or api.state.churned_in, "the second client was at work"
    st = api.state
    to_remove = (enrolled - st.churned_out) | (st.churned_in & set(pairs))  # and re-enrolled
    assert to_remove <= set(st.removed)
    assert counts["removed"] == len(to_remove)
    assert counts["listed"] > 0 or "changed while it was read" in done.stdout + done.stderr


def test_killed_while_listing_the_rerun_settles_everything_once(
    tmp_path: Path, serve: Serve
) -> None:
    people = contacts(300)
    pairs = cross(tmp_path / "in.csv", ["cmp_a", "cmp_b"], people)
    enrolled = {(c, p) for c in ("cmp_a", "cmp_b") for p in people[::10]}
    api = Sandbox(
        [*enrolled, *others("cmp_a", 400, 7000), *others("cmp_b", 400, 8000)],
        faults=Faults(latency=0.1),
    )
    env, out = cli_env(serve(api).base_url), tmp_path / "out.csv"
    proc = spawn_cli(run_args(tmp_path / "in.csv", out), env, tmp_path / "logs")
    wait_until(lambda: api.state.pages >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not read_results(out), "nothing is recorded from a listing cut short"
    assert not api.state.deletes, "no DELETE while listing"
    api.faults.latency = 0.0
    rerun = run_cli(run_args(tmp_path / "in.csv", out), env)
    assert rerun.returncode == 0, rerun.stderr
    counts = judge(out, pairs, enrolled, api)
    assert counts["removed"] == len(enrolled)
    assert counts["listed"] == len(pairs) - len(enrolled)


def test_sigterm_while_listing_stops_cleanly_with_nothing_settled(
    tmp_path: Path, serve: Serve
) -> None:
    people = contacts(200)
    pairs = cross(tmp_path / "in.csv", ["cmp_a"], people)
    enrolled = {("cmp_a", p) for p in people[:20]}
    api = Sandbox([*enrolled, *others("cmp_a", 900, 7000)], faults=Faults(latency=0.1))
    env, out = cli_env(serve(api).base_url), tmp_path / "out.csv"
    proc = spawn_cli(run_args(tmp_path / "in.csv", out), env, tmp_path / "logs")
    wait_until(lambda: api.state.pages >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 143
    assert not read_results(out) and not api.state.deletes
    rerun = run_cli(run_args(tmp_path / "in.csv", out), env)
    assert rerun.returncode == 0, rerun.stderr
    assert judge(out, pairs, enrolled, api)["removed"] == 20


def test_listing_pages_count_against_the_daily_quota(tmp_path: Path, serve: Serve) -> None:
    """The quota runs out in mid-listing: the run stops (exit 75) before a call is refused,
    with nothing settled; the next quota day's rerun lists again and finishes."""
    people = contacts(150)
    pairs = cross(tmp_path / "in.csv", ["cmp_a"], people)
    enrolled = {("cmp_a", p) for p in people[:5]}
    api = Sandbox([*enrolled, *others("cmp_a", 250, 7000)], limits=Limits(per_day=2))
    env, out = cli_env(serve(api).base_url), tmp_path / "out.csv"
    done = run_cli(run_args(tmp_path / "in.csv", out), env)
    assert done.returncode == 75, done.stderr
    assert "daily quota spent" in done.stdout + done.stderr
    assert (api.state.pages, api.state.quota_refused) == (2, 0)
    assert not read_results(out)
    api.limits.per_day = None  # the next quota day, as far as this test is concerned
    rerun = run_cli(run_args(tmp_path / "in.csv", out), env)
    assert rerun.returncode == 0, rerun.stderr
    assert judge(out, pairs, enrolled, api)["listed"] == 145


def test_rows_a_listing_settles_are_recorded_before_any_delete(
    tmp_path: Path, serve: Serve
) -> None:
    """The quota runs out among the DELETEs: every row the listings settled is recorded all
    the same, right after the listings, not days later behind DELETEs waiting for quota."""
    people = contacts(150)
    cross(tmp_path / "in.csv", ["cmp_a", "cmp_b"], people)
    enrolled = {(c, p) for c in ("cmp_a", "cmp_b") for p in people[::15]}  # 10 a campaign
    api = Sandbox(enrolled, limits=Limits(per_day=2 + 5, day_seconds=3600))
    out = tmp_path / "out.csv"
    done = run_cli(run_args(tmp_path / "in.csv", out), cli_env(serve(api).base_url))
    assert done.returncode == 75, done.stderr
    records = read_results(out)
    statuses = [(r["status"], r["attempts"]) for r in records]
    assert statuses == [("not_enrolled", "0")] * 280 + [("removed", "1")] * 5
    assert api.state.pages == 2 and len(api.state.removed) == 5


def test_a_key_without_campaigns_read_falls_back_to_deletes(tmp_path: Path, serve: Serve) -> None:
    people = contacts(30)
    pairs = cross(tmp_path / "in.csv", ["cmp_a", "cmp_b"], people)
    enrolled = {("cmp_a", p) for p in people[:4]}
    api = Sandbox(enrolled, campaigns=["cmp_b"], can_read=False)
    done = run_cli(
        run_args(tmp_path / "in.csv", tmp_path / "out.csv"), cli_env(serve(api).base_url)
    )
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "--check-enrollment is off for this run" in said
    assert "lacks campaigns:read" in said
    counts = judge(tmp_path / "out.csv", pairs, enrolled, api)
    assert (counts["removed"], counts["listed"]) == (4, 0)
    assert api.state.calls == 1 + len(pairs), "one refused listing, then every DELETE"


def test_a_pair_sent_before_without_an_answer_gets_its_delete(tmp_path: Path, serve: Serve) -> None:
    """A killed run left a `.sent` mark and no record: the pair may have been removed by that
    request. It gets its DELETE, whose answer says so, rather than a plain listing verdict."""
    people = contacts(20)
    pairs = cross(tmp_path / "in.csv", ["cmp_a"], people)
    out = tmp_path / "out.csv"
    journal = Journal(out)
    journal.mark_sent(Enrollment(3, "cmp_a", people[2]))  # what a kill in flight leaves
    journal.close()
    enrolled = {("cmp_a", p) for p in people[10:12]}
    api = Sandbox(enrolled)
    done = run_cli(run_args(tmp_path / "in.csv", out), cli_env(serve(api).base_url))
    assert done.returncode == 0, done.stderr
    counts = judge(out, pairs, enrolled, api)
    assert (counts["removed"], counts["listed"]) == (2, 17)
    record = next(r for r in read_results(out) if r["contact_id"] == people[2])
    assert (record["status"], record["attempts"]) == ("not_enrolled", "1")
    assert "an earlier attempt may have removed it" in record["detail"]


class GoneMidListing(Sandbox):
    """Answers 404 campaign_not_found to page 2 of cmp_a, as if it vanished mid-listing."""

    def _list_contacts(
        self, campaign: str, query: str, headers: dict[str, str], extra: dict[str, str]
    ) -> tuple[str, int, dict[str, str], bytes]:
        if campaign == "cmp_a" and "page=2&" in query:
            body = b'{"error": {"code": "campaign_not_found", "message": "gone"}}'
            return "answer", 404, {**extra, "Content-Type": "application/json"}, body
        return super()._list_contacts(campaign, query, headers, extra)


def test_a_404_in_mid_listing_sends_that_campaigns_deletes(tmp_path: Path, serve: Serve) -> None:
    people = contacts(150)
    pairs = cross(tmp_path / "in.csv", ["cmp_a", "cmp_b"], people)
    enrolled = {(c, p) for c in ("cmp_a", "cmp_b") for p in people[:5]}
    api = GoneMidListing([*enrolled, *others("cmp_a", 120, 7000)])
    done = run_cli(
        run_args(tmp_path / "in.csv", tmp_path / "out.csv"), cli_env(serve(api).base_url)
    )
    assert done.returncode == 0, done.stderr
    assert "campaign cmp_a not listed (page 2: 404 campaign_not_found" in done.stdout + done.stderr
    counts = judge(tmp_path / "out.csv", pairs, enrolled, api)
    assert counts["listed"] == 150 - 5, "only cmp_b's rows came from a listing"


def test_the_plan_shows_the_calls_with_and_without_the_check(tmp_path: Path) -> None:
    people = contacts(500)
    cross(tmp_path / "in.csv", ["cmp_a", "cmp_b"], people)
    summary = tmp_path / "plan.json"
    args = ["plan", str(tmp_path / "in.csv"), "--check-enrollment", "--summary-json", str(summary)]
    done = run_cli(args, cli_env("http://127.0.0.1:9"))
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    assert re.search(r"calls needed +1,000 ", shown)
    assert re.search(r"with --check-enrollment +2 +at the fewest, \+ 1 DELETE per enrolled", shown)
    plan = json.loads(summary.read_text())["plan"]
    assert plan["check_enrollment"] == {
        "campaigns_listed": 2,
        "rows_listed": 1000,
        "fewest_calls": 2,
    }
    without = run_cli(["plan", str(tmp_path / "in.csv")], cli_env("http://127.0.0.1:9"))
    assert "check-enrollment" not in without.stdout + without.stderr


def test_the_sandbox_command_refuses_listings_or_plays_the_second_client(tmp_path: Path) -> None:
    people = contacts(300)
    seed = write_csv(tmp_path / "seed.csv", [("cmp_a", p) for p in people])
    auth = {"Authorization": "Bearer wbk_rehearsal"}
    path = "/v1/campaigns/cmp_a/contacts?per_page=100&page="
    with sandbox_command(tmp_path / "r1", "--enroll-from", str(seed), "--no-campaigns-read") as sb:
        refused = httpx.get(sb.url + path + "1", headers=auth)
    assert (refused.status_code, refused.json()["error"]["code"]) == (
        403,
        "insufficient_permissions",
    )
    with sandbox_command(tmp_path / "r2", "--enroll-from", str(seed), "--churn", "1") as sb:
        totals = [
            httpx.get(sb.url + path + str(n), headers=auth).json()["meta"]["total"]
            for n in (1, 2, 3)
        ]
    assert totals[0] == 300 and totals[1:] != [300, 300], "the second client changed the list"


def test_complete_listings_are_recorded_when_a_later_listing_meets_the_daily_quota(
    tmp_path: Path, serve: Serve
) -> None:
    """cmp_a (the most rows) is listed in one call; the quota runs out in cmp_b's listing.
    cmp_a's rows are recorded all the same: else every rerun would list it again and stop at
    the same place, day after day."""
    people = contacts(150)
    pairs = [("cmp_a", p) for p in people] + [("cmp_b", p) for p in people[:60]]
    write_csv(tmp_path / "in.csv", pairs)
    enrolled = {("cmp_a", p) for p in people[:10]}
    api = Sandbox([*enrolled, *others("cmp_b", 250, 7000)], limits=Limits(per_day=3))
    env, out = cli_env(serve(api).base_url), tmp_path / "out.csv"
    done = run_cli(run_args(tmp_path / "in.csv", out), env)

    assert done.returncode == 75, done.stderr
    assert (api.state.pages, api.state.quota_refused) == (3, 0)
    records = read_results(out)
    assert {r["campaign_id"] for r in records} == {"cmp_a"}
    assert [(r["status"], r["attempts"]) for r in records] == [("not_enrolled", "0")] * 140
    api.limits.per_day = None  # the next quota day
    rerun = run_cli(run_args(tmp_path / "in.csv", out), env)
    assert rerun.returncode == 0, rerun.stderr
    assert judge(out, pairs, enrolled, api)["removed"] == 10


def test_a_listing_older_than_fresh_settles_nothing(tmp_path: Path) -> None:
    """A listing read before a long wait for the quota is dropped: its rows get DELETEs."""
    said: list[str] = []
    unused = cast(CampaignLister, None)  # forget_stale sends nothing
    check = EnrollmentCheck(unused, {}, Summary(), lambda event: said.append(str(event)))
    old = datetime.now(UTC) - FRESH - timedelta(minutes=1)
    new = datetime.now(UTC)
    check.listings = {
        "cmp_old": Listing("cmp_old", End.COMPLETE, frozenset(), old),
        "cmp_new": Listing("cmp_new", End.COMPLETE, frozenset(), new),
    }
    check.forget_stale()
    assert set(check.listings) == {"cmp_new"}
    assert len(said) == 1 and "cmp_old" in said[0] and "get their DELETEs" in said[0]


def test_a_listing_naming_ids_that_are_not_uuids_falls_back_to_deletes(
    tmp_path: Path, serve: Serve
) -> None:
    """Such ids could match no row: the listing is not used (no retry, no stop), and every
    row gets its DELETE."""
    people = contacts(20)
    pairs = cross(tmp_path / "in.csv", ["cmp_a"], people)
    enrolled = {("cmp_a", p) for p in people[:4]}
    api = Sandbox([*enrolled, ("cmp_a", "other-0001")])
    out = tmp_path / "out.csv"
    done = run_cli(run_args(tmp_path / "in.csv", out), cli_env(serve(api).base_url))

    assert done.returncode == 0, done.stderr
    assert "not a UUID" in done.stdout + done.stderr
    assert api.state.pages == 1 and sum(api.state.deletes.values()) == 20
    assert judge(out, pairs, enrolled, api)["removed"] == 4
