"""`restore`: a run undone, its removed pairs enrolled again."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..config import JobConfig
from ..errors import (
    InputError,
)
from ..render import Console
from ..restore.job import RestoreJob, RestoreOptions
from ..restore.select import Filters, default_source
from ..restore.show import restore_figures, restore_lines
from .base import (
    COLUMN_OPTIONS,
    Invocation,
    Reached,
    api_options,
    apply_options,
    carry_out,
    console_for,
    epilog,
    execute,
    job_config,
    main,
    output_options,
    pace_options,
    sending_options,
)

# -- restore ---------------------------------------------------------------------------------

MOMENT_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"]
"""How --since and --until are written (UTC, like the results file's `finished_at`)."""


def _restore_settings(
    results: Path, out: Path, kw: dict[str, Any], *, dry_run: bool
) -> tuple[JobConfig, RestoreOptions]:
    since, until = (kw.pop(name) for name in ("since", "until"))
    since, until = (m if m is None else m.replace(tzinfo=UTC) for m in (since, until))
    if since is not None and until is not None and since >= until:
        raise InputError(f"--since {since:%Y-%m-%d %H:%M:%S} is not before --until: swap them")
    campaigns, pairs, source = kw.pop("campaigns"), kw.pop("pairs"), kw.pop("source")
    config = job_config(results, out, kw, key_needed=not dry_run)
    filters = Filters(frozenset(campaigns), since, until, pairs, config.read)
    source = source or default_source(results, datetime.now(UTC))
    return config, RestoreOptions(results, source, filters)


async def _drive_restore(
    settings: tuple[JobConfig, RestoreOptions], console: Console, req: Invocation, session: Reached
) -> int:
    config, options = settings
    job = RestoreJob(
        config,
        options,
        on_event=console.event,
        on_progress=console.progress,
        handle_signals=not req.dry_run,
    )

    async def planned() -> str:
        plan = await job.plan(dry_run=req.dry_run)
        figures = restore_figures(plan, options.filters, options.source, config)
        session.figures = figures
        console.show_plan(restore_lines(figures), figures.as_dict(), dry_run=req.dry_run)
        return (
            f"re-enroll {figures.to_send:,} pairs in {figures.campaigns:,} campaigns "
            "(each starts its campaign afresh)?"
        )

    return await carry_out(job, planned, console, req, session)


@main.command(
    epilog=epilog(
        "bulk-unenroll restore results.csv --out restore.csv --dry-run  # what it would do",
        "bulk-unenroll restore results.csv --out restore.csv            # undo the whole run",
        "bulk-unenroll restore results.csv --out restore.csv --campaign cmp_a \\",
        "    --since 2026-11-24 --until 2026-11-25          # one campaign, one day's removals",
        "bulk-unenroll restore results.csv --out restore.csv --pairs wrong-rows.csv",
        exit_codes=True,
    )
)
@click.argument("results", metavar="RESULTS", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="The restore's own results file (CSV); rerun with the same one to resume.",
)
@click.option(
    "--campaign",
    "campaigns",
    multiple=True,
    metavar="ID",
    help="Restore only this campaign's pairs. Repeatable.",
)
@click.option(
    "--since",
    type=click.DateTime(MOMENT_FORMATS),
    metavar="TIME",
    help="Restore only pairs removed at or after this UTC time (their finished_at), e.g. "
    "2026-11-24 or 2026-11-24T09:30:00.",
)
@click.option(
    "--until",
    type=click.DateTime(MOMENT_FORMATS),
    metavar="TIME",
    help="Restore only pairs removed before this UTC time (2026-11-25: up to the end of the 24th).",
)
@click.option(
    "--pairs",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Restore only pairs listed in this input file (any input format; --campaign-column, "
    "--contact-column, --delimiter and --sheet say how to read it).",
)
@apply_options(COLUMN_OPTIONS)
@click.option(
    "--source",
    metavar="TEXT",
    help="How the restore names itself to LeadLex (Add Contacts' `source`; default: "
    "'bulk-unenroll restore of RESULTS (DATE)').",
)
@api_options
@pace_options
@sending_options
@output_options
def restore(results: Path, out: Path, **kw: Any) -> None:
    """Re-enroll every pair that RESULTS (a run's results file) marks removed, up to 500 per
    call per campaign, recording each pair in --out.

    A restored enrollment starts the campaign afresh: the contact's step progress is not
    brought back. Rerun the same command to resume.
    """
    console = console_for(kw)
    dry_run = kw.pop("dry_run")
    req = Invocation(
        command="restore",
        dry_run=dry_run,
        yes=kw.pop("yes"),
        summary_json=kw.pop("summary_json"),
        input=results,
        results=out,
    )
    execute(
        lambda: _restore_settings(results, out, kw, dry_run=dry_run), console, req, _drive_restore
    )
