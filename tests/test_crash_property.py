"""SIGKILL at any moment, then rerun: the results always match what the API itself did.

The lost-response rule: a pair whose request was in flight at the kill may already be removed;
the rerun's `enrollment_not_found` for it must say so, and never claim `removed`.
"""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import Serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from truth import (
    LOST,
    Mixed,
    check_truth,
    lost_in_summary,
    mixed_file,
    norm,
    read_whole_lines,
    spawn_cli,
    wait_until,
)

from bulk_unenroll.results.journal import read_history
from bulk_unenroll.sandbox import Faults, Pair, Sandbox, SandboxThread

CONCURRENCY = 8


def run_args(mixed: Mixed, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(mixed.path),
        "--out",
        str(out),
        "--rate",
        "400/s",
        "--concurrency",
        str(CONCURRENCY),
        "--yes",
        *extra,
    ]


def kill_during_run(
    mixed: Mixed, api: Sandbox, base_url: str, out: Path, delay: float, logs: Path
) -> tuple[set[Pair], bool]:
    """Start a run, SIGKILL it `delay` s after its first call (unless it ends first);
    the pairs it left in flight, and whether it was killed."""
    proc = spawn_cli(run_args(mixed, out), cli_env(base_url), logs)
    calls = api.state.calls
    wait_until(lambda: api.state.calls > calls or proc.poll() is not None, proc)
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    return in_flight(out), proc.returncode == -signal.SIGKILL


def in_flight(out: Path) -> set[Pair]:
    """Pairs the tool sent (its `.sent` file) that the results do not show: in flight."""
    recorded = {
        norm(r["campaign_id"], r["contact_id"])
        for r in read_whole_lines(out)
        if r["status"] not in ("duplicate", "invalid")  # recorded without a call
    }
    sent_file = out.with_name(out.name + ".sent").read_bytes()
    whole_lines = sent_file[: sent_file.rfind(b"\n") + 1].decode().splitlines()
    sent_lines = [line for line in whole_lines if not line.startswith("#")]  # its binding
    # A line is campaign, contact, +1 (sent) or -1 (taken back: nothing was applied).
    marks: dict[tuple[str, str], int] = {}
    for campaign, contact, delta in csv.reader(sent_lines):
        marks[campaign, contact] = marks.get((campaign, contact), 0) + int(delta)
    return {pair for pair, n in marks.items() if n > 0} - recorded


def check_after_kill(mixed: Mixed, out: Path, api: Sandbox) -> None:
    """The results read back whole after a kill, torn last line and all, and tell the truth."""
    if out.exists():
        read_history(out)  # the resume reader accepts it
        check_truth(mixed, out, api, complete=False)


def test_lost_answers_across_a_kill_are_reported_as_such(tmp_path: Path, serve: Serve) -> None:
    pairs = [("cmp_abc123", new_uuid(i)) for i in range(1, 41)]
    api = Sandbox(pairs, faults=Faults(hang_after=1.0))  # removes, then never answers
    server = serve(api)
    inp, out = write_csv(tmp_path / "in.csv", pairs), tmp_path / "results.csv"
    args = ["run", str(inp), "--out", str(out), "--rate", "1000/s", "--concurrency", "4", "--yes"]
    proc = spawn_cli(args, cli_env(server.base_url), tmp_path / "logs")
    wait_until(lambda: len(api.state.removed) == 4, proc)

    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    in_flight = set(api.state.removed)
    binding, *sent = out.with_name(out.name + ".sent").read_text().splitlines()
    assert binding.startswith("#results ")
    assert {tuple(line.split(",")) for line in sent} == {(*p, "1") for p in in_flight}
    api.faults.hang_after = 0.0

    rerun = run_cli(args, cli_env(server.base_url))

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    records = read_results(out)
    by_pair = {(r["campaign_id"], r["contact_id"]): r for r in records}
    for pair in in_flight:
        assert by_pair[pair]["status"] == "not_enrolled"
        assert LOST in by_pair[pair]["detail"]
        assert "earlier run" in by_pair[pair]["detail"]
    assert all(r["status"] == "removed" for p, r in by_pair.items() if p not in in_flight)
    assert lost_in_summary(rerun.stdout) == 4
    assert not api.state.enrolled


@pytest.mark.slow
def test_five_kills_then_a_rerun_end_right(tmp_path: Path, serve: Serve) -> None:
    mixed = mixed_file(tmp_path / "in.csv", 1000, seed=23)
    api = mixed.sandbox(Faults(latency=0.005))
    server = serve(api)
    out = tmp_path / "results.csv"
    rnd, logs = random.Random(5), tmp_path / "logs"
    in_flight_at_kills: set[Pair] = set()

    for _ in range(5):
        delay = rnd.uniform(0.05, 0.4)  # five delays add up to less than the run needs
        lost, killed = kill_during_run(mixed, api, server.base_url, out, delay, logs)
        assert killed
        in_flight_at_kills |= lost
        check_after_kill(mixed, out, api)

    rerun = run_cli(run_args(mixed, out), cli_env(server.base_url))

    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    check_truth(mixed, out, api)
    assert in_flight_at_kills, "the kills should catch requests in flight"
    sent_twice = {p for p, n in api.state.deletes.items() if n > 1}
    assert sent_twice <= in_flight_at_kills
    assert len(in_flight_at_kills) <= 5 * CONCURRENCY


