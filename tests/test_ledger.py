"""The results file is a ledger: what the API answered, once recorded, is never dropped,
rewritten or sent again, whatever happens to the input, the file or its name between runs.

Each test runs the CLI as a subprocess against the sandbox over loopback, and judges by the
sandbox's own record of the DELETEs it received.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import polars as pl
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import Serve
from truth import spawn_cli, wait_until

from bulk_unenroll.models import Outcome, RowResult, Summary
from bulk_unenroll.results.journal import Journal
from bulk_unenroll.results.records import HEADER
from bulk_unenroll.sandbox import Faults, Sandbox
from bulk_unenroll.send.runner import Job

CONTACTS = [new_uuid(1000 + i) for i in range(30)]
DEFINITE = ("removed", "not_enrolled", "rejected")


def run_args(inp: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(inp), "--out", str(out), "--rate", "1000/s", "--yes", *extra]


def contacts_file(path: Path, contacts: list[str]) -> Path:
    return write_csv(path, [(c,) for c in contacts], header=("contact_id",))


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def summary(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


def test_another_campaign_on_the_same_results_file_keeps_every_record(
    tmp_path: Path, serve: Serve
) -> None:
    """Compaction keyed records by row number: a contacts-only file run for cmp_B after
    cmp_A (with a `failed` record in the file) dropped every cmp_A record, and rerunning
    cmp_A then resent pairs the API had already removed."""
    enrolled = [(c, k) for c in ("cmp_A", "cmp_B") for k in CONTACTS]
    api = Sandbox(enrolled, faults=Faults(html_500=0.3), seed=3)
    server = serve(api)
    env = cli_env(server.base_url)
    inp, out = contacts_file(tmp_path / "contacts.csv", CONTACTS), tmp_path / "multi.csv"

    first = run_cli([*run_args(inp, out, "--campaign", "cmp_A", "--max-retries", "0")], env)
    assert first.returncode == 1, first.stdout + first.stderr
    answered = [line for line in lines(out)[1:] if line.split(",")[3] in DEFINITE]
    failed = {r["contact_id"] for r in read_results(out) if r["status"] == "failed"}
    assert failed and answered, "the faults should leave both answered and failed rows"
    api.faults = Faults()

    second = run_cli(run_args(inp, out, "--campaign", "cmp_B"), env)
    assert second.returncode == 0, second.stdout + second.stderr
    kept = lines(out)
    assert all(line in kept for line in answered), "a definite answer was dropped"
    assert sum(line.split(",")[3] == "failed" for line in kept) == len(failed)

    report_json = tmp_path / "rerun.json"
    rerun = run_cli(
        [*run_args(inp, out, "--campaign", "cmp_A"), "--summary-json", str(report_json)], env
    )

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert all(line in lines(out) for line in answered)
    assert all(n == 1 for n in api.state.deletes.values() if n), "a settled pair was resent"
    assert {k for (c, k), n in api.state.deletes.items() if c == "cmp_A" and n} == set(CONTACTS)
    assert not api.state.enrolled
    data = summary(report_json)
    assert data["rows"] == len(CONTACTS)
    assert data["to_send"] == len(failed)
    assert data["settled_before"] == len(CONTACTS) - len(failed)
    assert data["outcomes"] == {
        "removed": len(CONTACTS),
        "not_enrolled": 0,
        "rejected": 0,
        "failed": 0,
        "invalid": 0,
        "duplicate": 0,
    }
    # Compaction dropped only the superseded `failed` records: one record per pair now.
    records = read_results(out)
    assert len(records) == 2 * len(CONTACTS)
    assert {(r["campaign_id"], r["status"]) for r in records} == {
        ("cmp_A", "removed"),
        ("cmp_B", "removed"),
    }


def test_a_shorter_queue_file_and_a_new_input_on_the_same_out_keep_the_old_records(
    tmp_path: Path, serve: Serve
) -> None:
    """The cron queue pattern: finished rows are deleted from the input, new ones appended;
    row numbers then point at other pairs. Rows recorded without a call (invalid,
    duplicate) speak only for the same row with the same cells."""
    pairs = [("cmp_a", c) for c in CONTACTS[:10]]
    api = Sandbox(pairs, faults=Faults(html_500=0.3), seed=4)
    env = cli_env(serve(api).base_url)
    out = tmp_path / "results.csv"
    day1 = write_csv(tmp_path / "day1.csv", [*pairs[:6], ("cmp_a", "bad"), pairs[0]])
    first = run_cli(run_args(day1, out, "--max-retries", "0"), env)
    assert first.returncode == 1, first.stdout + first.stderr
    answered = [line for line in lines(out)[1:] if line.split(",")[3] in DEFINITE]
    assert any(r["status"] == "failed" for r in read_results(out)), "compaction must run"
    api.faults = Faults()

    # Day 2: the first three rows are gone, the rest moved up, four new pairs at the end;
    # row 7 is no longer the invalid cell, row 5 is now invalid in another way.
    day2 = write_csv(
        tmp_path / "day2.csv",
        [*pairs[3:5], ("", "x"), pairs[5], *pairs[6:10], ("cmp_a", "bad")],
    )
    second_json = tmp_path / "day2.json"
    second = run_cli([*run_args(day2, out), "--summary-json", str(second_json)], env)

    assert second.returncode == 1, second.stdout + second.stderr  # invalid rows need a look
    assert all(line in lines(out) for line in answered), "a definite answer was dropped"
    assert all(n == 1 for n in api.state.deletes.values()), "a settled pair was resent"
    assert not api.state.enrolled & set(pairs[3:])
    data = summary(second_json)
    outcomes = data["outcomes"]
    assert isinstance(outcomes, dict)
    assert outcomes["removed"] == 7 and outcomes["invalid"] == 2 and data["unfinished"] == 0
    invalid = [r for r in read_results(out) if r["status"] == "invalid"]
    # Day 1's row 7 ("bad") and day 2's rows 3 and 9 each have their own record.
    assert sorted((r["row"], r["contact_id"]) for r in invalid) == [
        ("3", "x"),
        ("7", "bad"),
        ("9", "bad"),
    ]

    again = run_cli(run_args(day1, out), env)  # day 1's file again: only its failed rows
    assert again.returncode == 1, again.stdout + again.stderr
    assert all(n == 1 for n in api.state.deletes.values() if n)
    assert not api.state.enrolled
    assert sum(r["status"] == "duplicate" for r in read_results(out)) == 1


def test_a_last_record_without_its_newline_is_kept(tmp_path: Path, serve: Serve) -> None:
    pairs = [("cmp_a", c) for c in CONTACTS[:5]]
    api = Sandbox(pairs)
    env = cli_env(serve(api).base_url)
    inp, out = write_csv(tmp_path / "in.csv", pairs), tmp_path / "results.csv"
    assert run_cli(run_args(inp, out), env).returncode == 0
    saved = out.read_text().rstrip("\n")  # as a script or an editor may save it
    out.write_text(saved)

    rerun = run_cli(run_args(inp, out), env)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert out.read_text() == saved + "\n"
    assert all(n == 1 for n in api.state.deletes.values())
    assert [r["status"] for r in read_results(out)] == ["removed"] * 5


def test_a_torn_last_record_is_redone(tmp_path: Path, serve: Serve) -> None:
    pairs = [("cmp_a", c) for c in CONTACTS[:5]]
    api = Sandbox(pairs)
    env = cli_env(serve(api).base_url)
    inp, out = write_csv(tmp_path / "in.csv", pairs), tmp_path / "results.csv"
    assert run_cli(run_args(inp, out), env).returncode == 0
    whole = out.read_text()
    out.write_text(whole[: -len("3Z\n")])  # killed in the middle of the timestamp

    rerun = run_cli(run_args(inp, out), env)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    records = read_results(out)
    assert len(records) == 5 and sum(r["status"] == "not_enrolled" for r in records) == 1


def resave_like_excel(out: Path) -> bytes:
    """A results file as Excel in a European locale saves it: a byte-order mark, ';'
    between cells, CRLF, a column added by a person, and no final line break."""
    frame = pl.read_csv(out, infer_schema=False).with_columns(pl.lit("checked").alias("notes"))
    text = frame.write_csv(separator=";", line_terminator="\r\n").rstrip("\r\n")
    data = "\ufeff".encode() + text.encode()
    out.write_bytes(data)
    return data


def test_a_results_file_resaved_by_excel_is_read_back_not_resent(
    tmp_path: Path, serve: Serve
) -> None:
    pairs = [("cmp_a", c) for c in CONTACTS[:8]]
    api = Sandbox(pairs[:4])  # half enrolled: removed and not_enrolled records
    env = cli_env(serve(api).base_url)
    inp, out = write_csv(tmp_path / "in.csv", pairs), tmp_path / "results.csv"
    assert run_cli(run_args(inp, out), env).returncode == 0
    before = read_results(out)
    resaved = resave_like_excel(out)

    report = run_cli(["report", str(out), "--json"], env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["outcomes"]["removed"] == 4

    rerun = run_cli(run_args(inp, out), env)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "re-saved by another program" in rerun.stdout + rerun.stderr
    assert all(n == 1 for n in api.state.deletes.values()), "a settled pair was resent"
    assert out.read_text().startswith(HEADER)
    assert read_results(out) == before
    backups = list(tmp_path.glob("results.resaved-*.csv"))
    assert len(backups) == 1 and backups[0].read_bytes() == resaved


def test_a_file_that_is_no_results_file_is_refused_untouched(tmp_path: Path, serve: Serve) -> None:
    env = cli_env(serve(Sandbox()).base_url)
    inp = write_csv(tmp_path / "in.csv", [("cmp_a", CONTACTS[0])])
    out = tmp_path / "notes.csv"
    out.write_text("name,email\nAda,ada@example.com\n")

    result = run_cli(run_args(inp, out), env)

    assert result.returncode == 74
    assert "Nothing was changed" in result.stderr and "header line back" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_text() == "name,email\nAda,ada@example.com\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "notes.csv"]  # no .lock


class Gated(Sandbox):
    """A sandbox whose answers wait while its gate is shut: a run holds its lock until the
    test opens it, however slowly the machine starts the other processes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()

    def handle(
        self, method: str, path: str, headers: dict[str, str], payload: bytes = b""
    ) -> tuple[str, int, dict[str, str], bytes]:
        assert self.gate.wait(60), "the test never opened the gate"
        return super().handle(method, path, headers, payload)


