"""`report`: what a results file says, on the terminal, as rows, a file or a page."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from .. import verify as verify_mod
from ..errors import (
    BulkUnenrollError,
    InputError,
)
from ..page import write_page
from ..render import Console, flag
from ..report import (
    ROW_FORMATS,
    STDOUT,
    Export,
    export_rows,
    open_report,
    parse_statuses,
    write_rows,
)
from .base import (
    epilog,
    main,
)

# -- report ----------------------------------------------------------------------------------


@main.command(
    epilog=epilog(
        "bulk-unenroll report results.csv",
        "bulk-unenroll report results.csv --status invalid,rejected --export fix.xlsx",
        "bulk-unenroll report results.csv --status removed --export removed.csv",
        "bulk-unenroll report results.csv --json",
        "bulk-unenroll report results.csv --html report.html --audit-log audit.jsonl",
    )
)
@click.argument("results", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--status",
    metavar="LIST",
    help="Rows to select, comma-separated (default: rejected,failed,invalid).",
)
@click.option(
    "--format",
    "rows_format",
    type=click.Choice(ROW_FORMATS),
    default="table",
    show_default=True,
    help="How to print the selected rows on stdout: a table (the first 100), or all of them "
    "as csv or jsonl (the counts then go to stderr).",
)
@click.option(
    "--export",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Write the selected rows as a new input file: .csv, .parquet, .xlsx, .json, .jsonl, "
    "or - for CSV on stdout.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--html",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Write a self-contained report page (totals, campaigns, timeline, rows that need a "
    "look) to hand over; prints nothing else.",
)
@click.option(
    "--audit-log",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE.jsonl",
    help="With --html: the run's --audit-log, for exact calls per minute, 429s and waits "
    "for the daily quota on the page.",
)
@click.option(
    "--verify",
    "verify_file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="With --html: the verify file whose result the page shows [default: RESULTS.verify.csv "
    "when verify has written it].",
)
def report(
    results: Path,
    status: str | None,
    rows_format: str,
    export: Path | None,
    as_json: bool,
    html: Path | None,
    audit_log: Path | None,
    verify_file: Path | None,
) -> None:
    """Summarise RESULTS (any run's results file), print the selected rows, and export rows
    to fix and feed back; or write it as a report page (--html)."""
    console = Console()
    try:
        if html is not None or audit_log is not None or verify_file is not None:
            _page(results, html, audit_log, verify_file, status, rows_format, export, as_json)
            return
        to_stdout = [
            name
            for name, used in (
                ("--json", as_json),
                (f"--format {rows_format}", rows_format != "table"),
                ("--export -", export == STDOUT),
            )
            if used
        ]
        if len(to_stdout) > 1:
            raise InputError(f"{' and '.join(to_stdout)} both write to stdout; choose one")
        statuses = parse_statuses(status)
        stdout = sys.stdout.buffer
        with open_report(results, statuses) as found:
            shown = "csv" if export == STDOUT else rows_format
            console.report(found, as_json, "none" if as_json else shown)
            if rows_format != "table":
                write_rows(found, rows_format, stdout)
            if export is not None:
                _exported(export_rows(found, export, stdout), export)
    except BulkUnenrollError as exc:
        console.error(exc.describe(flag))
        sys.exit(exc.exit_code)


def _page(
    results: Path,
    html: Path | None,
    audit_log: Path | None,
    verify_file: Path | None,
    status: str | None,
    rows_format: str,
    export: Path | None,
    as_json: bool,
) -> None:
    """`report --html`: the page alone (one read of a large file, not two)."""
    if html is None:
        raise InputError("--audit-log and --verify are read for the report page: add --html FILE")
    others = [
        name
        for name, used in (
            ("--status", status is not None),
            ("--format", rows_format != "table"),
            ("--export", export is not None),
            ("--json", as_json),
        )
        if used
    ]
    if others:
        raise InputError(
            f"--html writes the page alone; run `bulk-unenroll report` again for "
            f"{' and '.join(others)}"
        )
    if verify_file is not None and not verify_file.is_file():
        raise InputError(f"--verify {verify_file}: no such file; run `bulk-unenroll verify` first")
    shown = verify_file or verify_mod.default_out(results)
    verified = verify_mod.tally(shown) if shown.is_file() else None
    figures = write_page(results, html, audit_log, verify=verified)
    click.echo(
        f"wrote the report page {html} ({figures.rows:,} rows, {figures.needs_a_look:,} need "
        "a look); it holds everything it shows: attach it or open it in any browser",
        err=True,
    )


def _exported(figures: Export, dest: Path) -> None:
    names = ",".join(o.value for o in figures.statuses)
    where = "stdout" if dest == STDOUT else str(dest)
    click.echo(f"exported {figures.rows:,} row(s) with status {names} to {where}", err=True)
    gone = "campaign_not_found"
    if figures.left_out:
        click.echo(
            f"left out {figures.left_out:,} rejected row(s) whose campaign does not exist "
            f"({gone}): sent again they would only be rejected again; to export them as well "
            f"(to correct their campaign ids), name the statuses: --status {names}",
            err=True,
        )
    if figures.for_good:
        click.echo(
            f"{figures.for_good:,} of them were rejected because their campaign does not exist "
            f"({gone}): correct their campaign ids first, or they will be rejected again",
            err=True,
        )
    if figures.rows and dest != STDOUT:
        click.echo(
            f"fix them, then run: bulk-unenroll run {shlex.quote(str(dest))} --out NEW_RESULTS.csv",
            err=True,
        )
