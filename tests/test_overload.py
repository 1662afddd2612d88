"""Gateways in front of the API: overload answers slow the shared pace instead of failing rows,
and 'an earlier attempt may have removed it' is said only after an attempt that could have
been applied (a lost answer, or a 500/502/504/546), never after a refusal (503, 429).

The servers here are written for these tests (no sandbox code): each keeps its own record of
what it removed, the truth the results are judged against.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv

from bulk_unenroll.api.pacing import SLOW_DOWN, Pacer
from bulk_unenroll.limits import SAFETY_MARGIN, Rate
from bulk_unenroll.send.runner import OVERLOADS_PER_ROW

CAMPAIGN = "cmp_gw"
LOST = "an earlier attempt may have removed it"
NGINX_503 = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Shed:
    """How the gateway sheds a call: status, headers, body, and whether LeadLex behind it
    applied the removal first (a 502/504/546 can come after LeadLex acted)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    applies: bool = False


SHEDS = {
    "nginx 503": Shed(503, {"Content-Type": "text/html"}, NGINX_503),
    "quick 502": Shed(502),
    "546 WORKER_RESOURCE_LIMIT": Shed(546, {"sb-error-code": "WORKER_RESOURCE_LIMIT"}),
}


class FakeLeadLex:
    """One campaign; `shed(contact, attempt)` says when a gateway answers instead."""

    def __init__(self, enrolled: set[str], shed: Callable[[str, int], Shed | None]) -> None:
        self.enrolled = set(enrolled)
        self.removed: set[str] = set()
        self.attempts: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.shed = shed
        self.lock = threading.Lock()

    def answer(self, path: str) -> Reply:
        match = re.fullmatch(rf"/api-gateway/v1/campaigns/{CAMPAIGN}/contacts/([0-9a-f-]+)", path)
        if match is None:
            return 404, {}, b"no such route"
        contact = match[1]
        with self.lock:
            self.attempts[contact] += 1
            shed = self.shed(contact, self.attempts[contact])
            if shed is not None and not shed.applies:
                return shed.status, shed.headers, shed.body
            if contact in self.enrolled:
                self.enrolled.discard(contact)
                self.removed.add(contact)
                reply: Reply = (200, {}, json.dumps({"data": {"removed": True}}).encode())
            else:
                body = {"error": {"code": "enrollment_not_found", "message": "not enrolled"}}
                reply = (404, {}, json.dumps(body).encode())
            if shed is not None:  # LeadLex acted; the gateway lost its answer
                return shed.status, shed.headers, shed.body
            return reply


@pytest.fixture
def fake() -> Iterator[Callable[[FakeLeadLex], str]]:
    """Serve FakeLeadLex instances on 127.0.0.1; their base URLs."""
    servers: list[ThreadingHTTPServer] = []

    def start(api: FakeLeadLex) -> str:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_DELETE(self) -> None:
                status, headers, body = api.answer(self.path)
                with api.lock:
                    api.statuses[status] += 1
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/api-gateway"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def rows(n: int) -> list[tuple[str, str]]:
    return [(CAMPAIGN, new_uuid(i + 1)) for i in range(n)]


def run(
    tmp_path: Path, base_url: str, pairs: list[tuple[str, str]], *extra: str
) -> tuple[int, str, dict[str, Any]]:
    src = write_csv(tmp_path / "in.csv", pairs)
    out, summary = tmp_path / "results.csv", tmp_path / "summary.json"
    done = run_cli(
        ["run", str(src), "--out", str(out), "--yes", "--summary-json", str(summary), *extra],
        cli_env(base_url),
    )
    return done.returncode, done.stdout + done.stderr, json.loads(summary.read_text())


class Limiter:
    """A gateway's limit_req without a burst: a call within 1/rate s of the last one let
    through is shed (nginx's rule)."""

    def __init__(self, per_second: float, shed: Shed) -> None:
        self.spacing = 1 / per_second
        self.shed_with = shed
        self.last = -1.0

    def __call__(self, contact: str, attempt: int) -> Shed | None:
        now = time.monotonic()
        if now - self.last < self.spacing:
            return self.shed_with
        self.last = now
        return None


