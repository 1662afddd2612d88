"""`verify RESULTS` end to end over loopback: the CLI as a subprocess against the sandbox, which
re-enrolls pairs behind the tool's back, changes campaigns while they are listed, refuses a
key without campaigns:read, and is judged by its own record of who is enrolled."""

from __future__ import annotations

import html
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import API_KEY, cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import QUICK, QUICK_YES, Serve

from bulk_unenroll.api.listing import MAX_PASSES
from bulk_unenroll.sandbox import Limits, Pair, Sandbox
from bulk_unenroll.verify import read_verdicts, tally


def pairs_of(campaign: str, count: int, start: int = 0) -> list[Pair]:
    base = zlib.crc32(campaign.encode()) % 10**6 * 10**6 + start
    return [(campaign, new_uuid(base + i)) for i in range(count)]


class AfterARun(NamedTuple):
    """A sandbox, the CLI's environment for it, and the results file of a finished run."""

    api: Sandbox
    env: dict[str, str]
    results: Path


def after_a_run(
    tmp_path: Path,
    serve: Serve,
    pairs: list[Pair],
    others: list[Pair] | None = None,
    kind: type[Sandbox] = Sandbox,
) -> AfterARun:
    """A sandbox (of `kind`) enrolling `pairs` and `others`, and a run that removed `pairs`."""
    api = kind(pairs + (others or []))
    env = cli_env(serve(api).base_url)
    rows = write_csv(tmp_path / "in.csv", pairs)
    out = tmp_path / "results.csv"
    proc = run_cli(["run", str(rows), "--out", str(out), *QUICK_YES, "-q"], env)
    assert proc.returncode == 0, proc.stderr
    return AfterARun(api, env, out)


def verdicts(path: Path) -> dict[Pair, str]:
    return {(r["campaign_id"], r["contact_id"]): r["verdict"] for r in read_results(path)}


def test_pairs_enrolled_again_behind_the_tools_back_are_found_and_can_be_removed_again(
    tmp_path: Path, serve: Serve
) -> None:
    pairs = pairs_of("cmp_A", 120) + pairs_of("cmp_B", 30)
    api, env, results = after_a_run(tmp_path, serve, pairs)
    again = [pairs[3], pairs[119], pairs[125]]
    api.enroll(again)  # someone re-enrolls them after the run

    proc = run_cli(["verify", str(results), *QUICK], env)

    assert proc.returncode == 1, proc.stderr
    found = verdicts(tmp_path / "results.verify.csv")
    assert {p for p, v in found.items() if v == "enrolled_again"} == set(again)
    assert {p for p, v in found.items() if v == "holds"} == set(pairs) - set(again)
    ready = tmp_path / "results.verify.csv.enrolled-again.csv"
    assert {(r["campaign_id"], r["contact_id"]) for r in read_results(ready)} == set(again)
    assert "3 pair(s) are enrolled again" in proc.stdout
    figures = tally(tmp_path / "results.verify.csv")  # what a report page shows
    assert (figures.pairs_checked, figures.still_absent, figures.enrolled_again) == (150, 147, 3)
    assert (figures.unchecked, figures.sampled, figures.again_file) == (0, False, str(ready))
    assert figures.checked_at is not None
    assert API_KEY not in proc.stdout + proc.stderr
    assert api.state.deletes.total() == len(pairs)  # verify itself deletes nothing

    # The report page shows what verify found (its default verify file, found beside RESULTS).
    page = run_cli(["report", str(results), "--html", str(tmp_path / "page.html")], env)
    assert page.returncode == 0, page.stderr
    shown = html.unescape((tmp_path / "page.html").read_text(encoding="utf-8"))
    assert "3 of 150 pairs checked are enrolled again" in shown
    assert str(ready) in shown and "Not verified" not in shown

    # The ready file is an input file: a run removes them again, and a new verify holds.
    fixed = run_cli(["run", str(ready), "--out", str(tmp_path / "again.csv"), *QUICK_YES], env)
    assert fixed.returncode == 0, fixed.stderr
    assert not api.state.enrolled & set(again)
    proc = run_cli(["verify", str(results), "--out", str(tmp_path / "v2.csv"), *QUICK], env)
    assert proc.returncode == 0, proc.stderr
    assert set(verdicts(tmp_path / "v2.csv").values()) == {"holds"}
    assert not (tmp_path / "v2.csv.enrolled-again.csv").exists()


