"""Throughput without a rate limit: the tool against the floor of its stack, same server, same run.

    python -m bench.throughput [--rows N] [--concurrency C] [--rounds R]

One sandbox in its own process serves every round. Each round runs, one after the other:
- the CLI end to end as a user runs it (`bulk-unenroll run --rate unlimited`, a child process:
  interpreter start, reading and planning the file, sending, the results file);
- the library's sending phase alone (`Job.run()` in a child process, after `Job.plan()`);
- the floor: a minimal loop of httpx.AsyncClient DELETEs at the same concurrency (`bench.floor`),
  timed around its loop and, for the end-to-end comparison, as a whole child;
- the same loop over the tool's transport (one connection per pool), which separates the
  tool's own overhead from what its transport saves.
Every request is a real removal of a distinct enrolled pair. The best round of each is kept:
the machine is shared, and noise only ever slows a run down.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bulk_unenroll.config import UNLIMITED_WORKERS

from .common import ChildRun, Server, cli, cli_env, pairs, report, timed_child, write_input

LIBRARY_RUN = """
import json, sys, time, anyio
from pathlib import Path
from bulk_unenroll import JobConfig, Secret
from bulk_unenroll.limits import UNLIMITED
from bulk_unenroll.send.runner import Job
from bench.common import API_KEY

inp, out, url, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = JobConfig(input=Path(inp), out=Path(out), api_key=Secret(API_KEY), base_url=url,
                rate=UNLIMITED, concurrency=concurrency)

async def main():
    job = Job(cfg)
    await job.plan()
    wall, cpu = time.perf_counter(), time.process_time()
    summary = await job.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "calls": summary.calls}))

anyio.run(main, backend="asyncio")
"""


def per_second(n: int, wall: float) -> float:
    return n / wall


def measure(rows: int, concurrency: int, rounds: int) -> dict[str, Any]:
    best: dict[str, tuple[float, float]] = {}

    def keep(name: str, wall: float, cpu: float) -> None:
        if name not in best or wall < best[name][0]:
            best[name] = (wall, cpu)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with Server(work, "--pairs", str(rows * 4 * rounds)) as server:
            env = cli_env(server.base_url)
            start = 0

            def floor(first_row: int, *how: str) -> ChildRun:
                """The bare httpx loop (bench/floor.py) over `rows` pairs from `first_row`."""
                command = ["-m", "bench.floor", server.base_url, str(rows), str(concurrency)]
                return timed_child([sys.executable, *command, str(first_row), *how], env)

            for round_ in range(rounds):
                inp = write_input(work / f"cli-{round_}.csv", pairs(rows, start))
                run = timed_child(
                    cli(
                        "run",
                        str(inp),
                        "--out",
                        str(work / f"cli-{round_}.out.csv"),
                        "--rate",
                        "unlimited",
                        "--concurrency",
                        str(concurrency),
                        "--yes",
                        "--quiet",
                    ),
                    env,
                )
                if run.returncode != 0:
                    raise SystemExit(f"the tool failed ({run.returncode}): {run.stderr[-2000:]}")
                keep("tool, CLI end to end", run.wall, run.cpu)
                start += rows

                inp = write_input(work / f"lib-{round_}.csv", pairs(rows, start))
                lib = timed_child(
                    [
                        sys.executable,
                        "-c",
                        LIBRARY_RUN,
                        str(inp),
                        str(work / f"lib-{round_}.out.csv"),
                        server.base_url,
                        str(concurrency),
                    ],
                    env,
                )
                child = json.loads(lib.stdout)
                assert child["calls"] == rows, child
                keep("tool, library Job.run()", child["wall"], child["cpu"])
                start += rows

                loop = floor(start)
                inner = json.loads(loop.stdout)
                keep("floor, httpx loop", inner["wall"], inner["cpu"])
                keep("floor, as a whole child", loop.wall, loop.cpu)
                start += rows

                pooled = floor(start, "pooled")
                inner = json.loads(pooled.stdout)
                keep("same loop over the tool's one-connection pools", inner["wall"], inner["cpu"])
                start += rows
        stats = server.stats
    assert stats.removed == rows * 4 * rounds, "a request did not remove its pair"

    figures: dict[str, Any] = {"rows per run": rows, "concurrency": concurrency}
    for name, (wall, cpu) in best.items():
        figures[f"{name}: req/s"] = per_second(rows, wall)
        figures[f"{name}: CPU s per 1,000 req"] = cpu / rows * 1000
    tool = best["tool, library Job.run()"][0]
    loop_wall = best["floor, httpx loop"][0]
    figures["ratio, sending phase (library / floor loop)"] = loop_wall / tool
    figures["ratio, end to end (CLI / floor child)"] = (
        best["floor, as a whole child"][0] / best["tool, CLI end to end"][0]
    )
    figures["ratio, sending phase / loop over the same pools"] = (
        best["same loop over the tool's one-connection pools"][0] / tool
    )
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=UNLIMITED_WORKERS)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    return report(
        "throughput without a rate limit (tool vs minimal httpx loop)",
        measure(args.rows, args.concurrency, args.rounds),
    )


if __name__ == "__main__":
    main()
