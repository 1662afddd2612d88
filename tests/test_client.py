"""The classification table, case by case, and what goes into the URL."""

from __future__ import annotations

import anyio
import httpx
import pytest

from bulk_unenroll.api.client import (
    QUICK_ANSWER,
    Action,
    Answer,
    classify,
    delete,
    said_404,
    url_for,
)
from bulk_unenroll.models import CAMPAIGN_NOT_FOUND, Enrollment, Outcome

PAIR = Enrollment(1, "cmp_x", "123e4567-e89b-12d3-a456-426614174000")


def answer(
    status: int | None,
    code: str = "",
    headers: dict[str, str] | None = None,
    seconds: float = 0.05,
) -> Answer:
    return Answer(
        status,
        code=code,
        headers=httpx.Headers(headers or {}),
        error="reset" if status is None else "",
        seconds=seconds,
    )


@pytest.mark.parametrize(
    ("given", "action", "outcome", "route_exists"),
    [
        # Any 2xx means the enrollment is gone, whatever the body lacked (see below).
        (answer(200), Action.DONE, Outcome.REMOVED, True),
        (answer(204), Action.DONE, Outcome.REMOVED, True),
        (answer(202), Action.DONE, Outcome.REMOVED, True),
        (answer(404, "enrollment_not_found"), Action.DONE, Outcome.NOT_ENROLLED, True),
        (answer(404, "campaign_not_found"), Action.DONE, Outcome.REJECTED, True),
        # Undocumented 404s: no such campaign, or no such route (a wrong --base-url).
        (answer(404, "not_found"), Action.UNCLEAR_404, Outcome.REJECTED, False),
        (answer(404, "contact_not_found"), Action.UNCLEAR_404, Outcome.REJECTED, False),
        (answer(404, "route_not_found"), Action.UNCLEAR_404, Outcome.REJECTED, False),
        (answer(404), Action.UNCLEAR_404, Outcome.REJECTED, False),
        (answer(401, "invalid_key"), Action.ABORT, None, False),
        (answer(403, "insufficient_permissions"), Action.ABORT, None, False),
        (answer(400, "bad_request"), Action.DONE, Outcome.REJECTED, False),
        (answer(409, "conflict"), Action.DONE, Outcome.REJECTED, False),
        (answer(422), Action.DONE, Outcome.REJECTED, False),
        (
            answer(429, "rate_limited", {"X-RateLimit-Remaining": "17"}),
            Action.SLOW_DOWN,
            None,
            False,
        ),
        (answer(429, "rate_limited"), Action.SLOW_DOWN, None, False),
        (answer(429), Action.SLOW_DOWN, None, False),
        (answer(429, "rate_limited", {"X-RateLimit-Remaining": "0"}), Action.QUOTA, None, False),
        (answer(500), Action.RETRY, None, False),
        (answer(502), Action.OVERLOADED, None, False),
        (answer(504), Action.OVERLOADED, None, False),
        (answer(502, seconds=QUICK_ANSWER + 1), Action.RETRY, None, False),
        (answer(504, seconds=QUICK_ANSWER + 1), Action.RETRY, None, False),
        (answer(503, "service_unavailable"), Action.OVERLOADED, None, False),
        (answer(503, seconds=QUICK_ANSWER + 30), Action.OVERLOADED, None, False),
        (
            answer(546, headers={"sb-error-code": "WORKER_RESOURCE_LIMIT"}),
            Action.OVERLOADED,
            None,
            False,
        ),
        (answer(546), Action.RETRY, None, False),
        (answer(500, headers={"sb-error-code": "BOOT_ERROR"}), Action.OVERLOADED, None, False),
        (answer(408), Action.RETRY, None, False),
        (answer(None), Action.RETRY, None, False),
        (answer(301), Action.ABORT, None, False),
    ],
)
def test_classification_table(
    given: Answer, action: Action, outcome: Outcome | None, route_exists: bool
) -> None:
    verdict = classify(given)
    assert verdict.action is action
    assert verdict.outcome is outcome
    assert verdict.route_exists is route_exists


def test_only_the_documented_spelling_settles_a_campaign() -> None:
    assert CAMPAIGN_NOT_FOUND == ("campaign_not_found",)
    unclear = classify(Answer(404, code="not_found", message="Route not found"))
    assert unclear.detail.startswith("404 not_found (Route not found): no campaign with this id")
    assert "this row only" in unclear.detail