def test_a_finished_verify_rerun_sends_nothing_and_keeps_its_verdicts(
    tmp_path: Path, serve: Serve
) -> None:
    pairs = pairs_of("cmp_A", 10)
    api, env, results = after_a_run(tmp_path, serve, pairs)
    first = run_cli(["verify", str(results), *QUICK], env)
    assert first.returncode == 0, first.stderr
    calls = api.state.calls

    again = run_cli(["verify", str(results), *QUICK], env)

    assert again.returncode == 0, again.stderr
    assert api.state.calls == calls
    assert "10 judged by an earlier verify" in again.stderr
    assert "holds 10" in again.stdout


class Remover(Sandbox):
    """Another client that removes the newest enrollment as a page past the first `after`
    contacts is asked for (`removals` times in all): every later contact moves up one place,
    and the first of the page asked for onto the page before, already read."""

    removals = 1
    after = 200

    def _second_client(self, campaign: str, read: int) -> None:
        if len(self.state.churned_out) >= self.removals or read < self.after:
            return
        first = self._enrolled_newest_first(campaign)[0]
        self.state.enrolled.discard((campaign, first))
        self.state.churned_out.add((campaign, first))


class KeepsRemoving(Remover):
    removals, after = 1000, 0


def test_another_client_removing_someone_during_the_listing_never_hides_an_enrolled_pair(
    tmp_path: Path, serve: Serve
) -> None:
    ours = pairs_of("cmp_A", 30)
    others = pairs_of("cmp_A", 150, start=1000)
    api, env, results = after_a_run(tmp_path, serve, ours, others, Remover)
    hidden = ours[2]
    api.enroll([hidden, *pairs_of("cmp_A", 200, start=5000)])  # 200 newer: first of page 3

    proc = run_cli(["verify", str(results), *QUICK], env)

    assert api.state.churned_out, "the other client removed no one"
    assert proc.returncode == 1, proc.stderr
    assert verdicts(tmp_path / "results.verify.csv")[hidden] == "enrolled_again"


def test_a_campaign_that_keeps_changing_is_left_unchecked(tmp_path: Path, serve: Serve) -> None:
    ours = pairs_of("cmp_A", 30)
    others = pairs_of("cmp_A", 250, start=1000)
    _, env, results = after_a_run(tmp_path, serve, ours, others, KeepsRemoving)

    proc = run_cli(["verify", str(results), *QUICK], env)

    assert proc.returncode == 1, proc.stderr
    assert set(verdicts(tmp_path / "results.verify.csv").values()) == {"unchecked"}
    detail = read_results(tmp_path / "results.verify.csv")[0]["detail"]
    assert f"the list changed while it was read, {MAX_PASSES} times in a row" in detail


def test_a_key_without_campaigns_read_exits_3_and_records_nothing(
    tmp_path: Path, serve: Serve
) -> None:
    pairs = pairs_of("cmp_A", 5)
    api, env, results = after_a_run(tmp_path, serve, pairs)
    api.can_read = False

    proc = run_cli(["verify", str(results), *QUICK], env)

    assert proc.returncode == 3
    assert "campaigns:read" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert verdicts(tmp_path / "results.verify.csv") == {}


def test_a_campaign_too_large_to_be_worth_listing_is_left_unchecked_after_one_call(
    tmp_path: Path, serve: Serve
) -> None:
    ours = pairs_of("cmp_BIG", 2)
    api, env, results = after_a_run(tmp_path, serve, ours, pairs_of("cmp_BIG", 500, start=1000))
    pages = api.state.pages

    proc = run_cli(["verify", str(results), *QUICK], env)

    assert proc.returncode == 1, proc.stderr
    assert api.state.pages - pages == 1
    assert set(verdicts(tmp_path / "results.verify.csv").values()) == {"unchecked"}
    assert (
        "would cost more than the DELETEs"
        in read_results(tmp_path / "results.verify.csv")[0]["detail"]
    )
    unchecked = tmp_path / "results.verify.csv.unchecked.csv"
    assert {(r["campaign_id"], r["contact_id"]) for r in read_results(unchecked)} == set(ours)