def test_a_symlinked_out_shares_the_lock_and_stays_a_link(tmp_path: Path, serve: Serve) -> None:
    pairs = [("cmp_a", c) for c in CONTACTS[:6]]
    api = Gated(pairs, faults=Faults(html_500=0.4), seed=2)
    server = serve(api)
    env = cli_env(server.base_url)
    inp = write_csv(tmp_path / "in.csv", pairs)
    target, link = tmp_path / "t.csv", tmp_path / "link.csv"
    link.symlink_to(target.name)
    first = run_cli(run_args(inp, link, "--max-retries", "0"), env)
    assert first.returncode == 1, first.stdout + first.stderr
    assert any(r["status"] == "failed" for r in read_results(target))
    api.faults = Faults()
    api.gate.clear()

    other = write_csv(tmp_path / "other.csv", [("cmp_b", c) for c in CONTACTS[:20]])
    slow = spawn_cli(run_args(inp, target, "--concurrency", "1"), env, tmp_path / "logs")
    try:
        wait_until(lambda: (tmp_path / "t.csv.lock").exists(), slow)
        second = run_cli(run_args(other, link), env)
        assert second.returncode == 74 and "another run is using" in second.stderr
    finally:
        api.gate.set()
        assert slow.wait(60) == 0

    assert link.is_symlink() and os.readlink(link) == target.name  # compaction kept the link
    assert [r["status"] for r in read_results(target)] == ["removed"] * 6
    assert not (tmp_path / "link.csv.sent").exists()
    assert sorted(p.name for p in tmp_path.glob("*.csv.*")) == ["t.csv.sent"]