def reply(status: int, content: bytes = b"", content_type: str = "") -> Answer:
    """What `delete` makes of one answer, over httpx's MockTransport."""
    headers = {"Content-Type": content_type} if content_type else {}

    async def go() -> Answer:
        transport = httpx.MockTransport(
            lambda _: httpx.Response(status, headers=headers, content=content)
        )
        async with httpx.AsyncClient(transport=transport) as http:
            return await delete(http, "https://api.example/gw", PAIR, 5.0)

    return anyio.run(go)


@pytest.mark.parametrize(
    ("status", "content", "content_type", "detail"),
    [
        (204, b"", "", "HTTP 204 with no body: taken as removed (any 2xx is)"),
        (200, b"OK", "text/plain", "HTTP 200 with a non-JSON body (text/plain, 2 bytes)"),
        (200, b'{"ok": true}', "application/json", "HTTP 200 with JSON lacking data.removed"),
        (200, b'{"data": {"removed": false}}', "application/json", "data.removed = false"),
        (200, b'{"data": {"re', "application/json", "HTTP 200 with a non-JSON body"),
    ],
)
def test_a_2xx_without_the_documented_body_is_removed_and_says_what_it_lacked(
    status: int, content: bytes, content_type: str, detail: str
) -> None:
    got = reply(status, content, content_type)
    verdict = classify(got)
    assert (verdict.action, verdict.outcome) == (Action.DONE, Outcome.REMOVED)
    assert detail in verdict.detail
    assert not got.maybe_applied, "a 2xx is a definite answer"


def test_the_documented_body_is_removed_with_nothing_to_say() -> None:
    body = b'{"data": {"removed": true, "campaign_id": "c", "contact_id": "k"}}'
    verdict = classify(reply(200, body, "application/json"))
    assert (verdict.outcome, verdict.detail) == (Outcome.REMOVED, "")


@pytest.mark.parametrize(
    ("content", "content_type", "said"),
    [
        (b"", "", "404 without a LeadLex error code, no body"),
        (b"<h1>Not Found</h1>", "text/html", "404 without a LeadLex error code, a non-JSON body"),
        (
            b'{"error":{"code":"not_found","message":"Route not found"}}',
            "application/json",
            "404 not_found (Route not found)",
        ),
    ],
)
def test_an_unclear_404_says_what_came(content: bytes, content_type: str, said: str) -> None:
    got = reply(404, content, content_type)
    assert classify(got).action is Action.UNCLEAR_404
    assert said_404(got).startswith(said)


def test_key_problems_name_their_cause() -> None:
    assert "rejected" in classify(answer(401, "invalid_key")).detail
    assert "permission" in classify(answer(403, "insufficient_permissions")).detail


def test_ids_are_percent_encoded_so_cells_cannot_change_the_path() -> None:
    e = Enrollment(1, "cmp/../x?y=1#", "123e4567-e89b-12d3-a456-426614174000")
    url = url_for("https://api.example/gw/", e)
    assert url == (
        "https://api.example/gw/v1/campaigns/cmp%2F..%2Fx%3Fy%3D1%23"
        "/contacts/123e4567-e89b-12d3-a456-426614174000"
    )


PAIR = Enrollment(1, "cmp_x", "123e4567-e89b-12d3-a456-426614174000")


@pytest.mark.parametrize(
    ("status", "body", "headers", "applied"),
    [
        (
            503,
            b"<html><center><h1>503 Service Temporarily Unavailable</h1></center></html>",
            {},
            False,
        ),
        (503, b'{"error":{"code":"service_unavailable"}}', {}, False),
        (503, b"", {"sb-error-code": "BOOT_ERROR"}, False),
        (429, b'{"error":{"code":"rate_limited"}}', {}, False),
        (500, b"", {}, True),
        (502, b"<html>bad gateway</html>", {}, True),
        (504, b"", {}, True),
        (546, b"", {"sb-error-code": "WORKER_RESOURCE_LIMIT"}, True),
    ],
)
@pytest.mark.asyncio
async def test_only_answers_that_can_follow_a_removal_may_have_applied_it(
    status: int, body: bytes, headers: dict[str, str], applied: bool
) -> None:
    """A 503 or a 429 is a refusal: nothing reached LeadLex, so no 'may have removed it'."""

    def gateway(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(gateway)) as client:
        got = await delete(client, "https://api.example/gw", PAIR, 5.0)
    assert got.status == status
    assert got.maybe_applied is applied
    assert 0 <= got.seconds < 5


def test_an_overload_answer_says_what_the_platform_said() -> None:
    verdict = classify(answer(546, headers={"sb-error-code": "WORKER_RESOURCE_LIMIT"}))
    assert verdict.detail == "HTTP 546 WORKER_RESOURCE_LIMIT"
