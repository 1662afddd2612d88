"""Results files at scale: every command that reads one, beside a polars lazy scan doing the
same aggregation (the yardstick).

    .venv/bin/python -m bench.results_scale [--rows 1000000 10000000] [--repeat 2] [--record]

Every figure is a separate process, timed from its start; peak memory is that process's own
maximum resident set (from wait4). Files go to bench/out/ (git-ignored) and are reused.
`--record` rewrites the results-scale section of docs/benchmarks-results.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from bulk_unenroll.results.records import HEADER

from .input_scale import OUT, Figure, _best, _child_env, _ids, _write_chunks, measure

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-results.md"
TIME_GOAL, MEMORY_GOAL_MIB = 2.0, 1024
YARDSTICK = (
    "import sys, polars as pl; "
    "pl.scan_csv(sys.argv[1], infer_schema=False).group_by('status').len()"
    ".collect(engine='streaming')"
)
"""`report`'s counts per status, without the rules of the format (the first yardstick)."""
SAME_AGGREGATION = (
    "import sys, polars as pl; "
    "without_call = pl.col('status').is_in(['invalid', 'duplicate']); "
    "pl.scan_csv(sys.argv[1], infer_schema=False)"
    ".with_columns(pl.when(without_call).then(pl.col('row')).alias('call_row'))"
    ".unique(['campaign_id', 'contact_id', 'call_row'], keep='last')"
    ".group_by('status').len().collect(engine='streaming')"
)
"""What `report` counts, done by polars alone (the second yardstick): the latest record per
pair (rows recorded without a call keyed by row too), then the counts per status. No torn
tail, no re-saved files, no error codes or time span, no key scrubbing."""
GROUP_BY = "polars scan_csv + group_by status"
LATEST = "polars scan_csv + latest per pair + group_by status"
YARDSTICKS = (GROUP_BY, LATEST)
SUMMARY = ("report", "report --json")
"""The commands that do what the yardsticks do: the time goal is theirs."""
VERIFY_PLAN = (
    "import sys; from pathlib import Path; from bulk_unenroll.verify import plan; "
    "plan(Path(sys.argv[1]), Path(sys.argv[2]))"
)
"""What `verify` does before its first call (it has no dry run): the pairs a results file
says are not enrolled, less those the verify file judged, grouped by campaign."""
MIX = (  # per 100 records: status, http status, error code, detail
    (80, "removed", "200", "", ""),
    (10, "not_enrolled", "404", "enrollment_not_found", "Contact is not enrolled"),
    (2, "rejected", "404", "campaign_not_found", "No such campaign"),
    (2, "rejected", "422", "invalid_contact_id", "'=1+2 is not a contact id"),
    (3, "failed", "500", "internal_error", "upstream timed out"),
    (2, "invalid", "", "", "contact_id is not a UUID"),
    (1, "duplicate", "", "", "same pair as row 1"),
)


def _by_bucket(bucket: pl.Expr, column: int) -> pl.Expr:
    """MIX's cell `column` for each record's bucket (0-99)."""
    bounds = [sum(share for share, *_ in MIX[: n + 1]) for n in range(len(MIX))]
    expr = pl.lit(None, pl.String)
    for bound, (_, *cells) in reversed(list(zip(bounds, MIX, strict=True))):
        expr = pl.when(bucket < bound).then(pl.lit(cells[column - 1])).otherwise(expr)
    return expr


def _records(start: int, n: int) -> pl.DataFrame:
    """Records start..start+n: the rows of bench.input_scale's input, each with an outcome
    in the proportions of MIX (a `failed` one is later superseded, see `prepare`)."""
    i = pl.int_range(start, start + n, dtype=pl.Int64)
    bucket = i.hash(7) % 100
    status, http, code, detail = (_by_bucket(bucket, column) for column in range(1, 5))
    return pl.concat([_ids(start, n), pl.select(i.alias("i"))], how="horizontal").select(
        (pl.col("i") + 1).alias("row"),
        "campaign_id",
        "contact_id",
        status.alias("status"),
        http.alias("http_status"),
        code.alias("error_code"),
        pl.lit(1).alias("attempts"),
        pl.format("req_{}", pl.col("i")).alias("request_id"),
        detail.alias("detail"),
        pl.format(
            "2026-01-{}T00:00:00Z", (pl.col("i") % 28 + 1).cast(pl.String).str.zfill(2)
        ).alias("finished_at"),
    )