# -- overload is a pacing signal ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nginx 503", "quick 502", "546 WORKER_RESOURCE_LIMIT"])
def test_a_gateway_shedding_load_slows_the_run_and_fails_no_row(
    tmp_path: Path, fake: Callable[[FakeLeadLex], str], kind: str
) -> None:
    """--max-retries 0: had the gateway's answers spent retries, rows would end failed."""
    pairs = rows(40)
    enrolled = {c for _, c in pairs[::2]}
    api = FakeLeadLex(enrolled, Limiter(40, SHEDS[kind]))

    code, output, summary = run(tmp_path, fake(api), pairs, "--rate", "200/s", "--max-retries", "0")

    assert code == 0, output
    records = read_results(tmp_path / "results.csv")
    assert Counter(r["status"] for r in records) == {"removed": 20, "not_enrolled": 20}
    assert {r["contact_id"] for r in records if r["status"] == "removed"} == api.removed
    assert api.removed == enrolled
    shed = api.statuses[SHEDS[kind].status]
    assert shed > 0, "the gateway never shed a call: the test did not test anything"
    assert summary["overloaded"] == shed
    assert summary["rate_limited"] == 0
    assert summary["final_pace_per_second"] < 200 * SAFETY_MARGIN * SLOW_DOWN + 1e-6
    assert "gateway overloaded (HTTP" in output
    assert "overload answers" in output
    claims = [r for r in records if LOST in r["detail"]]
    if SHEDS[kind].status == 503:
        assert claims == [], "a refusal is never called lost"
    # A 502/504/546 can follow a removal: the client cannot know this gateway applied nothing.
    assert all(f"it got HTTP {SHEDS[kind].status}" in r["detail"] for r in claims)


def test_an_outage_of_overload_answers_still_trips_the_breaker_and_fails_no_row(
    tmp_path: Path, fake: Callable[[FakeLeadLex], str]
) -> None:
    """Nothing succeeds: that is an outage, not a pace. Exit 75, rows left for a rerun."""
    pairs = rows(40)
    api = FakeLeadLex({c for _, c in pairs}, lambda contact, attempt: SHEDS["nginx 503"])

    code, output, summary = run(tmp_path, fake(api), pairs, "--rate", "200/s")

    assert code == 75, output
    assert "the API looks down" in output
    assert read_results(tmp_path / "results.csv") == [], "no row is failed for an outage"
    assert summary["calls"] == sum(api.attempts.values()) < 60


def test_a_row_shed_every_time_while_others_get_through_ends_instead_of_looping(
    tmp_path: Path, fake: Callable[[FakeLeadLex], str]
) -> None:
    pairs = rows(30)
    stuck = pairs[0][1]
    api = FakeLeadLex(
        {c for _, c in pairs},
        lambda contact, attempt: SHEDS["nginx 503"] if contact == stuck else None,
    )

    code, output, _ = run(tmp_path, fake(api), pairs, "--rate", "200/s", "--max-retries", "1")

    assert code == 1, output
    records = {r["contact_id"]: r for r in read_results(tmp_path / "results.csv")}
    assert records[stuck]["status"] == "failed"
    assert api.attempts[stuck] == OVERLOADS_PER_ROW + 2  # the free ones, then its own retries
    assert records[stuck]["detail"].endswith("(last: HTTP 503)")
    assert api.removed == {c for _, c in pairs[1:]}


# -- truth about what may have been applied ----------------------------------------------------


