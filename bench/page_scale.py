"""The report page of a large results file: time, peak memory and page size.

    .venv/bin/python -m bench.page_scale [--rows 1000000 10000000]

A synthetic results file (1,000 campaigns, 2% rejected, failed or invalid, a call every 0.3 s
with a 3-hour quiet every 100,000 rows) and, for each size, an audit log of its calls. Each
figure is `bulk-unenroll report FILE --html PAGE [--audit-log LOG]` as a separate process,
timed from its start; peak memory is that process's maximum resident set (from wait4). Files
go to bench/out/ (git-ignored) and are reused. Figures are recorded by hand in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from .input_scale import OUT, measure

CHUNK = 1_000_000
START = datetime(2026, 11, 1, tzinfo=UTC)
STATUSES = ["removed"] * 90 + ["not_enrolled"] * 8 + ["rejected", "failed"]


def _chunk(start: int, n: int) -> pl.DataFrame:
    i = pl.int_range(start, start + n, dtype=pl.Int64)
    seconds = i * 0.3 + (i // 100_000) * 3 * 3600
    status = pl.lit(pl.Series(STATUSES)).gather(i.hash(3) % len(STATUSES))
    return pl.select(
        row=i + 1,
        campaign_id=pl.format("cmp_{}", (i.hash(1) % 1000).cast(pl.String)),
        contact_id=pl.format("00000000-0000-4000-8000-{}", i.cast(pl.String).str.zfill(12)),
        status=status,
        http_status=pl.lit("204"),
        error_code=pl.when(status == "rejected").then(pl.lit("campaign_not_found")),
        attempts=pl.lit("1"),
        request_id=pl.format("req_{}", i),
        detail=pl.lit(""),
        finished_at=(pl.lit(START) + pl.duration(milliseconds=(seconds * 1000).cast(pl.Int64)))
        .dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        .alias("finished_at"),
    )


def files(rows: int) -> tuple[Path, Path]:
    """The results file and audit log of `rows` rows, written once."""
    OUT.mkdir(exist_ok=True)
    results, audit = OUT / f"page-results-{rows}.csv", OUT / f"page-audit-{rows}.jsonl"
    if results.exists() and audit.exists():
        return results, audit
    with results.open("wb") as r, audit.open("wb") as a:
        for start in range(0, rows, CHUNK):
            chunk = _chunk(start, min(CHUNK, rows - start))
            chunk.write_csv(r, include_header=start == 0)
            chunk.select(
                time=pl.col("finished_at").str.replace("Z", ".000Z"),
                row="row",
                campaign_id="campaign_id",
                contact_id="contact_id",
                result="status",
                waited=pl.struct(rate_limit_pause=pl.lit(0.0), quota=pl.lit(0.0)),
            ).write_ndjson(a)
    return results, audit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.page_scale")
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    args = parser.parse_args(argv)
    cli = [sys.executable, "-m", "bulk_unenroll", "report"]
    print("rows        source               seconds  peak MiB  page KiB")
    for rows in args.rows:
        results, audit = files(rows)
        page = OUT / f"page-{rows}.html"
        for label, extra in (("results file", []), ("+ audit log", ["--audit-log", str(audit)])):
            figure = measure([*cli, str(results), "--html", str(page), *extra])
            size = page.stat().st_size / 1024
            print(
                f"{rows:<11,} {label:<20} {figure.seconds:>7.1f}  {figure.peak_mib:>8.0f}  "
                f"{size:>8.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