def test_a_campaign_deleted_since_the_run_holds_as_campaign_gone(
    tmp_path: Path, serve: Serve
) -> None:
    pairs = pairs_of("cmp_A", 3) + pairs_of("cmp_B", 3)
    api, env, results = after_a_run(tmp_path, serve, pairs)
    api.state.campaigns.discard("cmp_B")

    proc = run_cli(["verify", str(results), *QUICK], env)

    assert proc.returncode == 0, proc.stderr
    found = verdicts(tmp_path / "results.verify.csv")
    assert {p for p, v in found.items() if v == "campaign_gone"} == set(pairs[3:])


def stopped_midway(
    results: Path, env: dict[str, str], signum: signal.Signals
) -> subprocess.CompletedProcess[str]:
    """A verify at 4 calls/s, sent `signum` once it has judged two campaigns of 3 pairs."""
    out = verify_file(results)
    command = [sys.executable, "-m", "bulk_unenroll", "verify", str(results), "--rate", "4/s"]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while len(verdicts(out) if out.exists() else {}) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def verify_file(results: Path) -> Path:
    return results.with_name("results.verify.csv")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT])
def test_a_verify_stopped_midway_resumes_with_the_campaigns_it_had_not_judged(
    tmp_path: Path, serve: Serve, signum: signal.Signals
) -> None:
    campaigns = [f"cmp_{i:02d}" for i in range(8)]
    pairs = [p for c in campaigns for p in pairs_of(c, 3)]
    api, env, results = after_a_run(tmp_path, serve, pairs)
    api.enroll([pairs[-1]])
    out = verify_file(results)

    stopped = stopped_midway(results, env, signum)

    if signum == signal.SIGINT:
        assert stopped.returncode == 130
        assert "interrupted; the verdicts so far are in" in stopped.stderr
        assert "Traceback" not in stopped.stderr
    judged_first = {c for c, _ in verdicts(out)}
    assert 2 <= len(judged_first) < len(campaigns), judged_first
    pages = api.state.pages

    rerun = run_cli(["verify", str(results), *QUICK], env)

    assert rerun.returncode == 1, rerun.stderr
    assert api.state.pages - pages == len(campaigns) - len(judged_first)
    found = verdicts(out)
    assert set(found) == set(pairs)
    assert {p for p, v in found.items() if v == "enrolled_again"} == {pairs[-1]}


def test_a_file_that_is_no_verify_file_is_refused_untouched(tmp_path: Path, serve: Serve) -> None:
    pairs = pairs_of("cmp_A", 2)
    _, env, results = after_a_run(tmp_path, serve, pairs)

    proc = run_cli(["verify", str(results), "--out", str(results), *QUICK], env)

    assert proc.returncode == 74
    assert "is not a verify file" in proc.stderr
    assert len(read_results(results)) == len(pairs)


def test_a_spent_daily_quota_stops_verify_with_75_and_a_rerun_carries_on(
    tmp_path: Path, serve: Serve
) -> None:
    campaigns = [f"cmp_{i}" for i in range(5)]
    pairs = [p for c in campaigns for p in pairs_of(c, 2)]
    api, env, results = after_a_run(tmp_path, serve, pairs)
    api.limits = Limits(per_day=3)  # counted from now: 3 calls left today

    stopped = run_cli(["verify", str(results), *QUICK], env)

    assert stopped.returncode == 75, stopped.stderr
    assert "stopped early (quota)" in stopped.stdout
    assert "4 pair(s) left to check" in stopped.stdout
    assert len(verdicts(tmp_path / "results.verify.csv")) == 6
    api.limits = Limits()  # a new quota day

    rerun = run_cli(["verify", str(results), *QUICK], env)

    assert rerun.returncode == 0, rerun.stderr
    assert "6 judged by an earlier verify" in rerun.stderr
    assert set(verdicts(tmp_path / "results.verify.csv")) == set(pairs)


