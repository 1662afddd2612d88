"""Launching the CLI as its own process, fast: a fork server for the tests.

A CLI process spends about 0.4 s of CPU starting Python and importing polars, httpx and the
package before it reads a single argument; the suite starts several hundred of them, and on a
2-core machine that import was two thirds of `make test`. So each test process keeps one
server (`python tests/launch.py SOCKET`) that has done those imports once and forks a fresh
child for each launch, as multiprocessing's forkserver does. The child is a process of its
own: its own pid, argv, environment, working directory, stdin/stdout/stderr, signals and exit
status; it runs `bulk_unenroll.cli.main` as `python -m bulk_unenroll` does, then the exit
handlers. Only interpreter start-up and import are shared.

`BULK_UNENROLL_TEST_LAUNCH=exec` launches `python -m bulk_unenroll` every time instead
(`make test-all`, and so CI, runs the suite that way on every Python); a launch whose
environment changes how Python itself starts (a `PYTHON*`, `LANG` or `LC_*` variable) always
does. `tests/test_launch.py` holds both ways to the same behaviour.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import locale
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

MODE_ENV = "BULK_UNENROLL_TEST_LAUNCH"
COMMAND = (sys.executable, "-m", "bulk_unenroll")
_STARTUP_PREFIXES = ("PYTHON", "LC_", "LANG")


class Process(Protocol):
    """What the tests use of a started CLI process: `subprocess.Popen` or `Launched`."""

    pid: int

    @property
    def returncode(self) -> int | Any: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


def spawn(args: Sequence[str], env: Mapping[str, str], stdout: IO[Any], stderr: IO[Any]) -> Process:
    """`subprocess.Popen([python, -m, bulk_unenroll, *args], stdin=DEVNULL, ...)`."""
    if _exec(env):
        return subprocess.Popen(
            [*COMMAND, *args], env=dict(env), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
    with open(os.devnull, "rb") as null:
        return _server().spawn(
            list(args), dict(env), [null.fileno(), stdout.fileno(), stderr.fileno()]
        )


def run_cli(
    args: Sequence[str], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run([python, -m, bulk_unenroll, *args], capture_output=True, text=True,
    stdin=DEVNULL, timeout=timeout)`."""
    if _exec(env):
        return subprocess.run(
            [*COMMAND, *args],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    deadline = time.monotonic() + timeout
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        try:
            with open(os.devnull, "rb") as null:
                process = _server().spawn(list(args), dict(env), [null.fileno(), out_w, err_w])
        finally:
            os.close(out_w)  # each fd closed once: another thread may reuse its number
            os.close(err_w)
        try:
            out, err = _read_both(out_r, err_r, deadline)
            code = process.wait(max(deadline - time.monotonic(), 0.001))
        except BaseException as exc:
            process.kill()
            process.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise subprocess.TimeoutExpired([*COMMAND, *args], timeout) from None
            raise
    finally:
        os.close(out_r)
        os.close(err_r)
    return subprocess.CompletedProcess([*COMMAND, *args], code, _text(out), _text(err))


def _exec(env: Mapping[str, str]) -> bool:
    if os.environ.get(MODE_ENV) == "exec":
        return True
    names = {n for n in (*env, *os.environ) if n.startswith(_STARTUP_PREFIXES)}
    return any(env.get(n) != os.environ.get(n) for n in names)


class Launched:
    """A CLI process started by the fork server: the part of `Popen` the tests use. Its pid
    stays reserved (the process is not reaped) until this object has its exit status and is
    closed, so a signal never reaches another process that took the number."""

    def __init__(self, args: list[str], conn: socket.socket) -> None:
        self.args = [*COMMAND, *args]
        self._conn = conn
        self.pid = int(conn.recv(64))
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._conn.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                self._ended(self._conn.recv(64))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._conn.settimeout(timeout if timeout is None else max(timeout, 0.001))
            try:
                self._ended(self._conn.recv(64))
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def __del__(self) -> None:
        self._conn.close()  # a test that failed before the end: no ResourceWarning

    def _ended(self, status: bytes) -> None:
        self.returncode = int(status)
        self._conn.close()  # the server's attendant may now reap the process


class _Server:
    """The fork server of this test process, started on first use, stopped at exit."""

    def __init__(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="bulk-unenroll-launch-")
        self.path = os.path.join(self._folder, "socket")
        self._proc = subprocess.Popen(
            [sys.executable, __file__, self.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline()
        assert ready == "ready\n", f"the launch server did not start: {ready!r}"
        atexit.register(self.stop)

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait()
        Path(self.path).unlink(missing_ok=True)
        os.rmdir(self._folder)

    def spawn(self, args: list[str], env: dict[str, str], stdio: list[int]) -> Launched:
        request = json.dumps({"args": args, "env": env, "cwd": os.getcwd()}).encode()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(self.path)
        socket.send_fds(conn, [request], stdio)
        return Launched(args, conn)


def _read_both(out: int, err: int, deadline: float) -> tuple[bytes, bytes]:
    """Read two pipes to their ends, as `communicate` does."""
    chunks: dict[int, list[bytes]] = {out: [], err: []}
    with selectors.DefaultSelector() as selector:
        for fd in chunks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired("bulk-unenroll", 0)
            for key, _ in selector.select(remaining):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    selector.unregister(key.fd)
    return b"".join(chunks[out]), b"".join(chunks[err])


def _text(data: bytes) -> str:
    """Decoded as `text=True` decodes: the locale's encoding, universal newlines."""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


_server_of_this_process: _Server | None = None


def _server() -> _Server:
    global _server_of_this_process
    if _server_of_this_process is None:
        _server_of_this_process = _Server()
    return _server_of_this_process


# -- the server side -------------------------------------------------------------------------


def serve(path: str) -> None:
    """Import what a launch imports, then fork one attendant per request, forever."""
    # What every launch would import again: the CLI, and what a run imports on its first
    # await and its first request.
    import anyio._backends._asyncio  # noqa: F401
    import certifi  # noqa: F401
    import httpcore  # noqa: F401

    import bulk_unenroll.cli  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # each attendant is reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if _fork() == 0:
            listener.close()
            _attend(conn)
        conn.close()


def _fork() -> int:
    """`os.fork`, quietly: polars keeps native threads (jemalloc's, spill clean-up) that a
    child never touches, and Python 3.12+ warns about any fork in a multi-threaded process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _attend(conn: socket.socket) -> None:
    """In a child of the server: fork the CLI process, tell its pid, then its exit status;
    reap it only once the test has closed the connection."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    request = json.loads(message)
    pid = _fork()
    if pid == 0:
        conn.close()
        _become_cli(request, fds)
    for fd in fds:
        os.close(fd)
    conn.send(str(pid).encode())
    ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    assert ended is not None
    code = ended.si_status if ended.si_code == os.CLD_EXITED else -ended.si_status
    with contextlib.suppress(OSError):
        conn.send(str(code).encode())
        conn.recv(1)  # until the test closes its end
    os.waitpid(pid, 0)
    os._exit(0)


def _become_cli(request: dict[str, Any], fds: list[int]) -> None:
    """Be `python -m bulk_unenroll ARGS` with this environment, directory and stdio."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    from bulk_unenroll import cli

    sys.argv = [str(Path(cli.__file__).with_name("__main__.py")), *request["args"]]
    code = 0
    try:
        cli.main(args=request["args"], prog_name="bulk-unenroll")
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except KeyboardInterrupt:  # as Python ends on one: by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(code)


def _exit_code(code: object) -> int:
    """What Python makes of `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1])
