"""Input at scale: a dry run beside polars reading and deduplicating the same file (the
yardstick), and the start of a resumed run with 90% of the rows already settled.

    .venv/bin/python -m bench.input_scale [--rows 1000000 10000000] [--repeat 3] [--record]

Every figure is a separate process, timed from its start; peak memory is that process's own
maximum resident set (from wait4). Files go to bench/out/ (git-ignored) and are reused.
`--record` rewrites docs/benchmarks-input.md with the table and the command.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import polars as pl

from bulk_unenroll.results.records import HEADER
from bulk_unenroll.sandbox import Sandbox, SandboxThread

OUT = Path(__file__).resolve().parent / "out"
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-input.md"
CAMPAIGNS = 1_000
CHUNK = 1_000_000
SETTLED_SHARE = 0.9
FIRST_REQUEST_TIMEOUT = 900.0
TIME_GOAL, MEMORY_GOAL_MIB = 2.0, 400
YARDSTICK = "import sys, polars as pl; pl.read_csv(sys.argv[1], infer_schema=False).unique().height"


@dataclass
class Figure:
    seconds: float
    peak_mib: float


def _ids(start: int, n: int) -> pl.DataFrame:
    """Rows start..start+n of the synthetic input: 1,000 campaigns, distinct contacts."""
    rnd = random.Random(1)
    names = pl.Series(
        [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(CAMPAIGNS)]
    )
    i = pl.int_range(start, start + n, dtype=pl.UInt64)
    digits = pl.concat_str(
        [
            i.hash(11).cast(pl.String).str.zfill(20).str.slice(1),
            i.hash(12).cast(pl.String).str.zfill(20).str.slice(1),
        ]
    )
    contact = pl.concat_str(
        [digits.str.slice(a, b) for a, b in ((0, 8), (8, 4), (12, 4), (16, 4), (20, 12))],
        separator="-",
    )
    return pl.select(
        pl.lit(names).gather((i % CAMPAIGNS).cast(pl.UInt32)).alias("campaign_id"),
        contact.alias("contact_id"),
    )


def _write_chunks(
    path: Path, rows: int, frame: Callable[[int, int], pl.DataFrame], header: str | None
) -> None:
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as f:
        if header is not None:
            f.write(header.encode())
        for start in range(0, rows, CHUNK):
            frame(start, min(CHUNK, rows - start)).write_csv(f, include_header=False)
    tmp.replace(path)


T = TypeVar("T")


def built_apart(build: Callable[[int], T], rows: int) -> T:
    """`build(rows)` in a process of its own. A measured child's peak RSS (`ru_maxrss`)
    starts at this process's resident size when it starts the child (Linux carries it over
    exec): the frames that build the files must not stay here (500 MiB held here read as a
    500 MiB floor under every figure)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as apart:
        return apart.submit(build, rows).result()


def prepare(rows: int) -> tuple[Path, Path]:
    """The input file, and a results file (with its `.sent`) that settles 90% of it."""
    OUT.mkdir(parents=True, exist_ok=True)
    src = OUT / f"input-{rows}.csv"
    if not src.exists():
        _write_chunks(src, rows, _ids, "campaign_id,contact_id\n")
    settled = int(rows * SETTLED_SHARE)
    results = OUT / f"results-{rows}-90pct.csv"
    sent = results.with_name(results.name + ".sent")
    if not results.exists() or not sent.exists():

        def removed(start: int, n: int) -> pl.DataFrame:
            return _ids(start, n).select(
                pl.int_range(start + 1, start + n + 1).alias("row"),
                "campaign_id",
                "contact_id",
                pl.lit("removed").alias("status"),
                pl.lit(200).alias("http_status"),
                pl.lit("").alias("error_code"),
                pl.lit(1).alias("attempts"),
                pl.format("req_{}", pl.int_range(start + 1, start + n + 1)).alias("request_id"),
                pl.lit("").alias("detail"),
                pl.lit("2026-01-01T00:00:00Z").alias("finished_at"),
            )

        _write_chunks(sent, settled, _ids, None)
        _write_chunks(results, settled, removed, HEADER)
    return src, results