@pytest.mark.parametrize(
    ("shed", "claims"),
    [
        (Shed(503, {"Content-Type": "text/html"}, NGINX_503), False),
        (Shed(429, {"Retry-After": "0"}, b'{"error":{"code":"rate_limited"}}'), False),
        (Shed(500, {}, b"internal error", applies=True), True),
        (Shed(502, {}, b"", applies=True), True),
        (Shed(504, {}, b"", applies=True), True),
        (Shed(546, {"sb-error-code": "WORKER_RESOURCE_LIMIT"}, b"", applies=True), True),
    ],
)
def test_may_have_removed_is_said_only_after_an_answer_that_can_follow_a_removal(
    tmp_path: Path, fake: Callable[[FakeLeadLex], str], shed: Shed, claims: bool
) -> None:
    """Every pair's first attempt gets `shed`; the server's record judges every claim."""
    pairs = rows(8)
    enrolled = {c for _, c in pairs[:4]}
    api = FakeLeadLex(enrolled, lambda contact, attempt: shed if attempt == 1 else None)

    code, output, summary = run(tmp_path, fake(api), pairs, "--rate", "200/s")

    assert code == 0, output
    records = {r["contact_id"]: r for r in read_results(tmp_path / "results.csv")}
    assert api.removed == enrolled
    for contact, record in records.items():
        claimed = LOST in record["detail"]
        if contact in enrolled and shed.applies:
            # The first attempt removed it; the retry found nothing: the claim is true.
            assert record["status"] == "not_enrolled"
            assert claimed, record
            assert f"it got HTTP {shed.status}" in record["detail"], "says what it got"
        elif contact in enrolled:
            assert record["status"] == "removed"
        else:
            assert record["status"] == "not_enrolled"
            assert claimed is claims, record  # a refusal is never called lost
    assert summary["lost_then_not_enrolled"] == (len(pairs) if claims else 0)


@pytest.mark.parametrize(("kind", "marks_stay"), [("nginx 503", False), ("quick 502", True)])
def test_a_row_left_after_refusals_only_is_not_blamed_on_a_lost_answer_by_the_rerun(
    tmp_path: Path, fake: Callable[[FakeLeadLex], str], kind: str, marks_stay: bool
) -> None:
    """The `.sent` mark of a row whose every answer was a refusal is taken back; a row that
    got an answer that can follow a removal keeps it, and the rerun says so."""
    pairs = rows(30)
    outage = True
    api = FakeLeadLex(set(), lambda contact, attempt: SHEDS[kind] if outage else None)
    url = fake(api)

    first, output, _ = run(tmp_path, url, pairs, "--rate", "200/s")
    assert first == 75, output
    sent = {c for c, n in api.attempts.items() if n}
    assert sent, "the outage run sent nothing"

    outage = False
    second, output, summary = run(tmp_path, url, pairs, "--rate", "200/s")
    assert second == 0, output
    records = {r["contact_id"]: r for r in read_results(tmp_path / "results.csv")}
    assert {r["status"] for r in records.values()} == {"not_enrolled"}
    claimed = {c for c, r in records.items() if LOST in r["detail"]}
    assert claimed == (sent if marks_stay else set())
    assert summary["lost_then_not_enrolled"] == len(claimed)


# -- the Pacer ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_overload_slows_the_pace_and_climbs_back_only_below_where_it_was_drawn() -> None:
    pacer = Pacer(Rate(30, 1))
    sent = [await pacer.acquire() for _ in range(3)]

    assert pacer.overloaded(None, sent[0]) is True
    assert [pacer.overloaded(None, s) for s in sent[1:]] == [False, False], "one signal"
    assert pacer.per_second == pytest.approx(30 * SLOW_DOWN)
    assert pacer.state()[1] is None, "no Retry-After: no pause, the slower pace is enough"

    for _ in range(1000):
        pacer.succeeded()
    assert pacer.per_second == pytest.approx(30 * SAFETY_MARGIN), "the gateway's limit is below"


@pytest.mark.asyncio
async def test_overload_with_retry_after_pauses_and_never_slows_below_a_tenth() -> None:
    pacer = Pacer(Rate(30, 1))
    assert pacer.overloaded(0.5) is True
    reason, left = pacer.state()
    assert "overloaded" in reason and left is not None and left > 0.4
    for _ in range(50):
        pacer.overloaded(None)
    assert pacer.per_second == pytest.approx(3.0)


@pytest.mark.asyncio
async def test_an_unpaced_run_pauses_on_overload() -> None:
    pacer = Pacer(None)
    before = anyio.current_time()
    pacer.overloaded(None)
    assert await pacer.acquire() >= before + 0.9