@pytest.mark.slow
@settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    delays=st.lists(st.floats(0.0, 0.4), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
    faulty=st.booleans(),
)
def test_kills_at_any_moment_never_make_results_lie(
    delays: list[float], seed: int, faulty: bool
) -> None:
    faults = Faults(latency=0.002)
    if faulty:
        faults = Faults(latency=0.002, error_503=0.05, reset_after=0.05, reset_before=0.03)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        mixed = mixed_file(tmp_path / "in.csv", 120, seed=seed)
        api = mixed.sandbox(faults, seed=seed)
        out = tmp_path / "results.csv"
        with SandboxThread(api) as server:
            in_flight_at_kills: set[Pair] = set()
            for delay in delays:
                lost, _ = kill_during_run(mixed, api, server.base_url, out, delay, tmp_path)
                in_flight_at_kills |= lost
                check_after_kill(mixed, out, api)
            extra = ["--timeout", "2", "--max-retries", "8"]
            rerun = run_cli(run_args(mixed, out, *extra), cli_env(server.base_url))

        assert rerun.returncode == 1, rerun.stdout + rerun.stderr
        check_truth(mixed, out, api)
        if not faulty:
            assert {p for p, n in api.state.deletes.items() if n > 1} <= in_flight_at_kills
        assert len(in_flight_at_kills) <= len(delays) * CONCURRENCY


VARIANTS = ("full", "fewer", "more", "cmp_A", "cmp_B")
"""How the input changes between runs: the same file, rows removed, rows added, and a
contacts-only file run for one campaign and then another, all on one results file."""


def variant_file(folder: Path, base: Mixed, extra: Mixed, name: str) -> tuple[Path, list[str]]:
    """The input of one variant, and the CLI options it needs."""
    path = folder / f"{name}.csv"
    if name == "full":
        return base.path, []
    if name == "fewer":
        return write_csv(path, [r for i, r in enumerate(base.rows) if i % 3]), []
    if name == "more":
        return write_csv(path, [*base.rows[::2], *extra.rows, *base.rows[1::2]]), []
    contacts = sorted({contact for _, contact in base.rows + extra.rows})
    return write_csv(path, [(c,) for c in contacts], header=("contact_id",)), ["--campaign", name]


def ledger_snapshot(out: Path) -> set[str]:
    """The definite answers a results file holds, as whole lines."""
    if not out.exists():
        return set()
    lines = out.read_bytes().decode("utf-8", "replace").split("\n")[1:-1]
    return {line for line in lines if line.split(",")[3:4] in (["removed"], ["not_enrolled"])}


def pair_of(line: str) -> Pair:
    record = next(csv.reader([line]))
    return record[1], record[2]


@pytest.mark.slow
@settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(VARIANTS), st.one_of(st.none(), st.floats(0.0, 0.3))),
        min_size=2,
        max_size=4,
    ),
    seed=st.integers(0, 2**16),
)
def test_a_changing_input_killed_at_any_moment_never_loses_or_resends_an_answer(
    steps: list[tuple[str, float | None]], seed: int
) -> None:
    """Runs over several inputs on one results file, some killed, with 503s that leave
    `failed` records (so closing compacts): every definite answer stays recorded, is never
    sent again, and every `removed` is one the API made."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = mixed_file(folder / "base.csv", 60, seed=seed)
        extra = mixed_file(folder / "extra.csv", 20, seed=seed + 1)
        for mixed in (base, extra):
            mixed.campaigns |= {"cmp_A", "cmp_B"}
        contacts = {contact for _, contact in base.valid_pairs | extra.valid_pairs}
        enrolled = base.enrolled | extra.enrolled
        enrolled |= {(c, k) for c in ("cmp_A", "cmp_B") for k in sorted(contacts)[::2]}
        api = Sandbox(
            enrolled,
            campaigns=base.campaigns | extra.campaigns,
            faults=Faults(latency=0.002, error_503=0.1),
            seed=seed,
        )
        out = folder / "results.csv"
        with SandboxThread(api) as server:
            env = cli_env(server.base_url)
            ledger: set[str] = set()
            sends_at_answer: dict[Pair, int] = {}
            for name, kill_after in [*steps, *((v, None) for v in VARIANTS)]:
                if (name, kill_after) == (VARIANTS[0], None):
                    api.faults = Faults(latency=0.002)  # the final passes: no faults
                inp, options = variant_file(folder, base, extra, name)
                args = [
                    "run", str(inp), "--out", str(out), "--rate", "400/s",
                    "--concurrency", str(CONCURRENCY), "--max-retries", "1", "--yes", *options,
                ]  # fmt: skip
                proc = spawn_cli(args, env, folder / "logs")
                try:
                    proc.wait(kill_after if kill_after is not None else 120)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                assert proc.returncode in (0, 1, 75, -signal.SIGKILL), (folder / "logs").name
                now = ledger_snapshot(out)
                assert ledger <= now, f"definite answers dropped: {sorted(ledger - now)[:3]}"
                for pair, sends in sends_at_answer.items():
                    assert api.state.deletes[pair] == sends, f"{pair} was sent again"
                for line in now - ledger:
                    pair = pair_of(line)
                    sends_at_answer[pair] = api.state.deletes[pair]
                    if line.split(",")[3] == "removed":
                        assert pair in api.state.removed, f"a removal the API never made: {line}"
                ledger = now
        assert not api.state.enrolled, "an enrolled pair of an input was left"