def test_sample_leaves_a_large_campaign_to_a_random_few_checked_one_by_one(
    tmp_path: Path, serve: Serve
) -> None:
    ours = pairs_of("cmp_BIG", 30)
    api, env, results = after_a_run(tmp_path, serve, ours, pairs_of("cmp_BIG", 500, start=1000))
    pages = api.state.pages

    full = run_cli(["verify", str(results), "--out", str(tmp_path / "all.csv"), *QUICK], env)
    assert full.returncode == 0, full.stderr  # 6 calls for 30 pairs: worth listing
    assert api.state.pages - pages == 6
    samples = []
    for name in ("s1.csv", "s2.csv"):
        proc = run_cli(
            ["verify", str(results), "--out", str(tmp_path / name), "--sample", "5"], env
        )
        assert proc.returncode == 1, proc.stderr
        found = verdicts(tmp_path / name)
        assert sorted(found.values()).count("unchecked") == 5
        assert sorted(found.values()).count("not_sampled") == 25
        samples.append(read_results(tmp_path / f"{name}.unchecked.csv"))
        assert (tally(tmp_path / name).sampled, tally(tmp_path / name).unchecked) == (True, 30)
    assert samples[0] == samples[1]  # the same sample on every rerun
    assert api.state.pages - pages == 6 + 2  # one page each, then not worth it

    # Checking the sample one by one: each DELETE answers enrollment_not_found, it held.
    check = run_cli(
        [
            "run",
            str(tmp_path / "s1.csv.unchecked.csv"),
            "--out",
            str(tmp_path / "c.csv"),
            *QUICK_YES,
        ],
        env,
    )
    assert check.returncode == 0, check.stderr
    assert {r["status"] for r in read_results(tmp_path / "c.csv")} == {"not_enrolled"}


def test_a_campaign_of_two_full_pages_costs_three_calls(tmp_path: Path, serve: Serve) -> None:
    """Two pages, then the first again to check nothing changed: no call for an empty page."""
    ours = pairs_of("cmp_A", 150)
    api, env, results = after_a_run(tmp_path, serve, ours, pairs_of("cmp_A", 200, start=1000))
    pages = api.state.pages

    proc = run_cli(["verify", str(results), *QUICK], env)

    assert proc.returncode == 0, proc.stderr
    assert api.state.pages - pages == 3


def test_an_id_a_spreadsheet_would_take_for_a_formula_is_kept_as_sent(
    tmp_path: Path, serve: Serve
) -> None:
    pairs = pairs_of("-abc", 2)
    api, env, results = after_a_run(tmp_path, serve, pairs)
    api.enroll(pairs[:1])

    proc = run_cli(["verify", str(results), *QUICK], env)

    assert proc.returncode == 1, proc.stderr
    stored = verdicts(tmp_path / "results.verify.csv")
    assert stored[("'-abc", pairs[0][1])] == "enrolled_again"  # a spreadsheet shows it as text
    assert read_verdicts(tmp_path / "results.verify.csv")[pairs[0]] == "enrolled_again"
    ready = tmp_path / "results.verify.csv.enrolled-again.csv"
    again = run_cli(["run", str(ready), "--out", str(tmp_path / "again.csv"), *QUICK_YES], env)
    assert again.returncode == 0, again.stderr
    assert pairs[0] in api.state.removed and pairs[0] not in api.state.enrolled


def test_a_report_page_names_a_missing_verify_file_and_writes_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    results.write_text("row,campaign_id,contact_id,status\n1,cmp_A,c1,removed\n", encoding="utf-8")
    page = tmp_path / "page.html"
    args = ["report", str(results), "--html", str(page), "--verify", str(tmp_path / "no.csv")]
    proc = run_cli(args, cli_env("http://127.0.0.1:9"))

    assert proc.returncode == 2, proc.stderr
    assert "no such file; run `bulk-unenroll verify` first" in proc.stderr
    assert "Traceback" not in proc.stderr and not page.exists()


def test_a_checked_at_re_saved_by_a_spreadsheet_does_not_stop_the_report_page(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results.verify.csv"
    out.write_text(
        "campaign_id,contact_id,recorded,verdict,detail,checked_at\n"
        f"cmp_A,{new_uuid(1)},removed,holds,,2026-12-01T04:05:00Z\n"
        f"cmp_A,{new_uuid(2)},removed,holds,,01/12/2026 04:06\n",
        encoding="utf-8",
    )
    figures = tally(out)
    assert (figures.pairs_checked, figures.still_absent) == (2, 2)
    assert figures.checked_at is not None and figures.checked_at.minute == 5


def test_a_results_file_that_is_not_one_is_refused_in_the_clis_words(tmp_path: Path) -> None:
    results = tmp_path / "bad.csv"
    results.write_text("a,b\n1,2\n", encoding="utf-8")
    proc = run_cli(["verify", str(results)], cli_env("http://127.0.0.1:9"))

    assert proc.returncode == 74, proc.stderr
    assert "is not a bulk_unenroll results file" in proc.stderr
    assert "choose a new --out" in proc.stderr and "Traceback" not in proc.stderr
