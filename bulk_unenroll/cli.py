"""The command line: flags and environment to a JobConfig, the job's story to the terminal,
its result to an exit code. No HTTP, no polars, no business rules here."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import click

from . import __version__
from .config import DEFAULT_BASE_URL, PLANS, JobConfig, Rate, ReadOptions, RetryPolicy, Secret
from .errors import BulkUnenrollError, InputError
from .render import Console
from .runner import Job

KEY_ENV = "LEADLEX_API_KEY"


def _read_key(key_file: Path | None, needed: bool) -> Secret:
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"cannot read --api-key-file {key_file}: {exc.strerror}") from None
        if not key:
            raise InputError(f"--api-key-file {key_file} is empty")
        return Secret(key)
    key = os.environ.get(KEY_ENV, "").strip()
    if not key and needed:
        raise InputError(
            f"no API key: set the {KEY_ENV} environment variable or pass --api-key-file PATH "
            "(keys are never taken on the command line, where ps and shell history see them)"
        )
    return Secret(key)


def input_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that reads an input file."""
    for option in reversed(
        [
            click.option("--campaign-column", metavar="NAME", help="Column holding campaign ids."),
            click.option("--contact-column", metavar="NAME", help="Column holding contact ids."),
            click.option(
                "--campaign",
                "campaign",
                metavar="ID",
                help="Every row belongs to this campaign (a contacts-only file).",
            ),
            click.option(
                "--delimiter", metavar="CHAR", help="CSV field separator (default: detect)."
            ),
            click.option(
                "--sheet", metavar="NAME", help="Excel sheet to read (default: the first)."
            ),
        ]
    ):
        f = option(f)
    return f


