"""`make demo`: a real bulk unenrollment of sample_data/ through the bundled sandbox."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SAMPLE = Path("sample_data")
OUT = Path("demo-output")
CLI = [sys.executable, "-m", "bulk_unenroll"]


def _show(title: str, args: list[str], env: dict[str, str]) -> int:
    """Print the command as a user types it (`bulk-unenroll ...`), then run it."""
    print(f"\n$ bulk-unenroll {' '.join(args)}    # {title}", flush=True)
    return subprocess.run([*CLI, *args], env=env, check=False).returncode


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    ready = OUT / "sandbox-url"
    sandbox = subprocess.Popen(
        [
            *CLI,
            "sandbox",
            "--enroll-from",
            str(SAMPLE / "enrollments.csv"),
            "--rate-limit",
            "30/s",
            "--daily-quota",
            "1000",
            "--ready-file",
            str(ready),
            "--seed",
            "1",
        ],
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            if sandbox.poll() is not None or time.monotonic() > deadline:
                print("the sandbox did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        env = {
            **os.environ,
            "LEADLEX_API_KEY": "wbk_demo_key",
            "LEADLEX_BASE_URL": ready.read_text().strip(),
        }
        results = str(OUT / "results.csv")
        run = ["run", str(SAMPLE / "unenroll.csv"), "--out", results, "--rate", "25/s", "--yes"]
        _show("plan first", [*run, "--dry-run"], env)
        # The sample has a deleted campaign and malformed rows: a finished run exits 1.
        codes = [_show("the real run", run, env)]
        _show("the rows that need work, and why", ["report", results], env)
        codes.append(_show("rerun: everything is settled, nothing is sent again", run, env))
        verify = ["verify", results, "--rate", "25/s"]
        codes.append(_show("check against the API that the removals hold", verify, env))
        page = ["report", results, "--html", str(OUT / "report.html")]
        codes.append(_show("a report page to hand over (with what verify found)", page, env))
        if codes != [1, 1, 0, 0]:
            print(f"\nthe demo expected exit codes 1, 1, 0 and 0, got {codes}", file=sys.stderr)
            return 1
        print(f"\nopen {OUT / 'report.html'} in a browser: it needs no network")
        return 0
    finally:
        sandbox.terminate()
        sandbox.wait(10)


if __name__ == "__main__":
    sys.exit(main())
