"""The daily quota: read from X-RateLimit-* headers, stop at --reserve with exit 75 and nothing
lost, carry on across reruns or (with --wait-for-quota) in one run, never loop on a quota 429.

The sandbox's quota days last a few seconds here, so several "days" pass within one test.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import API_KEY, cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import QUICK_YES, Serve

from bulk_unenroll import JobConfig, Rate, Secret, StopReason
from bulk_unenroll.api.pacing import Quota
from bulk_unenroll.sandbox import Limits, Pair, Sandbox
from bulk_unenroll.send.runner import Job
from bulk_unenroll.text import describe_reset, duration

DAY = 3.0


def mixed_rows(n_enrolled: int) -> tuple[list[tuple[str, str]], set[Pair]]:
    """Enrolled rows, a few not enrolled, a few of a missing campaign, a few invalid ones."""
    enrolled = [(f"cmp_q{i % 3}", new_uuid(i)) for i in range(1, n_enrolled + 1)]
    not_enrolled = [("cmp_q0", new_uuid(10_000 + i)) for i in range(6)]
    missing = [("cmp_missing", new_uuid(20_000 + i)) for i in range(6)]
    invalid = [("cmp_q1", "not-a-uuid"), ("", new_uuid(30_000)), ("cmp_q2", "")]
    rows = enrolled[:20] + missing + enrolled[20:] + not_enrolled + invalid
    return rows, set(enrolled)


def removed_in(out: Path) -> set[Pair]:
    return {
        (r["campaign_id"], r["contact_id"]) for r in read_results(out) if r["status"] == "removed"
    }


def wait_for_next_day() -> None:
    time.sleep(DAY - time.time() % DAY + 0.2)


@pytest.mark.slow
def test_quota_of_a_third_stops_with_75_and_reruns_finish_with_nothing_lost(
    tmp_path: Path, serve: Serve
) -> None:
    rows, enrolled = mixed_rows(120)
    api = Sandbox(enrolled, limits=Limits(per_day=len(rows) // 3, day_seconds=DAY))
    server = serve(api)
    inp, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    args = ["run", str(inp), "--out", str(out), *QUICK_YES]

    first = run_cli(args, cli_env(server.base_url))

    assert first.returncode == 75, first.stdout + first.stderr
    said = first.stdout + first.stderr
    assert "daily quota spent" in said and "UTC" in said and "local" in said
    assert removed_in(out) == set(api.state.removed), "a removal the results do not record"
    assert 0 < len(read_results(out)) < len(rows)

    codes = [first.returncode]
    while codes[-1] == 75 and len(codes) < 12:
        wait_for_next_day()
        again = run_cli(args, cli_env(server.base_url))
        codes.append(again.returncode)
        assert removed_in(out) == set(api.state.removed)

    assert codes[-1] == 1, codes  # finished: rejected and invalid rows need a look
    results = read_results(out)
    assert sorted(int(r["row"]) for r in results) == list(range(1, len(rows) + 1))
    assert set(api.state.removed) == enrolled
    assert set(api.state.deletes.values()) == {1}, "a pair was sent twice"
    statuses = {r["status"] for r in results}
    assert statuses == {"removed", "not_enrolled", "rejected", "invalid"}
    # A run that starts on a spent quota learns it from one refused call, then stops.
    assert api.state.quota_refused <= 2 * len(codes)


def test_wait_for_quota_sleeps_until_the_reset_and_finishes_in_one_run(
    tmp_path: Path, serve: Serve
) -> None:
    rows, enrolled = mixed_rows(60)
    api = Sandbox(enrolled, limits=Limits(per_day=len(rows) // 3, day_seconds=DAY))
    server = serve(api)
    inp, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"

    done = run_cli(
        ["run", str(inp), "--out", str(out), *QUICK_YES, "--wait-for-quota"],
        cli_env(server.base_url),
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "waiting until" in done.stderr and "UTC" in done.stderr
    assert set(api.state.removed) == enrolled == removed_in(out)
    assert len(read_results(out)) == len(rows)


def test_reserve_leaves_calls_for_other_integrations(tmp_path: Path, serve: Serve) -> None:
    rows = [("cmp_reserve", new_uuid(i)) for i in range(1, 81)]
    api = Sandbox(rows, limits=Limits(per_day=60))
    server = serve(api)
    inp, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"

    done = run_cli(
        ["run", str(inp), "--out", str(out), *QUICK_YES, "--reserve", "20"],
        cli_env(server.base_url),
    )

    assert done.returncode == 75, done.stdout + done.stderr
    assert "--reserve 20" in done.stdout + done.stderr
    assert sum(api.state.deletes.values()) == 40, "the reserve was not kept exactly"
    assert len(read_results(out)) == 40
    assert api.state.quota_refused == 0


def test_a_quota_429_is_not_retried_in_a_loop(tmp_path: Path, serve: Serve) -> None:
    rows = [("cmp_spent", new_uuid(i)) for i in range(1, 31)]
    api = Sandbox(rows, limits=Limits(per_day=5))
    server = serve(api)
    for i in range(5):  # another integration used today's quota
        url = f"{server.base_url}/v1/campaigns/cmp_other/contacts/{new_uuid(100 + i)}"
        assert httpx.delete(url, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 404
    write_csv(tmp_path / "in.csv", rows)
    cfg = JobConfig(
        input=tmp_path / "in.csv",
        out=tmp_path / "out.csv",
        api_key=Secret(API_KEY),
        base_url=server.base_url,
        rate=Rate(2, 1),  # half a second between calls: the first answer comes long before
    )

    async def go() -> Job:
        job = Job(cfg)
        with anyio.fail_after(30):
            await job.plan()
            await job.run()
        return job

    job = anyio.run(go, backend="asyncio")

    assert job.summary.stop_reason is StopReason.QUOTA
    # One refused call tells the quota is spent; a second can only be one already under way.
    assert api.state.quota_refused == job.summary.calls <= 2
    assert job.summary.exit_code == 75
    assert job.summary.quota_reset_at is not None
    assert "resets" in job.summary.stop_detail and " in " in job.summary.stop_detail


# -- the quota's bookkeeping ------------------------------------------------------------------


def headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(reset),
    }


def test_quota_keeps_the_freshest_count_and_ignores_yesterdays_late_answers() -> None:
    today, tomorrow, now = 1_767_225_600, 1_767_312_000, 1_767_225_000.0
    q = Quota()
    q.observe(headers(1000, 10, today), now)
    q.observe(headers(1000, 12, today), now)  # answered out of order: older
    assert q.remaining == 10
    q.observe(headers(1000, 999, tomorrow), now + 700)  # a new day
    assert (q.remaining, q.reset_at) == (999, float(tomorrow))
    q.observe(headers(1000, 3, today), now + 700)  # a late answer from the day before
    assert q.remaining == 999
    assert q.limit == 1000


@pytest.mark.parametrize(
    ("remaining", "in_flight", "reserve", "spent"),
    [
        (None, 5, 0, False),
        (None, 0, 20, False),
        (None, 1, 20, True),  # the count unknown: one call at a time keeps the reserve
        (5, 4, 0, False),
        (5, 5, 0, True),
        (25, 4, 20, False),
        (25, 5, 20, True),
    ],
)
def test_spent_counts_the_calls_in_flight_and_the_reserve(
    remaining: int | None, in_flight: int, reserve: int, spent: bool
) -> None:
    assert Quota(remaining=remaining).spent(in_flight, reserve) is spent


def test_a_reserve_does_not_hold_calls_back_when_the_api_never_tells_the_count() -> None:
    quota = Quota()
    quota.observe({"x-request-id": "req_1"})
    assert not quota.spent(in_flight=3, reserve=20)


def test_reset_is_told_in_utc_local_time_and_as_a_countdown() -> None:
    now = datetime(2026, 11, 30, 18, 48, tzinfo=UTC)
    text = describe_reset(now + timedelta(hours=5, minutes=12), now)
    assert text.startswith("2026-12-01 00:00:00 UTC (")
    assert "local" in text and text.endswith("in 5h12m")
    assert (
        duration(42, up=True) == "42s"
        and duration(185, up=True) == "3m05s"
        and duration(3600, up=True) == "1h00m"
    )


def test_a_row_stopped_by_the_quota_is_not_blamed_on_a_lost_answer_later(
    serve: Serve, tmp_path: Path
) -> None:
    """Its only call got a definite quota 429: the rerun's not_enrolled is a plain one."""
    pairs = [("cmp_q", new_uuid(i)) for i in range(1, 4)]  # none of them enrolled
    api = Sandbox([], campaigns=["cmp_q"], limits=Limits(per_day=0, day_seconds=3600))
    src = write_csv(tmp_path / "in.csv", pairs)
    out = tmp_path / "results.csv"
    args = ["run", str(src), "--out", str(out), "--rate", "50/s", "--concurrency", "1", "--yes"]
    env = cli_env(serve(api).base_url)

    first = run_cli(args, env)
    assert first.returncode == 75, first.stderr
    assert api.state.quota_refused == 1  # the first row was sent and refused, definitely

    api.limits.per_day = None  # the next day
    second = run_cli(args, env)
    assert second.returncode == 0, second.stderr
    records = read_results(out)
    assert [r["status"] for r in records] == ["not_enrolled"] * 3
    assert all("earlier attempt" not in r["detail"] for r in records)
