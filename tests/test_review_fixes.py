"""Hardening found in review: line breaks in cells, undecodable answers, hostile headers,
malformed keys."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import Serve

from bulk_unenroll.api.client import delete
from bulk_unenroll.api.pacing import Quota, retry_after
from bulk_unenroll.models import Enrollment, Outcome, RowResult
from bulk_unenroll.results.journal import Journal
from bulk_unenroll.results.records import escape_cell
from bulk_unenroll.sandbox import Limits, Sandbox

PAIR = Enrollment(1, "cmp_x", new_uuid(1))


def test_line_breaks_never_reach_a_results_cell() -> None:
    assert escape_cell("bad\rcell\r\nnext\nline") == "bad cell next line"
    assert escape_cell("=\n1") == "'= 1"


def test_compaction_with_a_carriage_return_in_a_detail_keeps_the_right_records(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results.csv"
    journal = Journal(out)
    journal.record(
        [
            RowResult(1, "cmp_x", new_uuid(1), Outcome.FAILED, detail="gateway said\rno"),
            RowResult(2, "cmp_x", new_uuid(2), Outcome.REMOVED, detail="ok"),
        ]
    )
    journal.close()
    journal = Journal(out)
    journal.record([RowResult(1, "cmp_x", new_uuid(1), Outcome.REMOVED)])
    journal.close()

    assert [(r["row"], r["status"]) for r in read_results(out)] == [
        ("2", "removed"),
        ("1", "removed"),
    ]


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


@pytest.mark.parametrize("key", ["wbk_abc\u200bdef", "wbk_abc def", "wbk_é"])
def test_a_malformed_key_is_a_clear_usage_error(serve: Serve, tmp_path: Path, key: str) -> None:
    pair = ("cmp_x", new_uuid(1))
    api = Sandbox([pair])
    src = write_csv(tmp_path / "in.csv", [pair])
    env = {**cli_env(serve(api).base_url), "LEADLEX_API_KEY": key}
    result = run_cli(["run", str(src), "--out", str(tmp_path / "r.csv"), "--yes"], env)
    assert result.returncode == 2
    assert "contains a space, line break or non-ASCII character" in result.stderr
    assert key not in result.stderr + result.stdout
    assert api.state.calls == 0


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


@pytest.mark.asyncio
async def test_a_server_that_echoes_the_key_does_not_get_it_into_the_results() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        said = request.headers["authorization"]
        body = {"error": {"code": "bad_request", "message": f"rejected header {said}"}}
        return httpx.Response(400, json=body, headers={"X-Request-ID": said})

    key = "wbk_secret_123"
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=httpx.MockTransport(echo), headers=headers) as client:
        answer = await delete(client, "https://api.example/gw", PAIR, 5.0)
    assert answer.status == 400
    assert "***" in answer.message
    assert key not in answer.message + answer.request_id + answer.code
