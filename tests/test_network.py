"""The networks people have: proxies from the environment, private CAs, and connection faults
that are the setup's (exit 3 at once) rather than an outage's (retry, exit 75).

End to end: the CLI runs as a subprocess against the sandbox, through a small forwarding and
CONNECT proxy and a TLS front written here, with a CA made for the test (trustme).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
from conftest import API_KEY, cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import Serve

from bulk_unenroll.sandbox import Sandbox, SandboxThread

Address = tuple[str, int]
FAST = ["--rate", "1000/s", "--concurrency", "4", "--yes"]
FAKE_HOST = "api.leadlex.test"
"""A name no resolver knows: only a proxy that routes it can reach the sandbox by it."""


# -- loopback helpers: a relay, a proxy, a TLS front --------------------------------------------


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes (or 10 s of silence)."""
    socks = [a, b]
    while True:
        ready: list[socket.socket] = [
            s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()
        ]
        ready = ready or select.select(socks, [], [], 10)[0]
        if not ready:
            return
        for s in ready:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if not data:
                return
            (b if s is a else a).sendall(data)


class Proxy(ThreadingHTTPServer):
    """A forwarding HTTP proxy and CONNECT tunnel on 127.0.0.1 that logs what passes.

    Tunnels go to `upstream` whatever host they name. With `tls`, a tunnel is opened with a
    certificate of the test CA, as a TLS-inspecting corporate proxy does. With `refuse`, every
    CONNECT gets that status instead.
    """

    daemon_threads = True

    def __init__(
        self, upstream: Address, tls: ssl.SSLContext | None = None, refuse: int | None = None
    ) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.tls, self.refuse = upstream, tls, refuse
        self.log: list[tuple[str, str]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Proxy

    def log_message(self, *args: Any) -> None:
        pass

    def do_DELETE(self) -> None:
        self.server.log.append(("DELETE", self.path))
        url = urlsplit(self.path)  # a forwarding proxy gets the absolute URL
        headers = {k: v for k, v in self.headers.items() if not k.lower().startswith("proxy-")}
        upstream = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=10)
        try:
            upstream.request("DELETE", url.path, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:
        self.server.log.append(("CONNECT", self.path))
        self.close_connection = True
        if self.server.refuse is not None:
            self.send_response(self.server.refuse)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        try:
            with contextlib.ExitStack() as stack:
                client = self.connection
                if self.server.tls is not None:
                    client = stack.enter_context(
                        self.server.tls.wrap_socket(client, server_side=True)
                    )
                upstream = stack.enter_context(
                    socket.create_connection(self.server.upstream, timeout=10)
                )
                _relay(client, upstream)
        except OSError:
            pass  # the client refused our certificate, or hung up


class TlsFront(socketserver.ThreadingTCPServer):
    """TLS on 127.0.0.1 in front of a plain-HTTP upstream (the sandbox)."""

    daemon_threads = True

    def __init__(self, upstream: Address, tls: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _TlsHandler)
        self.upstream, self.tls = upstream, tls
        self.handshakes = 0


class _TlsHandler(socketserver.BaseRequestHandler):
    server: TlsFront

    def handle(self) -> None:
        try:
            with self.server.tls.wrap_socket(self.request, server_side=True) as client:
                self.server.handshakes += 1
                with socket.create_connection(self.server.upstream, timeout=10) as upstream:
                    _relay(client, upstream)
        except OSError:
            pass  # the client refused our certificate


class PlainHttp(socketserver.ThreadingTCPServer):
    """A plain-HTTP server that, like nginx, answers 400 to bytes that are no HTTP request
    (a TLS ClientHello); the sandbox would wait for a request line instead."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _BadRequestHandler)


class _BadRequestHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            self.request.recv(65536)
            self.request.sendall(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", FAKE_HOST).configure_cert(context)
    return context


def address(server: SandboxThread) -> Address:
    url = urlsplit(server.base_url)
    return url.hostname or "", url.port or 80


# -- inputs and checks ------------------------------------------------------------------------


def pairs(n: int) -> list[tuple[str, str]]:
    return [("cmp_net", new_uuid(i + 1)) for i in range(n)]


def summary_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# -- 10: proxies from the environment ---------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_http_proxy_from_the_environment_carries_every_request(
    tmp_path: Path, serve: Serve, variable: str
) -> None:
    rows = pairs(12)
    api = Sandbox(rows)
    server = serve(api)
    proxy = Proxy(address(server))
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    with serving(proxy):
        done = run_cli(
            ["run", str(src), "--out", str(out), *FAST],
            cli_env(server.base_url, **{variable: proxy.url}),
        )
    assert done.returncode == 0, done.stderr
    assert {r["status"] for r in read_results(out)} == {"removed"}
    assert set(api.state.removed) == set(rows)
    # Every DELETE came through the proxy, in the absolute form a forwarding proxy gets.
    assert len(proxy.log) == api.state.calls == 12
    assert all(
        method == "DELETE" and path.startswith(server.base_url) for method, path in proxy.log
    )


@pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
def test_no_proxy_goes_direct(tmp_path: Path, serve: Serve, variable: str) -> None:
    rows = pairs(6)
    api = Sandbox(rows)
    server = serve(api)
    proxy = Proxy(address(server))
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    env = cli_env(server.base_url, HTTP_PROXY=proxy.url, **{variable: "localhost,127.0.0.1"})
    with serving(proxy):
        done = run_cli(["run", str(src), "--out", str(out), *FAST], env)
    assert done.returncode == 0, done.stderr
    assert set(api.state.removed) == set(rows)
    assert proxy.log == [], "NO_PROXY names the host: the proxy must not see it"


def test_https_through_a_tls_inspecting_proxy_needs_its_ca(
    tmp_path: Path, serve: Serve, ca: trustme.CA
) -> None:
    """HTTPS_PROXY tunnels with CONNECT; the proxy presents a certificate of its own CA. Not
    trusted: exit 3 at once, naming the cause and --ca-bundle, every row left to do. Trusted
    through --ca-bundle or SSL_CERT_FILE: the run goes through the proxy."""
    rows = pairs(8)
    api = Sandbox(rows[:4])  # half not enrolled: a kept .sent mark would show on the rerun
    server = serve(api)
    proxy = Proxy(address(server), tls=server_tls(ca))
    ca_file = tmp_path / "corp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    src, out, summary = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv", tmp_path / "s"
    base_url = f"https://{FAKE_HOST}/api-gateway"
    args = ["run", str(src), "--out", str(out), *FAST, "--summary-json", str(summary)]
    env = cli_env(base_url, HTTPS_PROXY=proxy.url)

    with serving(proxy):
        untrusted = run_cli(args, env)
        assert untrusted.returncode == 3, untrusted.stderr
        assert "certificate verify failed" in untrusted.stderr
        assert f"through the proxy {proxy.url}" in untrusted.stderr
        assert "--ca-bundle" in untrusted.stderr
        assert "Traceback" not in untrusted.stderr
        assert api.state.calls == 0
        assert read_results(out) == []
        s = summary_of(summary)
        assert (s["stop_reason"], s["unfinished"], s["outcomes"]["failed"]) == ("aborted", 8, 0)
        assert s["calls"] < 8, "a setup error stops at once"

        trusted = run_cli([*args, "--ca-bundle", str(ca_file)], env)
        assert trusted.returncode == 0, trusted.stderr

    assert ("CONNECT", f"{FAKE_HOST}:443") in proxy.log
    records = read_results(out)
    assert sorted(r["status"] for r in records) == ["not_enrolled"] * 4 + ["removed"] * 4
    assert not any("may have removed" in r["detail"] for r in records), (
        "the refused attempts applied nothing: their .sent marks must be taken back"
    )
    assert set(api.state.deletes.values()) == {1}


def test_ssl_cert_file_is_trusted_through_the_proxy(
    tmp_path: Path, serve: Serve, ca: trustme.CA
) -> None:
    rows = pairs(4)
    api = Sandbox(rows)
    server = serve(api)
    proxy = Proxy(address(server), tls=server_tls(ca))
    ca_file = tmp_path / "corp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    env = cli_env(
        f"https://{FAKE_HOST}/api-gateway", https_proxy=proxy.url, SSL_CERT_FILE=str(ca_file)
    )
    with serving(proxy):
        done = run_cli(["run", str(src), "--out", str(out), *FAST], env)
    assert done.returncode == 0, done.stderr
    assert set(api.state.removed) == set(rows)
    assert proxy.log and all(method == "CONNECT" for method, _ in proxy.log)


def test_ca_bundle_trusts_a_private_ca_without_a_proxy(
    tmp_path: Path, serve: Serve, ca: trustme.CA
) -> None:
    rows = pairs(4)
    api = Sandbox(rows)
    server = serve(api)
    front = TlsFront(address(server), server_tls(ca))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    base_url = f"https://127.0.0.1:{front.server_address[1]}/api-gateway"
    with serving(front):
        done = run_cli(
            ["run", str(src), "--out", str(out), *FAST, "--ca-bundle", str(ca_file)],
            cli_env(base_url),
        )
    assert done.returncode == 0, done.stderr
    assert set(api.state.removed) == set(rows)
    assert front.handshakes >= 1


def test_a_proxy_that_refuses_the_tunnel_is_a_setup_error(tmp_path: Path, serve: Serve) -> None:
    rows = pairs(3)
    api = Sandbox(rows)
    server = serve(api)
    proxy = Proxy(address(server), refuse=407)
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    with serving(proxy):
        done = run_cli(
            ["run", str(src), "--out", str(out), *FAST],
            cli_env(f"https://{FAKE_HOST}/api-gateway", HTTPS_PROXY=proxy.url),
        )
    assert done.returncode == 3, done.stderr
    assert "refused the tunnel" in done.stderr and "407" in done.stderr
    assert "HTTPS_PROXY" in done.stderr
    assert read_results(out) == [] and api.state.calls == 0


@pytest.mark.parametrize(
    ("option", "env", "message"),
    [
        (["--ca-bundle", "{bad}"], {}, "holds no PEM certificate"),
        ([], {"HTTPS_PROXY": "ftp://user:hunter2@proxy.example:21"}, "cannot be used"),
    ],
)
def test_unusable_tls_or_proxy_settings_are_input_errors(
    tmp_path: Path, option: list[str], env: dict[str, str], message: str
) -> None:
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("this is not a certificate\n")
    src, out = write_csv(tmp_path / "in.csv", pairs(2)), tmp_path / "out.csv"
    args = [o.format(bad=bad) for o in option]
    done = run_cli(
        ["run", str(src), "--out", str(out), *FAST, *args],
        cli_env("https://127.0.0.1:9/api-gateway", **env),
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout
    assert read_results(out) == []


# -- 11: permanent connection faults are setup errors -----------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound on 127.0.0.1 but not listening: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _fault_cases() -> list[Any]:
    return [
        pytest.param("refused", "connection refused by 127.0.0.1:", id="closed-port"),
        pytest.param("plain", "TLS handshake with 127.0.0.1:", id="https-to-plain-http"),
        pytest.param("self-signed", "certificate verify failed", id="self-signed"),
        pytest.param("dns", "host name nonexistent.invalid not resolved", id="unresolvable"),
    ]


@pytest.mark.parametrize(("fault", "cause"), _fault_cases())
def test_connection_faults_before_any_answer_exit_3_with_the_cause(
    tmp_path: Path, serve: Serve, ca: trustme.CA, closed_port: int, fault: str, cause: str
) -> None:
    rows = pairs(30)  # more than the breaker's 25 attempts: it must not come to that
    api = Sandbox(rows[:15])
    server = serve(api)
    front = TlsFront(address(server), server_tls(ca))  # a CA this machine does not trust
    plain = PlainHttp()
    base_url = {
        "refused": f"http://127.0.0.1:{closed_port}/api-gateway",
        "plain": f"https://127.0.0.1:{plain.server_address[1]}/api-gateway",
        "self-signed": f"https://127.0.0.1:{front.server_address[1]}/api-gateway",
        "dns": "https://nonexistent.invalid/api-gateway",
    }[fault]
    src, out, summary = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv", tmp_path / "s"
    # --max-retries 0: a connection fault must not end a row as `failed` either.
    args = ["run", str(src), "--out", str(out), *FAST, "--max-retries", "0"]
    with serving(front), serving(plain):
        done = run_cli([*args, "--summary-json", str(summary)], cli_env(base_url))

    assert done.returncode == 3, done.stderr
    assert cause in done.stderr
    assert "--base-url" in done.stderr
    assert "looks down" not in done.stderr and "Traceback" not in done.stderr
    assert API_KEY not in done.stderr + done.stdout
    s = summary_of(summary)
    assert s["stop_reason"] == "aborted" and s["exit_code"] == 3
    assert s["unfinished"] == 30 and s["outcomes"]["failed"] == 0
    assert s["calls"] <= 4, "one failed connection per worker at most, not 25 attempts"
    assert read_results(out) == [] and api.state.deletes == {}

    # Nothing could have been applied: no row is left marked as sent without an answer.
    plan = run_cli(
        ["plan", str(src), "--out", str(out), "--summary-json", str(summary)], cli_env(base_url)
    )
    assert plan.returncode == 0, plan.stderr
    assert summary_of(summary)["plan"]["resend"] == 0

    # Fixed, the rerun does everything once, with no row blamed on a lost answer.
    fixed = run_cli(args, cli_env(server.base_url))
    assert fixed.returncode == 0, fixed.stderr
    records = read_results(out)
    assert sorted(r["status"] for r in records) == ["not_enrolled"] * 15 + ["removed"] * 15
    assert not any(r["detail"] for r in records)
    assert set(api.state.deletes.values()) == {1}


def test_a_refused_connection_after_answers_is_an_outage_not_a_setup_error(
    tmp_path: Path,
) -> None:
    """The API answered, then its port closed (a restart, a deploy): retry, and if it stays
    down, stop with exit 75 to rerun later, keeping every answer already recorded."""
    rows = pairs(400)
    api = Sandbox(rows)
    server = SandboxThread(api).__enter__()
    src, out = write_csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    args = ["run", str(src), "--out", str(out), "--rate", "40/s", "--concurrency", "4"]
    with subprocess.Popen(
        [sys.executable, "-m", "bulk_unenroll", *args, "--max-retries", "2", "--yes"],
        env=cli_env(server.base_url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as run:
        try:
            deadline = time.monotonic() + 60
            while api.state.calls < 10 and time.monotonic() < deadline and run.poll() is None:
                time.sleep(0.02)
        finally:
            server.__exit__(None, None, None)  # the port now refuses connections
        stdout, stderr = run.communicate(timeout=120)

    assert api.state.calls >= 10, stderr
    assert run.returncode == 75, stderr
    assert "looks down" in stderr and "connection refused" in stderr
    assert "exit code 3" not in stdout + stderr
    removed = {
        (r["campaign_id"], r["contact_id"]) for r in read_results(out) if r["status"] == "removed"
    }
    assert len(removed) >= 9, "the answers recorded before the port closed stay"
    assert removed <= set(api.state.removed)
