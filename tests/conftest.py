"""Shared fixtures: a real sandbox on loopback, the CLI as a subprocess, input files."""

from __future__ import annotations

import csv
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import launch
import pytest

from bulk_unenroll.sandbox import Sandbox, SandboxThread
from bulk_unenroll.send.claims import DIR_ENV

API_KEY = "wbk_test_key_8d7f6e5a4b3c"
CLI_TIMEOUT = 120


def new_uuid(rnd_int: int) -> str:
    return str(uuid.UUID(int=rnd_int, version=4))


def write_csv(
    path: Path, rows: Sequence[Sequence[str]], header: Sequence[str] = ("campaign_id", "contact_id")
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_results(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.hookimpl(trylast=True)  # after `-m` has deselected
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow scenarios dealt out, one at a time, to the front of each parallel process's
    share (`make pytest`). xdist's worksteal hands process k the k-th contiguous block and lets
    an idle process take the end of another's: had the slow ones sat together at the front of
    one block, that process would still be on them after the others had run out of work."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    slow = [item for item in items if item.get_closest_marker("slow")]
    rest = iter([item for item in items if not item.get_closest_marker("slow")])
    shares, left = [], len(items)
    for k in range(workers):  # the block sizes worksteal cuts
        size = left // (workers - k)
        left -= size
        share = slow[k::workers]
        shares.append(share + list(islice(rest, max(0, size - len(share)))))
    items[:] = [item for share in shares for item in share] + list(rest)


@pytest.fixture(autouse=True, scope="session")
def private_claims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Runs claim their input in this session's own folder (inherited by `cli_env`): another
    session running the same tests on identical files at the same time must not see them."""
    folder = tmp_path_factory.mktemp("claims")
    os.environ[DIR_ENV] = str(folder)
    yield folder
    del os.environ[DIR_ENV]


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_ambient_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback tests go direct: the machine's proxy settings (honoured since the client reads
    them) must not route them; tests that want a proxy set one in the CLI's environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def serve() -> Iterator[Callable[[Sandbox], SandboxThread]]:
    """Start sandboxes on 127.0.0.1 for one test; all are stopped after it."""
    started: list[SandboxThread] = []

    def start(api: Sandbox) -> SandboxThread:
        server = SandboxThread(api).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


def cli_env(base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLEX_")}
    env.update(LEADLEX_API_KEY=API_KEY, LEADLEX_BASE_URL=base_url, **extra)
    return env


def run_cli(
    args: Sequence[str], env: dict[str, str], timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run `python -m bulk_unenroll ARGS` as its own process, the way a user does, with no
    terminal attached (through the fork server of tests/launch.py: the same process, started
    without paying for Python's start-up and imports each time)."""
    return launch.run_cli(args, env, timeout)
