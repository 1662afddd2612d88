"""Pacing accuracy against a strict sliding window that enforces exactly the configured rate.

    python -m bench.pacing [--per-second] [--per-minute] [--unknown] [--seconds S] [--minutes M]

The sandbox (own process) refuses any call that would make more than the limit in the last
window, measured to the microsecond on arrival. The CLI runs with `--rate` set to that very
limit; it must see no 429 and reach at least 97% of the rate (its margin is 2%).

`--unknown`: the same window (300 per minute), but the CLI is not told the rate and the API
reports no daily limit, so it starts at Starter's 9.8/min and must find the limit: at least
90% of it within two minutes, with a handful of 429s at most.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bulk_unenroll.config import Rate

from .common import Server, cli, cli_env, pairs, report, timed_child, write_input


def measure(limit: str, seconds: float) -> dict[str, Any]:
    rate = Rate.parse(limit)
    rows = int(rate.per_second * seconds)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inp = write_input(work / "in.csv", pairs(rows))
        with Server(work, "--pairs", str(rows), "--rate-limit", limit) as server:
            run = timed_child(
                cli(
                    "run", str(inp), "--out", str(work / "out.csv"), "--rate", limit, "--yes", "-q"
                ),
                cli_env(server.base_url),
                timeout=seconds * 3 + 120,
            )
        if run.returncode != 0:
            raise SystemExit(f"the tool failed ({run.returncode}): {run.stderr[-2000:]}")
    stats = server.stats
    achieved = stats.achieved_per_second()
    return {
        "strict sliding window": f"{rate.calls:g} per {rate.period:g} s",
        "--rate": limit,
        "rows": rows,
        "duration of sending, s": stats.admitted[-1] - stats.admitted[0],
        "achieved rate, /s": achieved,
        "achieved / configured": achieved / rate.per_second,
        "429s": stats.rate_limited,
        "busiest window seen by the server": stats.busiest_window(rate.period),
    }


def measure_unknown(limit: str, rows: int) -> dict[str, Any]:
    """Find an unknown per-minute limit: how soon a minute holds 90% of it, at what cost."""
    rate = Rate.parse(limit)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inp = write_input(work / "in.csv", pairs(rows))
        summary = work / "summary.json"
        with Server(work, "--pairs", str(rows), "--rate-limit", limit) as server:
            run = timed_child(
                cli(
                    "run",
                    str(inp),
                    "--out",
                    str(work / "out.csv"),
                    "--yes",
                    "-q",
                    "--summary-json",
                    str(summary),
                ),
                cli_env(server.base_url),
                timeout=rows / rate.per_second * 3 + 300,
            )
            learnt = json.loads(summary.read_text())["learnt_rate"]
        if run.returncode != 0:
            raise SystemExit(f"the tool failed ({run.returncode}): {run.stderr[-2000:]}")
    stats = server.stats
    times, start = stats.admitted, stats.admitted[0]
    reached = next(
        (
            t - start
            for t, n in zip(times, stats.window_counts(rate.period), strict=True)
            if n >= rate.calls * 0.9
        ),
        None,
    )
    minutes = [0] * (int((times[-1] - start) // 60) + 1)
    for t in times:
        minutes[int((t - start) // 60)] += 1
    return {
        "strict sliding window": f"{rate.calls:g} per {rate.period:g} s (not told to the CLI)",
        "rows": rows,
        "limit found (summary learnt_rate)": learnt,
        "a window held 90% of the limit after, s": reached,
        "429s in total": stats.rate_limited,
        "busiest window seen by the server": stats.busiest_window(rate.period),
        "calls in each minute of sending": ", ".join(map(str, minutes)),
        "duration of sending, s": times[-1] - start,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-second", action="store_true", help="Only the 40/s case.")
    parser.add_argument("--per-minute", action="store_true", help="Only the 120/min case.")
    parser.add_argument(
        "--unknown", action="store_true", help="Only the unknown 300/min limit case."
    )
    parser.add_argument("--rows", type=int, default=600, help="Rows of the unknown case.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of the 40/s case.")
    parser.add_argument("--minutes", type=float, default=3.0, help="Length of the 120/min case.")
    args = parser.parse_args(argv)
    both = not (args.per_second or args.per_minute or args.unknown)
    figures: dict[str, Any] = {}
    if both or args.per_second:
        figures["40/s"] = report(
            "pacing accuracy, 40/s strict 1 s sliding window", measure("40/s", args.seconds)
        )
    if both or args.per_minute:
        figures["120/min"] = report(
            "pacing accuracy, 120/min strict 60 s sliding window",
            measure("120/min", args.minutes * 60),
        )
    if both or args.unknown:
        figures["unknown 300/min"] = report(
            "finding an unknown limit, 300/min strict 60 s sliding window",
            measure_unknown("300/min", args.rows),
        )
    return figures


if __name__ == "__main__":
    main()
