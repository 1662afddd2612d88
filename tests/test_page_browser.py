"""The report page as a person sees it: Debian's `chromium`, headless and with no network,
renders the page of a real run; the figures it shows (the DOM it built) are checked against
the results file, its screenshot against blank, and it prints.

Not part of `make test` (it needs a browser): `make test-page` installs chromium if it is
missing and runs this file; `.ci/run` calls it. It skips, saying why, when there is none.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest
from pagetext import HOSTILE, latest_records, make_page, read_page, run_with_429s

pytestmark = pytest.mark.page

GREEN, BLUE = (0x2E, 0x7D, 0x32), (0x15, 0x65, 0xC0)
"""The chart's colours of `removed` and of the calls per minute (page/charts.py)."""
WIDTH, HEIGHT = 1000, 2400


def chromium() -> str:
    """chromium from $CHROMIUM or PATH; skips (saying why) when it is not installed."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(found, os.X_OK):
        pytest.skip(
            "chromium is not installed (make test-page installs Debian's chromium with "
            "apt-get; set CHROMIUM to another binary)"
        )
    return found


def browse(page: Path, tmp: Path, *action: str) -> subprocess.CompletedProcess[str]:
    """Open the page in a headless chromium that can reach nothing on the network."""
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # root in a container has no user namespace to sandbox with
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={tmp / 'profile'}",
            f"--window-size={WIDTH},{HEIGHT}",
            *action,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The page of a real run that met 429s, and its results file."""
    chromium()  # skip before the run when there is no browser
    tmp = tmp_path_factory.mktemp("browser")
    out, audit, _ = run_with_429s(tmp)
    make_page(out, "--audit-log", str(audit))
    return tmp / "page.html", out


def test_the_browser_shows_the_results_files_figures(page: tuple[Path, Path]) -> None:
    html, out = page
    shown = browse(html, html.parent, "--dump-dom")
    assert shown.returncode == 0, shown.stderr[-2000:]
    seen = read_page(shown.stdout)
    latest = latest_records(out)
    statuses = Counter(r["status"] for r in latest)
    totals = seen.rows_by_first_cell("totals")
    assert {name: cells[1] for name, cells in totals.items() if name != "rows"} == {
        s: str(statuses[s])
        for s in ("removed", "not_enrolled", "rejected", "failed", "invalid", "duplicate")
    }
    look = sorted(int(r["row"]) for r in latest if r["status"] in ("rejected", "invalid"))
    assert sorted(int(row[0]) for row in seen.table("needs-a-look")[1:]) == look
    assert HOSTILE in seen.text["needs-a-look"], "shown as text"
    assert seen.tags["script"] == 0, "and never run"
    assert f"{statuses['removed']} contacts were removed" in seen.lead


def test_the_screenshot_shows_the_page_and_its_charts(page: tuple[Path, Path]) -> None:
    html, _ = page
    shot = html.with_name("page.png")
    done = browse(html, html.parent, f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = png_pixels(shot.read_bytes())
    assert len(pixels) == WIDTH * HEIGHT
    colours = Counter(pixels)
    white = colours[(255, 255, 255)]
    assert white < 0.97 * len(pixels), "not blank: text, tables and charts"
    assert colours[GREEN] > 1000, "the outcome bar's removed part"
    assert colours[BLUE] > 500, "the timeline's bars"


def test_the_page_prints(page: tuple[Path, Path]) -> None:
    html, _ = page
    pdf = html.with_name("page.pdf")
    done = browse(html, html.parent, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    assert done.returncode == 0 and pdf.exists(), done.stderr[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and len(data) > 10_000


def png_pixels(data: bytes) -> list[tuple[int, int, int]]:
    """The RGB pixels of an 8-bit RGB or RGBA PNG (what chromium writes), row by row."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, bytearray(), b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), "8-bit RGB or RGBA"
    step = 3 if colour == 2 else 4
    rows = _unfiltered(zlib.decompress(bytes(idat)), width * step, height, step)
    return [(row[x], row[x + 1], row[x + 2]) for row in rows for x in range(0, width * step, step)]


def _unfiltered(raw: bytes, stride: int, height: int, bpp: int) -> list[bytearray]:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth)."""
    rows, prev, at = [], bytearray(stride), 0
    for _ in range(height):
        kind, line = raw[at], bytearray(raw[at + 1 : at + 1 + stride])
        at += 1 + stride
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up, corner = prev[x], prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + left) & 255
            elif kind == 2:
                line[x] = (line[x] + up) & 255
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 255
            elif kind == 4:
                line[x] = (line[x] + _paeth(left, up, corner)) & 255
        rows.append(line)
        prev = line
    return rows


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c
