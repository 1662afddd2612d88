"""Whatever a broken or hostile server answers is bounded: a body that cannot be decoded is a
lost answer, not a crash; absurd Retry-After and quota headers are capped or ignored."""

from __future__ import annotations

import httpx
import pytest
from conftest import new_uuid

from bulk_unenroll.api.client import delete
from bulk_unenroll.api.pacing import Quota, retry_after
from bulk_unenroll.models import Enrollment

PAIR = Enrollment(1, "cmp_x", new_uuid(1))


@pytest.mark.asyncio
async def test_an_answer_that_cannot_be_decoded_is_a_lost_answer_not_a_crash() -> None:
    def broken_gzip(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    async with httpx.AsyncClient(transport=httpx.MockTransport(broken_gzip)) as client:
        answer = await delete(client, "https://api.example/gw", PAIR, 5.0)
    assert answer.status is None
    assert answer.maybe_applied
    assert "unreadable" in answer.error


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("-3", 0.0), ("inf", None), ("nan", None), ("1e9", 3600.0), ("soon", None)],
)
def test_retry_after_is_bounded(header: str, seconds: float | None) -> None:
    assert retry_after(httpx.Headers({"Retry-After": header})) == seconds


def test_absurd_quota_headers_are_ignored() -> None:
    quota = Quota()
    quota.observe(httpx.Headers({"X-RateLimit-Remaining": "inf", "X-RateLimit-Limit": "1e999"}))
    assert quota.remaining is None
    assert quota.limit is None
