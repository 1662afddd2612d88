"""Latency hiding: a slow API must not cap the rate. The tool picks its own in-flight count.

    python -m bench.latency [--rows N] [--latency S] [--rate R]

The sandbox (own process) answers every call after `--latency` seconds; the CLI runs with
`--rate` only (no --concurrency), so reaching the rate means it chose enough requests in flight.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bulk_unenroll.limits import Rate

from .common import Server, cli, cli_env, pairs, report, timed_child, write_input


def measure(rows: int, latency: float, rate: str) -> dict[str, Any]:
    configured = Rate.parse(rate).per_second
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inp = write_input(work / "in.csv", pairs(rows))
        with Server(work, "--pairs", str(rows), "--latency", str(latency)) as server:
            run = timed_child(
                cli("run", str(inp), "--out", str(work / "out.csv"), "--rate", rate, "--yes", "-q"),
                cli_env(server.base_url),
            )
        if run.returncode != 0:
            raise SystemExit(f"the tool failed ({run.returncode}): {run.stderr[-2000:]}")
    stats = server.stats
    achieved = stats.achieved_per_second()
    return {
        "server latency, s": latency,
        "configured rate, /s": configured,
        "rows": rows,
        "achieved rate, /s": achieved,
        "achieved / configured": achieved / configured,
        "needed in flight (rate x latency)": configured * latency,
        "429s": stats.rate_limited,
        "tool CPU s per 1,000 requests": run.cpu / rows * 1000,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--rate", default="100/s")
    args = parser.parse_args(argv)
    return report(
        f"latency hiding ({args.latency * 1000:.0f} ms per call, --rate {args.rate})",
        measure(args.rows, args.latency, args.rate),
    )


if __name__ == "__main__":
    main()
