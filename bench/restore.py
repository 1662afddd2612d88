"""Quota economy of `restore`: calls per restored pair on a large restore.

    python -m bench.restore [--pairs N] [--campaigns SIZES]

Writes a run's results file with N `removed` pairs spread over campaigns of the given sizes
(uneven, as real runs are), serves an empty sandbox with those campaigns, runs `restore` as a
user does (the CLI in a child process, --plan org), and counts the calls the sandbox received.
Target: at most 1 call per 400 restored pairs.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path
from typing import Any

from bulk_unenroll.results.records import COLUMNS
from bulk_unenroll.sandbox import Sandbox, SandboxThread

from .common import cli, cli_env, pairs, report, timed_child

TARGET = 1 / 400
SIZES = "9000,6000,3500,1500"
"""20,000 removed pairs over four campaigns of uneven size."""


def write_results(path: Path, campaigns: list[int]) -> list[tuple[str, str]]:
    """A run's results file marking every pair removed; the pairs it holds."""
    removed: list[tuple[str, str]] = []
    for index, size in enumerate(campaigns):
        campaign = f"cmp_bench_{index}"
        removed += [(campaign, contact) for _, contact in pairs(size, start=len(removed))]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row, (campaign, contact) in enumerate(removed, 1):
            writer.writerow(
                [row, campaign, contact, "removed", 200, "", 1, "", "", "2026-11-24T10:00:00Z"]
            )
    return removed


def measure(campaigns: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        removed = write_results(work / "results.csv", campaigns)
        api = Sandbox(campaigns={c for c, _ in removed})
        with SandboxThread(api) as server:
            run = timed_child(
                cli(
                    "restore",
                    str(work / "results.csv"),
                    "--out",
                    str(work / "restore.csv"),
                    "--plan",
                    "org",
                    "--yes",
                    "-q",
                ),
                cli_env(server.base_url),
            )
        if run.returncode != 0:
            raise SystemExit(f"the restore failed ({run.returncode}): {run.stderr[-2000:]}")
    restored = len(api.state.added)
    if api.state.enrolled != set(removed):
        raise SystemExit("the sandbox's enrollments are not the removed pairs")
    calls = api.state.calls
    return {
        "removed pairs": len(removed),
        "campaigns": len(campaigns),
        "pairs restored (sandbox)": restored,
        "calls": calls,
        "largest batch": max(len(ids) for _, ids in api.state.adds),
        "calls per restored pair": f"{calls / restored:.5f} (1/{restored / calls:,.0f})",
        "target: calls per pair at most": f"{TARGET:.5f} (1/400)",
        "met": "yes" if calls / restored <= TARGET else "NO",
        "wall time, s": run.wall,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--campaigns", default=SIZES, help="Removed pairs per campaign.")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.campaigns.split(",")]
    return report(f"restore: calls per restored pair ({sum(sizes):,} pairs)", measure(sizes))


if __name__ == "__main__":
    main()
