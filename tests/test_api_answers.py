"""Answers the docs allow (issue 10, items 6-9): an unclear 404, a 2xx without the documented
body, X-RateLimit-Reset and Retry-After in every form, a server that only ever answers 429.

End to end over loopback: the sandbox (in process, and as `bulk-unenroll sandbox` for a
rehearsal) and tiny purpose-written servers that share no code with the client or the sandbox.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY, cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import BURST, Serve, sandbox_command
from hypothesis import given
from hypothesis import strategies as st

from bulk_unenroll import AuthError, JobConfig, Secret, SetupError, unenroll_file
from bulk_unenroll.api.pacing import RESET_HORIZON, Quota, reset_time, retry_after
from bulk_unenroll.render import flag
from bulk_unenroll.sandbox import RESET_FORMATS, Faults, Limits, Pair, Sandbox

REMOVED_BODY = b'{"data": {"removed": true, "campaign_id": "c", "contact_id": "k"}}'


def pairs(campaign: str, n: int, start: int = 1) -> list[Pair]:
    return [(campaign, new_uuid(start + i)) for i in range(n)]


def said(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


# -- a tiny server: one function decides every answer ------------------------------------------

Reply = tuple[int, dict[str, str], bytes]


class Tiny:
    """A bare HTTP/1.1 server on 127.0.0.1: `reply(n)` answers the n-th DELETE (from 0).
    It keeps each DELETE's arrival time (monotonic) and path."""

    def __init__(self, reply: Callable[[int], Reply]) -> None:
        self.arrivals: list[tuple[float, str]] = []
        tiny = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_DELETE(self) -> None:
                n = len(tiny.arrivals)
                tiny.arrivals.append((time.monotonic(), self.path))
                status, headers, body = reply(n)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/api-gateway"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


StartTiny = Callable[[Callable[[int], Reply]], Tiny]
"""The `tiny` fixture: start a tiny server answering with `reply`."""


@pytest.fixture
def tiny() -> Iterator[StartTiny]:
    started: list[Tiny] = []

    def start(reply: Callable[[int], Reply]) -> Tiny:
        started.append(Tiny(reply))
        return started[-1]

    yield start
    for server in started:
        server.close()


# -- 6. an unclear 404 never settles rows in bulk -----------------------------------------------


