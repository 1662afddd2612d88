"""The command line: flags and environment to a JobConfig, the job's story to the terminal,
its result to an exit code. No HTTP, no polars, no business rules here."""

from __future__ import annotations

import atexit
import dataclasses
import os
import shlex
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import click

from . import __version__
from . import verify as verify_mod
from .config import BASE_URL_ENV, DEFAULT_BASE_URL, KEY_ENV, JobConfig, ReadOptions, RetryPolicy
from .errors import (
    BulkUnenrollError,
    InputError,
    ResultsFileError,
    UnsupportedPlatform,
    find_in_group,
    leaves,
)
from .events import Note
from .input.formats import spool
from .limits import PLANS, Rate
from .models import StopReason, Summary
from .page import write_page
from .platforms import require_posix
from .render import EXIT_MEANINGS, LOG_FORMATS, PLAIN_EVERY, Console, confirm_question, flag
from .report import (
    ROW_FORMATS,
    STDOUT,
    Export,
    Figures,
    export_rows,
    open_report,
    parse_statuses,
    plan_figures,
    summary_dict,
    write_json,
    write_rows,
)
from .restore.job import RestoreJob, RestoreOptions
from .restore.select import Filters, default_source
from .restore.show import restore_figures, restore_lines
from .sandbox import RESET_FORMATS, RETRY_AFTER_FORMATS, WRONG_ROUTE_ANSWERS
from .scrub import redact_message, remember
from .send.runner import Job

Settings = TypeVar("Settings")
"""What a command's run is made from (a JobConfig; a restore's adds its options)."""
DEBUG_ENV = "BULK_UNENROLL_DEBUG"
INTERNAL_ERROR = 70


def internal_error(exc: BaseException) -> NoReturn:
    """A bug: one line, never a traceback (unless asked for), never the key; exit 70."""
    if os.environ.get(DEBUG_ENV) == "1":
        click.echo(redact_message("".join(traceback.format_exception(exc))), err=True)
    leaf = next(leaves(exc))
    message = redact_message(str(leaf)).replace("\n", " ")[:500]
    click.echo(
        f"internal error: {type(leaf).__name__}: {message} — the results file is intact; "
        f"please report this (set {DEBUG_ENV}=1 for the traceback)",
        err=True,
    )
    sys.exit(INTERNAL_ERROR)


class _Command(click.Command):
    """A command; where the tool cannot run (Windows) it stops with one sentence, after
    `--help` (handled while parsing) and before anything else."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            require_posix()
        except UnsupportedPlatform as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        return super().invoke(ctx)


class _Commands(click.Group):
    """The command group; any unexpected exception becomes `internal_error`."""

    command_class = _Command

    def invoke(self, ctx: click.Context) -> Any:
        # polars takes SIGINT on import, even in a process started with it ignored (`cmd &`
        # in a script), and then silently cuts short the read it interrupts. Ctrl-C (or a
        # kill -INT) is the user's: KeyboardInterrupt ends planning with 130, nothing sent;
        # while sending, the run's own signal receiver drains the requests in flight.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            raise  # `| head`: click exits quietly
        except Exception as exc:
            internal_error(exc)


# -- options ---------------------------------------------------------------------------------


def _apply(f: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    for option in reversed(options):
        f = option(f)
    return f


def _apply_options(
    options: list[Callable[..., Any]],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`options` as one decorator."""
    return lambda f: _apply(f, options)


COLUMN_OPTIONS = [
    click.option("--campaign-column", metavar="NAME", help="Column holding campaign ids."),
    click.option("--contact-column", metavar="NAME", help="Column holding contact ids."),
    click.option("--delimiter", metavar="CHAR", help="CSV field separator (default: detect)."),
    click.option("--sheet", metavar="NAME", help="Excel sheet to read (default: the first)."),
]
"""How to read an input file's two id columns."""


