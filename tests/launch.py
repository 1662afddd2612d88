"""Launching the CLI as its own process, fast: a fork server for the tests.

A CLI process spends about 0.4 s of CPU starting Python and importing polars, httpx and the
package before it reads a single argument; the suite starts several hundred of them, and on a
2-core machine that import was two thirds of `make test`. So each test process keeps one
server (`python tests/launch.py SOCKET`) that has done those imports once and forks a fresh
child for each launch, as multiprocessing's forkserver does. The child is a process of its
own: its own pid, argv, environment, working directory, stdin/stdout/stderr and signals; it
runs `bulk_unenroll` as `python -m` does (runpy, the working directory first on sys.path), and
Python ends it as it ends any program: its exit status, a traceback or a death by SIGINT, the
wait for its threads, the exit handlers, the flush. Only interpreter start-up and import are
shared. The server ends when the test process does, however that ends.

What a process takes only as it starts, the server took when it started: the variables read as
Python starts or as the CLI's imports run (`PYTHON*`, `LANG*`, `LC_*`, `TZ*`, polars' allocator
settings) and the umask, resource limits and ignored signals of the test process. A launch for
which any of them differs from then is a real `python -m bulk_unenroll`, as is every launch
under `BULK_UNENROLL_TEST_LAUNCH=exec` (`make test-all`, and so CI, runs the suite that way on
every Python) and every launch off Linux. `tests/test_launch.py` holds both ways to the same
behaviour.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import locale
import os
import runpy
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

MODE_ENV = "BULK_UNENROLL_TEST_LAUNCH"
CLI = "bulk_unenroll"
_STARTUP_VARIABLES = (
    *("PYTHON", "LANG", "LC_", "TZ"),
    *("POLARS_THP", "POLARS_FORCE_PKG", "POLARS_PREFER_PKG", "_RJEM_MALLOC_CONF"),
)
"""Read once, as Python starts or as polars is imported (prefixes)."""


class Process(Protocol):
    """What the tests use of a started CLI process: `subprocess.Popen` or `Launched`."""

    pid: int

    @property
    def returncode(self) -> int | Any: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


def command(args: Sequence[str], module: str = CLI) -> list[str]:
    """`python -m MODULE ARGS`."""
    return [sys.executable, "-m", module, *args]


def spawn(
    args: Sequence[str], env: Mapping[str, str], stdout: IO[Any], stderr: IO[Any], module: str = CLI
) -> Process:
    """`subprocess.Popen([python, -m, module, *args], stdin=DEVNULL, ...)`."""
    if _exec(env):
        return subprocess.Popen(
            command(args, module),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    with open(os.devnull, "rb") as null:
        return _server().spawn(
            module, args, dict(env), [null.fileno(), stdout.fileno(), stderr.fileno()]
        )


def run_cli(
    args: Sequence[str], env: Mapping[str, str], timeout: float, module: str = CLI
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run([python, -m, module, *args], capture_output=True, text=True,
    stdin=DEVNULL, timeout=timeout)`."""
    argv = command(args, module)
    if _exec(env):
        return subprocess.run(
            argv,
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
                process = _server().spawn(module, args, dict(env), [null.fileno(), out_w, err_w])
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
                raise subprocess.TimeoutExpired(argv, timeout) from None
            raise
    finally:
        os.close(out_r)
        os.close(err_r)
    return subprocess.CompletedProcess(argv, code, _text(out), _text(err))


def _exec(env: Mapping[str, str]) -> bool:
    if os.environ.get(MODE_ENV) == "exec" or sys.platform != "linux":
        return True
    return _inherited(env) != _server().inherited


def _inherited(env: Mapping[str, str]) -> tuple[object, ...]:
    """What a process started now would take as it starts, besides its argv, directory and
    stdio: the variables read then, and the test process's umask, resource limits and
    ignored signals (a launch through the server has the server's, taken when it started)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return (
        sorted((name, value) for name, value in env.items() if name.startswith(_STARTUP_VARIABLES)),
        [line for line in status if line.startswith(("Umask:", "SigIgn:"))],
        Path("/proc/self/limits").read_text(),
    )


class Launched:
    """A CLI process started by the fork server: the part of `Popen` the tests use. Its pid
    stays reserved (the process is not reaped) until this object has its exit status and is
    closed, so a signal never reaches another process that took the number."""

    def __init__(self, args: list[str], conn: socket.socket) -> None:
        self.args = args
        self._conn = conn
        self.pid = self._told(conn.recv(64))
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
        self.returncode = self._told(status)
        self._conn.close()  # the server's attendant may now reap the process

    def _told(self, message: bytes) -> int:
        """The pid, then the exit status, from the server's attendant of this launch."""
        if not message:
            self._conn.close()
            raise ChildProcessError(f"the launch server's attendant of {self.args} ended first")
        return int(message)


class _Server:
    """The fork server of this test process, started on first use, stopped at exit; it also
    ends by itself when this process does (its stdin is a pipe only this process writes)."""

    def __init__(self) -> None:
        self.inherited = _inherited(os.environ)
        self._folder = tempfile.mkdtemp(prefix="bulk-unenroll-launch-")
        self.path = os.path.join(self._folder, "socket")
        self._proc = subprocess.Popen(
            [sys.executable, __file__, self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline()
        assert ready == "ready\n", f"the launch server did not start: {ready!r}"
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def ended(self, timeout: float = 0) -> bool:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout)
        return self._proc.returncode is not None

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def spawn(
        self, module: str, args: Sequence[str], env: dict[str, str], stdio: list[int]
    ) -> Launched:
        request = {"module": module, "args": list(args), "env": env, "cwd": os.getcwd()}
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(self.path)
        socket.send_fds(conn, [json.dumps(request).encode()], stdio)
        return Launched(command(args, module), conn)


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
_starting = threading.Lock()


def _server() -> _Server:
    """This process's server: one, however many threads launch at once; a new one if it died."""
    global _server_of_this_process
    with _starting:
        if _server_of_this_process is None or _server_of_this_process.ended():
            _server_of_this_process = _Server()
        return _server_of_this_process


# -- the server side -------------------------------------------------------------------------


def serve(path: str) -> dict[str, Any]:
    """Import what a launch imports, then fork one attendant per request until the test
    process ends (our stdin reaches its end). Returns only in a launched process: its request."""
    # What every launch would import again: the CLI, and what a run imports on its first
    # await and its first request.
    started = dict(os.environ)
    import anyio._backends._asyncio  # noqa: F401
    import certifi  # noqa: F401
    import httpcore  # noqa: F401

    import bulk_unenroll.cli  # noqa: F401

    # Set by those imports (polars: its allocator's settings), so set in a launch's too.
    imported = {name: value for name, value in os.environ.items() if started.get(name) != value}

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # each attendant is reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([sys.stdin, listener], [], [])
        if sys.stdin in readable:  # the test process has ended
            sys.exit()
        conn, _ = listener.accept()
        if _fork() == 0:
            listener.close()
            request = _attend(conn)
            request["env"].update(imported)
            return request
        conn.close()


def _fork() -> int:
    """`os.fork`, quietly: polars keeps native threads (jemalloc's, spill clean-up) that a
    child never touches, and Python 3.12+ warns about any fork in a multi-threaded process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _attend(conn: socket.socket) -> dict[str, Any]:
    """In a child of the server: fork the launched process, which returns its request with
    the stdio it asks for; here, tell its pid, then its exit status, and reap it only once the
    test has closed the connection."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    pid = _fork()
    if pid == 0:
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        return dict(json.loads(message))
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):  # a test process that has gone: still reap it
        conn.send(str(pid).encode())
    ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    assert ended is not None
    code = ended.si_status if ended.si_code == os.CLD_EXITED else -ended.si_status
    with contextlib.suppress(OSError):
        conn.send(str(code).encode())
        conn.recv(1)  # until the test closes its end
    os.waitpid(pid, 0)
    os._exit(0)


def _become(request: dict[str, Any]) -> None:
    """Be `python -m MODULE ARGS` with this environment and directory, set up as Python sets
    up a program it starts; from here on, Python ends this process as it ends any program."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = os.getcwd()  # `-m` puts the working directory first, not this folder
    sys.argv = ["-m", *request["args"]]
    sys.orig_argv = command(request["args"], request["module"])
    if isinstance(sys.stdout, io.TextIOWrapper):  # line by line to a terminal, as at start
        out = sys.stdout
        out.reconfigure(line_buffering=out.isatty() and not out.write_through)
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _become(serve(sys.argv[1]))