def _reruns(start: int, n: int) -> pl.DataFrame:
    """A rerun's records: every other failed pair of rows start..start+n, now removed."""
    rows = _records(start, n)
    retried = rows.filter((pl.col("status") == "failed") & (pl.col("row") % 2 == 0))
    return retried.with_columns(
        status=pl.lit("removed"),
        http_status=pl.lit("200"),
        error_code=pl.lit(""),
        attempts=pl.lit(2),
        detail=pl.lit(""),
        finished_at=pl.lit("2026-02-01T00:00:00Z"),
    )


def prepare(rows: int) -> Path:
    """A results file of `rows` records, then a rerun's records superseding half the failed."""
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / f"results-{rows}-mixed.csv"
    if results.exists():
        return results
    part = results.with_name(results.name + ".body")
    _write_chunks(part, rows, _records, HEADER)
    with part.open("ab") as f:
        for start in range(0, rows, 1_000_000):
            _reruns(start, min(1_000_000, rows - start)).write_csv(f, include_header=False)
    part.replace(results)
    return results


def _copy(results: Path) -> Path:
    """A fresh copy for a command that changes the file (compaction)."""
    copy = OUT / "results-scale-compact.csv"
    for suffix in ("", ".sent", ".lock"):
        copy.with_name(copy.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(results, copy)
    return copy


COMPACT = (
    "import sys; from pathlib import Path; from bulk_unenroll.results.journal import Journal; "
    "Journal(Path(sys.argv[1])).close()"
)
"""What a run does with its results file when nothing is left to send: open (the resume
index), close (compaction: superseded `failed` records dropped, the file rewritten)."""


def run_size(rows: int, repeat: int) -> dict[str, Figure]:
    results = prepare(rows)
    python = sys.executable
    cli = [python, "-m", "bulk_unenroll", "report", str(results)]
    env = _child_env()
    commands = {
        GROUP_BY: [python, "-c", YARDSTICK, str(results)],
        LATEST: [python, "-c", SAME_AGGREGATION, str(results)],
        "report": cli,
        "report --json": [*cli, "--json"],
        "report --format csv": [*cli, "--format", "csv"],
        "report --status removed --format jsonl": [
            *cli,
            "--status",
            "removed",
            "--format",
            "jsonl",
        ],
        "report --export fix.csv": [*cli, "--export", str(OUT / "fix.csv")],
        "report --status removed --export removed.parquet": [
            *cli,
            "--status",
            "removed",
            "--export",
            str(OUT / "removed.parquet"),
        ],
    }
    commands |= _restore_and_verify(results)
    runs: dict[str, list[Figure]] = {}
    for _ in range(repeat):  # interleaved, so a busy moment hits every measurement alike
        for name, cmd in commands.items():
            runs.setdefault(name, []).append(measure(cmd, env))
        copy = _copy(results)
        runs.setdefault("journal open + close (resume index, compaction)", []).append(
            measure([python, "-c", COMPACT, str(copy)], env)
        )
    return {name: _best(figures) for name, figures in runs.items()}


def _restore_and_verify(results: Path) -> dict[str, list[str]]:
    """The commands that follow a run and read its results file: a restore's plan (all of it,
    and one campaign's), and verify's plan (to a verify file that does not exist yet)."""
    python = sys.executable
    restore = [python, "-m", "bulk_unenroll", "restore", str(results), "--dry-run", "--out"]
    out = OUT / "restore-scale.csv"
    verify_out = OUT / "verify-scale.csv"
    for path in (out, verify_out):
        path.unlink(missing_ok=True)
    campaign = str(_ids(1, 1)["campaign_id"][0])
    return {
        "restore --dry-run": [*restore, str(out)],
        "restore --campaign C --dry-run": [*restore, str(out), "--campaign", campaign],
        "verify's plan (no API: verify.plan)": [
            python,
            "-c",
            VERIFY_PLAN,
            str(results),
            str(verify_out),
        ],
    }


def table(figures: dict[int, dict[str, Figure]]) -> list[str]:
    lines = [
        "| rows | measurement | seconds | peak RSS (MiB) | time vs yardstick | "
        "time vs same-aggregation yardstick |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for rows, by_name in figures.items():
        base, same = (by_name[name].seconds for name in YARDSTICKS)
        for name, f in by_name.items():
            ratios = f"{f.seconds / base:.2f}x | {f.seconds / same:.2f}x"
            lines.append(f"| {rows:,} | {name} | {f.seconds:.2f} | {f.peak_mib:.0f} | {ratios} |")
    return lines


def verdict(figures: dict[int, dict[str, Figure]]) -> list[str]:
    """Per size, the commands over the goal: memory for every command; time for the report's
    summary (which does what the yardsticks do), against each yardstick in turn."""
    lines = []
    for rows, by_name in figures.items():
        heavy = [
            n for n, f in by_name.items() if n not in YARDSTICKS and f.peak_mib >= MEMORY_GOAL_MIB
        ]
        memory = [f"{n}: over {MEMORY_GOAL_MIB} MiB" for n in heavy]
        for yardstick, words in (
            (GROUP_BY, "the yardstick"),
            (LATEST, "the same-aggregation yardstick"),
        ):
            base = by_name[yardstick].seconds
            slow = [n for n in SUMMARY if by_name[n].seconds > TIME_GOAL * base]
            missed = memory + [f"{n}: over {TIME_GOAL:g}x" for n in slow]
            state = "met" if not missed else "MISSED (" + "; ".join(missed) + ")"
            lines.append(
                f"goal at {rows:,} rows (every command under {MEMORY_GOAL_MIB} MiB; the summary "
                f"within {TIME_GOAL:g}x of {words}, {yardstick}): {state}"
            )
    return lines


def record(figures: dict[int, dict[str, Figure]], command: str) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}, polars {pl.__version__}"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    head, _, rest = text.partition(FIGURES_START)
    _, _, tail = rest.partition(FIGURES_END)
    figures_text = FIGURES_TEMPLATE.format(
        command=command,
        when=when,
        machine=machine,
        table="\n".join(table(figures)),
        verdict="\n\n".join(verdict(figures)),
    )
    DOC.write_text(head + FIGURES_START + figures_text + FIGURES_END + tail, encoding="utf-8")


FIGURES_START, FIGURES_END = "<!-- figures -->\n", "<!-- /figures -->\n"
FIGURES_TEMPLATE = """\
Produced by

    {command}

on {when} ({machine}). The machine was shared with other work, so trust the ratios
more than the absolute numbers; `make bench BENCH="--only results"` runs the same module.

{table}

{verdict}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.results_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best is kept)")
    parser.add_argument("--record", action="store_true", help=f"rewrite the figures in {DOC.name}")
    args = parser.parse_args(argv)
    figures: dict[int, dict[str, Figure]] = {}
    for rows in args.rows:
        print(f"{rows:,} rows ...", file=sys.stderr, flush=True)
        figures[rows] = run_size(rows, args.repeat)
    print("\n".join(table(figures)))
    print("\n".join(verdict(figures)))
    if args.record:
        argv_used = argv if argv is not None else sys.argv[1:]
        record(figures, shlex.join([".venv/bin/python", "-m", "bench.results_scale", *argv_used]))
        print(f"recorded in docs/{DOC.name}")


if __name__ == "__main__":
    main()