def _child_env(base_url: str = "http://127.0.0.1:9/api-gateway") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLEX_")}
    env.update(LEADLEX_API_KEY="wbk_bench_key", LEADLEX_BASE_URL=base_url)
    return env


def _reap(proc: subprocess.Popen[bytes]) -> float:
    """Wait for the child; its own peak RSS in MiB."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Figure:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    peak = _reap(proc)
    elapsed = time.perf_counter() - start
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} exited {proc.returncode}: {err.decode()[-2000:]}")
    return Figure(elapsed, peak)


def first_request(src: Path, results: Path) -> Figure:
    """Start a real run against a sandbox; time until its first DELETE arrives."""
    sent = results.with_name(results.name + ".sent")
    sizes = {p: p.stat().st_size for p in (results, sent)}
    api = Sandbox()
    with SandboxThread(api) as server:
        cmd = [sys.executable, "-m", "bulk_unenroll", "run", str(src), "--out", str(results)]
        cmd += ["--yes", "--quiet", "--plan", "org"]
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=_child_env(server.base_url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while api.state.calls == 0:
            if time.perf_counter() - start > FIRST_REQUEST_TIMEOUT:
                proc.kill()
                _reap(proc)
                raise SystemExit("no request arrived: the resumed run did not start sending")
            if os.wait4(proc.pid, os.WNOHANG)[0]:
                raise SystemExit("the resumed run exited before sending anything")
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        proc.send_signal(signal.SIGKILL)
        peak = _reap(proc)
    for path, size in sizes.items():  # leave the 90% state as it was for the next repeat
        os.truncate(path, size)
    results.with_name(results.name + ".lock").unlink(missing_ok=True)
    return Figure(elapsed, peak)


def _best(figures: list[Figure]) -> Figure:
    return Figure(min(f.seconds for f in figures), max(f.peak_mib for f in figures))


def run_size(rows: int, repeat: int) -> dict[str, Figure]:
    src, results = built_apart(prepare, rows)
    fresh = OUT / f"fresh-{rows}.csv"
    fresh.unlink(missing_ok=True)
    python = sys.executable
    env = _child_env()
    dry = [python, "-m", "bulk_unenroll", "run", str(src), "--out", str(fresh), "--dry-run"]
    resumed_dry = [*dry[:5], "--out", str(results), "--dry-run"]
    runs: dict[str, list[Figure]] = {}
    for _ in range(repeat):  # interleaved, so a busy moment hits every measurement alike
        runs.setdefault("polars read_csv + unique", []).append(
            measure([python, "-c", YARDSTICK, str(src)])
        )
        runs.setdefault("dry run", []).append(measure(dry, env))
        runs.setdefault("dry run, 90% settled", []).append(measure(resumed_dry, env))
        runs.setdefault("resumed run: first request", []).append(first_request(src, results))
    return {name: _best(figures) for name, figures in runs.items()}


def table(figures: dict[int, dict[str, Figure]]) -> list[str]:
    lines = [
        "| rows | measurement | seconds | peak RSS (MiB) | time vs yardstick |",
        "|---:|---|---:|---:|---:|",
    ]
    for rows, by_name in figures.items():
        base = by_name["polars read_csv + unique"].seconds
        for name, f in by_name.items():
            ratio = f"{f.seconds / base:.2f}x"
            lines.append(f"| {rows:,} | {name} | {f.seconds:.2f} | {f.peak_mib:.0f} | {ratio} |")
    return lines


def verdict(figures: dict[int, dict[str, Figure]]) -> str:
    if 1_000_000 not in figures:
        return "goal (1M rows: within 2x of the yardstick, under 400 MiB): not measured"
    by_name = figures[1_000_000]
    dry, base = by_name["dry run"], by_name["polars read_csv + unique"]
    ratio = dry.seconds / base.seconds
    met = ratio <= TIME_GOAL and dry.peak_mib < MEMORY_GOAL_MIB
    return (
        f"goal (1M rows: within {TIME_GOAL:g}x of the yardstick, under {MEMORY_GOAL_MIB} MiB): "
        f"{'met' if met else 'MISSED'} ({ratio:.2f}x, {dry.peak_mib:.0f} MiB)"
    )


def record(figures: dict[int, dict[str, Figure]], command: str) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}, polars {pl.__version__}"
    text = DOC_TEMPLATE.format(
        command=command,
        when=when,
        machine=machine,
        table="\n".join(table(figures)),
        verdict=verdict(figures),
    )
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text, encoding="utf-8")


DOC_TEMPLATE = """\
# Input at scale: benchmark figures

