"""`report RESULTS --html FILE`: one self-contained page to hand to people who were not
there. `figures` computes what it shows (in aggregates), `timeline` the run over time,
`charts` and `html` draw it."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..report import write_whole
from .figures import PageFigures, VerifyFigures, page_figures
from .html import render

__all__ = ["PageFigures", "VerifyFigures", "page_figures", "render", "write_page"]


def write_page(
    results: Path,
    dest: Path,
    audit_log: Path | None = None,
    *,
    verify: VerifyFigures | None = None,
) -> PageFigures:
    """Make the page for `results` and write it to `dest` whole or not at all."""
    for source, name in ((results, "the results file"), (audit_log, "the --audit-log file")):
        if source is not None and dest.resolve() == source.resolve():
            raise InputError(f"--html {dest} is {name} itself; choose another path for the page")
    figures = page_figures(results, audit_log, verify=verify)
    write_whole(dest, render(figures), "--html")
    return figures
