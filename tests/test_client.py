"""The classification table, case by case, and what goes into the URL."""

from __future__ import annotations

import httpx
import pytest

from bulk_unenroll.client import QUICK_ANSWER, Action, Answer, classify, delete, url_for
from bulk_unenroll.models import Enrollment, Outcome


def answer(
    status: int | None,
    code: str = "",
    headers: dict[str, str] | None = None,
    removed: bool = False,
    seconds: float = 0.05,
) -> Answer:
    return Answer(
        status,
        code=code,
        headers=httpx.Headers(headers or {}),
        removed_confirmed=removed,
        error="reset" if status is None else "",
        seconds=seconds,
    )


@pytest.mark.parametrize(
    ("given", "action", "outcome"),
    [
        (answer(200, removed=True), Action.DONE, Outcome.REMOVED),
        (answer(204, removed=True), Action.DONE, Outcome.REMOVED),
        (answer(200), Action.RETRY, None),
        (answer(404, "enrollment_not_found"), Action.DONE, Outcome.NOT_ENROLLED),
        (answer(404, "campaign_not_found"), Action.DONE, Outcome.REJECTED),
        (answer(404, "not_found"), Action.DONE, Outcome.REJECTED),
        (answer(404, "contact_not_found"), Action.DONE, Outcome.REJECTED),
        (answer(404), Action.ABORT, None),
        (answer(401, "invalid_key"), Action.ABORT, None),
        (answer(403, "insufficient_permissions"), Action.ABORT, None),
        (answer(400, "bad_request"), Action.DONE, Outcome.REJECTED),
        (answer(409, "conflict"), Action.DONE, Outcome.REJECTED),
        (answer(422), Action.DONE, Outcome.REJECTED),
        (answer(429, "rate_limited", {"X-RateLimit-Remaining": "17"}), Action.SLOW_DOWN, None),
        (answer(429, "rate_limited"), Action.SLOW_DOWN, None),
        (answer(429, "rate_limited", {"X-RateLimit-Remaining": "0"}), Action.QUOTA, None),
        (answer(500), Action.RETRY, None),
        (answer(502), Action.OVERLOADED, None),
        (answer(504), Action.OVERLOADED, None),
        (answer(502, seconds=QUICK_ANSWER + 1), Action.RETRY, None),
        (answer(504, seconds=QUICK_ANSWER + 1), Action.RETRY, None),
        (answer(503, "service_unavailable"), Action.OVERLOADED, None),
        (answer(503, seconds=QUICK_ANSWER + 30), Action.OVERLOADED, None),
        (answer(546, headers={"sb-error-code": "WORKER_RESOURCE_LIMIT"}), Action.OVERLOADED, None),
        (answer(546), Action.RETRY, None),
        (answer(500, headers={"sb-error-code": "BOOT_ERROR"}), Action.OVERLOADED, None),
        (answer(408), Action.RETRY, None),
        (answer(None), Action.RETRY, None),
        (answer(301), Action.ABORT, None),
    ],
)
def test_classification_table(given: Answer, action: Action, outcome: Outcome | None) -> None:
    verdict = classify(given)
    assert verdict.action is action
    assert verdict.outcome is outcome


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
