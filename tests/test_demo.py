"""`make demo` is what a new user runs first: it must work and show true figures."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_the_demo_unenrolls_the_sample_then_sends_nothing_again(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    demo = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order a user reads it
        text=True,
        timeout=120,
        check=False,
    )
    out = demo.stdout
    assert demo.returncode == 0, out
    commands = re.findall(r"^\$ bulk-unenroll (\w+)", out, re.M)
    assert commands == ["run", "run", "report", "run", "verify", "report"]
    real, report, rerun, verify, page = out.split("\n$ ")[2:]
    assert re.search(r"removed\s+100\n", real) and re.search(r"calls spent\s+122 ", real)
    assert re.search(r"selected rows\s+17 ", report)
    assert "not sent: the campaign answered campaign_not_found for row 2" in report
    assert re.search(r"settled by an earlier run\s+131\n", rerun)
    assert re.search(r"calls spent\s+0\n", rerun)
    assert "verified: holds 121 " in verify  # 100 removed and 21 not enrolled, still not enrolled
    shown = html.unescape((tmp_path / "demo-output" / "report.html").read_text(encoding="utf-8"))
    assert "All 121 pairs checked are still not enrolled" in shown and "wrote the report" in page
    assert "wbk_demo_key" not in out