def _read_options(kw: dict[str, Any]) -> ReadOptions:
    delimiter = kw.pop("delimiter")
    if delimiter is not None:
        delimiter = {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)
        if len(delimiter) != 1:
            raise InputError(f"--delimiter {delimiter!r} must be one character (or 'tab')")
    return ReadOptions(
        campaign_column=kw.pop("campaign_column"),
        contact_column=kw.pop("contact_column"),
        campaign=kw.pop("campaign"),
        delimiter=delimiter,
        sheet=kw.pop("sheet"),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bulk-unenroll")
def main() -> None:
    """Remove contacts from LeadLex email campaigns in bulk: paced, resumable, truthful."""


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Results file (CSV); rerun with the same one to resume.",
)
@input_options
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Read the API key from this file instead of ${KEY_ENV}.",
)
@click.option(
    "--base-url",
    envvar="LEADLEX_BASE_URL",
    default=DEFAULT_BASE_URL,
    show_default=True,
    help="API gateway (env LEADLEX_BASE_URL).",
)
@click.option(
    "--rate",
    metavar="N/s|N/min",
    help="Pace; default: the plan's per-minute limit, learnt from the API.",
)
@click.option(
    "--plan", type=click.Choice(sorted(PLANS)), help="Pace at this plan's per-minute limit."
)
@click.option(
    "--concurrency", type=int, help="Most requests in flight (default: enough for the rate)."
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per request.")
@click.option(
    "--max-retries",
    type=int,
    default=5,
    show_default=True,
    help="Retries per row for 5xx, timeouts and resets.",
)
@click.option(
    "--reserve",
    type=int,
    default=0,
    show_default=True,
    help="Daily calls to leave unused for other integrations.",
)
@click.option(
    "--wait-for-quota",
    is_flag=True,
    help="When the daily quota is spent, sleep until it resets instead of exiting 75.",
)
@click.option("--max-removals", type=int, help="Stop cleanly after this many removals.")
@click.option(
    "--dry-run", is_flag=True, help="Plan only: read, validate, compare with --out; send nothing."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation on a terminal.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors and the final summary.")
def run(input_path: Path, out: Path, **kw: Any) -> None:
    """Unenroll every (campaign, contact) pair in INPUT, recording each row in --out."""
    console = Console(quiet=kw.pop("quiet"))
    try:
        read = _read_options(kw)
        dry_run = kw.pop("dry_run")
        rate, plan = kw.pop("rate"), kw.pop("plan")
        config = JobConfig(
            input=input_path,
            out=out,
            api_key=_read_key(kw.pop("api_key_file"), needed=not dry_run),
            base_url=kw.pop("base_url"),
            rate=Rate.parse(rate) if rate else None,
            plan=PLANS[plan] if plan else None,
            concurrency=kw.pop("concurrency"),
            timeout=kw.pop("timeout"),
            retry=RetryPolicy(max_retries=kw.pop("max_retries")),
            reserve=kw.pop("reserve"),
            wait_for_quota=kw.pop("wait_for_quota"),
            max_removals=kw.pop("max_removals"),
            read=read,
        )
        code = anyio.run(_run, config, console, dry_run, kw.pop("yes"), backend="asyncio")
    except BulkUnenrollError as exc:
        console.error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted before sending began; nothing was sent")
        sys.exit(130)
    sys.exit(code)


def continue_command() -> str:
    return shlex.join(["bulk-unenroll", *sys.argv[1:]])


async def _run(config: JobConfig, console: Console, dry_run: bool, yes: bool) -> int:
    job = Job(
        config, on_event=console.event, on_progress=console.progress, handle_signals=not dry_run
    )
    try:
        plan = await job.plan(dry_run=dry_run)
        console.plan(plan, job.summary, config)
        if dry_run:
            return 0
        if job.summary.to_send and not yes and not console.confirm(plan, job.summary):
            console.error("cancelled; nothing was sent")
            return 1
        summary = await job.run()
    finally:
        job.close()
    console.summary(summary, continue_command())
    return summary.exit_code


@main.command()
@click.option(
    "--enroll-from",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Seed enrollments with the valid pairs of this input file.",
)
@input_options
@click.option(
    "--enrolled-fraction",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="Share of the seeded pairs that are enrolled.",
)
@click.option(
    "--unknown-campaign",
    multiple=True,
    metavar="ID",
    help="Treat this campaign as deleted (campaign_not_found). Repeatable.",
)
@click.option(
    "--limit-plan",
    type=click.Choice(sorted(PLANS)),
    help="Enforce this plan's per-minute limit and daily quota.",
)
@click.option(
    "--rate-limit", metavar="N/s|N/min", help="Enforce this rate as a strict sliding window."
)
@click.option("--daily-quota", type=int, help="Calls allowed per quota day.")
@click.option(
    "--day-seconds",
    type=float,
    default=86_400.0,
    show_default=True,
    help="Length of a quota day (shorten to rehearse resets).",
)
@click.option(
    "--latency", type=float, default=0.0, show_default=True, help="Seconds before each answer."
)
@click.option(
    "--faults",
    metavar="KIND=P,...",
    default="",
    help="Fault rates: error_503, html_500, reset_before, reset_after, hang, empty_2xx.",
)
@click.option(
    "--require-key",
    envvar="LEADLEX_SANDBOX_KEY",
    help="Accept only this key (default: any wbk_ key).",
)
@click.option(
    "--port", type=int, default=0, show_default=True, help="Port on 127.0.0.1 (0: any free one)."
)
@click.option(
    "--ready-file", type=click.Path(path_type=Path), help="Write the base URL here once listening."
)
@click.option("--seed", type=int, help="Random seed for enrollment fraction and faults.")
def sandbox(**kw: Any) -> None:
    """Serve a fake LeadLex API on 127.0.0.1 to rehearse a run without touching production."""
    from .sandbox import build_from_options, serve_forever

    try:
        api = build_from_options(_read_options(kw), **kw)
    except BulkUnenrollError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    anyio.run(serve_forever, api, kw["port"], kw["ready_file"], backend="asyncio")


if __name__ == "__main__":  # pragma: no cover
    main()