@pytest.mark.parametrize("wrong_route", ["not_found", "bare"])
@pytest.mark.parametrize("campaigns", [1, 3])
def test_a_wrong_base_url_exits_3_and_leaves_every_row_to_do(
    tmp_path: Path, serve: Serve, wrong_route: str, campaigns: int
) -> None:
    rows = [p for i in range(campaigns) for p in pairs(f"cmp_{i}", 90 // campaigns, 100 * i)]
    api = Sandbox(rows, wrong_route=wrong_route)
    server = serve(api)
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"
    args = ["run", str(src), "--out", str(out), *BURST]
    wrong = server.base_url.removesuffix("/api-gateway") + "/api-gatewy"

    done = run_cli(args, cli_env(wrong), timeout=60)

    assert done.returncode == 3, said(done)
    assert "--base-url" in done.stderr
    assert read_results(out) == [], "no row may be settled by a route-not-found 404"
    assert not api.state.deletes and api.state.calls <= 8  # the in-flight ones at most

    right = run_cli(args, cli_env(server.base_url))

    assert right.returncode == 0, said(right)
    assert [r["status"] for r in read_results(out)] == ["removed"] * 90
    assert set(api.state.deletes.values()) == {1} and len(api.state.deletes) == 90


def test_the_library_raises_setup_error_for_a_wrong_base_url_or_a_redirect(
    tmp_path: Path, serve: Serve, tiny: StartTiny
) -> None:
    """A wrong base URL is the setup, not the key: `Job.run` raises `SetupError` (exit 3
    too), never `AuthError`, which says the API refused the key. The library names the setting
    as `JobConfig` does; the CLI words the same error with its flag."""
    rows = pairs("cmp_a", 12)
    server = serve(Sandbox(rows))
    src = write_csv(tmp_path / "in.csv", rows)
    moved = tiny(lambda n: (301, {"Location": "https://elsewhere.example/"}, b""))
    urls = [server.base_url.removesuffix("/api-gateway") + "/api-gatewy", moved.base_url]
    for n, url in enumerate(urls):
        config = JobConfig(
            src, tmp_path / f"results-{n}.csv", api_key=Secret(API_KEY), base_url=url
        )
        with pytest.raises(SetupError, match="check base_url") as raised:
            unenroll_file(config)
        assert not isinstance(raised.value, AuthError) and raised.value.exit_code == 3
        assert "--base-url" not in str(raised.value)
        assert "check --base-url" in raised.value.describe(flag)


def test_once_the_route_is_known_an_unclear_404_settles_only_its_own_row(
    tmp_path: Path, serve: Serve
) -> None:
    """The campaign-start page spells an unknown campaign `not_found`: each of its rows is
    sent and recorded on its own answer; none is settled in bulk on another row's."""
    live, gone = pairs("cmp_live", 20), pairs("cmp_gone", 10, 500)
    rows = [p for pair in zip(live[:10], gone, strict=True) for p in pair] + live[10:]
    api = Sandbox(live, unknown_campaign_code="not_found")
    server = serve(api)
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"

    done = run_cli(
        ["run", str(src), "--out", str(out), "--rate", "1000/s", "--concurrency", "2", "--yes"],
        cli_env(server.base_url),
    )

    assert done.returncode == 1, said(done)  # rejected rows need a look
    records = {(r["campaign_id"], r["contact_id"]): r for r in read_results(out)}
    assert all(records[p]["status"] == "removed" for p in live)
    for pair in gone:
        record = records[pair]
        assert (record["status"], record["error_code"]) == ("rejected", "not_found")
        assert (record["http_status"], record["attempts"]) == ("404", "1")
        assert "this row only" in record["detail"]
        assert api.state.deletes[pair] == 1, "every row of the campaign got its own answer"


def test_an_unclear_404_first_waits_for_another_row_to_show_the_route(
    tmp_path: Path, serve: Serve
) -> None:
    """No --rate: the first call goes alone (the probe) and answers `not_found`; the next row
    proves the route, and only then is the first row recorded."""
    gone, live = pairs("cmp_gone", 1, 500), pairs("cmp_live", 3)
    api = Sandbox(live, limits=Limits(per_day=10_000), unknown_campaign_code="not_found")
    server = serve(api)
    src, out = write_csv(tmp_path / "in.csv", gone + live), tmp_path / "results.csv"

    done = run_cli(["run", str(src), "--out", str(out), "--yes"], cli_env(server.base_url))

    assert done.returncode == 1, said(done)
    first, *rest = sorted(read_results(out), key=lambda r: int(r["row"]))
    assert (first["status"], first["error_code"]) == ("rejected", "not_found")
    assert "this row only" in first["detail"]
    assert [r["status"] for r in rest] == ["removed"] * 3


def test_only_unclear_404s_and_nothing_else_is_a_setup_error(tmp_path: Path, serve: Serve) -> None:
    """The URL is right but every row is of one campaign answering `not_found`: nothing shows
    the route exists, so the run stops with exit 3 naming the campaign, recording nothing."""
    gone = pairs("cmp_gone", 30)
    api = Sandbox([], campaigns=["cmp_other"], unknown_campaign_code="not_found")
    server = serve(api)
    src, out = write_csv(tmp_path / "in.csv", gone), tmp_path / "results.csv"

    done = run_cli(["run", str(src), "--out", str(out), *BURST], cli_env(server.base_url))

    assert done.returncode == 3, said(done)
    assert "--base-url" in done.stderr and "cmp_gone" in done.stderr
    assert "take their rows out" in done.stderr
    assert read_results(out) == []
    assert sum(api.state.deletes.values()) <= 8


# -- 7. any 2xx means removed ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "detail"),
    [
        ("no_content_2xx", "204", "HTTP 204 with no body"),
        ("text_2xx", "200", "HTTP 200 with a non-JSON body (text/plain, 2 bytes)"),
        ("empty_2xx", "200", "HTTP 200 with no body"),
        ("malformed_2xx", "200", "HTTP 200 with a non-JSON body (application/json"),
    ],
)
def test_a_2xx_without_the_documented_body_is_removed_once(
    tmp_path: Path, serve: Serve, fault: str, status: str, detail: str
) -> None:
    rows = pairs("cmp_a", 12)
    faults = Faults()
    setattr(faults, fault, 1.0)
    api = Sandbox(rows, faults=faults)
    server = serve(api)
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"

    done = run_cli(["run", str(src), "--out", str(out), *BURST], cli_env(server.base_url))

    assert done.returncode == 0, said(done)
    records = read_results(out)
    assert [r["status"] for r in records] == ["removed"] * 12
    assert all(r["http_status"] == status and detail in r["detail"] for r in records)
    assert sum(api.state.deletes.values()) == 12, "a 2xx was sent again"


def test_a_server_answering_204_gets_each_pair_once(tmp_path: Path, tiny: StartTiny) -> None:
    server = tiny(lambda _: (204, {}, b""))
    rows = pairs("cmp_a", 3)
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"

    done = run_cli(["run", str(src), "--out", str(out), *BURST], cli_env(server.base_url))

    assert done.returncode == 0, said(done)
    assert len(server.arrivals) == 3
    assert [(r["status"], r["http_status"]) for r in read_results(out)] == [("removed", "204")] * 3


# -- 8. X-RateLimit-Reset in any form --------------------------------------------------------

NOW = 1_767_225_000.0
RESET = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC, ten minutes after NOW


@pytest.mark.parametrize(
    ("header", "reset"),
    [
        ("1767225600", RESET),  # Unix seconds, as documented
        ("1767225600.0", RESET),
        ("1767225600000", RESET),  # epoch milliseconds
        ("600", RESET),  # seconds until the reset
        ("0", NOW),
        ("2026-01-01T00:00:00Z", RESET),
        ("2026-01-01T01:00:00+01:00", RESET),
        ("2026-01-01T00:00:00", RESET),  # no zone: UTC
        ("Thu, 01 Jan 2026 00:00:00 GMT", RESET),
        ("  1767225600 ", RESET),
        ("-5", None),
        ("inf", None),
        ("nan", None),
        ("1e300", None),
        ("1767225600000000", None),  # microseconds: years away once read as milliseconds
        ("1700000000", None),  # months ago: misread or a stale clock
        ("tomorrow", None),
        ("", None),
    ],
)
def test_reset_is_read_in_every_form_and_bounded(header: str, reset: float | None) -> None:
    assert reset_time(header, NOW) == reset


@given(st.text(max_size=40))
def test_no_reset_header_crashes_or_escapes_the_horizon(header: str) -> None:
    reset = reset_time(header, NOW)
    assert reset is None or abs(reset - NOW) <= RESET_HORIZON
    Quota().observe({"x-ratelimit-remaining": "3", "x-ratelimit-reset": header}, NOW)


def test_a_countdown_reset_keeps_the_count_moving() -> None:
    """Seconds-until answers differ by rounding and reading time: still one quota day."""
    quota = Quota()
    for i, (remaining, until) in enumerate([(9, 600), (8, 599), (7, 599), (6, 598), (5, 598)]):
        quota.observe(
            {"x-ratelimit-remaining": str(remaining), "x-ratelimit-reset": str(until)},
            NOW + i * 0.6,
        )
        assert quota.remaining == remaining
    assert quota.reset_at == pytest.approx(RESET)


@pytest.mark.parametrize("form", RESET_FORMATS)
def test_the_reserve_is_kept_and_the_reset_told_whatever_the_format(
    tmp_path: Path, serve: Serve, form: str
) -> None:
    rows = pairs("cmp_q", 20)
    api = Sandbox(rows, limits=Limits(per_day=10, reset_format=form))
    server = serve(api)
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"
    summary = tmp_path / "summary.json"

    args = ["run", str(src), "--out", str(out), "--rate", "50/s", "--yes", "--reserve", "5"]

    done = run_cli([*args, "--summary-json", str(summary)], cli_env(server.base_url))

    assert done.returncode == 75, said(done)
    assert sum(api.state.deletes.values()) == 5, "the reserve was overspent"
    day = api.limits
    today = (time.time() - day.day_start) // day.day_seconds  # the sandbox's quota day
    reset = datetime.fromtimestamp(math.ceil(day.day_start + (today + 1) * day.day_seconds), UTC)
    # A countdown is read on arrival, whole seconds after the server counted it down.
    late = timedelta(seconds=2 if form == "seconds-until" else 0)
    told = re.search(r"resets (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", said(done))
    assert told is not None, said(done)
    assert reset <= datetime.fromisoformat(told[1]).replace(tzinfo=UTC) <= reset + late
    in_json = json.loads(summary.read_text())["quota_reset_at"]
    assert in_json == f"{datetime.fromisoformat(told[1]):%Y-%m-%dT%H:%M:%S}Z"


@pytest.mark.parametrize("form", ["epoch-ms", "seconds-until", "http-date"])
def test_wait_for_quota_sleeps_through_resets_in_any_format(
    tmp_path: Path, serve: Serve, form: str
) -> None:
    rows = pairs("cmp_q", 8)
    src = write_csv(tmp_path / "in.csv", rows)
    for attempt in range(3):
        api = Sandbox(rows, limits=Limits(per_day=4, day_seconds=3.0, reset_format=form))
        out = tmp_path / f"results-{attempt}.csv"
        args = ["run", str(src), "--out", str(out), *BURST, "--wait-for-quota"]
        done = run_cli(args, cli_env(serve(api).base_url))
        assert done.returncode == 0, said(done)
        assert [r["status"] for r in read_results(out)] == ["removed"] * 8
        if api.state.quota_refused:
            break
        # A quota day ended among the first calls (a slow machine): they never met the
        # limit, so the run had nothing to wait for. Again, on a fresh sandbox.
    assert "waiting until the reset" in done.stderr


# -- 9. Retry-After as a date; a server that only answers 429 ----------------------------------


def test_retry_after_is_read_as_delta_seconds_or_an_http_date() -> None:
    date = "Thu, 01 Jan 2026 00:00:00 GMT"
    assert (
        retry_after(httpx.Headers({"Retry-After": "Thu, 01 Jan 2026 00:00:13 GMT", "Date": date}))
        == 13.0
    )
    assert (
        retry_after(httpx.Headers({"Retry-After": "Wed, 31 Dec 2025 23:00:00 GMT", "Date": date}))
        == 0.0
    )
    assert (
        retry_after(httpx.Headers({"Retry-After": "Thu, 01 Jan 2099 00:00:00 GMT", "Date": date}))
        == 3600.0
    )
    ahead = retry_after(httpx.Headers({"Retry-After": formatdate(time.time() + 30, usegmt=True)}))
    assert ahead is not None and 28 <= ahead <= 30  # no Date header: measured on our clock
    assert retry_after(httpx.Headers({"Retry-After": "Thu, 99 Foo 2026"})) is None


def test_a_retry_after_date_is_honoured(tmp_path: Path, tiny: StartTiny) -> None:
    def reply(n: int) -> Reply:
        if n == 0:
            now = time.time()
            headers = {
                "Date": formatdate(now, usegmt=True),
                "Retry-After": formatdate(math.ceil(now) + 5, usegmt=True),
            }
            return 429, headers, b'{"error": {"code": "rate_limited", "message": "slow down"}}'
        return 200, {"Content-Type": "application/json"}, REMOVED_BODY

    server = tiny(reply)
    src, out = write_csv(tmp_path / "in.csv", pairs("cmp_a", 1)), tmp_path / "results.csv"

    done = run_cli(
        ["run", str(src), "--out", str(out), "--rate", "100/s", "--yes"], cli_env(server.base_url)
    )

    assert done.returncode == 0, said(done)
    (first, _), (second, _) = server.arrivals
    assert second - first >= 4.5, "the retry came before the date the server asked for"
    assert "pausing all workers 5.0s" in done.stderr or "pausing all workers 6.0s" in done.stderr


def test_the_sandbox_window_with_retry_after_dates_costs_one_429(
    tmp_path: Path, serve: Serve
) -> None:
    rows = pairs("cmp_a", 3)
    api = Sandbox(
        rows, limits=Limits(per_window=2, window=3.0), faults=Faults(retry_after="http-date")
    )
    server = serve(api)
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"

    done = run_cli(
        ["run", str(src), "--out", str(out), "--rate", "100/s", "--concurrency", "1", "--yes"],
        cli_env(server.base_url),
    )

    assert done.returncode == 0, said(done)
    assert api.state.rate_limited == 1, "the retry came before the window had room"


def test_a_server_that_only_answers_429_stops_the_run_with_75(
    tmp_path: Path, tiny: StartTiny
) -> None:
    server = tiny(lambda _: (429, {}, b""))
    src, out = write_csv(tmp_path / "in.csv", pairs("cmp_a", 5)), tmp_path / "results.csv"
    summary = tmp_path / "summary.json"

    args = ["run", str(src), "--out", str(out), *BURST, "--max-429-wait", "3"]

    done = run_cli([*args, "--summary-json", str(summary)], cli_env(server.base_url), timeout=60)

    assert done.returncode == 75, said(done)
    assert "nothing but 429" in done.stderr and "--max-429-wait 3s" in done.stderr
    assert read_results(out) == [], "a 429 settles nothing"
    assert json.loads(summary.read_text())["stop_reason"] == "api_down"
    assert 0 < len(server.arrivals) < 40


# -- the sandbox command rehearses them all ----------------------------------------------------


def test_a_rehearsal_of_odd_answers_with_the_sandbox_command(tmp_path: Path) -> None:
    rows = pairs("cmp_a", 10)
    src = write_csv(tmp_path / "in.csv", rows)
    options = ["--enroll-from", str(src), "--faults", "no_content_2xx=1", "--daily-quota", "6"]
    options += [
        "--reset-format",
        "http-date",
        "--retry-after",
        "http-date",
        "--wrong-route",
        "bare",
    ]
    with sandbox_command(tmp_path / "url", *options) as sandbox:
        out = tmp_path / "r.csv"
        args = ["run", str(src), "--out", str(out), "--rate", "50/s", "--yes", "--reserve", "2"]
        wrong = run_cli(args, cli_env(sandbox.url + "x"))
        quota = run_cli(args, cli_env(sandbox.url))

    assert wrong.returncode == 3 and "--base-url" in wrong.stderr, said(wrong)
    assert quota.returncode == 75, said(quota)
    records = read_results(out)
    assert [(r["status"], r["http_status"]) for r in records] == [("removed", "204")] * 4
    assert all("HTTP 204 with no body" in r["detail"] for r in records)
    assert "00:00:00 UTC" in said(quota)  # the HTTP-date reset, told back
