"""`bulk-unenroll restore` end to end over loopback: the sandbox's own state is the judge of
what was re-enrolled; the restore's results file must say the same."""

from __future__ import annotations

import csv
import json
import re
import signal
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import QUICK, QUICK_YES, Serve
from test_cli import terminal
from truth import spawn_cli, wait_until

from bulk_unenroll import sandbox as sandbox_module
from bulk_unenroll.api import client
from bulk_unenroll.models import Outcome
from bulk_unenroll.results.records import COLUMNS
from bulk_unenroll.sandbox import Faults, Pair, Sandbox

Record = tuple[str, str, str, str]
"""(campaign, contact, status, finished_at) of one results-file record."""


def contact(i: int) -> str:
    return new_uuid(i + 1)


def write_results(path: Path, records: Sequence[Record]) -> Path:
    """A run's results file, written as the journal writes one."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row, (campaign, contact_id, status, finished) in enumerate(records, 1):
            writer.writerow([row, campaign, contact_id, status, 200, "", 1, "", "", finished])
    return path


def removed(
    campaign: str, n: int, *, start: int = 0, at: str = "2026-11-24T10:00:00Z"
) -> list[Record]:
    return [(campaign, contact(start + i), "removed", at) for i in range(n)]


def restore(results: Path, out: Path, *extra: str) -> list[str]:
    return ["restore", str(results), "--out", str(out), *QUICK_YES, *extra]


def posts_per_pair(api: Sandbox) -> Counter[Pair]:
    return Counter((campaign, c) for campaign, ids in api.state.adds for c in ids)


def statuses(out: Path) -> Counter[str]:
    return Counter(r["status"] for r in read_results(out))


# -- the whole story ------------------------------------------------------------------------


def test_a_run_then_a_restore_brings_back_exactly_the_removed_pairs(
    tmp_path: Path, serve: Serve
) -> None:
    enrolled = {("cmp_a", contact(i)) for i in range(0, 30, 2)} | {
        ("cmp_b", contact(i)) for i in range(12)
    }
    rows = [("cmp_a", contact(i)) for i in range(30)] + [("cmp_b", contact(i)) for i in range(12)]
    api = Sandbox(enrolled, campaigns=["cmp_a", "cmp_b", "cmp_c"])
    env = cli_env(serve(api).base_url)
    inp = write_csv(tmp_path / "in.csv", [*rows, ("cmp_c", contact(99))])
    ran = run_cli(["run", str(inp), "--out", str(tmp_path / "r.csv"), *QUICK_YES], env)
    assert ran.returncode == 0, ran.stderr
    assert not api.state.enrolled  # every enrolled pair was removed; cmp_c's was not enrolled
    calls_before = api.state.calls

    done = run_cli(restore(tmp_path / "r.csv", tmp_path / "restore.csv"), env)

    assert done.returncode == 0, done.stderr
    assert api.state.enrolled == enrolled  # exactly the removed pairs, no others
    assert set(api.state.added) == enrolled
    assert api.state.calls - calls_before == 2  # one call per campaign
    records = read_results(tmp_path / "restore.csv")
    assert {(r["campaign_id"], r["contact_id"]) for r in records} == enrolled
    assert {r["status"] for r in records} == {"restored"}
    assert re.search(r"restored\s+27\n", done.stdout)
    assert "starts the campaign afresh" in done.stderr

    again = run_cli(restore(tmp_path / "r.csv", tmp_path / "restore.csv"), env)
    assert again.returncode == 0, again.stderr
    assert api.state.calls - calls_before == 2  # settled pairs are never sent again
    assert "nothing to restore" in again.stderr


def test_pairs_go_out_at_most_500_per_call_grouped_by_campaign(
    tmp_path: Path, serve: Serve
) -> None:
    results = write_results(
        tmp_path / "r.csv",
        [*removed("cmp_a", 1_100), *removed("cmp_b", 7), *removed("cmp_a", 30, start=2_000)],
    )
    api = Sandbox(campaigns=["cmp_a", "cmp_b"])
    env = cli_env(serve(api).base_url)

    done = run_cli(restore(results, tmp_path / "restore.csv"), env)

    assert done.returncode == 0, done.stderr
    sizes = sorted((campaign, len(ids)) for campaign, ids in api.state.adds)
    assert sizes == [("cmp_a", 130), ("cmp_a", 500), ("cmp_a", 500), ("cmp_b", 7)]
    assert len(api.state.enrolled) == 1_137
    assert statuses(tmp_path / "restore.csv") == {"restored": 1_137}
    summary = json.loads(run_cli(["report", str(tmp_path / "restore.csv"), "--json"], env).stdout)
    assert summary["outcomes"]["restored"] == 1_137


def test_only_the_latest_record_of_a_pair_counts_and_enrolled_ones_are_skipped(
    tmp_path: Path, serve: Serve
) -> None:
    a, b, c = contact(1), contact(2), contact(3)
    results = write_results(
        tmp_path / "r.csv",
        [
            ("cmp_a", a, "failed", "2026-11-24T10:00:00Z"),
            ("cmp_a", a, "removed", "2026-11-24T10:01:00Z"),
            ("cmp_a", b, "not_enrolled", "2026-11-24T10:00:00Z"),
            ("cmp_a", c, "removed", "2026-11-24T10:00:00Z"),
        ],
    )
    api = Sandbox([("cmp_a", c)])  # someone enrolled c again since
    done = run_cli(restore(results, tmp_path / "restore.csv"), cli_env(serve(api).base_url))

    assert done.returncode == 0, done.stderr
    got = {r["contact_id"]: r["status"] for r in read_results(tmp_path / "restore.csv")}
    assert got == {a: "restored", c: "already_enrolled"}
    assert api.state.adds == [("cmp_a", (a, c))]


# -- filters --------------------------------------------------------------------------------


@pytest.fixture
def tuesday(tmp_path: Path) -> Path:
    """Removals on Monday, Tuesday and Wednesday, in two campaigns."""
    return write_results(
        tmp_path / "r.csv",
        [
            *removed("cmp_a", 3, start=0, at="2026-11-23T23:59:59Z"),
            *removed("cmp_a", 4, start=10, at="2026-11-24T00:00:00Z"),
            *removed("cmp_b", 5, start=20, at="2026-11-24T18:30:00Z"),
            *removed("cmp_a", 2, start=30, at="2026-11-25T00:00:00Z"),
        ],
    )


def restored_pairs(api: Sandbox) -> set[Pair]:
    return set(api.state.added)


def test_since_and_until_pick_one_day_of_removals(
    tuesday: Path, tmp_path: Path, serve: Serve
) -> None:
    api = Sandbox(campaigns=["cmp_a", "cmp_b"])
    window = ["--since", "2026-11-24", "--until", "2026-11-25"]
    done = run_cli(restore(tuesday, tmp_path / "o.csv", *window), cli_env(serve(api).base_url))

    assert done.returncode == 0, done.stderr
    expected = {("cmp_a", contact(10 + i)) for i in range(4)}
    expected |= {("cmp_b", contact(20 + i)) for i in range(5)}
    assert restored_pairs(api) == expected
    assert re.search(r"left out by the filters\s+5\n", done.stderr)


def test_campaign_filter_is_repeatable(tuesday: Path, tmp_path: Path, serve: Serve) -> None:
    api = Sandbox(campaigns=["cmp_a", "cmp_b"])
    env = cli_env(serve(api).base_url)
    done = run_cli(restore(tuesday, tmp_path / "o.csv", "--campaign", "cmp_b"), env)

    assert done.returncode == 0, done.stderr
    assert {c for c, _ in restored_pairs(api)} == {"cmp_b"}
    assert len(restored_pairs(api)) == 5


@pytest.mark.parametrize("filters", [[], ["--campaign", "cmp_b"]], ids=["all", "campaign"])
def test_a_removed_record_without_a_campaign_or_contact_is_named_and_left_out(
    tmp_path: Path, serve: Serve, filters: list[str]
) -> None:
    """A record marked removed with an empty campaign_id or contact_id (an edited file) names
    no pair: left out and said so, with or without filters (without, the plan crashed with
    exit 70; with --campaign, its null mask once kept it, restored to a campaign "None")."""
    results = write_results(
        tmp_path / "r.csv",
        [
            *removed("cmp_b", 2),
            ("", contact(7), "removed", "2026-11-24T10:00:00Z"),
            ("cmp_b", "", "removed", "2026-11-24T10:00:00Z"),
        ],
    )
    api = Sandbox(campaigns=["cmp_b"])
    env = cli_env(serve(api).base_url)
    done = run_cli(restore(results, tmp_path / "o.csv", *filters), env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert restored_pairs(api) == {("cmp_b", contact(0)), ("cmp_b", contact(1))}
    assert re.search(r"pairs it marks removed\s+2\n", done.stderr)
    assert "not restored: 2 record(s) marked removed without a campaign_id or contact_id" in (
        done.stderr
    )
    assert "(the first at row 3)" in done.stderr
    if filters:
        assert re.search(r"left out by the filters\s+0\n", done.stderr)


def test_pairs_file_picks_the_listed_pairs(tuesday: Path, tmp_path: Path, serve: Serve) -> None:
    listed = write_csv(
        tmp_path / "wrong.csv",
        [
            ("cmp_a", contact(10).upper()),
            ("cmp_b", contact(21)),
            ("cmp_b", contact(999)),
            ("x", ""),
        ],
        header=("Campaign", "Contact"),
    )
    api = Sandbox(campaigns=["cmp_a", "cmp_b"])
    env = cli_env(serve(api).base_url)
    done = run_cli(restore(tuesday, tmp_path / "o.csv", "--pairs", str(listed)), env)

    assert done.returncode == 0, done.stderr
    assert restored_pairs(api) == {("cmp_a", contact(10)), ("cmp_b", contact(21))}
    assert "1 row(s) of --pairs are no valid pair" in done.stderr


def test_dry_run_shows_the_plan_and_sends_nothing(
    tuesday: Path, tmp_path: Path, serve: Serve
) -> None:
    api = Sandbox(campaigns=["cmp_a", "cmp_b"])
    env = cli_env(serve(api).base_url)
    json_out = tmp_path / "plan.json"
    args = ["restore", str(tuesday), "--out", str(tmp_path / "o.csv"), "--dry-run"]
    done = run_cli([*args, "--summary-json", str(json_out), "--source", "undo ticket 42"], env)

    assert done.returncode == 0, done.stderr
    assert api.state.calls == 0
    assert re.search(r"to restore\s+14\n", done.stderr)
    assert "'undo ticket 42'" in done.stderr
    plan = json.loads(json_out.read_text())["plan"]
    assert plan["calls_needed"] == 2
    assert "step progress is not brought back" in plan["starts_afresh"]


def test_the_source_names_the_restore(tuesday: Path, tmp_path: Path, serve: Serve) -> None:
    bodies: list[dict[str, object]] = []

    class Recording(Sandbox):
        def _add_contacts(
            self, campaign: str, body: bytes, extra: dict[str, str], roll: float
        ) -> tuple[str, int, dict[str, str], bytes]:
            bodies.append(json.loads(body))
            return super()._add_contacts(campaign, body, extra, roll)

    api = Recording(campaigns=["cmp_a", "cmp_b"])
    done = run_cli(restore(tuesday, tmp_path / "o.csv"), cli_env(serve(api).base_url))

    assert done.returncode == 0, done.stderr
    assert len(bodies) == 2
    (source,) = {b["source"] for b in bodies}
    assert source in {f"bulk-unenroll restore of r.csv ({day})" for day in _today()}


def _today() -> set[str]:
    """Today's UTC date, or yesterday's if the test straddled midnight."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    return {f"{now:%Y-%m-%d}", f"{now - timedelta(minutes=5):%Y-%m-%d}"}