Produced by

    {command}

on {when} ({machine}). The machine was shared with other work, so trust the ratios
more than the absolute numbers; `make bench` runs the same module.

{table}

{verdict}

## What is measured

Each figure is one process, timed from its start to its exit (interpreter start and imports
included, for the yardstick too), best of the repeats; peak RSS is that process's own
maximum resident set (`wait4`), the largest of the repeats.

- **polars read_csv + unique**: the yardstick, `pl.read_csv(path, infer_schema=False).unique()`.
- **dry run**: `bulk-unenroll run INPUT --out NEW --dry-run`: reads, validates, dedupes and
  plans every row.
- **dry run, 90% settled**: the same against a results file that settles the first 90% of
  the rows (plus its `.sent` companion): adds reading back millions of records.
- **resumed run: first request**: a real run with that results file against a sandbox on
  loopback; the time until the first DELETE reaches the sandbox, and the peak memory up to
  then (the run is killed once the request arrives).

The input is two UUID-shaped columns: 1,000 campaigns, every contact distinct (so every row
is valid and nothing is a duplicate: the most work for dedup). Files are generated into
`bench/out/` and reused.

## Why memory stays flat

- The input is streamed twice in batches (`collect_batches`); polars' CSV read-ahead is held
  to 2 MiB chunks (`POLARS_CSV_CHUNK_SIZE`), which keeps it near 150 MB instead of ~400 MB
  for a 740 MB file, at no cost in speed.
- Clean rows (a lower-case token and a lower-case UUID) are validated and hashed inside
  polars' streaming engine; only the other rows take the slower path that repairs and
  explains.
- Between the passes the plan keeps a few bytes per row (action, earlier outcome, a
  campaign hash) and, for a moment, one 16-byte key per valid row: a 96-bit pair hash with
  the row index in its low bits. One sort of those keys puts each pair's rows together,
  first row first, so duplicates are an adjacent comparison (no hash table) and the history
  is bisected in order.
- The results file is read back streaming, into one sorted UInt128 column (pair hash plus
  the outcome code in its low bits): 16 bytes per earlier record. Status strings are mapped
  by an elementwise expression (`replace_strict` is not streamed and held them all).
- The second pass starts at the first row with work (polars' slice finds it without
  parsing the rows before it), so a resumed run does not re-validate what is settled.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.input_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is kept)")
    parser.add_argument(
        "--record", action="store_true", help=f"rewrite {DOC.name} with the figures"
    )
    args = parser.parse_args(argv)
    figures: dict[int, dict[str, Figure]] = {}
    for rows in args.rows:
        print(f"{rows:,} rows ...", file=sys.stderr, flush=True)
        figures[rows] = run_size(rows, args.repeat)
    print("\n".join(table(figures)))
    print(verdict(figures))
    if args.record:
        command = shlex.join(
            [
                ".venv/bin/python",
                "-m",
                "bench.input_scale",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        )
        record(figures, command)
        print(
            f"recorded in {DOC.relative_to(Path.cwd()) if DOC.is_relative_to(Path.cwd()) else DOC}"
        )


if __name__ == "__main__":
    main()