def input_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that reads an input file."""
    campaign = click.option(
        "--campaign",
        "campaign",
        metavar="ID",
        help="Every row belongs to this campaign (a contacts-only file).",
    )
    return _apply(f, [*COLUMN_OPTIONS[:2], campaign, *COLUMN_OPTIONS[2:]])


def pace_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """What the plan's time estimate and the run's pacing depend on."""
    return _apply(
        f,
        [
            click.option(
                "--rate",
                metavar="N/s|N/min",
                help="Pace (or 'unlimited'); default: the plan's per-minute limit, learnt "
                "from the API.",
            ),
            click.option(
                "--plan",
                type=click.Choice(sorted(PLANS)),
                help="Pace at this plan's per-minute limit (starter 10/min, pro 50/min, "
                "org 200/min).",
            ),
            click.option(
                "--reserve",
                type=int,
                default=0,
                show_default=True,
                help="Daily calls to leave unused for other integrations.",
            ),
        ],
    )


max_removals_option = click.option(
    "--max-removals",
    type=int,
    help="Stop cleanly after this many removals (review, then rerun to continue).",
)
check_enrollment_option = click.option(
    "--check-enrollment",
    is_flag=True,
    help="List each campaign's contacts first (100 per call, needs campaigns:read) where that "
    "takes fewer calls than its DELETEs; pairs not enrolled are settled without a DELETE.",
)


def api_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Where the API is and which key to use."""
    return _apply(
        f,
        [
            click.option(
                "--api-key-file",
                type=click.Path(path_type=Path, dir_okay=False),
                help=f"Read the API key from this file instead of ${KEY_ENV}.",
            ),
            click.option(
                "--base-url",
                metavar="URL",
                help=f"API gateway (default: ${BASE_URL_ENV}, else {DEFAULT_BASE_URL}).",
            ),
            click.option(
                "--ca-bundle",
                metavar="PATH",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="PEM file of CA certificates to trust instead of the built-in ones (a "
                "TLS-inspecting proxy's CA); default: $SSL_CERT_FILE, else the built-in bundle.",
            ),
        ],
    )


def sending_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How a command that sends requests sends them, and asks before it does."""
    return _apply(
        f,
        [
            click.option(
                "--concurrency",
                type=int,
                help="Most requests in flight (default: enough for the rate).",
            ),
            click.option(
                "--timeout",
                type=float,
                default=30.0,
                show_default=True,
                help="Seconds per request.",
            ),
            click.option(
                "--max-retries",
                type=int,
                default=5,
                show_default=True,
                help="Retries per request for 5xx, timeouts and resets (429s and gateway overload "
                "answers, such as a 503, use none).",
            ),
            click.option(
                "--max-429-wait",
                type=float,
                default=900.0,
                show_default=True,
                metavar="SECONDS",
                help="Stop (exit 75) once the API has answered nothing but 429 for this long.",
            ),
            click.option(
                "--wait-for-quota",
                is_flag=True,
                help="When the daily quota is spent, sleep until it resets instead of exiting 75.",
            ),
            click.option(
                "--grace-period",
                type=click.FloatRange(min=0),
                default=10.0,
                show_default=True,
                metavar="SECONDS",
                help="After SIGINT/SIGTERM, how long requests in flight get to finish and be "
                "recorded.",
            ),
            click.option(
                "--audit-log",
                type=click.Path(path_type=Path, dir_okay=False),
                metavar="FILE.jsonl",
                help="Append one JSON line per request sent (time, pair or batch, attempt, "
                "status, error code, request id, duration, why it waited); never the key.",
            ),
            click.option(
                "--dry-run",
                is_flag=True,
                help="Plan only: read, validate, compare with --out; send nothing.",
            ),
            click.option(
                "--yes", "-y", is_flag=True, help="Do not ask for confirmation on a terminal."
            ),
            click.option(
                "--progress-interval",
                type=click.FloatRange(min=0.5),
                default=PLAIN_EVERY,
                show_default=True,
                metavar="SECONDS",
                help="Seconds between progress lines when not on a terminal.",
            ),
        ],
    )


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How the job tells its story."""
    return _apply(
        f,
        [
            click.option(
                "--summary-json",
                type=click.Path(path_type=Path, dir_okay=False),
                help="Also write the summary as JSON to this file (for schedulers).",
            ),
            click.option(
                "--log-format",
                type=click.Choice(LOG_FORMATS),
                default="text",
                show_default=True,
                help="json: one JSON object per line on stderr (events, progress, summary).",
            ),
            click.option("--quiet", "-q", is_flag=True, help="Only errors and the final result."),
        ],
    )


def _read_options(kw: dict[str, Any]) -> ReadOptions:
    delimiter = kw.pop("delimiter")
    if delimiter is not None:
        delimiter = {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)
        if len(delimiter) != 1:
            raise InputError(f"--delimiter {delimiter!r} must be one character (or 'tab')")
    return ReadOptions(
        campaign_column=kw.pop("campaign_column"),
        contact_column=kw.pop("contact_column"),
        campaign=kw.pop("campaign", None),
        delimiter=delimiter,
        sheet=kw.pop("sheet"),
    )