# -- crashes and lost answers --------------------------------------------------------------


def test_kill_9_mid_restore_then_rerun_restores_the_rest_without_resending(
    tmp_path: Path, serve: Serve
) -> None:
    results = write_results(
        tmp_path / "r.csv",
        [r for i in range(12) for r in removed(f"cmp_{i:02d}", 3, start=10 * i)],
    )
    api = Sandbox(campaigns=[f"cmp_{i:02d}" for i in range(12)], faults=Faults(latency=0.05))
    env, out = cli_env(serve(api).base_url), tmp_path / "restore.csv"
    slow = ["restore", str(results), "--out", str(out), "--rate", "8/s", "--yes"]
    proc = spawn_cli(slow, env, tmp_path / "logs")
    wait_until(lambda: out.exists() and len(out.read_bytes().splitlines()) > 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    first = read_results(out)
    settled_first = {(r["campaign_id"], r["contact_id"]) for r in first}
    assert 0 < len(settled_first) < 36

    done = run_cli(restore(results, out), env)

    assert done.returncode == 0, done.stderr
    assert len(api.state.enrolled) == 36
    posts = posts_per_pair(api)
    assert all(posts[pair] == 1 for pair in settled_first)  # settled batches never resent
    final = {(r["campaign_id"], r["contact_id"]): r for r in read_results(out)}
    assert len(final) == 36
    assert {r["status"] for r in final.values()} <= {"restored", "already_enrolled"}
    for pair, record in final.items():  # a batch in flight at the kill says so on rerun
        if record["status"] == "already_enrolled":
            assert posts[pair] == 2
            assert "earlier restore got no definite answer" in record["detail"]


class LosesFirstAnswer(Sandbox):
    """Applies every Add Contacts call, but drops the connection on each campaign's first one."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lost: set[str] = set()

    def _add_contacts(
        self, campaign: str, body: bytes, extra: dict[str, str], roll: float
    ) -> tuple[str, int, dict[str, str], bytes]:
        answer = super()._add_contacts(campaign, body, extra, roll)
        if campaign in self.lost or answer[1] != 201:
            return answer
        self.lost.add(campaign)
        return "reset_after", 0, {}, b""


def test_a_lost_answer_is_retried_and_the_results_say_so(tmp_path: Path, serve: Serve) -> None:
    results = write_results(tmp_path / "r.csv", [*removed("cmp_a", 4), *removed("cmp_b", 2)])
    api = LosesFirstAnswer([("cmp_b", contact(0))], campaigns=["cmp_a", "cmp_b"])
    out = tmp_path / "restore.csv"
    done = run_cli(restore(results, out), cli_env(serve(api).base_url))

    assert done.returncode == 0, done.stderr
    assert len(api.state.enrolled) == 6
    records = read_results(out)
    assert {r["status"] for r in records} == {"already_enrolled"}
    assert all(r["attempts"] == "2" for r in records)
    for r in records:
        assert "answered by a retry after a lost answer (its answer was lost" in r["detail"]
        assert "most likely restored by that earlier attempt" in r["detail"]
    assert all(count == 2 for count in posts_per_pair(api).values())


class ShoutsAddedIds(Sandbox):
    """Names the newly added ids in capitals, as another spelling of the same UUIDs."""

    def _add_contacts(
        self, campaign: str, body: bytes, extra: dict[str, str], roll: float
    ) -> tuple[str, int, dict[str, str], bytes]:
        kind, status, headers, content = super()._add_contacts(campaign, body, extra, roll)
        if status != 201:
            return kind, status, headers, content
        answer = json.loads(content)
        answer["data"]["contact_ids"] = [c.upper() for c in answer["data"]["contact_ids"]]
        return kind, status, headers, json.dumps(answer).encode()


def test_added_ids_in_capitals_are_still_recorded_restored(tmp_path: Path, serve: Serve) -> None:
    results = write_results(tmp_path / "r.csv", removed("cmp_a", 3, start=0xABCDEF))
    api = ShoutsAddedIds([], campaigns=["cmp_a"])
    out = tmp_path / "restore.csv"
    done = run_cli(restore(results, out), cli_env(serve(api).base_url))

    assert done.returncode == 0, done.stderr
    assert statuses(out) == Counter({"restored": 3})
    assert not any("could not tell" in r["detail"] for r in read_results(out))


# -- refusals -------------------------------------------------------------------------------


def test_a_key_lacking_campaigns_write_stops_with_a_clear_message(
    tuesday: Path, tmp_path: Path, serve: Serve
) -> None:
    api = Sandbox(campaigns=["cmp_a", "cmp_b"], forbidden=True)
    out = tmp_path / "restore.csv"
    done = run_cli(restore(tuesday, out), cli_env(serve(api).base_url))

    assert done.returncode == 3
    assert "403 insufficient_permissions" in done.stderr
    assert "give it campaigns:write" in done.stderr
    assert "Traceback" not in done.stderr
    assert read_results(out) == []  # nothing settled: a rerun with a good key does it all
    assert not api.state.added


def test_an_unknown_campaign_rejects_its_pairs_and_spends_one_call(
    tmp_path: Path, serve: Serve
) -> None:
    results = write_results(tmp_path / "r.csv", [*removed("cmp_gone", 700), *removed("cmp_a", 3)])
    api = Sandbox(campaigns=["cmp_a"])
    out = tmp_path / "restore.csv"
    done = run_cli(restore(results, out, "--concurrency", "1"), cli_env(serve(api).base_url))

    assert done.returncode == 1
    assert statuses(out) == {"rejected": 700, "restored": 3}
    gone = [r for r in read_results(out) if r["campaign_id"] == "cmp_gone"]
    assert {r["error_code"] for r in gone} == {"campaign_not_found"}
    assert [c for c, _ in api.state.adds].count("cmp_gone") == 1
    assert sum("not sent: the campaign answered campaign_not_found" in r["detail"] for r in gone)


def test_a_400_rejects_the_batch_with_its_reason(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_module, "ADD_MAX", 3)  # a server with a smaller limit
    results = write_results(tmp_path / "r.csv", [*removed("cmp_a", 5), *removed("cmp_b", 2)])
    api = Sandbox(campaigns=["cmp_a", "cmp_b"])
    out = tmp_path / "restore.csv"
    done = run_cli(restore(results, out), cli_env(serve(api).base_url))

    assert done.returncode == 1
    assert statuses(out) == {"rejected": 5, "restored": 2}
    reasons = {r["detail"] for r in read_results(out) if r["status"] == "rejected"}
    assert reasons == {"400 too_many_contacts At most 3 contacts per request"}


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "does not exist"),
        ("name,email\nAda,ada@example.com\n", "cannot be read as a bulk_unenroll results file"),
    ],
)
def test_a_bad_results_file_gets_a_clear_error(
    tmp_path: Path, serve: Serve, content: str | None, said: str
) -> None:
    results = tmp_path / "r.csv"
    if content is not None:
        results.write_text(content)
    api = Sandbox()
    done = run_cli(restore(results, tmp_path / "o.csv"), cli_env(serve(api).base_url))

    assert done.returncode == 2
    assert said in done.stderr
    assert "give the results file (--out) of the run to undo" in done.stderr
    assert "Traceback" not in done.stderr
    assert api.state.calls == 0


def test_the_restore_never_writes_into_a_runs_results_file(
    tuesday: Path, tmp_path: Path, serve: Serve
) -> None:
    api = Sandbox()
    env = cli_env(serve(api).base_url)
    itself = run_cli(restore(tuesday, tuesday), env)
    other_run = write_results(tmp_path / "other.csv", removed("cmp_z", 1))
    into_run = run_cli(restore(tuesday, other_run), env)

    assert itself.returncode == into_run.returncode == 2
    assert "is RESULTS itself" in itself.stderr
    assert "it is a run's results file, not a restore's" in into_run.stderr
    assert other_run.read_text().count("\n") == 2  # untouched
    assert api.state.calls == 0


def test_since_after_until_is_a_usage_error(tuesday: Path, tmp_path: Path) -> None:
    args = restore(tuesday, tmp_path / "o.csv", "--since", "2026-11-25", "--until", "2026-11-24")
    done = run_cli(args, cli_env("http://127.0.0.1:9/api-gateway"))

    assert done.returncode == 2
    assert "is not before --until" in done.stderr


# -- the API's side -------------------------------------------------------------------------


def test_the_sandbox_serves_add_contacts_as_documented(serve: Serve) -> None:
    api = Sandbox([("cmp_a", "c1")])
    url = serve(api).base_url + "/v1/campaigns/{}/contacts"
    auth = {"Authorization": "Bearer wbk_x"}
    with httpx.Client(headers=auth) as http:
        added = http.post(url.format("cmp_a"), json={"contact_ids": ["c1", "c2"], "source": "t"})
        too_many = http.post(url.format("cmp_a"), json={"contact_ids": ["c"] * 501})
        missing = http.post(url.format("cmp_a"), json={"source": "t"})
        gone = http.post(url.format("cmp_x"), json={"contact_ids": ["c3"]})
        no_key = httpx.post(url.format("cmp_a"), json={"contact_ids": ["c3"]})

    assert added.json() == {"data": {"added": 1, "skipped": 1, "contact_ids": ["c2"]}}
    assert (too_many.status_code, too_many.json()["error"]["code"]) == (400, "too_many_contacts")
    assert (missing.status_code, missing.json()["error"]["code"]) == (
        400,
        "missing_required_field",
    )
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "campaign_not_found")
    assert no_key.status_code == 401
    assert api.state.enrolled == {("cmp_a", "c1"), ("cmp_a", "c2")}


@pytest.mark.parametrize(
    ("answer", "outcome", "action"),
    [
        (client.Answer(201, added=("c",)), Outcome.RESTORED, client.Action.DONE),
        (client.Answer(200), Outcome.RESTORED, client.Action.DONE),
        (client.Answer(400, "too_many_contacts"), Outcome.REJECTED, client.Action.DONE),
        (client.Answer(400, "missing_required_field"), Outcome.REJECTED, client.Action.DONE),
        (client.Answer(404, "campaign_not_found"), Outcome.REJECTED, client.Action.DONE),
        (client.Answer(404, "not_found"), Outcome.REJECTED, client.Action.UNCLEAR_404),
        (client.Answer(403, "insufficient_permissions"), None, client.Action.ABORT),
        (client.Answer(401, "invalid_key"), None, client.Action.ABORT),
        (client.Answer(429, "rate_limited"), None, client.Action.SLOW_DOWN),
        (client.Answer(None, error="reset"), None, client.Action.RETRY),
    ],
)
def test_add_contacts_answer_table(
    answer: client.Answer, outcome: Outcome | None, action: client.Action
) -> None:
    verdict = client.classify_add(answer)
    assert (verdict.outcome, verdict.action) == (outcome, action)


def test_the_audit_log_names_the_batch(tuesday: Path, tmp_path: Path, serve: Serve) -> None:
    api = Sandbox(campaigns=["cmp_a", "cmp_b"])
    log = tmp_path / "audit.jsonl"
    args = restore(tuesday, tmp_path / "o.csv", "--campaign", "cmp_b", "--audit-log", str(log))
    done = run_cli(args, cli_env(serve(api).base_url))

    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(text) for text in log.read_text().splitlines()]
    assert line["operation"] == "add_contacts"
    assert line["campaign_id"] == "cmp_b"
    assert line["contact_ids"] == [contact(20 + i) for i in range(5)]
    assert (line["http_status"], line["result"]) == (201, "restored")


def test_help_names_the_fresh_start(tmp_path: Path) -> None:
    done = run_cli(["restore", "--help"], cli_env("http://127.0.0.1:9/api-gateway"))
    assert done.returncode == 0
    assert "starts the campaign afresh" in " ".join(done.stdout.split())
    assert QUICK[0] in done.stdout


def test_a_wrong_base_url_records_nothing_and_says_what_to_check(
    tmp_path: Path, serve: Serve
) -> None:
    results = write_results(
        tmp_path / "r.csv", [r for i in range(4) for r in removed(f"cmp_{i}", 2, start=10 * i)]
    )
    api = Sandbox(campaigns=[f"cmp_{i}" for i in range(4)])
    wrong = serve(api).base_url.removesuffix("/api-gateway") + "/wrong"
    out = tmp_path / "restore.csv"
    done = run_cli(restore(results, out, "--base-url", wrong), cli_env(wrong))

    assert done.returncode == 3
    assert "check --base-url (it should end in /api-gateway)" in done.stderr
    assert read_results(out) == []
    assert not api.state.adds


def test_a_missing_pairs_file_is_a_clear_error(tuesday: Path, tmp_path: Path) -> None:
    args = restore(tuesday, tmp_path / "o.csv", "--pairs", str(tmp_path / "nope.csv"))
    done = run_cli(args, cli_env("http://127.0.0.1:9/api-gateway"))

    assert done.returncode == 2
    assert "nope.csv does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_mid_restore_records_the_batches_in_flight_and_a_rerun_finishes(
    tmp_path: Path, serve: Serve
) -> None:
    results = write_results(
        tmp_path / "r.csv", [r for i in range(10) for r in removed(f"cmp_{i}", 2, start=10 * i)]
    )
    api = Sandbox(campaigns=[f"cmp_{i}" for i in range(10)], faults=Faults(latency=0.05))
    env, out = cli_env(serve(api).base_url), tmp_path / "restore.csv"
    args = ["restore", str(results), "--out", str(out), "--rate", "5/s", "--yes"]
    proc = spawn_cli(args, env, tmp_path / "logs")
    wait_until(lambda: len(api.state.adds) >= 2, proc)
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(30) == 143
    first = read_results(out)
    assert 0 < len(first) < 20
    assert {(r["campaign_id"], r["contact_id"]) for r in first} == set(api.state.added)
    assert (
        "left to do; to continue, run: bulk-unenroll restore"
        in (tmp_path / "logs" / "stdout").read_text()
    )
    done = run_cli(args, env)
    assert done.returncode == 0, done.stderr
    assert len(api.state.enrolled) == 20
    assert all(count == 1 for count in posts_per_pair(api).values())


def test_a_run_never_writes_into_a_restores_results_file(
    tuesday: Path, tmp_path: Path, serve: Serve
) -> None:
    api = Sandbox(campaigns=["cmp_a", "cmp_b"])
    env, out = cli_env(serve(api).base_url), tmp_path / "restore.csv"
    assert run_cli(restore(tuesday, out), env).returncode == 0
    before = out.read_text()
    inp = write_csv(tmp_path / "in.csv", [("cmp_a", contact(10))])

    ran = run_cli(["run", str(inp), "--out", str(out), *QUICK_YES], env)

    assert ran.returncode == 2
    assert "it is a restore's results file, not a run's" in ran.stderr
    assert out.read_text() == before
    assert ("cmp_a", contact(10)) in api.state.enrolled  # nothing was sent


def test_the_sandboxs_lost_answer_faults_apply_to_add_contacts(
    tmp_path: Path, serve: Serve
) -> None:
    results = write_results(
        tmp_path / "r.csv", [r for i in range(8) for r in removed(f"cmp_{i}", 3, start=10 * i)]
    )
    faults = Faults(reset_after=0.3, hang_after=0.1)
    api = Sandbox(campaigns=[f"cmp_{i}" for i in range(8)], faults=faults, seed=7)
    out = tmp_path / "restore.csv"
    args = restore(results, out, "--timeout", "1", "--max-retries", "12")
    done = run_cli(args, cli_env(serve(api).base_url))

    assert done.returncode == 0, done.stderr
    assert len(api.state.enrolled) == 24
    records = read_results(out)
    assert len(records) == 24
    retried = [r for r in records if r["attempts"] != "1"]
    assert retried  # some answers were lost, and retried
    for r in records:
        said_lost = "after a lost answer" in r["detail"]
        assert said_lost == (r["attempts"] != "1")
        assert (r["status"] == "already_enrolled") == said_lost


# -- the operator's experience --------------------------------------------------------------


def test_a_terminal_restore_asks_first_and_no_sends_nothing(
    tuesday: Path, tmp_path: Path, serve: Serve
) -> None:
    api = Sandbox(campaigns=["cmp_a", "cmp_b"])
    env, out = cli_env(serve(api).base_url), tmp_path / "restore.csv"
    args = ["restore", str(tuesday), "--out", str(out), *QUICK]
    with terminal(args, env) as term:
        term.read_until(b"re-enroll 14 pairs in 2 campaigns (each starts its campaign afresh)?")
        term.type("n\n")
        term.read_until(None)
        assert term.proc.wait(30) == 130
    assert api.state.calls == 0
    with terminal(args, env) as term:
        term.read_until(b"[y/N]")
        term.type("y\n")
        screen = term.read_until(None)
        assert term.proc.wait(30) == 0
    assert "\x1b[" in screen  # the live display
    assert "restored 14" in screen
    assert len(api.state.enrolled) == 14


def test_piped_restore_progress_is_plain_lines(tmp_path: Path, serve: Serve) -> None:
    results = write_results(
        tmp_path / "r.csv", [r for i in range(6) for r in removed(f"cmp_{i}", 2, start=10 * i)]
    )
    api = Sandbox(campaigns=[f"cmp_{i}" for i in range(6)])
    args = ["restore", str(results), "--out", str(tmp_path / "o.csv"), "--rate", "4/s"]
    done = run_cli([*args, "--progress-interval", "0.5"], cli_env(serve(api).base_url))

    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "progress:" in line]
    assert len(lines) >= 2
    assert all("restored" in line and "already_enrolled" in line for line in lines)
    assert not any("removed" in line for line in lines)


def test_not_enrolled_after_a_lost_answer_is_named_but_never_restored(
    tmp_path: Path, serve: Serve
) -> None:
    results = write_results(tmp_path / "r.csv", removed("cmp_a", 2))
    with results.open("a", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerow(
            [
                3,
                "cmp_a",
                contact(7),
                "not_enrolled",
                404,
                "enrollment_not_found",
                2,
                "",
                "an earlier attempt may have removed it: its answer was lost",
                "2026-11-24T10:00:00Z",
            ]
        )
    api = Sandbox(campaigns=["cmp_a"])
    env = cli_env(serve(api).base_url)
    other = run_cli(restore(results, tmp_path / "o.csv", "--campaign", "cmp_b", "--dry-run"), env)
    done = run_cli(restore(results, tmp_path / "o.csv"), env)

    assert done.returncode == 0, done.stderr
    assert "not restored: 1 pair(s) it marks not_enrolled after a lost answer" in done.stderr
    assert set(api.state.added) == {("cmp_a", contact(0)), ("cmp_a", contact(1))}
    # Another campaign's plan counts the whole file's pairs as one of all campaigns does.
    assert other.returncode == 0, other.stderr
    said = " ".join(other.stderr.split())
    assert "pairs it marks removed 2" in said and "left out by the filters 2" in said
    assert "not restored: 1 pair(s) it marks not_enrolled after a lost answer" in other.stderr
