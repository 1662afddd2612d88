"""What `verify` costs in calls: 20 campaigns, a run that removed some pairs from each, then
`verify` of its results file against the sandbox (real HTTP on loopback, the CLI as a user
runs it), with some pairs re-enrolled behind the run's back.

    python -m bench.verify_cost                       # 20 campaigns x (50 removed + 1,000 left)
    python -m bench.verify_cost --left 50             # small campaigns: one page each
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bulk_unenroll.sandbox import Pair, Sandbox, running


def _pairs(campaigns: int, per_campaign: int, offset: int) -> list[Pair]:
    return [
        (f"cmp_{c:02d}", str(uuid.UUID(int=(c << 40) + offset + i, version=4)))
        for c in range(campaigns)
        for i in range(per_campaign)
    ]


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bulk_unenroll", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.verify_cost")
    parser.add_argument("--campaigns", type=int, default=20)
    parser.add_argument("--removed", type=int, default=50, help="Pairs removed per campaign.")
    parser.add_argument("--left", type=int, default=1000, help="Enrollments left per campaign.")
    parser.add_argument("--again", type=int, default=10, help="Pairs re-enrolled in all.")
    a = parser.parse_args(argv)
    removed = _pairs(a.campaigns, a.removed, 0)
    api = Sandbox(removed + _pairs(a.campaigns, a.left, 1 << 30))
    with running(api) as server, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LEADLEX_API_KEY": "wbk_bench", "LEADLEX_BASE_URL": server.base_url}
        rows = Path(tmp) / "in.csv"
        with rows.open("w", newline="") as f:
            csv.writer(f).writerows([("campaign_id", "contact_id"), *removed])
        results = Path(tmp) / "results.csv"
        run = _cli(["run", str(rows), "--out", str(results), "--rate", "unlimited", "-y"], env)
        assert run.returncode == 0, run.stderr
        api.enroll(removed[:: max(1, len(removed) // a.again)][: a.again])
        calls = api.state.calls
        done = _cli(["verify", str(results), "--rate", "unlimited"], env)
        spent = api.state.calls - calls
    print(done.stdout.strip())
    pairs = len(removed)
    print(
        f"{a.campaigns} campaigns, {pairs:,} pairs to check, {a.left:,} other enrollments per "
        f"campaign: {spent:,} calls ({spent / pairs:.3f} per pair; a DELETE per pair: "
        f"{pairs:,}), exit {done.returncode}"
    )


if __name__ == "__main__":
    main()
