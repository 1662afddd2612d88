"""Calls per input row of `run --check-enrollment` on a cross product, and whether it was right.

    python -m bench.check_enrollment [--campaigns 20] [--contacts 1000] [--enrolled 0.05]
                                     [--others 250] [--churn 0.5] [--seed 1] [--no-baseline]

The input names every contact in every campaign (20 x 1,000 = 20,000 rows); 5% of the pairs
are enrolled. Scenarios, each on a fresh sandbox: the cross product as such; the same while
the sandbox plays a second client (`--churn`) during every listing; campaigns that also hold
`--others` contacts the input does not name (several pages each), with and without that second
client; and the baseline without the flag (one DELETE per row). The sandbox runs in this
process (its state is the judge); the tool runs as a user runs it, the CLI in a child process,
at `--rate unlimited` (calls per row do not depend on the pace).

Right means: every enrolled pair of the input removed, none left enrolled, no row settled
`not_enrolled` while it was enrolled (unless the second client removed it), no pair sent twice.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bulk_unenroll.sandbox import Pair, Sandbox, SandboxThread

from .common import cli, cli_env, report, run_child, write_input


def cross_product(campaigns: int, contacts: int) -> list[Pair]:
    names = [f"cmp_{i:03d}" for i in range(campaigns)]
    people = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(contacts)]
    return [(c, p) for c in names for p in people]


def judge(rows: list[Pair], enrolled: set[Pair], api: Sandbox, out: Path) -> dict[str, Any]:
    """What the results and the sandbox say, as figures; `right` when all of it holds."""
    st = api.state
    with out.open(newline="", encoding="utf-8") as f:
        final = {int(r["row"]): r for r in csv.DictReader(f)}
    wrong = sum(
        1
        for row, r in final.items()
        if r["status"] == "not_enrolled"
        and rows[row - 1] in enrolled
        and rows[row - 1] not in st.churned_out
    )
    should_go = (enrolled - st.churned_out) | (st.churned_in & set(rows))  # and re-enrolled
    removed = len(should_go & set(st.removed))
    left = len(set(rows) & st.enrolled)
    twice = sum(1 for n in st.deletes.values() if n > 1)
    right = wrong == 0 and left == 0 and twice == 0 and len(final) == len(rows)
    return {
        "input rows": len(rows),
        "calls": st.calls,
        "calls per input row": st.calls / len(rows),
        "listing pages": st.pages,
        "DELETEs": sum(st.deletes.values()),
        "enrolled pairs removed": f"{removed:,} of {len(should_go):,}",
        "settled not_enrolled while enrolled": wrong,
        "input pairs left enrolled": left,
        "pairs sent twice": twice,
        "second client: removed / enrolled": f"{len(st.churned_out)} / {len(st.churned_in)}",
        "right": "yes" if right else "NO",
    }


def scenario(
    title: str, rows: list[Pair], args: argparse.Namespace, *, others: int, churn: float, flag: bool
) -> dict[str, Any]:
    rnd = random.Random(args.seed)
    enrolled = {pair for pair in rows if rnd.random() < args.enrolled}
    campaigns = sorted({c for c, _ in rows})
    filler = [
        (c, str(uuid.UUID(int=(i + 1) << 64 | n, version=4)))
        for i, c in enumerate(campaigns)
        for n in range(others)
    ]
    api = Sandbox([*filler, *enrolled], campaigns=campaigns, churn=churn, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp, SandboxThread(api) as server:
        work = Path(tmp)
        inp = write_input(work / "in.csv", rows)
        command = ["run", str(inp), "--out", str(work / "out.csv"), "--rate", "unlimited"]
        command += ["--yes", "-q", *(["--check-enrollment"] if flag else [])]
        run = run_child(cli(*command), cli_env(server.base_url))
        if run.returncode != 0:
            raise SystemExit(f"{title}: the tool failed ({run.returncode}): {run.stderr[-2000:]}")
        figures = judge(rows, enrolled, api, work / "out.csv")
    figures["wall s"] = run.wall
    return report(title, figures)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--campaigns", type=int, default=20)
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--enrolled", type=float, default=0.05)
    parser.add_argument("--others", type=int, default=250)
    parser.add_argument("--churn", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    rows = cross_product(args.campaigns, args.contacts)
    size = f"{args.campaigns} campaigns x {args.contacts:,} contacts, {args.enrolled:.0%} enrolled"
    more = f"+ {args.others} other contacts per campaign"
    second = f"a second client (churn {args.churn:g})"
    plans = [
        (f"--check-enrollment: {size}", 0, 0.0, True),
        (f"--check-enrollment: {size}, {second}", 0, args.churn, True),
        (f"--check-enrollment: {size} {more}", args.others, 0.0, True),
        (f"--check-enrollment: {size} {more}, {second}", args.others, args.churn, True),
    ]
    if not args.no_baseline:
        plans.append((f"without the flag (baseline): {size}", 0, 0.0, False))
    return {
        title: scenario(title, rows, args, others=others, churn=churn, flag=flag)
        for title, others, churn, flag in plans
    }


if __name__ == "__main__":
    main()
