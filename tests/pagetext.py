"""The report page read back as a person reads it: its sections' text and tables, the
charts' titles, and what a browser would fetch or run (nothing, for a self-contained page).
Also the truth the page is checked against, read from the results file with the csv module."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from conftest import cli_env, new_uuid, run_cli, write_csv

from bulk_unenroll.sandbox import Limits, Sandbox, SandboxThread

WITHOUT_CALL = ("invalid", "duplicate")
HOSTILE = '<script>alert("x")</script>'


def run_with_429s(tmp: Path) -> tuple[Path, Path, Sandbox]:
    """A real run (results file, audit log, the sandbox) that met 429s: every kind of
    outcome but failed, and a hostile id."""
    live = [("cmp_a", new_uuid(i)) for i in range(1, 13)] + [("cmp_b", new_uuid(50))]
    rows = [
        *live,
        ("cmp_b", new_uuid(60)),  # not enrolled
        ("cmp_gone", new_uuid(70)),  # a deleted campaign
        ("cmp_a", HOSTILE),  # invalid
        ("cmp_a", new_uuid(1)),  # a duplicate
        *[("cmp_c", new_uuid(i)) for i in range(80, 83)],
    ]
    src = write_csv(tmp / "input.csv", rows)
    api = Sandbox(live, campaigns=["cmp_b", "cmp_c"], limits=Limits(3, 1.0))
    out, audit = tmp / "results.csv", tmp / "audit.jsonl"
    with SandboxThread(api) as server:
        args = ["run", str(src), "--out", str(out), "--audit-log", str(audit), "--yes"]
        done = run_cli([*args, "--rate", "10/s"], cli_env(server.base_url))
    assert done.returncode == 1, done.stderr  # rejected and invalid rows
    return out, audit, api


def make_page(results: Path, *extra: str) -> tuple[str, str]:
    """The page's HTML and the command's stderr, the command run as a user runs it."""
    page = results.with_name("page.html")
    done = run_cli(["report", str(results), "--html", str(page), *extra], cli_env("http://x"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    return page.read_text(encoding="utf-8"), done.stderr


def audit_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@dataclass
class Page:
    lead: str = ""
    text: dict[str, str] = field(default_factory=dict)
    """Each section's (and the header's) text, by its id."""
    tables: dict[str, list[list[list[str]]]] = field(default_factory=dict)
    """Each section's tables: rows of cell texts, the header row first."""
    svg_titles: list[str] = field(default_factory=list)
    tags: Counter[str] = field(default_factory=Counter)
    fetches: list[str] = field(default_factory=list)
    """Attributes and styles that would load something from elsewhere."""

    def table(self, section: str, index: int = 0) -> list[list[str]]:
        return self.tables[section][index]

    def rows_by_first_cell(self, section: str, index: int = 0) -> dict[str, list[str]]:
        return {row[0]: row[1:] for row in self.table(section, index)[1:]}


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.section = "header"
        self.cell: list[str] | None = None
        self.row: list[str] | None = None
        self.in_lead = False
        self.in_title = False
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.page.tags[tag] += 1
        named = dict(attrs)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "xlink:href") or name.startswith("on"):
                self.page.fetches.append(f"<{tag} {name}={value!r}>")
        if tag == "section":
            self.section = named.get("id") or "?"
        elif tag == "table":
            self.page.tables.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "p" and "lead" in (named.get("class") or ""):
            self.in_lead = True
        elif tag == "title":
            self.in_title = True
            self.page.svg_titles.append("")
        elif tag == "style":
            self.in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.page.tables[self.section][-1].append(self.row)
            self.row = None
        elif tag == "p":
            self.in_lead = False
        elif tag == "title":
            self.in_title = False
        elif tag == "style":
            self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.in_style:
            if "url(" in data or "@import" in data or "@font-face" in data:
                self.page.fetches.append(f"style: {data[:80]}")
            return
        if self.in_title:
            self.page.svg_titles[-1] += data
            return
        if self.cell is not None:
            self.cell.append(data)
        if self.in_lead:
            self.page.lead += data
        self.page.text[self.section] = self.page.text.get(self.section, "") + data


def read_page(html: str) -> Page:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.page


def latest_records(path: Path) -> list[dict[str, str]]:
    """Each pair's latest answer and each row recorded without a call, as `report` counts."""
    with path.open(newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    latest: dict[tuple[str, ...], dict[str, str]] = {}
    for record in records:
        pair = (record["campaign_id"], record["contact_id"])
        key = (record["row"], *pair) if record["status"] in WITHOUT_CALL else ("sent", *pair)
        latest.pop(key, None)
        latest[key] = record
    return list(latest.values())
