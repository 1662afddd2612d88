"""Behind a real gateway: a stock nginx (Debian's `nginx-light`) with `limit_req` in front of
the sandbox, answering its own `503` HTML page to calls that come too fast.

Not part of `make test` (it sends at nginx's pace, about a minute): `make test-gateway`
installs nginx if it is missing and runs it; `.ci/run` calls both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import cli_env, run_cli
from helpers import Serve
from truth import ENROLLED, LOST, check_truth, mixed_file, norm, read_whole_lines

from bulk_unenroll.sandbox import Limits

pytestmark = pytest.mark.gateway

NGINX_CONF = """
worker_processes 1;
{user}
pid {home}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log {home}/access.log;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    limit_req_zone $binary_remote_addr zone=api:1m rate={rate}r/s;
    upstream leadlex {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            limit_req zone=api;
            proxy_pass http://leadlex;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def nginx_binary() -> str:
    """nginx from $NGINX, PATH or /usr/sbin; skips (saying why) when it is not installed."""
    found = os.environ.get("NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(found, os.X_OK):
        pytest.skip(
            "nginx is not installed and `make test-gateway` could not install it "
            "(it needs root or passwordless sudo, and apt-get): apt-get install nginx-light"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], logs: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"nginx exited: {(logs / 'error.log').read_text()}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("nginx did not listen within 10 s")


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[str, int], str]]:
    """Start nginx in front of a base URL, limiting at `rate` per second; its base URL."""
    binary = nginx_binary()
    started: list[subprocess.Popen[bytes]] = []

    def start(upstream_url: str, rate: int) -> str:
        home = tmp_path / f"nginx{len(started)}"
        home.mkdir()
        port = free_port()
        upstream = int(upstream_url.split(":")[2].split("/")[0])
        conf = home / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                home=home,
                rate=rate,
                upstream=upstream,
                port=port,
                user="user root;" if os.geteuid() == 0 else "",
            )
        )
        with (home / "stderr").open("wb") as stderr:
            proc = subprocess.Popen(
                [binary, "-p", home, "-e", home / "error.log", "-c", conf, "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started.append(proc)
        wait_for_port(port, proc, home)
        return f"http://127.0.0.1:{port}/api-gateway"

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)  # nginx's fast shutdown
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_behind_nginx_at_10_per_second_a_run_told_30_per_second_settles_below_it(
    tmp_path: Path, serve: Serve, nginx: Callable[[str, int], str]
) -> None:
    """The issue's scenario: 600 mixed rows, `--rate 30/s`, nginx refusing above 10/s."""
    mixed = mixed_file(tmp_path / "in.csv", 600, seed=15)
    api = mixed.sandbox(limits=Limits(per_day=100_000))
    gateway = nginx(serve(api).base_url, 10)
    out, summary_path = tmp_path / "results.csv", tmp_path / "summary.json"

    args = ["run", str(mixed.path), "--out", str(out), "--rate", "30/s", "--yes"]
    done = run_cli(
        [*args, "--summary-json", str(summary_path)],
        cli_env(gateway),
        timeout=300,
    )

    assert done.returncode == 1, done.stdout + done.stderr  # unknown campaigns, malformed rows
    counts = check_truth(mixed, out, api)  # 0 failed rows, every enrolled pair removed
    removed_by_api = set(api.state.removed)
    claims = [r for r in read_whole_lines(out) if LOST in r["detail"]]
    false_claims = [
        r
        for r in claims
        if norm(r["campaign_id"], r["contact_id"]) not in removed_by_api
        or mixed.kinds[int(r["row"]) - 1] != ENROLLED
    ]
    summary = json.loads(summary_path.read_text())
    shed = api.state.calls  # calls nginx let through; the rest it answered 503 itself
    figures = {
        "rows": len(mixed.rows),
        "calls": summary["calls"],
        "calls per settled row": summary["calls_per_settled_row"],
        "503s from nginx": summary["calls"] - shed,
        "overload answers": summary["overloaded"],
        "final pace /s": summary["final_pace_per_second"],
        "duration s": summary["duration_seconds"],
        "failed": counts["failed"],
        "may-have-removed claims": len(claims),
        "false claims": len(false_claims),
    }
    print("\nbehind nginx limit_req 10r/s, --rate 30/s:", json.dumps(figures))
    assert counts["failed"] == 0
    assert false_claims == [], false_claims[:3]
    assert claims == [], "nothing was lost or applied behind a 503: no claim is true"
    assert summary["overloaded"] > 0, "nginx never refused: the scenario did not happen"
    assert summary["calls_per_settled_row"] <= 1.3
    assert summary["final_pace_per_second"] < 30 * 0.5, "the pace never dropped"
    assert "gateway overloaded (HTTP 503" in done.stderr + done.stdout