COMPLETE_ENV = "_BULK_UNENROLL_COMPLETE"
RETRY_CODES = (75, 130, 143)
"""Exit codes after which rerunning the same command (later) carries on the job."""


def _epilog(*examples: str, exit_codes: bool = False) -> str:
    """Examples (and the exit codes) under --help; `\b` keeps click from rewrapping them."""
    parts = ["\b\nExamples:\n" + "\n".join(f"  {example}" for example in examples)]
    if exit_codes:
        retry = ", ".join(map(str, RETRY_CODES))
        codes = "\n".join(f"  {code:<5}{meaning}" for code, meaning in EXIT_MEANINGS.items())
        parts.append(
            f"\b\nExit codes (rerun the same command later on {retry}, and on 74 when "
            f"another run holds the lock):\n{codes}"
        )
    return "\n\n".join(parts)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_epilog(
        "bulk-unenroll plan unenroll.csv                  # what a run would do; sends nothing",
        "bulk-unenroll run unenroll.csv --out results.csv # do it; rerun the same to resume",
        "bulk-unenroll report results.csv --export fix.xlsx",
        "bulk-unenroll restore results.csv --out restore.csv  # undo a run: re-enroll its removals",
        "bulk-unenroll sandbox --enroll-from unenroll.csv # a fake API to rehearse against",
        f'eval "$({COMPLETE_ENV}=bash_source bulk-unenroll)"  # shell completion (bash; zsh: '
        "zsh_source)",
        exit_codes=True,
    ),
)
@click.version_option(__version__, prog_name="bulk-unenroll")
def main() -> None:
    """Remove contacts from LeadLex email campaigns in bulk: paced, resumable, truthful.

    Start with `plan` to see what a run would do, `run` to do it, `report` to read a
    results file afterwards, `restore` to undo a run, and `sandbox` to rehearse against a
    fake API.
    """
    remember(os.environ.get(KEY_ENV, "").strip())  # scrubbed even where no command reads it


# -- plan and run ----------------------------------------------------------------------------


@dataclass
class _Request:
    command: str
    dry_run: bool
    yes: bool
    summary_json: Path | None
    input: Path
    results: Path | None
    """--out as given (None for `plan` without it)."""


@dataclass
class _Session:
    """What the job got to before it ended, however it ended."""

    job: Job | None = None
    figures: Figures | None = None
    ran: bool = False


def continue_command() -> str:
    return shlex.join(["bulk-unenroll", *sys.argv[1:]])


STDIN = Path("-")
_spooled: set[str] = set()
"""Private copies of stdin made by this process: messages call them `stdin`."""


def _readable_twice(input_path: Path) -> Path:
    """INPUT as a file the reader can go over twice: `-` is stdin, copied to a private
    temporary folder (removed at exit) before anything else reads it."""
    if input_path != STDIN:
        return input_path
    if sys.stdin.isatty():
        raise InputError(
            "INPUT '-' reads the rows from stdin, but stdin is a terminal: pipe them in, "
            "e.g. `cat unenroll.csv | bulk-unenroll run - --out results.csv`"
        )
    folder = Path(tempfile.mkdtemp(prefix="bulk-unenroll-stdin-"))
    atexit.register(shutil.rmtree, folder, True)
    try:
        copy = spool(sys.stdin.buffer, folder)
    except OSError as exc:
        raise InputError(
            f"cannot copy stdin to a temporary file in {folder.parent}: {exc.strerror or exc} "
            "(set TMPDIR to a folder with room)"
        ) from None
    _spooled.add(str(copy))
    return copy


def _given(path: Path) -> Path:
    """The input as the user named it (`-` for stdin)."""
    return STDIN if str(path) in _spooled else path


def _shown(text: str) -> str:
    for copy in _spooled:
        text = text.replace(copy, "stdin")
    return text


def _config(input_path: Path, out: Path, kw: dict[str, Any], *, key_needed: bool) -> JobConfig:
    read = _read_options(kw)
    rate, plan = kw.pop("rate"), kw.pop("plan")
    config = JobConfig.from_env(
        _readable_twice(input_path),
        out,
        api_key_file=kw.pop("api_key_file", None),
        base_url=kw.pop("base_url", None),
        key_needed=key_needed,
        rate=Rate.parse(rate) if rate else None,
        plan=PLANS[plan] if plan else None,
        concurrency=kw.pop("concurrency", None),
        timeout=kw.pop("timeout", 30.0),
        retry=RetryPolicy(
            max_retries=kw.pop("max_retries", 5), max_429_wait=kw.pop("max_429_wait", 900.0)
        ),
        reserve=kw.pop("reserve"),
        wait_for_quota=kw.pop("wait_for_quota", False),
        max_removals=kw.pop("max_removals", None),
        check_enrollment=kw.pop("check_enrollment", False),
        read=read,
        grace_period=kw.pop("grace_period", 10.0),
        allow_same_input=kw.pop("allow_same_input", False),
        ca_bundle=kw.pop("ca_bundle", None),
        audit_log=kw.pop("audit_log", None),
    )
    return config