def test_companions_of_a_moved_results_file_never_speak_for_a_new_job(
    tmp_path: Path, serve: Serve
) -> None:
    """The cron recipe moved the results away and left `.sent` behind: the next job under
    the same name blamed its not_enrolled answers on the previous job's lost answers."""
    pairs = [("cmp_a", c) for c in CONTACTS[:12]]
    api = Sandbox(pairs[:6], faults=Faults(hang_after=1.0))  # removes, never answers
    env = cli_env(serve(api).base_url)
    queue, done = tmp_path / "queue", tmp_path / "done"
    queue.mkdir()
    done.mkdir()
    inp, out = write_csv(queue / "unenroll.csv", pairs[:6]), queue / "results.csv"
    killed = spawn_cli(run_args(inp, out, "--concurrency", "3"), env, tmp_path / "logs")
    wait_until(lambda: len(api.state.removed) == 3, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    api.faults = Faults()
    assert run_cli(run_args(inp, out), env).returncode == 0
    shutil.move(out, done / out.name)  # only the results file, as the old recipe did
    assert (queue / "results.csv.sent").exists()

    nxt = write_csv(queue / "unenroll.csv", pairs[:3] + pairs[6:])  # already gone: not enrolled
    result = run_cli(run_args(nxt, out), env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "its results file is gone" in result.stdout + result.stderr
    details = [r["detail"] for r in read_results(out)]
    assert not any("may have removed" in d for d in details), details


def test_a_replaced_results_file_sets_old_marks_aside(tmp_path: Path, serve: Serve) -> None:
    pairs = [("cmp_a", c) for c in CONTACTS[:6]]
    api = Sandbox(pairs, faults=Faults(hang_after=1.0))
    env = cli_env(serve(api).base_url)
    inp, out = write_csv(tmp_path / "in.csv", pairs), tmp_path / "results.csv"
    killed = spawn_cli(run_args(inp, out, "--concurrency", "2"), env, tmp_path / "logs")
    wait_until(lambda: len(api.state.removed) == 2, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    api.faults = Faults()
    replacement = tmp_path / "other.csv"
    replacement.write_text(HEADER)
    replacement.replace(out)  # another job's (empty) results file, put in its place

    result = run_cli(run_args(inp, out), env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "set results.csv.sent aside" in result.stdout + result.stderr
    assert len(list(tmp_path.glob("results.csv.sent.orphaned-*"))) == 1
    assert not any("may have removed" in r["detail"] for r in read_results(out))


def _reading(pid: int, path: Path) -> bool:
    """Whether the process has `path` open or mapped."""
    with contextlib.suppress(OSError):
        if str(path) in Path(f"/proc/{pid}/maps").read_text(errors="replace"):
            return True
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == str(path):
                    return True
    return False


def test_an_interrupt_while_planning_sends_nothing_even_when_sigint_was_ignored(
    tmp_path: Path, serve: Serve
) -> None:
    """`cmd &` from a script starts the run with SIGINT ignored; polars then takes SIGINT
    on import and an interrupt cut planning short silently (a plan of 600,000 rows of a
    6,000,000-row file, and sending began)."""
    api = Sandbox()
    env = cli_env(serve(api).base_url)
    inp, out = tmp_path / "big.csv", tmp_path / "results.csv"
    pl.DataFrame(
        {"campaign_id": ["cmp_a"] * 3_000_000, "contact_id": pl.int_range(3_000_000, eager=True)}
    ).select(
        "campaign_id",
        pl.format("00000000-0000-4000-8000-{}", pl.col("contact_id").cast(pl.String).str.zfill(12)),
    ).write_csv(inp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulk_unenroll", *run_args(inp, out)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 60
    while not _reading(proc.pid, inp):  # planning has begun: interrupt it
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 130, stdout + stderr
    assert "nothing was sent" in stderr
    assert api.state.calls == 0
    assert not out.exists() or read_results(out) == []


KILLED_WHILE_TIDYING = """
import os, signal, sys
from pathlib import Path
from bulk_unenroll.results import records
from bulk_unenroll.results.journal import Journal

def half_then_die(path, dst, drop, expected):
    dst.write(records.HEADER + "1,cmp_a,half")
    dst.flush()
    os.kill(os.getpid(), signal.SIGKILL)

records.drop_records = half_then_die
Journal(Path(sys.argv[1])).close()  # failed records before: closing tidies the file
"""


def test_a_kill_while_tidying_leaves_the_file_whole_and_no_copy_behind(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    lines = [
        "1,cmp_a,00000000-0000-4000-8000-000000000001,failed,503,,1,,HTTP 503,2026-01-01T00:00:00Z",
        "1,cmp_a,00000000-0000-4000-8000-000000000001,removed,200,,1,req_1,,2026-01-01T00:00:01Z",
    ]
    out.write_text(HEADER + "\n".join(lines) + "\n")
    before = out.read_bytes()

    child = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_TIDYING, str(out)], capture_output=True, timeout=60
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    assert out.read_bytes() == before
    # The half-written copy had no name (or is removed by the next run where it had one).
    leftovers = {p.name for p in tmp_path.iterdir()} - {"results.csv", "results.csv.sent"}
    assert leftovers <= {"results.csv.lock"}, leftovers
    Journal(out).close()  # the next run tidies the file for real
    assert [r["status"] for r in read_results(out)] == ["removed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.csv.sent"]


def test_the_writer_records_what_it_holds_when_the_last_worker_closes_meanwhile(
    tmp_path: Path,
) -> None:
    """The writer drains what has piled up without waiting; if the last worker closes its end
    in the meantime (a restore's batches end that way now and then), the answers already taken
    are still written, not lost to an internal error. No public seam reaches the writer, so
    the test drives it directly."""
    job = Job.__new__(Job)
    job.summary = Summary()
    journal = Journal(tmp_path / "results.csv")
    answers = [
        [RowResult(row, "cmp_a", new_uuid(row), Outcome.REMOVED, 200, attempts=1)] for row in (1, 2)
    ]

    async def write_all() -> None:
        send, receive = anyio.create_memory_object_stream[list[RowResult]](10)
        for batch in answers:
            await send.send(batch)
        send.close()  # all workers done: the writer's second drain meets the end of the stream
        await job._writer(journal, receive)

    anyio.run(write_all)
    journal.close()
    assert [r["row"] for r in read_results(tmp_path / "results.csv")] == ["1", "2"]
    assert job.summary.outcomes[Outcome.REMOVED] == 2
