"""The README's cron recipe, `examples/nightly-unenroll.sh`, run as cron runs it: minimal PATH,
no terminal, no HOME, no key in the environment, against the `bulk-unenroll sandbox` command
with a short quota day. Three nights: a quota stop, a continuation, a finish with rows that
need a look (archived, told once); then a night with nothing queued and a new job under the
same name that none of the old job's files speak for."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import new_uuid, read_results, write_csv
from helpers import sandbox_command

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "examples" / "nightly-unenroll.sh"
INSTALLED = Path(sys.executable).with_name("bulk-unenroll")
QUOTA = 15
DAY_SECONDS = 6.0
"""Long enough for one night's run (about a second) to stay inside one quota day."""


@pytest.fixture
def sandbox_url(tmp_path: Path) -> Iterator[str]:
    ready = tmp_path / "sandbox-url"
    enrolled = tmp_path / "enrolled.csv"
    write_csv(enrolled, [("cmp_a", new_uuid(i)) for i in range(1, 41)])
    options = ["--enroll-from", str(enrolled), "--daily-quota", str(QUOTA)]
    options += ["--day-seconds", str(DAY_SECONDS)]
    with sandbox_command(ready, *options, program=[str(INSTALLED)]) as sandbox:
        yield sandbox.url


def _next_day() -> None:
    """Sleep into the next quota day (the sandbox's days start at multiples of DAY_SECONDS)."""
    now = time.time()
    time.sleep(math.ceil(now / DAY_SECONDS) * DAY_SECONDS - now + 0.2)


@pytest.mark.slow
def test_the_cron_recipe_across_three_nights(tmp_path: Path, sandbox_url: str) -> None:
    home = tmp_path / "srv"
    (home / "queue").mkdir(parents=True)
    key = tmp_path / "key"
    key.write_text("wbk_cron_key_0123456789\n")
    key.chmod(0o600)
    notices = tmp_path / "notices.txt"
    notify = tmp_path / "notify"
    notify.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> {notices}\n")
    notify.chmod(0o755)
    cron_env = {
        "PATH": "/usr/bin:/bin",  # cron's; bulk-unenroll is not on it
        "SHELL": "/bin/sh",
        "LEADLEX_BASE_URL": sandbox_url,  # a crontab line sets it, like the others
        "BULK_UNENROLL": str(INSTALLED),
        "UNENROLL_DIR": str(home),
        "KEY_FILE": str(key),
        "NOTIFY": str(notify),
    }

    def night(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), "--rate", "20/s", *args],
            env=cron_env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,  # no controlling terminal
            check=False,
        )

    def told() -> list[str]:
        return notices.read_text().splitlines() if notices.exists() else []

    def summary() -> dict[str, object]:
        data: dict[str, object] = json.loads((home / "queue/unenroll-summary.json").read_text())
        return data

    # 40 rows, 36 calls: 35 enrolled pairs, 2 invalid rows (recorded on the first night), then
    # a deleted campaign (one call rejects its 3 rows). At 15 calls a day: 15, 15, then 6.
    rows = [("cmp_a", new_uuid(i)) for i in range(1, 36)]
    rows += [("", new_uuid(900)), ("cmp_a", "not-a-uuid")]
    rows += [("cmp_gone", new_uuid(i)) for i in range(950, 953)]
    write_csv(home / "queue/unenroll.csv", rows)

    _next_day()
    first = night()
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout == "" and told() == []  # nothing to tell: cron mails nothing
    s = summary()
    assert (s["exit_code"], s["stop_reason"], s["remaining"]) == (75, "quota", 38 - QUOTA)

    _next_day()
    second = night()
    assert second.returncode == 0 and told() == []
    s = summary()
    assert (s["exit_code"], s["stop_reason"], s["remaining"]) == (75, "quota", 38 - 2 * QUOTA)

    _next_day()
    third = night()
    assert third.returncode == 0 and third.stdout == ""
    assert not list((home / "queue").iterdir())  # the whole job moved out of the queue
    (archived,) = (home / "done").iterdir()
    names = {p.name for p in archived.iterdir()}
    assert {"unenroll.csv", "unenroll-results.csv", "unenroll-summary.json"} <= names
    assert {n for n in names if n.startswith("unenroll-results.csv.")}  # its companions too
    statuses = Counter(r["status"] for r in read_results(archived / "unenroll-results.csv"))
    assert statuses == {"removed": 35, "rejected": 3, "invalid": 2}
    (notice,) = told()
    assert notice == (
        f"nightly-unenroll: finished; rows need a look: {INSTALLED} report "
        f"{archived}/unenroll-results.csv"
    )
    log = (home / "logs/unenroll.log").read_text()
    for code, reason in ((75, "quota"), (75, "quota"), (1, "complete")):
        assert f"exit code {code}, stop_reason {reason}" in log
    assert "progress:" in log or "summary: all 40 rows" in log

    # A fourth night with nothing queued: nothing runs, nobody is told again.
    fourth = night()
    assert fourth.returncode == 0 and told() == [notice]
    assert (home / "logs/unenroll.log").read_text() == log

    # A new job under the same name starts clean: nothing of the old job's speaks for it.
    fresh = [("cmp_a", new_uuid(i)) for i in range(36, 41)]
    write_csv(home / "queue/unenroll.csv", fresh)
    fifth = night()
    assert fifth.returncode == 0 and told() == [notice]
    done = sorted((home / "done").iterdir())
    assert len(done) == 2 and not list((home / "queue").iterdir())
    newest = next(d for d in done if d != archived)
    records = read_results(newest / "unenroll-results.csv")
    assert Counter(r["status"] for r in records) == {"removed": 5}
    assert all("earlier attempt" not in r["detail"] for r in records)


