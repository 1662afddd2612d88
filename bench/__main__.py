"""`make bench`: every benchmark, in about six minutes plus the input-scale run.

    python -m bench                      # all of them
    python -m bench --only pacing idle   # some: throughput latency pacing idle check input
                                         # restore verify results page
    python -m bench --quick              # smaller sizes, for a smoke test of the suite

Light, long benchmarks (the 3-minute per-minute pacing run, the searches for an unknown limit
counted per minute and per second, about 3 minutes each) go beside the others; heavy ones
(throughput, input scale) never overlap each other. Figures are printed as each finishes and
recorded by hand, with the command, in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import check_enrollment, idle, latency, pacing, restore, throughput, verify_cost

PARTS = (
    "throughput",
    "latency",
    "pacing",
    "idle",
    "check",
    "input",
    "restore",
    "verify",
    "results",
    "page",
)


def _at_scale(only: set[str], quick: bool) -> None:
    """Input and results files of millions of rows: heavy, so after the others, one by one."""
    if "input" in only:
        _input_scale(quick)
    if "results" in only:
        from . import results_scale

        results_scale.main(["--rows", "100000", "--repeat", "1"] if quick else [])
    if "page" in only:
        from . import page_scale

        page_scale.main(["--rows", "100000"] if quick else [])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="Smaller sizes (a smoke test).")
    parser.add_argument("--json", type=Path, help="Also write every figure to this file.")
    args = parser.parse_args()
    quick, only = args.quick, set(args.only)
    started = time.monotonic()
    figures: dict[str, Any] = {}

    with ThreadPoolExecutor(3) as beside:
        minute, unknown = None, []
        if "pacing" in only:
            minutes = ["--minutes", "1"] if quick else []
            minute = beside.submit(pacing.main, ["--per-minute", *minutes])
            rows = ["--rows", "330"] if quick else []
            unknown = [
                beside.submit(pacing.main, ["--unknown", "--limit", limit, *rows])
                for limit in pacing.UNKNOWN_LIMITS
            ]
        if "throughput" in only:
            rows = ["--rows", "3000", "--rounds", "1"] if quick else []
            figures["throughput"] = throughput.main(rows)
        if "latency" in only:
            figures["latency"] = latency.main(["--rows", "500"] if quick else [])
        if "pacing" in only:
            seconds = ["--seconds", "10"] if quick else []
            figures["pacing per second"] = pacing.main(["--per-second", *seconds])
        if "idle" in only:
            figures["idle"] = idle.main(["--wait", "15"] if quick else [])
        if "restore" in only:
            figures["restore"] = restore.main(["--campaigns", "1200,300"] if quick else [])
        if minute is not None:
            figures["pacing per minute"] = minute.result()
        for search in unknown:
            figures.setdefault("finding an unknown limit", {}).update(search.result())
    if "check" in only:
        sizes = ["--campaigns", "5", "--contacts", "400"] if quick else []
        figures["check enrollment"] = check_enrollment.main(sizes)
    if "verify" in only:
        print("\n== verify: calls for 20 campaigns")
        verify_cost.main(["--left", "50"] if quick else [])
    _at_scale(only, quick)

    print(f"\nall benchmarks done in {time.monotonic() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")


def _input_scale(quick: bool) -> None:
    try:
        from . import input_scale  # written beside this suite; absent in older checkouts
    except ImportError:
        print("\n== input scale: bench/input_scale.py is not there; skipped")
    else:
        input_scale.main(["--rows", "100000", "--repeat", "1"] if quick else [])


if __name__ == "__main__":
    main()
