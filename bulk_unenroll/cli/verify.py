"""`verify`: a results file's removals checked against the API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import click

from .. import verify as verify_mod
from ..config import BASE_URL_ENV, KEY_ENV, JobConfig
from ..errors import (
    BulkUnenrollError,
)
from ..events import Note
from ..limits import PLANS, Rate
from ..render import Console, flag
from ..scrub import redact_message
from .base import (
    epilog,
    main,
)

# -- verify ----------------------------------------------------------------------------------


@main.command(
    epilog=epilog(
        "bulk-unenroll verify results.csv               # writes results.verify.csv",
        "bulk-unenroll verify results.csv --plan starter --wait-for-quota",
        "bulk-unenroll run results.verify.csv.enrolled-again.csv --out again.csv  # remove again",
    )
)
@click.argument("results", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Verify file (CSV), one verdict per pair; default: RESULTS' name with .verify.csv. "
    "Rerun with the same one to resume.",
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Read the API key (it needs campaigns:read) from this file instead of ${KEY_ENV}.",
)
@click.option("--base-url", metavar="URL", help=f"API gateway (default: ${BASE_URL_ENV}).")
@click.option(
    "--ca-bundle",
    metavar="PATH",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM file of CA certificates to trust instead of the built-in ones.",
)
@click.option("--rate", metavar="N/s|N/min", help="Pace; default: learnt from the API.")
@click.option("--plan", type=click.Choice(sorted(PLANS)), help="Pace at this plan's limit.")
@click.option("--reserve", type=int, default=0, show_default=True, help="Daily calls to leave.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per call.")
@click.option("--wait-for-quota", is_flag=True, help="Sleep until the quota resets, not exit 75.")
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    metavar="N",
    help="In a campaign not worth listing for all its pairs, pick N at random to check one "
    "by one (a listing is then worth at most N calls).",
)
@click.option(
    "--audit-log",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE.jsonl",
    help="Append one JSON line per listing call.",
)
def verify(results: Path, out: Path | None, sample: int | None, **kw: Any) -> None:
    """Check against the API that every pair RESULTS records removed or not_enrolled is not
    enrolled now: lists each campaign's contacts (100 per call, read-only), records a verdict
    per pair in --out, and writes the pairs enrolled again as a ready input file.

    Exit 0: every removal holds; 1: some pair is enrolled again or unchecked; 75: stopped
    early (quota, API down), rerun to continue; 3: the key lacks campaigns:read or the API
    cannot be reached as set up; 74: the verify file cannot be used; 130: interrupted.
    """
    console = Console()
    out = out or verify_mod.default_out(results)
    try:
        rate, plan = kw.pop("rate"), kw.pop("plan")
        config = JobConfig.from_env(
            results,
            out,
            rate=Rate.parse(rate) if rate else None,
            plan=PLANS[plan] if plan else None,
            **kw,
        )
        with verify_mod.holding(out):
            todo = verify_mod.plan(results, out)
            for line in verify_mod.cost_lines(todo):
                console.event(Note(line))
            if todo.pairs_left:
                console.event(Note(verify_mod.days_line(todo.least_calls, config.plan)))
            job = verify_mod.Verification(config, out, console.event, sample)
            found = anyio.run(job.run, todo, backend="asyncio")
            again, unchecked = verify_mod.write_followups(out)
    except BulkUnenrollError as exc:
        console.error(redact_message(exc.describe(flag)), exc.exit_code)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.error(f"interrupted; the verdicts so far are in {out}, rerun to continue", 130)
        sys.exit(130)
    for line in verify_mod.summary_lines(found, out, again, unchecked, flag):
        click.echo(line)
    sys.exit(found.exit_code)
