"""Pacing: even spacing with no burst, one pause for every worker after a 429, the plan learnt
from the first answer, and no call wasted on a campaign that does not exist.

The Pacer's own guarantees are checked on the event loop's clock as lower bounds (a sleep
never ends early), so they cannot flake; the scenarios run end to end over loopback.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from conftest import API_KEY, cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import Serve

from bulk_unenroll import JobConfig, Outcome, RetryPolicy, Secret, Summary
from bulk_unenroll.api import pacing
from bulk_unenroll.api.pacing import CATCH_UP, CLIMB_EVERY, LONGEST_SECOND_WAIT, SLOW_DOWN, Pacer
from bulk_unenroll.api.pools import PooledTransport
from bulk_unenroll.config import UNLIMITED_WORKERS
from bulk_unenroll.errors import InputError
from bulk_unenroll.events import Event, PaceChosen
from bulk_unenroll.limits import (
    PLANS,
    SAFETY_MARGIN,
    UNLIMITED,
    Rate,
    days_needed,
    is_published_plan,
)
from bulk_unenroll.sandbox import Limits, Sandbox
from bulk_unenroll.send.runner import Job

EPS = 1e-6
CAMPAIGN = "cmp_pacing"


async def gather_slots(pacer: Pacer, n: int) -> list[float]:
    """n workers each take one slot at once; the slot times, in order."""
    slots: list[float] = []

    async def one() -> None:
        slots.append(await pacer.acquire())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
    return sorted(slots)


# -- the Pacer --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_slots_are_evenly_spaced_from_the_first_with_no_burst() -> None:
    rate = Rate(40, 1)
    slots = await gather_slots(Pacer(rate), 12)

    spacing = 1 / rate.per_second
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= spacing - CATCH_UP - EPS, "two calls left closer than the spacing"
    # Any n+1 calls span at least n spacings less the catch-up: a strict window never overflows.
    for n in range(1, len(slots)):
        for i in range(len(slots) - n):
            assert slots[i + n] - slots[i] >= n * spacing - CATCH_UP - EPS


@pytest.mark.asyncio
async def test_a_slow_answer_holds_the_call_that_would_overfill_its_window() -> None:
    # 10 calls a second at most (paced at 9.8): a call answered 80 ms slower than usual may
    # have been stamped 80 ms late, so the call 10 slots on must wait a window after that.
    pacer = Pacer(Rate(10 * SAFETY_MARGIN, 1))
    fast = await pacer.acquire()
    pacer.answered(fast)
    slow = await pacer.acquire()
    await anyio.sleep(0.08)
    pacer.answered(slow)

    later = [await pacer.acquire() for _ in range(10)]

    assert later[-1] - slow >= 1.0 + 0.08 - 0.01, "the 11th call could share a window"


@pytest.mark.asyncio
async def test_a_fractional_rate_is_paced_without_a_window_guard() -> None:
    # 2.5/s names no whole count per second: guarding "2 calls a second" would cap it at 2/s.
    pacer = Pacer(Rate(2.5 * SAFETY_MARGIN, 1))
    sent = await pacer.acquire()
    await anyio.sleep(0.05)
    pacer.answered(sent)
    assert pacer.per_second is not None and pacer.window is None


@pytest.mark.asyncio
async def test_a_429_pauses_every_worker_then_resumes_slower_without_a_burst() -> None:
    pacer = Pacer(Rate(50, 1))
    await pacer.acquire()
    paused_at = anyio.current_time()

    pause = pacer.rate_limited(retry_after=0.3)
    slots = await gather_slots(pacer, 4)

    assert pause == 0.3
    assert pacer.per_second == pytest.approx(50 * SLOW_DOWN)
    assert slots[0] >= paused_at + 0.3 - EPS, "a worker sent during the pause"
    spacing = 1 / (50 * SLOW_DOWN)
    assert min(b - a for a, b in itertools.pairwise(slots)) >= spacing - CATCH_UP - EPS


@pytest.mark.asyncio
async def test_a_burst_of_429s_from_the_old_pace_slows_down_once() -> None:
    pacer = Pacer(Rate(50, 1))
    sent = [await pacer.acquire() for _ in range(3)]

    first = pacer.rate_limited(None, sent[0])
    echoes = [pacer.rate_limited(None, s) for s in sent[1:]]

    assert first == 2.0, "no Retry-After: the first backoff"
    assert echoes == [None, None]
    assert pacer.per_second == pytest.approx(50 * SLOW_DOWN)


@pytest.mark.asyncio
async def test_the_pace_climbs_back_slowly_and_never_past_the_target() -> None:
    pacer = Pacer(Rate(100, 1))
    pacer.rate_limited(0.0)
    slowed = pacer.per_second
    assert slowed == pytest.approx(70)

    for _ in range(CLIMB_EVERY - 1):
        pacer.succeeded()
    assert pacer.per_second == slowed, "climbed before enough successes"
    pacer.succeeded()
    assert pacer.per_second == pytest.approx(80)
    for _ in range(CLIMB_EVERY * 10):
        pacer.succeeded()
    assert pacer.per_second == pytest.approx(100)


@pytest.mark.asyncio
async def test_successes_from_before_a_429_do_not_climb() -> None:
    pacer = Pacer(Rate(100, 1))
    before = await pacer.acquire()
    pacer.rate_limited(0.0)
    for _ in range(CLIMB_EVERY * 3):
        pacer.succeeded(before)
    assert pacer.per_second == pytest.approx(70)


@pytest.mark.asyncio
async def test_an_unknown_limit_is_probed_fast_then_held_at_what_a_window_accepted() -> None:
    window = 10.0  # a sandbox's minute running 6x faster: the probe doubles every 1.33 s
    pacer = Pacer(Rate(50, window), probe_first=True)
    pacer.learn(Rate(50, window), adaptive=True)  # 5/s to start
    sent: list[float] = []
    with anyio.fail_after(8):
        while len(sent) < 40:
            sent.append(await pacer.acquire())
            pacer.succeeded(sent[-1])
        refused = await pacer.acquire()
    probed = pacer.per_second
    # 40 calls at 5/s would take 8 s: the pace held the run back, so it doubled on the way.
    assert probed is not None and probed >= 10
    assert pacer.learnt is None

    pacer.rate_limited(0.0, refused)

    assert pacer.learnt is None, "one 429 cannot tell a per-second limit from the minute's"
    in_the_second = sum(1 for t in sent if t > refused - 1)
    assert pacer.per_second == pytest.approx(in_the_second * SAFETY_MARGIN), "trials' pace"
    trial = await lone_trial(pacer)
    assert trial >= refused + 1, "a trial before the refusing second passed tells nothing"
    pacer.rate_limited(0.0, trial)  # the minute's count refused it: the minute is the limit

    assert pacer.learnt == Rate(40, window), "the calls the window accepted are the limit"
    assert pacer.per_second == pytest.approx(40 * SAFETY_MARGIN / window)
    with anyio.move_on_after(0.5) as waited:
        await pacer.acquire()
    assert waited.cancelled_caught, "a call left before any counted call left the window"
    for _ in range(CLIMB_EVERY * 5):
        pacer.succeeded()
    assert pacer.per_second == pytest.approx(40 * SAFETY_MARGIN / window), "it holds there"


async def lone_trial(pacer: Pacer) -> float:
    """The next slot, checked to go alone: no other call leaves before its answer."""
    with anyio.fail_after(5):
        trial = await pacer.acquire()
    with anyio.move_on_after(0.3) as alone:
        await pacer.acquire()
    assert alone.cancelled_caught, "a second call left while a trial was out"
    return trial


def accepted(pacer: Pacer, *sent: float) -> None:
    for at in sent:
        pacer.succeeded(at)


def unknown_limit(window: float) -> Pacer:
    pacer = Pacer(Rate(50, window), probe_first=True)
    pacer.learn(Rate(50, window), adaptive=True)
    return pacer


@pytest.mark.asyncio
async def test_a_per_second_limit_is_told_from_the_minute_by_a_trial_it_accepts() -> None:
    pacer = unknown_limit(60.0)
    now = anyio.current_time()
    # The probe's slow start (40 calls over 40 s), then 5 in the last second: the first 429.
    accepted(pacer, *(now - 50 + i for i in range(40)), *(now - 0.9 + i * 0.2 for i in range(5)))
    pacer.rate_limited(0.0, now)
    assert pacer.learnt is None

    trial = await lone_trial(pacer)  # the minute's 45 calls are all in its window
    pacer.succeeded(trial)

    assert pacer.learnt == Rate(5, 1.0), "a per-second limit, not 45 calls a minute"
    assert pacer.per_second == pytest.approx(5 * SAFETY_MARGIN)
    assert pacer.state() == ("sending", None)
    with anyio.fail_after(2):  # no trial any more: calls follow at the pace, not one by one
        await gather_slots(pacer, 3)


@pytest.mark.asyncio
async def test_a_trial_the_minute_would_also_accept_tells_nothing_so_another_follows() -> None:
    pacer = unknown_limit(4.0)  # a sandbox's minute of 4 s
    now = anyio.current_time()
    accepted(
        pacer, *(now - 3.6 + i * 0.05 for i in range(5)), *(now - 0.9 + i * 0.08 for i in range(10))
    )
    pacer.rate_limited(0.0, now)  # 10 in the second, 15 in the "minute"

    first = await lone_trial(pacer)  # the 5 oldest have left the window: the minute allows it
    pacer.succeeded(first)
    assert pacer.learnt is None, "a trial both windows allow says nothing"
    assert pacer.state() == ("telling a per-second limit from a per-minute one", None)
    second = await lone_trial(pacer)
    pacer.rate_limited(0.0, second)

    assert pacer.learnt == Rate(15, 4.0)


@pytest.mark.asyncio
async def test_a_trial_without_an_answer_lets_another_call_try(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pacing, "TRIAL_PATIENCE", 0.2)
    pacer = unknown_limit(60.0)
    now = anyio.current_time()
    accepted(pacer, *(now - 50 + i for i in range(40)), *(now - 0.9 + i * 0.2 for i in range(5)))
    pacer.rate_limited(0.0, now)
    first = await pacer.acquire()  # its answer never comes
    with anyio.fail_after(2):
        second = await pacer.acquire()
    assert second >= first + 0.2
    pacer.succeeded(second)
    assert pacer.learnt == Rate(5, 1.0)


@pytest.mark.asyncio
async def test_a_429_only_the_minute_can_explain_needs_no_trial() -> None:
    pacer = unknown_limit(60.0)
    now = anyio.current_time()
    accepted(pacer, *(now - 59.5 + i for i in range(60)))  # an even 1/s: 1 in the last second
    pacer.rate_limited(0.0, now)
    assert pacer.learnt == Rate(60, 60.0)


@pytest.mark.asyncio
async def test_a_429_asking_to_wait_longer_than_a_second_needs_no_trial() -> None:
    """A per-second window frees a slot within a second: a longer Retry-After (a fixed minute
    waiting for its next start, say) comes from the minute, and a trial after it could land in
    a fresh fixed minute and pass for a per-second limit."""
    pacer = unknown_limit(60.0)
    now = anyio.current_time()
    accepted(pacer, *(now - 50 + i for i in range(40)), *(now - 0.9 + i * 0.2 for i in range(5)))
    pacer.rate_limited(LONGEST_SECOND_WAIT + 1, now)
    assert pacer.learnt == Rate(45, 60.0)


@pytest.mark.asyncio
async def test_the_probe_goes_alone_until_its_answer_sets_the_pace() -> None:
    pacer = Pacer(Rate(100, 1), probe_first=True)  # fast enough that spacing is not the reason
    probe = await pacer.acquire()
    followers: list[float] = []

    async def follow() -> None:
        followers.append(await pacer.acquire())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(follow)
            await anyio.sleep(0.3)
            assert followers == [], "a second call left before the probe was answered"
            learnt_at = anyio.current_time()
            pacer.learn(Rate(20, 1))
    assert probe < learnt_at <= min(followers)
    assert pacer.per_second == 20


@pytest.mark.asyncio
async def test_workers_waiting_for_the_plan_are_released_at_the_learnt_pace() -> None:
    pacer = Pacer(PLANS["starter"].rate, probe_first=True)  # 6 s between calls until learnt
    await pacer.acquire()

    async def follow() -> None:
        await pacer.acquire()

    with anyio.fail_after(3):  # half of Starter's slot: they follow the learnt pace at once
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(follow)
            await anyio.sleep(0.05)
            pacer.learn(Rate(20, 1))


@pytest.mark.asyncio
async def test_a_probe_without_an_answer_lets_the_next_attempt_probe() -> None:
    pacer = Pacer(Rate(100, 1), probe_first=True)
    await pacer.acquire()
    pacer.unanswered()
    with anyio.fail_after(2):
        await pacer.acquire()
    assert pacer.learning


@pytest.mark.asyncio
async def test_close_wakes_workers_waiting_out_a_long_pause() -> None:
    pacer = Pacer(Rate(10, 1))
    pacer.pause(3600, "waiting for quota reset")
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(pacer.acquire)
            await anyio.sleep(0.05)
            pacer.close()


@pytest.mark.asyncio
async def test_unlimited_sends_without_waiting() -> None:
    pacer = Pacer(UNLIMITED)
    assert pacer.per_second is None
    with anyio.fail_after(1):
        for _ in range(1000):
            await pacer.acquire()


# -- config -------------------------------------------------------------------------------


def test_rate_parse_accepts_unlimited_and_explains_nonsense() -> None:
    assert Rate.parse("unlimited").unlimited
    assert str(Rate.parse("unlimited")) == "unlimited"
    assert Rate.parse("50/min") == Rate(50, 60)
    with pytest.raises(InputError, match="unlimited"):
        Rate.parse("fast")


def config(tmp_path: Path, **kw: Any) -> JobConfig:
    return JobConfig(
        input=tmp_path / "in.csv", out=tmp_path / "out.csv", api_key=Secret(API_KEY), **kw
    )


def test_pace_keeps_the_margin_and_flags_override_learning(tmp_path: Path) -> None:
    assert config(tmp_path).pace() is None, "no flag: learn the plan"
    assert config(tmp_path, plan=PLANS["pro"]).pace() == Rate(50 * SAFETY_MARGIN, 60)
    assert config(tmp_path, rate=Rate(40, 1)).pace() == Rate(40 * SAFETY_MARGIN, 1)
    assert config(tmp_path, rate=UNLIMITED).pace() is UNLIMITED
    assert config(tmp_path).pace(PLANS["org"]) == Rate(200 * SAFETY_MARGIN, 60)


def test_workers_cover_rate_times_a_slow_latency_and_no_more(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert cfg.workers(Rate(100, 1)) == 200, "200 ms per call at 100/s needs 20; 2 s needs 200"
    assert cfg.workers(PLANS["starter"].rate) == 4
    assert cfg.workers(UNLIMITED) == UNLIMITED_WORKERS
    assert cfg.workers(None) >= math.ceil(PLANS["org"].rate.per_second * 2)
    assert config(tmp_path, concurrency=3).workers(Rate(100, 1)) == 3


def test_cost_in_days_at_a_known_quota() -> None:
    assert days_needed(5000, PLANS["pro"].per_day) == 5
    assert days_needed(5000, 1000, reserve=200) == 7
    assert days_needed(0, 1000) == 0
    assert days_needed(10, 100, reserve=100) is None
    assert is_published_plan(1000) and not is_published_plan(5000)


# -- end to end ---------------------------------------------------------------------------


def rows_for(campaign: str, n: int, first: int = 1) -> list[tuple[str, str]]:
    return [(campaign, new_uuid(i)) for i in range(first, first + n)]


def run_job(cfg: JobConfig, events: list[Event] | None = None) -> tuple[Job, Summary]:
    async def go() -> tuple[Job, Summary]:
        job = Job(cfg, on_event=(events.append if events is not None else None))
        with anyio.fail_after(60):
            await job.plan()
            return job, await job.run()

    return anyio.run(go, backend="asyncio")


@pytest.mark.solo
def test_strict_window_at_exactly_the_rate_sees_no_429(tmp_path: Path, serve: Serve) -> None:
    rows = rows_for(CAMPAIGN, 200)  # five windows (bench.pacing sends 1,200)
    api = Sandbox(rows, limits=Limits(per_window=40, window=1.0))
    server = serve(api)
    inp, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"

    done = run_cli(
        ["run", str(inp), "--out", str(out), "--rate", "40/s", "--yes"], cli_env(server.base_url)
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert api.state.rate_limited == 0, "the pacer overran a window it was told exactly"
    assert len(api.state.removed) == 200


class ArrivalLog(Sandbox):
    """Notes when each call was handled (after the sandbox's latency)."""

    arrivals: list[float]

    def handle(
        self, method: str, path: str, headers: dict[str, str], payload: bytes = b""
    ) -> tuple[str, int, dict[str, str], bytes]:
        self.arrivals.append(time.monotonic())
        return super().handle(method, path, headers, payload)


def test_plan_learnt_from_the_first_answer_after_a_lone_probe(tmp_path: Path, serve: Serve) -> None:
    rows = rows_for(CAMPAIGN, 4)
    api = ArrivalLog(rows, limits=Limits(per_day=10_000))  # Org's daily quota
    api.arrivals = []
    api.faults.latency = 0.5
    server = serve(api)
    write_csv(tmp_path / "in.csv", rows)
    events: list[Event] = []

    _, summary = run_job(config(tmp_path, base_url=server.base_url), events)

    assert summary.outcomes[Outcome.REMOVED] == 4
    (chosen,) = [e for e in events if isinstance(e, PaceChosen)]
    assert (chosen.limit, chosen.plan, chosen.climbing) == (10_000, "org", False), chosen
    assert "org plan" in str(chosen)
    assert summary.final_pace == pytest.approx(200 * SAFETY_MARGIN / 60)
    first, second = api.arrivals[:2]
    # The second call can only leave after the probe's answer, which took the latency.
    assert second - first >= 0.5


@pytest.mark.parametrize(
    ("daily", "expected_event", "start"),
    [
        (5_000, "no published plan", PLANS["pro"]),
        (None, "did not report its daily limit", PLANS["starter"]),
    ],
)
def test_unknown_limits_fall_back_to_adaptation(
    tmp_path: Path, serve: Serve, daily: int | None, expected_event: str, start: object
) -> None:
    rows = rows_for(CAMPAIGN, 1)
    server = serve(Sandbox(rows, limits=Limits(per_day=daily)))
    write_csv(tmp_path / "in.csv", rows)
    events: list[Event] = []

    _, summary = run_job(config(tmp_path, base_url=server.base_url), events)

    assert summary.outcomes[Outcome.REMOVED] == 1
    chosen = [e for e in events if isinstance(e, PaceChosen)]
    assert len(chosen) == 1 and chosen[0].climbing, "no ceiling: adaptive"
    said = str(chosen[0])
    assert expected_event in said and "doubling it every 8 s" in said, said
    assert isinstance(start, type(PLANS["pro"]))
    assert summary.final_pace == pytest.approx(start.per_minute * SAFETY_MARGIN / 60)


def test_429s_slow_the_run_without_spending_any_row_retries(tmp_path: Path, serve: Serve) -> None:
    rows = rows_for(CAMPAIGN, 40)
    api = Sandbox(rows, limits=Limits(per_window=10, window=1.0))
    server = serve(api)
    write_csv(tmp_path / "in.csv", rows)
    events: list[Event] = []
    cfg = config(
        tmp_path, base_url=server.base_url, rate=Rate(25, 1), retry=RetryPolicy(max_retries=0)
    )

    _, summary = run_job(cfg, events)

    assert api.state.rate_limited > 0, "the window never refused: the test proves nothing"
    assert summary.outcomes[Outcome.REMOVED] == 40, "a 429 cost a row its only attempt"
    assert len(api.state.removed) == 40
    assert summary.rate_limited == api.state.rate_limited
    assert any("pausing all workers" in str(e) for e in events)
    results = read_results(tmp_path / "out.csv")
    assert {r["status"] for r in results} == {"removed"}
    assert any(int(r["attempts"]) > 1 for r in results), "the refused calls were retried"


def test_a_missing_campaign_costs_one_call_even_for_rows_already_waiting(
    tmp_path: Path, serve: Serve
) -> None:
    gone, alive = "cmp_gone", "cmp_alive"
    rows = rows_for(gone, 40) + rows_for(alive, 20, first=100)
    api = Sandbox(rows_for(alive, 20, first=100))
    server = serve(api)
    write_csv(tmp_path / "in.csv", rows)
    # 20/s: 40 workers, all holding a row of the missing campaign when its first answer comes.
    cfg = config(tmp_path, base_url=server.base_url, rate=Rate(20, 1))

    _, summary = run_job(cfg)

    sent_to_gone = sum(n for (c, _), n in api.state.deletes.items() if c == gone)
    assert sent_to_gone <= 2, f"{sent_to_gone} calls spent on a campaign known to be missing"
    results = read_results(tmp_path / "out.csv")
    gone_rows = [r for r in results if r["campaign_id"] == gone]
    assert len(gone_rows) == 40
    assert {r["status"] for r in gone_rows} == {"rejected"}
    assert {r["error_code"] for r in gone_rows} == {"campaign_not_found"}
    assert sum("not sent" in r["detail"] for r in gone_rows) >= 38
    assert summary.outcomes[Outcome.REMOVED] == 20


def test_calls_per_settled_row_in_clean_conditions(tmp_path: Path, serve: Serve) -> None:
    rows = rows_for(CAMPAIGN, 200)
    api = Sandbox(rows[:150])
    server = serve(api)
    write_csv(tmp_path / "in.csv", rows)

    _, summary = run_job(config(tmp_path, base_url=server.base_url, rate=UNLIMITED))

    assert summary.calls == api.state.calls == 200
    assert summary.calls_per_settled_row is not None
    assert summary.calls_per_settled_row <= 1.01


class CountingServer:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 that answers 200 after `delay` seconds and
    counts the connections clients opened to it."""

    def __init__(self) -> None:
        counted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with counted.lock:
                    counted.connections += 1

            def do_DELETE(self) -> None:
                time.sleep(counted.delay)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.lock = threading.Lock()
        self.connections = 0
        self.delay = 0.0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.asyncio
async def test_a_light_load_keeps_one_connection_and_a_heavy_one_spreads() -> None:
    server = CountingServer()
    transport = PooledTransport(16)

    try:
        with anyio.fail_after(30):
            async with httpx.AsyncClient(transport=transport) as http:
                for _ in range(20):  # one at a time, as a paced run on a fast API sends them
                    assert (await http.delete(server.url)).status_code == 200
                assert server.connections == 1, "a light load opened idle connections"

                server.delay = 0.2  # eight at once are all in flight together
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(http.delete, server.url)
                assert server.connections == 8, "eight at once need eight connections"
                assert transport.in_use == 0, "a connection was not given back"
    finally:
        server.close()
