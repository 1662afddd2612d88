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

from .input_scale import (
    OUT,
    Figure,
    _best,
    _child_env,
    _ids,
    _write_chunks,
    built_apart,
    measure,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-results.md"
TIME_GOAL, MEMORY_GOAL_MIB = 2.0, 1024
_LATEST = (
    "import sys, polars as pl; "
    "src, out, campaign, judged = sys.argv[1:5]; "
    "without_call = pl.col('status').is_in(['invalid', 'duplicate']); "
    "latest = pl.scan_csv(src, infer_schema=False)"
    ".with_columns(pl.when(without_call).then(pl.col('row')).alias('call_row'))"
    ".unique(['campaign_id', 'contact_id', 'call_row'], keep='last').drop('call_row'); "
)
"""The prefix of every yardstick but the first: polars' own latest record per pair (rows
recorded without a call keyed by row too), as a lazy frame `latest`. No torn tail, no
re-saved files, no escaped cells, no key scrubbing: the rules of the format left out."""
_ROWS = (
    "rows = latest.filter(pl.col('status').is_in({statuses}))"
    ".with_columns(pl.col('row').cast(pl.Int64)).sort('row'); "
)
_EXPORTED = (
    "rows = rows.select('campaign_id', 'contact_id', pl.col('row').alias('results_row'), "
    "'status', pl.col('error_code').fill_null(''), pl.col('detail').fill_null('')); "
)
_NUMBERS = (
    "rows = rows.with_columns(pl.col('http_status', 'attempts').cast(pl.Int64, strict=False)); "
)
_NEEDS_A_LOOK = "['rejected', 'failed', 'invalid']"
_PLAN = (
    "pairs = {pairs}.select('row', 'campaign_id', 'contact_id').collect(engine='streaming'); "
    "pairs.group_by('campaign_id', maintain_order=True).len()"
)
_CLAIMED = "latest.filter(pl.col('status').is_in(['removed', 'not_enrolled']))"
_JUDGED = (
    "closed = pl.scan_csv(judged, infer_schema=False)"
    ".unique(['campaign_id', 'contact_id'], keep='last')"
    ".filter(~pl.col('verdict').is_in(['unchecked', 'not_sampled']))"
    ".select('campaign_id', 'contact_id'); "
)
GROUP_BY = "polars: scan + group_by status"
YARDSTICKS: dict[str, str] = {
    GROUP_BY: (
        "import sys, polars as pl; "
        "pl.scan_csv(sys.argv[1], infer_schema=False).group_by('status').len()"
        ".collect(engine='streaming')"
    ),
    "polars: latest per pair + group_by status": (
        _LATEST + "latest.group_by('status').len().collect(engine='streaming')"
    ),
    "polars: latest per pair + filter + sort + sink_csv": (
        _LATEST + _ROWS.format(statuses=_NEEDS_A_LOOK) + "rows.sink_csv(out)"
    ),
    "polars: latest per pair + filter + sort + sink_ndjson": (
        _LATEST + _ROWS.format(statuses="['removed']") + _NUMBERS + "rows.sink_ndjson(out)"
    ),
    "polars: latest per pair + filter + sort + export columns + sink_csv": (
        _LATEST + _ROWS.format(statuses=_NEEDS_A_LOOK) + _EXPORTED + "rows.sink_csv(out)"
    ),
    "polars: latest per pair + filter + sort + export columns + sink_parquet": (
        _LATEST + _ROWS.format(statuses="['removed']") + _EXPORTED + "rows.sink_parquet(out)"
    ),
    "polars: latest per pair + filter + sort + export columns + write_json": (
        # polars has no JSON-array sink: collected, then written whole.
        _LATEST
        + _ROWS.format(statuses="['removed']")
        + _EXPORTED
        + "rows.collect(engine='streaming').write_json(out)"
    ),
    "polars: latest per pair + filter + sort + export columns + write_excel": (
        _LATEST
        + _ROWS.format(statuses=_NEEDS_A_LOOK)
        + _EXPORTED
        + "rows.collect(engine='streaming').write_excel(open(out, 'wb'), worksheet='rows')"
    ),
    "polars: latest per pair + removed pairs + group_by campaign": (
        _LATEST + _PLAN.format(pairs="latest.filter(pl.col('status') == 'removed')")
    ),
    "polars: latest per pair + removed count + one campaign's removed pairs": (
        # The whole file's removed pairs are counted (the plan shows them), so the campaign
        # filter cannot be pushed below the latest-per-pair step.
        _LATEST + "removed = latest.filter(pl.col('status') == 'removed'); "
        "pl.collect_all([removed.select(pl.len()), removed.filter(pl.col('campaign_id') == "
        "campaign).select('row', 'campaign_id', 'contact_id')], engine='streaming')"
    ),
    "polars: latest per pair + claimed pairs + group_by campaign": (
        _LATEST + _PLAN.format(pairs=_CLAIMED)
    ),
    "polars: latest per pair + claimed pairs less the judged + group_by campaign": (
        _LATEST
        + _JUDGED
        + _PLAN.format(
            pairs=_CLAIMED + ".join(closed, on=['campaign_id', 'contact_id'], how='anti')"
        )
    ),
    "polars: sorted settled pair hashes + failed superseded dropped + sink_csv": (
        "import sys, polars as pl; "
        "src, out = sys.argv[1:3]; "
        "settled = ['removed', 'not_enrolled', 'rejected', 'restored', 'already_enrolled']; "
        "records = pl.scan_csv(src, infer_schema=False); "
        "records.filter(pl.col('status').is_in(settled))"
        ".select(pl.struct('campaign_id', 'contact_id').hash().alias('key'))"
        ".collect(engine='streaming').sort('key'); "
        "without_call = pl.col('status').is_in(['invalid', 'duplicate']); "
        "what = pl.struct('campaign_id', 'contact_id', pl.when(without_call).then(pl.col('row'))); "
        "records.filter((pl.col('status') != 'failed') | what.is_last_distinct()).sink_csv(out)"
    ),
}
"""polars doing the work of each command shape, without the rules of the format: what each
command's time is measured against (`YARDSTICK_OF`). The first is the issue's, kept as a
column of its own."""
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
    """A results file of `rows` records, then a rerun's records superseding half the failed;
    the verify file beside it (`judged`)."""
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / f"results-{rows}-mixed.csv"
    if not results.exists():
        part = results.with_name(results.name + ".body")
        _write_chunks(part, rows, _records, HEADER)
        with part.open("ab") as f:
            for start in range(0, rows, 1_000_000):
                _reruns(start, min(1_000_000, rows - start)).write_csv(f, include_header=False)
        part.replace(results)
    judged(results)
    return results


def _copy(results: Path) -> Path:
    """A fresh copy for a command that changes the file (compaction)."""
    copy = OUT / "results-scale-compact.csv"
    for suffix in ("", ".sent", ".lock"):
        copy.with_name(copy.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(results, copy)
    return copy


def judged(results: Path) -> Path:
    """A verify file that judged every other pair the results file claims absent (holds),
    as an earlier verify stopped halfway leaves it: a few million pairs at 10M records."""
    out = results.with_name(results.stem + ".verify.csv")
    if out.exists():
        return out
    claimed = pl.col("status").is_in(["removed", "not_enrolled"])
    part = out.with_name(out.name + ".part")
    pl.scan_csv(results, infer_schema=False).filter(
        claimed & (pl.col("row").cast(pl.Int64) % 2 == 0)
    ).select(
        "campaign_id",
        "contact_id",
        pl.col("status").alias("recorded"),
        pl.lit("holds").alias("verdict"),
        pl.lit("absent from the campaign's 9,000 enrollments").alias("detail"),
        pl.lit("2026-03-01T00:00:00Z").alias("checked_at"),
    ).sink_csv(part)
    part.replace(out)
    return out


COMPACT = (
    "import sys; from pathlib import Path; from bulk_unenroll.results.journal import Journal; "
    "Journal(Path(sys.argv[1])).close()"
)
"""What a run does with its results file when nothing is left to send: open (the resume
index), close (compaction: superseded `failed` records dropped, the file rewritten)."""
VERIFY_PLAN = (
    "import sys; from pathlib import Path; from bulk_unenroll.verify import plan; "
    "plan(Path(sys.argv[1]), Path(sys.argv[2]))"
)
"""What `verify` does before its first call (it has no dry run): the pairs a results file
says are not enrolled, less those the verify file judged, grouped by campaign."""
JOURNAL = "journal open + close (resume index, compaction)"
Y = list(YARDSTICKS)


YARDSTICK_OF = {
    "report": Y[1],
    "report --json": Y[1],
    "report --format csv": Y[2],
    "report --status removed --format jsonl": Y[3],
    "report --export fix.csv": Y[4],
    "report --status removed --export removed.parquet": Y[5],
    "report --status removed --export removed.json": Y[6],
    "report --export fix.xlsx": Y[7],
    "restore --dry-run": Y[8],
    "restore --campaign C --dry-run": Y[9],
    "verify's plan (no API: verify.plan)": Y[10],
    "verify's plan beside a verify file of half the pairs": Y[11],
    JOURNAL: Y[12],
}
"""Each measured command, and the yardstick doing its work."""


def commands(results: Path) -> dict[str, list[str]]:
    """The measured commands but the journal's (which needs a fresh copy each time)."""
    python = sys.executable
    cli = [python, "-m", "bulk_unenroll", "report", str(results)]
    restore = [python, "-m", "bulk_unenroll", "restore", str(results), "--dry-run", "--out"]
    restore_out, verify_out = OUT / "restore-scale.csv", OUT / "verify-scale.csv"
    for path in (restore_out, verify_out):
        path.unlink(missing_ok=True)
    campaign = str(_ids(1, 1)["campaign_id"][0])
    removed = ["--status", "removed"]
    verify = [python, "-c", VERIFY_PLAN, str(results)]
    return {
        "report": cli,
        "report --json": [*cli, "--json"],
        "report --format csv": [*cli, "--format", "csv"],
        "report --status removed --format jsonl": [*cli, *removed, "--format", "jsonl"],
        "report --export fix.csv": [*cli, "--export", str(OUT / "fix.csv")],
        "report --status removed --export removed.parquet": [
            *cli,
            *removed,
            "--export",
            str(OUT / "removed.parquet"),
        ],
        "report --status removed --export removed.json": [
            *cli,
            *removed,
            "--export",
            str(OUT / "removed.json"),
        ],
        "report --export fix.xlsx": [*cli, "--export", str(OUT / "fix.xlsx")],
        "restore --dry-run": [*restore, str(restore_out)],
        "restore --campaign C --dry-run": [*restore, str(restore_out), "--campaign", campaign],
        "verify's plan (no API: verify.plan)": [*verify, str(verify_out)],
        "verify's plan beside a verify file of half the pairs": [*verify, str(judged(results))],
    }


def run_size(rows: int, repeat: int) -> dict[str, Figure]:
    results = built_apart(prepare, rows)
    python = sys.executable
    env = _child_env()
    campaign = str(_ids(1, 1)["campaign_id"][0])
    sink = OUT / "yardstick-out"
    measured = commands(results)
    runs: dict[str, list[Figure]] = {}
    for _ in range(repeat):  # interleaved, so a busy moment hits every measurement alike
        for name, code in YARDSTICKS.items():
            argv = [str(results), str(sink), campaign, str(judged(results))]
            runs.setdefault(name, []).append(measure([python, "-c", code, *argv], env))
        for name, cmd in measured.items():
            runs.setdefault(name, []).append(measure(cmd, env))
        copy = _copy(results)
        runs.setdefault(JOURNAL, []).append(measure([python, "-c", COMPACT, str(copy)], env))
    sink.unlink(missing_ok=True)
    return {name: _best(figures) for name, figures in runs.items()}


def table(figures: dict[int, dict[str, Figure]]) -> list[str]:
    lines = [
        "| rows | measurement | seconds | peak RSS (MiB) | time vs its yardstick "
        f"| time vs {GROUP_BY} |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    ones = YARDSTICK_OF
    for rows, by_name in figures.items():
        base = by_name[GROUP_BY].seconds
        for name, f in by_name.items():
            own = f"{f.seconds / by_name[ones[name]].seconds:.2f}x" if name in ones else ""
            figures_ = f"{f.seconds:.2f} | {f.peak_mib:.0f} | {own} | {f.seconds / base:.2f}x"
            lines.append(f"| {rows:,} | {name} | {figures_} |")
    return lines


def verdict(figures: dict[int, dict[str, Figure]]) -> list[str]:
    """Per size, whether every command is under the memory goal and within TIME_GOAL of
    the yardstick doing its work; the commands that are not."""
    lines = []
    ones = YARDSTICK_OF
    for rows, by_name in figures.items():
        missed = []
        for name, f in by_name.items():
            if name not in ones:
                continue
            ratio = f.seconds / by_name[ones[name]].seconds
            if f.peak_mib >= MEMORY_GOAL_MIB:
                missed.append(f"{name}: {f.peak_mib:.0f} MiB")
            if ratio > TIME_GOAL:
                missed.append(f"{name}: {ratio:.2f}x")
        state = "met" if not missed else "MISSED (" + "; ".join(missed) + ")"
        lines.append(
            f"goal at {rows:,} rows (every command under {MEMORY_GOAL_MIB} MiB and within "
            f"{TIME_GOAL:g}x of its yardstick): {state}"
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