async def _drive(config: JobConfig, console: Console, req: _Request, session: _Session) -> int:
    job = Job(
        config,
        on_event=console.event,
        on_progress=console.progress,
        handle_signals=not req.dry_run,
    )

    async def planned() -> str:
        plan = await job.plan(dry_run=req.dry_run)
        figures = dataclasses.replace(
            plan_figures(plan, job.summary, config), input=_given(config.input)
        )
        session.figures = figures
        console.plan(figures, dry_run=req.dry_run)
        return confirm_question(figures)

    return await _carry_out(job, planned, console, req, session)


async def _carry_out(
    job: Job,
    planned: Callable[[], Awaitable[str]],
    console: Console,
    req: _Request,
    session: _Session,
) -> int:
    """Plan (`planned` shows the plan and says what to ask), confirm, run: any command's."""
    session.job = job
    try:
        question = await planned()
        if req.dry_run:
            return 0
        if job.summary.to_send and not req.yes and not console.ask(question):
            job.summary.stop_reason = StopReason.SIGINT
            console.error("cancelled at the prompt; nothing was sent", 130)
            return 130
        session.ran = True
        with console.running(job.progress):
            summary = await job.run()
    finally:
        job.close()
    return summary.exit_code


def _word_stop(summary: Summary) -> None:
    """The stop in the CLI's words, for the summary and its JSON: settings named as flags."""
    if summary.stop_event is not None:
        summary.stop_detail = summary.stop_event.describe(flag)


def _execute(
    make_config: Callable[[], Settings],
    console: Console,
    req: _Request,
    drive: Callable[[Settings, Console, _Request, _Session], Awaitable[int]],
) -> NoReturn:
    """Plan, confirm, run; then the summary, its JSON and the exit code, however it ended."""
    session = _Session()
    error: str | None = None
    unexpected: BaseException | None = None
    try:
        config = make_config()
        code = anyio.run(drive, config, console, req, session, backend="asyncio")
    except BaseException as exc:
        known = find_in_group(exc, BulkUnenrollError)
        if known is not None:
            code, error = known.exit_code, _shown(redact_message(known.describe(flag)))
        elif find_in_group(exc, KeyboardInterrupt) is not None:
            code, error = (
                130,
                (
                    "interrupted while finishing; the results file is intact, rerun to continue"
                    if session.ran
                    else "interrupted before sending began; nothing was sent"
                ),
            )
        elif isinstance(exc, Exception):
            unexpected, code = exc, INTERNAL_ERROR
            error = f"internal error: {type(next(leaves(exc))).__name__}"
        else:
            raise
    command = continue_command()
    summary = session.job.summary if session.job is not None else Summary()
    _word_stop(summary)
    if code == 130 and summary.stop_reason is StopReason.COMPLETE:
        summary.stop_reason = StopReason.SIGINT  # Ctrl-C before the signal watcher started
    data = summary_dict(
        summary,
        command=req.command,
        input=req.input,
        results=req.results,
        figures=session.figures,
        exit_code=code,
        error=error,
        continue_command=None if req.dry_run else command,
        planned=session.figures is not None,
    )
    if session.ran:
        console.summary(summary, command, data)
    if error is not None and unexpected is None:
        console.error(error, code)
    if req.summary_json is not None:
        try:
            write_json(req.summary_json, data)
        except ResultsFileError as exc:
            console.error(str(exc), exc.exit_code)
            code = code or exc.exit_code
    if unexpected is not None:
        internal_error(unexpected)  # the summary JSON above is written even for a bug
    if code == 130 and not session.ran:
        _leave_planning()
    sys.exit(code)


