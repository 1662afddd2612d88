"""The command line: flags and environment to a JobConfig, the job's story to the terminal,
its result to an exit code. No HTTP, no polars, no business rules here."""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import click

from .. import __version__
from ..config import BASE_URL_ENV, DEFAULT_BASE_URL, KEY_ENV, JobConfig, ReadOptions, RetryPolicy
from ..errors import (
    BulkUnenrollError,
    InputError,
    ResultsFileError,
    UnsupportedPlatform,
    find_in_group,
    leaves,
)
from ..input.formats import spool
from ..limits import PLANS, Rate
from ..models import StopReason, Summary
from ..platforms import require_posix
from ..render import EXIT_MEANINGS, LOG_FORMATS, PLAIN_EVERY, Console, flag
from ..report import (
    Figures,
    summary_dict,
    write_json,
)
from ..scrub import redact_message, remember
from ..send.runner import Job

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


def apply_options(
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


def read_options(kw: dict[str, Any]) -> ReadOptions:
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


def epilog(*examples: str, exit_codes: bool = False) -> str:
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
    epilog=epilog(
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
class Invocation:
    command: str
    dry_run: bool
    yes: bool
    summary_json: Path | None
    input: Path
    results: Path | None
    """--out as given (None for `plan` without it)."""


@dataclass
class Reached:
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


def given_input(path: Path) -> Path:
    """The input as the user named it (`-` for stdin)."""
    return STDIN if str(path) in _spooled else path


def _shown(text: str) -> str:
    for copy in _spooled:
        text = text.replace(copy, "stdin")
    return text


def job_config(input_path: Path, out: Path, kw: dict[str, Any], *, key_needed: bool) -> JobConfig:
    read = read_options(kw)
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


async def carry_out(
    job: Job,
    planned: Callable[[], Awaitable[str]],
    console: Console,
    req: Invocation,
    session: Reached,
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


def execute(
    make_config: Callable[[], Settings],
    console: Console,
    req: Invocation,
    drive: Callable[[Settings, Console, Invocation, Reached], Awaitable[int]],
) -> NoReturn:
    """Plan, confirm, run; then the summary, its JSON and the exit code, however it ended."""
    session = Reached()
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


def console_for(kw: dict[str, Any]) -> Console:
    return Console(
        quiet=kw.pop("quiet"),
        log_format=kw.pop("log_format"),
        progress_interval=kw.pop("progress_interval", PLAIN_EVERY),
    )