def test_a_problem_is_told_once_and_the_job_stays_queued(tmp_path: Path) -> None:
    home = tmp_path / "srv"
    (home / "queue").mkdir(parents=True)
    write_csv(home / "queue/unenroll.csv", [("cmp_a", new_uuid(1))])
    notices = tmp_path / "notices.txt"
    notify = tmp_path / "notify"
    notify.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> {notices}\n")
    notify.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "BULK_UNENROLL": str(INSTALLED),
        "UNENROLL_DIR": str(home),
        "KEY_FILE": str(tmp_path / "missing-key"),
        "NOTIFY": str(notify),
    }
    for _ in range(2):
        result = subprocess.run(
            [str(SCRIPT)], env=env, cwd="/", capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
    (notice,) = notices.read_text().splitlines()
    assert notice.startswith("nightly-unenroll: bulk-unenroll exited 2: cannot read --api-key-file")
    assert (home / "queue/unenroll.csv").exists()

    # A command that is not there (cron's PATH has no bulk-unenroll) is named, not a bare 127.
    env["BULK_UNENROLL"] = "bulk-unenroll"
    result = subprocess.run(
        [str(SCRIPT)], env=env, cwd="/", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "command -v bulk-unenroll" in notices.read_text().splitlines()[-1]


def test_the_readme_shows_the_script_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("```sh\n", readme.index("The heart of the script:")) + len("```sh\n")
    shown = readme[start : readme.index("```", start)]
    assert shown in SCRIPT.read_text(encoding="utf-8")
    assert "examples/nightly-unenroll.sh" in readme


def test_a_results_file_re_saved_in_a_spreadsheet_is_archived_with_its_backup(
    tmp_path: Path, sandbox_url: str
) -> None:
    """Someone opened tonight's results in Excel and saved them: the run rewrites the file and
    keeps the re-saved one as `unenroll-results.resaved-<time>.csv`. Archiving moves that too,
    so nothing of a finished job is left in queue/."""
    home = tmp_path / "srv"
    (home / "queue").mkdir(parents=True)
    key = tmp_path / "key"
    key.write_text("wbk_cron_key_0123456789\n")
    rows = [("cmp_a", new_uuid(i)) for i in range(1, 4)]
    write_csv(home / "queue/unenroll.csv", rows)
    header = "row;campaign_id;contact_id;status;http_status;error_code;attempts;request_id;detail"
    records = [
        f"{n};{c};{k};removed;200;;1;req_{n};;2026-01-31T23:59:59Z"
        for n, (c, k) in enumerate(rows, 1)
    ]
    resaved = "\ufeff" + "\r\n".join([header + ";finished_at", *records]) + "\r\n"
    (home / "queue/unenroll-results.csv").write_text(resaved, encoding="utf-8")
    env = {
        "PATH": "/usr/bin:/bin",
        "LEADLEX_BASE_URL": sandbox_url,
        "BULK_UNENROLL": str(INSTALLED),
        "UNENROLL_DIR": str(home),
        "KEY_FILE": str(key),
    }

    result = subprocess.run(
        [str(SCRIPT)], env=env, cwd="/", capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    assert not list((home / "queue").iterdir())
    (archived,) = (home / "done").iterdir()
    names = {p.name for p in archived.iterdir()}
    assert any(n.startswith("unenroll-results.resaved-") for n in names), names
