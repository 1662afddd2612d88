"""`calls` counts every request that left the machine, also those the grace period cut off."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import cli_env, new_uuid, write_csv
from truth import spawn_cli, wait_until

IN_FLIGHT = 3


@dataclass
class Slow:
    """A server that takes every DELETE in and answers none until the test ends."""

    base_url: str = ""
    received: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def slow_server() -> Iterator[Slow]:
    slow = Slow()

    class Handler(BaseHTTPRequestHandler):
        def do_DELETE(self) -> None:
            with slow.lock:
                slow.received += 1
            slow.release.wait(60)
            body = b'{"data": {"removed": true}}'
            with contextlib.suppress(OSError):  # the client is long gone
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    slow.base_url = f"http://127.0.0.1:{server.server_address[1]}/api-gateway"
    yield slow
    slow.release.set()
    server.shutdown()
    server.server_close()


def test_calls_cut_off_by_the_grace_period_are_counted(tmp_path: Path, slow_server: Slow) -> None:
    src = write_csv(tmp_path / "in.csv", [("cmp_a", new_uuid(i + 1)) for i in range(20)])
    summary, logs = tmp_path / "summary.json", tmp_path / "logs"
    args = ["run", str(src), "--out", str(tmp_path / "results.csv"), "--rate", "unlimited"]
    args += ["--concurrency", str(IN_FLIGHT), "--timeout", "60", "--grace-period", "0.5"]
    args += ["--yes", "--summary-json", str(summary)]
    proc = spawn_cli(args, cli_env(slow_server.base_url), logs)
    try:
        wait_until(lambda: slow_server.received == IN_FLIGHT, proc)

        proc.send_signal(signal.SIGINT)

        assert proc.wait(30) == 130
    finally:
        proc.kill()
    assert slow_server.received == IN_FLIGHT  # the workers were all waiting for answers
    data = json.loads(summary.read_text())
    assert data["calls"] == slow_server.received, data
    assert data["outcomes"]["removed"] == 0 and data["stop_reason"] == "sigint"
    spent = re.search(r"calls spent\s+([\d,]+)", (logs / "stdout").read_text())
    assert spent is not None and int(spent[1]) == IN_FLIGHT
