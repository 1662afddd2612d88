"""Listing a campaign's enrolled contacts (`api/listing.py`): page by page through the run's
session, and never a listing that missed someone while other clients changed the list.

Over loopback against the sandbox (judged by its own state, including its second client's
changes) and a tiny purpose-written server for answers the sandbox does not give.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from conftest import API_KEY, new_uuid
from helpers import Serve

from bulk_unenroll import JobConfig, Secret
from bulk_unenroll.api import client
from bulk_unenroll.api.client import Action, Answer, classify_page
from bulk_unenroll.api.listing import MAX_PASSES, CampaignLister, End, Headway, Listing
from bulk_unenroll.api.session import Hold, Session
from bulk_unenroll.config import RetryPolicy
from bulk_unenroll.events import Event
from bulk_unenroll.limits import Rate
from bulk_unenroll.models import Outcome, StopReason, Summary
from bulk_unenroll.sandbox import Limits, Pair, Sandbox

CAMPAIGN = "cmp_spring"


def enrolled(n: int, campaign: str = CAMPAIGN, start: int = 1) -> list[Pair]:
    return [(campaign, new_uuid(start + i)) for i in range(n)]


@asynccontextmanager
async def lister(
    base_url: str, tmp_path: Path, per_page: int = 100
) -> AsyncIterator[CampaignLister]:
    """A lister over a session of its own, as a run would hold one."""
    config = JobConfig(
        input=tmp_path / "in.csv",
        out=tmp_path / "out.csv",
        api_key=Secret(API_KEY),
        base_url=base_url,
        rate=Rate(1000, 1),
        retry=RetryPolicy(base_delay=0.01, max_delay=0.05),
    )
    stopping = anyio.Event()

    def stop(_reason: StopReason, _why: Event) -> None:
        stopping.set()

    session = Session(
        config,
        Summary(),
        stopping=stopping,
        stop=stop,
        on_event=lambda _message: None,
        hold=lambda _in_flight: Hold.GO,
        workers_alive=lambda: 1,
    )
    async with client.make_client(API_KEY, 10.0, 4) as http:
        yield CampaignLister(session, http, base_url, 10.0, per_page)


def list_one(
    base_url: str,
    tmp_path: Path,
    campaign: str = CAMPAIGN,
    per_page: int = 100,
    pays_off: Callable[[Headway], bool] | None = None,
) -> Listing:
    async def main() -> Listing:
        async with lister(base_url, tmp_path, per_page) as it:
            return await it.list_campaign(campaign, pays_off)

    return anyio.run(main, backend="asyncio")


# -- the sandbox ---------------------------------------------------------------------------------


def test_a_campaign_of_250_takes_three_pages_and_a_closing_reread(
    serve: Serve, tmp_path: Path
) -> None:
    api = Sandbox([*enrolled(250), *enrolled(5, "cmp_other", 1000)])
    listing = list_one(serve(api).base_url, tmp_path)
    assert listing.end is End.COMPLETE
    assert listing.contact_ids == frozenset({c for k, c in api.state.enrolled if k == CAMPAIGN})
    assert (listing.calls, api.state.pages) == (4, 4), "pages 1-3, then page 1 again"
    assert listing.read_at is not None


def test_a_list_of_one_page_is_one_call(serve: Serve, tmp_path: Path) -> None:
    api = Sandbox(enrolled(40), campaigns=["cmp_empty"])
    assert list_one(serve(api).base_url, tmp_path).calls == 1
    empty = list_one(serve(api).base_url, tmp_path, "cmp_empty")
    assert (empty.end, empty.contact_ids, empty.calls) == (End.COMPLETE, frozenset(), 1)


def test_the_second_client_makes_a_naive_reader_miss_someone(serve: Serve) -> None:
    """The sandbox's drift bites: reading pages one after another without checks skips
    enrolled contacts that were never removed (what the listing must never do)."""
    api = Sandbox(enrolled(450), churn=1.0, seed=1)
    base = serve(api).base_url
    seen: set[str] = set()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for page in range(1, 6):
        url = f"{base}/v1/campaigns/{CAMPAIGN}/contacts?page={page}&per_page=100"
        seen |= {
            c["contact_id"] for c in httpx.get(url, headers=headers).json()["data"]["contacts"]
        }
    stayed = {c for _, c in set(enrolled(450)) - api.state.churned_out}
    assert stayed - seen, "a removal ahead of the page boundary skipped someone"


@pytest.mark.parametrize("seed", range(6))
def test_drift_never_loses_an_enrolled_contact(serve: Serve, tmp_path: Path, seed: int) -> None:
    """Whatever the second client does between pages, a COMPLETE listing holds everyone who
    stayed enrolled throughout; otherwise it ends without ids."""
    api = Sandbox(enrolled(450), churn=0.3, seed=seed)
    listing = list_one(serve(api).base_url, tmp_path)
    stayed = {c for _, c in set(enrolled(450)) - api.state.churned_out}
    if listing.end is End.COMPLETE:
        assert listing.contact_ids is not None
        assert stayed <= listing.contact_ids
        # Nothing changes after the closing read of page 1: the list as it now stands.
        assert listing.contact_ids == frozenset({c for _, c in api.state.enrolled})
    else:
        assert (listing.end, listing.contact_ids) == (End.DRIFTING, None)
        assert listing.passes == MAX_PASSES
    if api.state.churned_out:  # a removal lowers the next page's total
        assert "drift" in listing.detail or listing.end is End.DRIFTING


def test_new_enrollments_alone_are_taken_in_without_a_reread(serve: Serve, tmp_path: Path) -> None:
    """Enrollments added at the front only push people down: the pass stands, and the
    newcomers come from page 1 read again."""

    class Adding(Sandbox):
        def _second_client(self, campaign: str, read: int) -> None:
            pair = (campaign, new_uuid(10_000 + read))
            self.state.enrolled.add(pair)
            self._stamp(pair)

    api = Adding(enrolled(250))
    listing = list_one(serve(api).base_url, tmp_path)
    assert (listing.end, listing.passes, listing.calls) == (End.COMPLETE, 1, 4)
    assert listing.contact_ids == frozenset({c for _, c in api.state.enrolled}), (
        "newcomers included"
    )


def test_more_newcomers_than_a_page_holds_make_it_read_again(serve: Serve, tmp_path: Path) -> None:
    """Page 1 read again shows only newcomers: some may be on page 2 by now, unread."""

    class Flood(Sandbox):
        def _second_client(self, campaign: str, read: int) -> None:
            if self.state.pages > 2:
                return
            for n in range(120):
                pair = (campaign, new_uuid(20_000 + n))
                self.state.enrolled.add(pair)
                self._stamp(pair)

    api = Flood(enrolled(150))
    listing = list_one(serve(api).base_url, tmp_path)
    assert (listing.end, listing.passes) == (End.COMPLETE, 2)
    assert "more new than a page holds" in listing.detail
    assert listing.contact_ids == frozenset({c for _, c in api.state.enrolled})


def test_a_list_that_keeps_shrinking_gives_up_after_max_passes(tmp_path: Path) -> None:
    def shrinking(page: int, asked: int) -> tuple[int, dict[str, object]]:
        total = 1000 - asked  # someone removed before every answer
        n = min(100, total - (page - 1) * 100)
        return 200, {"data": {"contacts": contacts(page * 100, n)}, "meta": {"total": total}}

    listing, asked = odd(shrinking, tmp_path)
    assert (listing.end, listing.contact_ids, listing.passes) == (End.DRIFTING, None, MAX_PASSES)
    assert asked == [1] + [2, 1] * (MAX_PASSES - 1) + [2]
    assert f"changed while it was read, {MAX_PASSES} times in a row" in listing.detail
    assert "page 2 counted 998 after 999" in listing.detail
    assert f"; and {MAX_PASSES - 3} more)" in listing.detail, "the first three, then a count"


def test_a_key_without_campaigns_read_is_refused_not_aborted(serve: Serve, tmp_path: Path) -> None:
    api = Sandbox(enrolled(10), can_read=False)
    listing = list_one(serve(api).base_url, tmp_path)
    assert (listing.end, listing.contact_ids, listing.calls) == (End.REFUSED, None, 1)
    assert "campaigns:read" in listing.detail


def test_an_unknown_campaign_ends_the_listing(serve: Serve, tmp_path: Path) -> None:
    listing = list_one(serve(Sandbox(enrolled(3))).base_url, tmp_path, "cmp_nope")
    assert (listing.end, listing.contact_ids) == (End.FAILED, None)
    assert "campaign_not_found" in listing.detail


def test_pays_off_stops_a_listing_that_costs_more_than_it_saves(
    serve: Serve, tmp_path: Path
) -> None:
    api = Sandbox(enrolled(1000))
    asked: list[Headway] = []

    def pays_off(headway: Headway) -> bool:
        asked.append(headway)
        return headway.calls_to_finish < 5

    listing = list_one(serve(api).base_url, tmp_path, pays_off=pays_off)
    assert (listing.end, listing.contact_ids, listing.calls) == (End.NOT_WORTH_IT, None, 1)
    assert asked[0].calls_to_finish == 10, "pages 2-10 and page 1 again"
    assert len(asked[0].seen) == 100


def test_429s_while_listing_are_waited_out_like_any_call(serve: Serve, tmp_path: Path) -> None:
    api = Sandbox(enrolled(350), limits=Limits(per_window=2, window=0.5))
    listing = list_one(serve(api).base_url, tmp_path)
    assert (listing.end, listing.passes) == (End.COMPLETE, 1)
    assert api.state.rate_limited > 0 and api.state.pages == 5
    assert listing.calls == 5 + api.state.rate_limited, "each 429 is a call spent"


def test_the_sandbox_lists_as_documented(serve: Serve) -> None:
    """Newest first, the documented fields, `meta` totals, per_page 50 by default and at
    most 100, the same key check as every call."""
    api = Sandbox(enrolled(120))
    base = serve(api).base_url + f"/v1/campaigns/{CAMPAIGN}/contacts"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = httpx.get(base, headers=auth).json()
    items = body["data"]["contacts"]
    assert [c["contact_id"] for c in items] == [new_uuid(120 - i) for i in range(50)]
    assert set(items[0]) == {
        "contact_id",
        "full_name",
        "email",
        "status",
        "current_step",
        "added_at",
        "last_sent_at",
    }
    assert body["meta"] == {"page": 1, "per_page": 50, "total": 120, "total_pages": 3}
    last = httpx.get(base + "?page=2&per_page=100", headers=auth).json()
    assert len(last["data"]["contacts"]) == 20
    assert httpx.get(base + "?per_page=101", headers=auth).status_code == 400
    refused = httpx.get(base, headers={"Authorization": "Bearer nope"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_key")


# -- odd answers: a tiny server ------------------------------------------------------------------

Body = Callable[[int, int], tuple[int, dict[str, object]]]
"""(page, how many pages were asked so far) -> (status, JSON body)."""


class TinyLister:
    """A bare HTTP server whose `answer` decides every listing page."""

    def __init__(self, answer: Body) -> None:
        self.asked: list[int] = []
        tiny = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                page = int(parse_qs(urlsplit(self.path).query)["page"][0])
                tiny.asked.append(page)
                status, body = answer(page, len(tiny.asked))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/api-gateway"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def contacts(first: int, n: int) -> list[dict[str, object]]:
    return [{"contact_id": new_uuid(first + i), "full_name": "A B"} for i in range(n)]


def odd(answer: Body, tmp_path: Path) -> tuple[Listing, list[int]]:
    tiny = TinyLister(answer)
    try:
        return list_one(tiny.base_url, tmp_path), tiny.asked
    finally:
        tiny.close()


def test_no_meta_a_short_single_page_then_an_empty_one_is_the_whole_list(tmp_path: Path) -> None:
    def short(page: int, _: int) -> tuple[int, dict[str, object]]:
        return 200, {"data": {"contacts": contacts(1, 30) if page == 1 else []}}

    listing, asked = odd(short, tmp_path)
    assert (listing.end, asked) == (End.COMPLETE, [1, 2])
    assert listing.contact_ids == frozenset({new_uuid(1 + i) for i in range(30)})


def test_no_meta_and_a_page_number_ignored_is_never_taken_as_the_whole_list(
    tmp_path: Path,
) -> None:
    """An API that pages by fewer than asked, or ignores `page`: page 2 is not empty."""
    listing, asked = odd(lambda page, _: (200, {"data": {"contacts": contacts(1, 30)}}), tmp_path)
    assert (listing.end, listing.contact_ids, asked) == (End.FAILED, None, [1, 2])
    assert "page 2 held 30 more" in listing.detail


def test_pages_that_overlap_are_never_taken_as_the_whole_list(tmp_path: Path) -> None:
    """A page number the API ignores, with a true total: 100 different ids for 200."""

    def same_page(page: int, _: int) -> tuple[int, dict[str, object]]:
        return 200, {"data": {"contacts": contacts(1, 100)}, "meta": {"total": 200}}

    listing, _ = odd(same_page, tmp_path)
    assert (listing.end, listing.contact_ids) == (End.FAILED, None)
    assert "100 different contacts for a total of 200" in listing.detail


def test_a_total_that_is_only_the_pages_own_count_is_found_out(tmp_path: Path) -> None:
    """meta.total 100 on a full page, with more behind it: the next page is asked for."""

    def page_count(page: int, _: int) -> tuple[int, dict[str, object]]:
        return 200, {"data": {"contacts": contacts(page * 100, 100)}, "meta": {"total": 100}}

    listing, asked = odd(page_count, tmp_path)
    assert (listing.end, listing.contact_ids, asked) == (End.FAILED, None, [1, 2])


def test_ids_that_are_not_uuids_end_the_listing_unused(tmp_path: Path) -> None:
    """An id the API spells otherwise would match no row: every enrolled pair of the campaign
    would look not enrolled."""

    def bare(page: int, _: int) -> tuple[int, dict[str, object]]:
        items = [{"contact_id": new_uuid(i).replace("-", "")} for i in range(3)]
        return 200, {"data": {"contacts": items}, "meta": {"total": 3}}

    listing, _ = odd(bare, tmp_path)
    assert (listing.end, listing.contact_ids) == (End.FAILED, None)
    assert "not a UUID" in listing.detail


def test_ids_in_capitals_match_the_inputs_lower_case_ones(tmp_path: Path) -> None:
    def shouting(page: int, _: int) -> tuple[int, dict[str, object]]:
        items = [{"contact_id": f" {new_uuid(i).upper()} "} for i in range(3)]
        return 200, {"data": {"contacts": items}, "meta": {"total": 3}}

    listing, _ = odd(shouting, tmp_path)
    assert listing.contact_ids == frozenset({new_uuid(i) for i in range(3)})


def test_no_meta_a_full_page_cannot_be_checked(tmp_path: Path) -> None:
    def full(page: int, _: int) -> tuple[int, dict[str, object]]:
        return 200, {"data": {"contacts": contacts(page * 100, 100)}}

    listing, asked = odd(full, tmp_path)
    assert (listing.end, listing.contact_ids, asked) == (End.FAILED, None, [1])
    assert "no total" in listing.detail


def test_meta_under_pagination_with_total_count_is_read(tmp_path: Path) -> None:
    def nested(page: int, _: int) -> tuple[int, dict[str, object]]:
        n = 100 if page == 1 else 20
        meta = {"pagination": {"total_count": 120}}
        return 200, {"data": {"contacts": contacts(page * 100, n)}, "meta": meta}

    listing, asked = odd(nested, tmp_path)
    assert (listing.end, asked) == (End.COMPLETE, [1, 2, 1])
    assert listing.contact_ids is not None and len(listing.contact_ids) == 120


def test_short_pages_are_never_trusted(tmp_path: Path) -> None:
    """Page 2 holds fewer than its total says: someone may be missing; every pass again."""

    def short(page: int, _: int) -> tuple[int, dict[str, object]]:
        n = 100 if page == 1 else 49
        return 200, {"data": {"contacts": contacts(page * 100, n)}, "meta": {"total": 150}}

    listing, asked = odd(short, tmp_path)
    assert (listing.end, listing.contact_ids) == (End.DRIFTING, None)
    assert asked == [1, 2] * MAX_PASSES
    assert "page 2 held 49 contacts where a total of 150 means 50" in listing.detail


def test_a_404_in_mid_listing_ends_it(tmp_path: Path) -> None:
    def gone(page: int, _: int) -> tuple[int, dict[str, object]]:
        if page == 2:
            return 404, {"error": {"code": "campaign_not_found", "message": "No campaign"}}
        return 200, {"data": {"contacts": contacts(1, 100)}, "meta": {"total": 150}}

    listing, asked = odd(gone, tmp_path)
    assert (listing.end, listing.contact_ids, asked) == (End.FAILED, None, [1, 2])
    assert "page 2: 404 campaign_not_found" in listing.detail


def test_a_body_that_is_no_page_is_retried_then_fails(tmp_path: Path) -> None:
    listing, asked = odd(lambda page, _: (200, {"data": {"removed": True}}), tmp_path)
    assert (listing.end, listing.contact_ids) == (End.FAILED, None)
    assert len(asked) == 6, "the first try and 5 retries"
    assert "no data.contacts list" in listing.detail


# -- the answer table ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "action", "outcome"),
    [
        (Answer(200), Action.DONE, None),
        (Answer(403, "insufficient_permissions"), Action.DONE, Outcome.REJECTED),
        (Answer(404, "campaign_not_found"), Action.DONE, Outcome.REJECTED),
        (Answer(404, "not_found"), Action.UNCLEAR_404, Outcome.REJECTED),
        (Answer(404), Action.UNCLEAR_404, Outcome.REJECTED),
        (Answer(401, "invalid_key"), Action.ABORT, None),
        (Answer(429, "rate_limited"), Action.SLOW_DOWN, None),
        (Answer(500), Action.RETRY, None),
        (Answer(None, error="no answer within the timeout"), Action.RETRY, None),
    ],
)
def test_classify_page(given: Answer, action: Action, outcome: Outcome | None) -> None:
    verdict = classify_page(given)
    assert (verdict.action, verdict.outcome) == (action, outcome)