def _leave_planning() -> NoReturn:
    """Interrupted while planning: the results file is closed and unlocked by now, but a
    worker thread may still be reading a large input; leave without waiting for it (and
    without a traceback for a second Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _console(kw: dict[str, Any]) -> Console:
    return Console(
        quiet=kw.pop("quiet"),
        log_format=kw.pop("log_format"),
        progress_interval=kw.pop("progress_interval", PLAIN_EVERY),
    )


@main.command(
    epilog=_epilog(
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
    console = _console(kw)
    dry_run = kw.pop("dry_run")
    req = _Request(
        command="plan" if dry_run else "run",
        dry_run=dry_run,
        yes=kw.pop("yes"),
        summary_json=kw.pop("summary_json"),
        input=input_path,
        results=out,
    )
    _execute(lambda: _config(input_path, out, kw, key_needed=not dry_run), console, req, _drive)


@main.command(
    epilog=_epilog(
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
    console = _console(kw)
    req = _Request(
        command="plan",
        dry_run=True,
        yes=True,
        summary_json=kw.pop("summary_json"),
        input=input_path,
        results=out,
    )
    # Without --out nothing was done before: an empty file stands in for the results.
    results = out if out is not None else Path(os.devnull)
    _execute(lambda: _config(input_path, results, kw, key_needed=False), console, req, _drive)


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
    config = _config(results, out, kw, key_needed=not dry_run)
    filters = Filters(frozenset(campaigns), since, until, pairs, config.read)
    source = source or default_source(results, datetime.now(UTC))
    return config, RestoreOptions(results, source, filters)


async def _drive_restore(
    settings: tuple[JobConfig, RestoreOptions], console: Console, req: _Request, session: _Session
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

    return await _carry_out(job, planned, console, req, session)


@main.command(
    epilog=_epilog(
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
@_apply_options(COLUMN_OPTIONS)
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
    console = _console(kw)
    dry_run = kw.pop("dry_run")
    req = _Request(
        command="restore",
        dry_run=dry_run,
        yes=kw.pop("yes"),
        summary_json=kw.pop("summary_json"),
        input=results,
        results=out,
    )
    _execute(
        lambda: _restore_settings(results, out, kw, dry_run=dry_run), console, req, _drive_restore
    )


# -- report ----------------------------------------------------------------------------------


@main.command(
    epilog=_epilog(
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


# -- verify ----------------------------------------------------------------------------------


@main.command(
    epilog=_epilog(
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


# -- sandbox ---------------------------------------------------------------------------------


@main.command(
    epilog=_epilog(
        "bulk-unenroll sandbox --enroll-from unenroll.csv --ready-file url.txt",
        "bulk-unenroll sandbox --enroll-from unenroll.csv --daily-quota 100 --day-seconds 60",
        "LEADLEX_API_KEY=wbk_test bulk-unenroll run unenroll.csv --out r.csv \\",
        "    --base-url http://127.0.0.1:PORT/api-gateway          # in another terminal",
    )
)
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
    help="Fault probabilities per request: error_503, html_500, empty_5xx, reset_before, "
    "reset_after, hang, hang_after, empty_2xx, malformed_2xx, no_content_2xx (204), "
    "text_2xx (200 text/plain), bare_429 (429 without headers) (e.g. error_503=0.05).",
)
@click.option(
    "--reset-format",
    type=click.Choice(RESET_FORMATS),
    default="epoch",
    show_default=True,
    help="How X-RateLimit-Reset is written (the docs say epoch seconds).",
)
@click.option(
    "--retry-after",
    type=click.Choice(RETRY_AFTER_FORMATS),
    default="seconds",
    show_default=True,
    help="Retry-After on per-window 429s: delta seconds, an HTTP-date, or none.",
)
@click.option(
    "--wrong-route",
    type=click.Choice(WRONG_ROUTE_ANSWERS),
    default="not_found",
    show_default=True,
    help="The 404 for a path outside /api-gateway (a wrong --base-url): "
    'a JSON "not_found", or no body.',
)
@click.option(
    "--unknown-campaign-code",
    type=click.Choice(["campaign_not_found", "not_found"]),
    default="campaign_not_found",
    show_default=True,
    help="The 404 error code for an --unknown-campaign.",
)
@click.option(
    "--churn",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    metavar="P",
    help="Play a second client while a campaign is listed: before each page after the first, "
    "with probability P it removes an enrollment from the pages already read or enrolls a new "
    "contact.",
)
@click.option(
    "--no-campaigns-read",
    is_flag=True,
    help="The key lacks campaigns:read: listing a campaign's contacts answers 403.",
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
        click.echo(f"error: {exc.describe(flag)}", err=True)
        sys.exit(exc.exit_code)
    try:
        anyio.run(serve_forever, api, kw["port"], kw["ready_file"], backend="asyncio")
    except KeyboardInterrupt:
        click.echo("sandbox stopped", err=True)
    except OSError as exc:
        click.echo(f"error: cannot listen on 127.0.0.1:{kw['port']}: {exc.strerror}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
