"""The classification table, case by case, and what goes into the URL."""

from __future__ import annotations

import httpx
import pytest

from bulk_unenroll.client import Action, Answer, classify, url_for
from bulk_unenroll.models import Enrollment, Outcome


def answer(
    status: int | None, code: str = "", headers: dict[str, str] | None = None, removed: bool = False
) -> Answer:
    return Answer(
        status,
        code=code,
        headers=httpx.Headers(headers or {}),
        removed_confirmed=removed,
        error="reset" if status is None else "",
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
        (answer(502), Action.RETRY, None),
        (answer(503, "service_unavailable"), Action.RETRY, None),
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
