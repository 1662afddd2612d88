"""`sandbox`: a fake LeadLex API on 127.0.0.1 to rehearse against."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import click

from ..errors import (
    BulkUnenrollError,
)
from ..limits import PLANS
from ..render import flag
from ..sandbox import RESET_FORMATS, RETRY_AFTER_FORMATS, WRONG_ROUTE_ANSWERS
from .base import (
    epilog,
    input_options,
    main,
    read_options,
)

# -- sandbox ---------------------------------------------------------------------------------


@main.command(
    epilog=epilog(
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
    from ..sandbox import build_from_options, serve_forever

    try:
        api = build_from_options(read_options(kw), **kw)
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
