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


def _show(title: str, command: list[str], env: dict[str, str]) -> int:
    print(f"\n$ {' '.join(command)}    # {title}", flush=True)
    return subprocess.run(command, env=env, check=False).returncode


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    ready = OUT / "sandbox-url"
    cli = [sys.executable, "-m", "bulk_unenroll"]
    sandbox = subprocess.Popen(
        [
            *cli,
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
        run = [
            *cli,
            "run",
            str(SAMPLE / "unenroll.csv"),
            "--out",
            results,
            "--rate",
            "25/s",
            "--yes",
        ]
        _show("plan first", [*run, "--dry-run"], env)
        code = _show("the real run", run, env)
        print(f"\nexit code {code} (1: finished, some rows rejected or invalid; see {results})")
        print("\nfirst rows of the results file:")
        with open(results, encoding="utf-8") as f:
            for _ in range(8):
                print("  " + f.readline().rstrip())
        code = _show("rerun: everything is settled, nothing is sent again", run, env)
        print(f"\nexit code {code}")
        return 0
    finally:
        sandbox.terminate()
        sandbox.wait(10)


if __name__ == "__main__":
    sys.exit(main())
