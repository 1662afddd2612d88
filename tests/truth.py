"""A mixed input file whose right answer is known, and the check that results tell the truth.

Shared by the fault, signal and crash tests: each row's kind decides what its final status
must be, and the sandbox's own record (`State.removed`) is the judge of every `removed`.
"""

from __future__ import annotations

import csv
import io
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import launch
from conftest import new_uuid, write_csv

from bulk_unenroll.sandbox import Faults, Pair, Sandbox

LOST = "an earlier attempt may have removed it"
ENROLLED, NOT_ENROLLED, UNKNOWN_CAMPAIGN, MALFORMED, DUPLICATE = (
    "enrolled",
    "not_enrolled",
    "unknown_campaign",
    "malformed",
    "duplicate",
)
MALFORMED_CELLS = [
    ("", "{contact}"),
    ("{campaign}", ""),
    ("{campaign}", "not-a-uuid"),
    ("cmp/../admin", "{contact}"),
    ("{campaign}", "{contact}x"),
]


@dataclass
class Mixed:
    """An input file: per row (from 1) its pair and kind, and the pairs the sandbox enrols."""

    path: Path
    rows: list[tuple[str, str]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    enrolled: set[Pair] = field(default_factory=set)
    campaigns: set[str] = field(default_factory=set)

    def sandbox(self, faults: Faults | None = None, **kw: Any) -> Sandbox:
        return Sandbox(self.enrolled, campaigns=self.campaigns, faults=faults, **kw)

    @property
    def valid_pairs(self) -> set[Pair]:
        return {norm(*p) for p, k in zip(self.rows, self.kinds, strict=True) if k != MALFORMED}


def mixed_file(path: Path, n: int, seed: int = 7) -> Mixed:
    """About half enrolled pairs, then not enrolled, unknown campaigns, malformed, duplicates."""
    rnd = random.Random(seed)
    known = [new_uuid(rnd.getrandbits(128)) for _ in range(6)] + ["cmp_abc123", "cmp-spring_2"]
    unknown = [new_uuid(rnd.getrandbits(128)), "cmp_deleted"]
    mixed = Mixed(path, campaigns=set(known))
    sendable: list[int] = []
    for _ in range(n):
        roll = rnd.random()
        contact = new_uuid(rnd.getrandbits(128))
        if roll < 0.12 and sendable:
            campaign, contact = mixed.rows[rnd.choice(sendable)]
            # The same pair written differently: spaces and UUID case are normalised away.
            pair, kind = (f" {campaign} ", contact.upper()), DUPLICATE
        elif roll < 0.55:
            pair, kind = (rnd.choice(known), contact), ENROLLED
            mixed.enrolled.add(pair)
        elif roll < 0.80:
            pair, kind = (rnd.choice(known), contact), NOT_ENROLLED
        elif roll < 0.92:
            pair, kind = (rnd.choice(unknown), contact), UNKNOWN_CAMPAIGN
        else:
            campaign_cell, contact_cell = rnd.choice(MALFORMED_CELLS)
            c = rnd.choice(known)
            pair = (campaign_cell.format(campaign=c), contact_cell.format(contact=contact))
            kind = MALFORMED
        if kind not in (MALFORMED, DUPLICATE):
            sendable.append(len(mixed.rows))
        mixed.rows.append(pair)
        mixed.kinds.append(kind)
    write_csv(path, mixed.rows)
    return mixed


def norm(campaign: str, contact: str) -> Pair:
    """A pair as the sandbox sees it (the tool trims ids and lower-cases UUIDs)."""
    campaign = campaign.strip()
    if re.fullmatch(r"[0-9a-fA-F-]{36}", campaign):
        campaign = campaign.lower()
    return campaign, contact.strip().lower()


def latest(records: Iterable[dict[str, str]]) -> dict[int, dict[str, str]]:
    """Each row's latest record (a rerun appends after a `failed` one until it compacts)."""
    return {int(r["row"]): r for r in records}


def check_record(row: int, kind: str, record: dict[str, str], removed: bool) -> None:
    """One settled row's record is what its kind of pair must end as (`removed`: the API
    removed the pair)."""
    status, detail = record["status"], record["detail"]
    if status == "removed":
        assert removed, f"row {row} claims a removal the API never made"
        assert kind == ENROLLED
        assert record["http_status"] == "200" and record["request_id"].startswith("req_")
    elif kind == ENROLLED:
        # The answer to the removal was lost; a later attempt found nothing to remove.
        assert status == "not_enrolled", f"row {row}: {record}"
        assert LOST in detail, f"row {row}: {record}"
        assert removed
    elif kind == NOT_ENROLLED:
        assert status == "not_enrolled", f"row {row}: {record}"
        assert record["error_code"] == "enrollment_not_found"
    elif kind == UNKNOWN_CAMPAIGN:
        assert status == "rejected", f"row {row}: {record}"
        assert record["error_code"] == "campaign_not_found"
    elif kind == MALFORMED:
        assert status == "invalid", f"row {row}: {record}"
    else:
        assert status == "duplicate", f"row {row}: {record}"


def check_truth(
    mixed: Mixed,
    results: Path,
    sandbox: Sandbox,
    *,
    complete: bool = True,
    allow_failed: bool = False,
) -> Counter[str]:
    """Every recorded row is truthful; with `complete`, every row is recorded and done.

    Returns the count of final statuses, plus `lost` for not_enrolled-after-a-lost-answer.
    """
    records = read_whole_lines(results)
    final = latest(records)
    removed_by_api = set(sandbox.state.removed)
    counts: Counter[str] = Counter()
    if complete:
        assert sorted(final) == list(range(1, len(mixed.rows) + 1))
        assert len(records) == len(final), "a finished job keeps one record per row"
    for row, record in final.items():
        kind = mixed.kinds[row - 1]
        pair = norm(*mixed.rows[row - 1])
        status, detail = record["status"], record["detail"]
        counts[status] += 1
        if status == "failed":
            assert allow_failed, f"row {row} failed: {record}"
            assert kind not in (MALFORMED, DUPLICATE)
            continue
        check_record(row, kind, record, removed=pair in removed_by_api)
        if status == "not_enrolled" and LOST in detail:
            counts["lost"] += 1
    # Nothing the API removed goes unreported as anything but removed or lost-then-not-found.
    for row, record in final.items():
        pair = norm(*mixed.rows[row - 1])
        if pair in removed_by_api and mixed.kinds[row - 1] == ENROLLED:
            assert record["status"] in ("removed", "not_enrolled", "failed")
    if complete and not allow_failed:
        assert not (mixed.enrolled & sandbox.state.enrolled), "an enrolled pair was left"
    return counts


def spawn_cli(args: Sequence[str], env: dict[str, str], logs: Path) -> launch.Process:
    """Start the CLI as its own process (tests/launch.py), output to files (a full pipe would
    block it)."""
    logs.mkdir(exist_ok=True)
    with (logs / "stdout").open("ab") as stdout, (logs / "stderr").open("ab") as stderr:
        return launch.spawn(args, env, stdout, stderr)


def records_in(out: Path) -> int:
    """Whole records in a results file (header not counted; a torn last line not counted)."""
    try:
        data = out.read_bytes()
    except FileNotFoundError:
        return 0
    return max(0, data.count(b"\n") - 1)


def wait_until(done: Callable[[], bool], proc: launch.Process, timeout: float = 30) -> None:
    """Poll until `done()`; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, f"the run ended early with exit {proc.returncode}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.01)


def read_whole_lines(out: Path) -> list[dict[str, str]]:
    """The records of a results file a kill may have torn: the last partial line is dropped."""
    data = out.read_bytes()
    text = data[: data.rfind(b"\n") + 1].decode("utf-8")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def lost_in_summary(stdout: str) -> int:
    """The summary's count of not_enrolled-after-a-lost-answer rows (0 when not shown)."""
    match = re.search(r"([\d,]+) not_enrolled after a lost answer", stdout)
    return int(match[1].replace(",", "")) if match else 0
