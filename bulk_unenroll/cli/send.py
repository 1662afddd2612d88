"""`plan` and `run`: an input file's rows unenrolled, planned first."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click

from ..config import JobConfig
from ..render import Console, confirm_question
from ..report import (
    plan_figures,
)
from ..send.runner import Job
from .base import (
    Invocation,
    Reached,
    api_options,
    carry_out,
    check_enrollment_option,
    console_for,
    epilog,
    execute,
    given_input,
    input_options,
    job_config,
    main,
    max_removals_option,
    output_options,
    pace_options,
    sending_options,
)


async def _drive(config: JobConfig, console: Console, req: Invocation, session: Reached) -> int:
    job = Job(
        config,
        on_event=console.event,
        on_progress=console.progress,
        handle_signals=not req.dry_run,
    )

    async def planned() -> str:
        plan = await job.plan(dry_run=req.dry_run)
        figures = dataclasses.replace(
            plan_figures(plan, job.summary, config), input=given_input(config.input)
        )
        session.figures = figures
        console.plan(figures, dry_run=req.dry_run)
        return confirm_question(figures)

    return await carry_out(job, planned, console, req, session)


@main.command(
    epilog=epilog(
        "bulk-unenroll run unenroll.csv --out results.csv",
        "bulk-unenroll run export.xlsx --sheet 'To remove' --out results.csv --plan pro",
        "bulk-unenroll run big.csv --out big-results.csv --wait-for-quota --yes  # multi-day",
        "bulk-unenroll run q.csv --out r.csv --api-key-file /etc/leadlex/key \\",
        "    --summary-json last.json --reserve 100                  # a nightly cron job",
        exit_codes=True,
    )
)
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Results file (CSV); rerun with the same one to resume.",
)
@input_options
@api_options
@pace_options
@max_removals_option
@check_enrollment_option
@sending_options
@click.option(
    "--allow-same-input",
    is_flag=True,
    help="Run even while another run works on the same INPUT (each pair it also sends goes "
    "out twice).",
)
@output_options
def run(input_path: Path, out: Path, **kw: Any) -> None:
    """Unenroll every (campaign, contact) pair in INPUT, recording each row in --out.

    INPUT `-` reads the rows from stdin (a pipeline); a rerun fed the same rows resumes.
    """
    console = console_for(kw)
    dry_run = kw.pop("dry_run")
    req = Invocation(
        command="plan" if dry_run else "run",
        dry_run=dry_run,
        yes=kw.pop("yes"),
        summary_json=kw.pop("summary_json"),
        input=input_path,
        results=out,
    )
    execute(lambda: job_config(input_path, out, kw, key_needed=not dry_run), console, req, _drive)


@main.command(
    epilog=epilog(
        "bulk-unenroll plan unenroll.csv",
        "bulk-unenroll plan unenroll.csv --plan pro --reserve 100  # time and quota days",
        "bulk-unenroll plan unenroll.csv --out results.csv  # what a rerun has left to do",
    )
)
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    help="Results file of earlier runs: rows it settled are left out of the plan.",
)
@input_options
@pace_options
@max_removals_option
@check_enrollment_option
@output_options
def plan(input_path: Path, out: Path | None, **kw: Any) -> None:
    """Show what `run` would do with INPUT (same as `run --dry-run`); send nothing.

    INPUT `-` reads the rows from stdin.
    """
    console = console_for(kw)
    req = Invocation(
        command="plan",
        dry_run=True,
        yes=True,
        summary_json=kw.pop("summary_json"),
        input=input_path,
        results=out,
    )
    # Without --out nothing was done before: an empty file stands in for the results.
    results = out if out is not None else Path(os.devnull)
    execute(lambda: job_config(input_path, results, kw, key_needed=False), console, req, _drive)
