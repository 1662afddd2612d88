"""No piece of the API key reaches the results, the terminal or the summary, however a
server echoes it back: whole, cut off at any point, in a code, a message or a request id; a
malformed key is a usage error that does not show it."""

from __future__ import annotations

import json
import random
import string
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import cli_env, new_uuid, run_cli, write_csv
from helpers import Serve

from bulk_unenroll.api.client import delete
from bulk_unenroll.models import Enrollment
from bulk_unenroll.results.records import COLUMNS
from bulk_unenroll.sandbox import Sandbox
from bulk_unenroll.scrub import FRAGMENT, redact

KEY = "wbk_live_" + "".join(random.Random(12).choices(string.ascii_letters + string.digits, k=32))
TAIL = KEY[-11:]
PAIR = Enrollment(1, "cmp_a", new_uuid(5))
ECHO_PAIR = Enrollment(1, "cmp_x", new_uuid(1))

# What the server says for each row, in order: (status, error code, message, request id).
# Every one holds a piece of the key that a whole-key replace misses.
ECHOES: list[tuple[int, str, str, str]] = [
    # First a 2xx: it shows the route exists, so the undocumented 404 below settles its row.
    (200, "", "", "req_0"),
    # A long message cut by the client at 300 characters, in the middle of the key.
    (400, "bad_request", "x" * 270 + f" header was Bearer {KEY} (rejected)", "req_1"),
    # The key's tail as the request id, and as part of one.
    (400, "bad_request", "no", TAIL),
    (400, "bad_request", "no", f"req_{KEY[20:31]}_9"),
    # The key without its prefix, and its middle, in a message.
    (400, "bad_request", f"token {KEY[9:]} unknown", "req_4"),
    (422, "invalid", f"saw {KEY[12:24]} and {KEY[2:13]}", "req_5"),
    # In the error code of a definite 404, and of a transient 503 (the row ends `failed`).
    (404, f"unknown_{KEY[-9:]}", "", "req_6"),
    (503, f"overloaded_{KEY[4:14]}", f"upstream said Authorization: {KEY[:15]}", TAIL),
    # Last: a 403 whose code carries a piece ends the run (its text goes to stderr and summary).
    (403, f"scope_{KEY[-12:]}", f"key {KEY[:-3]} lacks scope", f"req_{KEY[7:19]}"),
]


def pieces(key: str) -> set[str]:
    return {key[i : i + FRAGMENT] for i in range(len(key) - FRAGMENT + 1)}


def leaks(text: str) -> list[str]:
    return sorted(p for p in pieces(KEY) if p in text)


class Echo(BaseHTTPRequestHandler):
    """Answers the n-th contact's DELETE with ECHOES[n]; the contact id carries n."""

    def do_DELETE(self) -> None:
        index = int(self.path.rsplit("/", 1)[-1][-4:])
        status, code, message, request_id = ECHOES[index]
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Request-ID", request_id)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api-gateway"
    server.shutdown()
    server.server_close()


def contact(index: int) -> str:
    return new_uuid(random.Random(index).getrandbits(128))[:-4] + f"{index:04d}"


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_piece_of_the_key_reaches_results_terminal_or_summary(
    tmp_path: Path, echo_server: str, log_format: str
) -> None:
    src = write_csv(tmp_path / "in.csv", [("cmp_a", contact(i)) for i in range(len(ECHOES))])
    out, summary = tmp_path / "results.csv", tmp_path / "summary.json"
    args = ["run", str(src), "--out", str(out), "--rate", "unlimited", "--concurrency", "1"]
    args += ["--max-retries", "0", "--yes", "--summary-json", str(summary)]
    env = {**cli_env(echo_server), "LEADLEX_API_KEY": KEY}

    result = run_cli([*args, "--log-format", log_format], env)

    assert result.returncode == 3, result.stdout + result.stderr  # the 403 aborted the run
    records = out.read_text(encoding="utf-8")
    assert records.count("\n") == len(ECHOES)  # header + every row but the 403 one
    for where, text in [
        ("results", records),
        ("stdout", result.stdout),
        ("stderr", result.stderr),
        ("summary", summary.read_text(encoding="utf-8")),
    ]:
        assert not leaks(text), f"{where} holds pieces of the key: {leaks(text)}\n{text}"
    assert "rejected" in records and "failed" in records and "***" in records
    assert "scope_***" in json.loads(summary.read_text())["error"]


def test_scrubbed_before_cut_and_every_long_enough_piece() -> None:
    cut = redact(("y" * 290 + f"Bearer {KEY}")[:300], KEY)
    assert cut == "y" * 290 + "Bearer ***"
    assert redact(f"a{KEY[3:11]}b{KEY[20:27]}c", KEY) == f"a***b{KEY[20:27]}c"  # 7 stay
    assert redact(f"{KEY[1:9]}{KEY[9:30]}", KEY) == "***"  # overlapping pieces: one mask
    assert redact("wbk_export.csv and req_123", KEY) == "wbk_export.csv and req_123"


@pytest.mark.asyncio
async def test_the_client_scrubs_a_key_it_was_never_told_about() -> None:
    """Keys come from the request itself, not only from those the process remembers."""
    key = "wbk_" + "".join(random.Random(3).choices(string.ascii_letters, k=30))

    def echo(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": f"c_{key[-10:]}", "message": "m" * 295 + key}}
        return httpx.Response(400, json=body, headers={"X-Request-ID": key[5:25]})

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=httpx.MockTransport(echo), headers=headers) as http:
        answer = await delete(http, "https://api.example/gw", PAIR, 5.0)
    text = answer.code + answer.message + answer.request_id
    assert not [p for p in pieces(key) if p in text]
    assert answer.message == "m" * 295 + "***" and answer.request_id == "***"


@pytest.mark.parametrize("as_json", [False, True])
def test_report_scrubs_a_results_file_written_before(tmp_path: Path, as_json: bool) -> None:
    """Results written by an older version may hold pieces; `report` does not repeat them."""
    results = tmp_path / "old.csv"
    record = f"1,cmp_a,{new_uuid(1)},rejected,400,bad_{KEY[5:17]},1,{TAIL},no,2026-01-01T00:00:00Z"
    results.write_text(",".join(COLUMNS) + "\n" + record + "\n", encoding="utf-8")
    env = {**cli_env("http://127.0.0.1:9"), "LEADLEX_API_KEY": KEY}

    result = run_cli(["report", str(results), *(["--json"] if as_json else [])], env)

    assert result.returncode == 0, result.stderr
    assert "bad_***" in result.stdout
    assert not leaks(result.stdout + result.stderr), result.stdout


@pytest.mark.asyncio
async def test_a_server_that_echoes_the_key_does_not_get_it_into_the_results() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        said = request.headers["authorization"]
        body = {"error": {"code": "bad_request", "message": f"rejected header {said}"}}
        return httpx.Response(400, json=body, headers={"X-Request-ID": said})

    key = "wbk_secret_123"
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=httpx.MockTransport(echo), headers=headers) as client:
        answer = await delete(client, "https://api.example/gw", ECHO_PAIR, 5.0)
    assert answer.status == 400
    assert "***" in answer.message
    assert key not in answer.message + answer.request_id + answer.code


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
