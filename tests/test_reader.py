"""The reader: formats, encodings, column names, id normalisation, the plan and resume keys."""

from __future__ import annotations

import csv
import datetime
import gzip
import random
import uuid
from pathlib import Path

import polars as pl
import pytest
from conftest import cli_env, new_uuid, read_results, run_cli, write_csv
from helpers import Serve

from bulk_unenroll import plan as plan_module
from bulk_unenroll.config import ReadOptions
from bulk_unenroll.errors import InputError
from bulk_unenroll.input.ids import normalise
from bulk_unenroll.input.source import Source
from bulk_unenroll.keys import OUTCOME_CODE, pair_key
from bulk_unenroll.models import Outcome
from bulk_unenroll.plan import RowAction, build_plan, work_batches
from bulk_unenroll.results.history import History
from bulk_unenroll.sandbox import Sandbox

U1, U2, U3 = new_uuid(1), new_uuid(2), new_uuid(3)


def pairs(path: Path, **options: str) -> list[tuple[str, str]]:
    """Every row's (campaign_id, contact_id) as the reader gives them, in file order."""
    source = Source(path, ReadOptions(**options))
    frames = [b.select("campaign_id", "contact_id") for b in source.batches()]
    return [tuple(row) for frame in frames for row in frame.iter_rows()]


PlannedRow = tuple[int, str, str, str, str]
"""(row, outcome or 'send', campaign, contact, detail)"""


def plan_of(path: Path, history: History | None = None, **options: str) -> list[PlannedRow]:
    """(row, outcome or 'send', campaign, contact, detail) for every row, from both passes."""
    source = Source(path, ReadOptions(**options))
    plan = build_plan(source, history or History())
    out: list[PlannedRow] = []
    for enrollments, records in work_batches(source, plan):
        out += [(e.row, "send", e.campaign_id, e.contact_id, "") for e in enrollments]
        out += [(r.row, r.outcome.value, r.campaign_id, r.contact_id, r.detail) for r in records]
    return sorted(out)


# -- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("comma.csv", f"campaign_id,contact_id\ncmp_a,{U1}\n"),
        ("semicolon.csv", f"campaign_id;contact_id\ncmp_a;{U1}\n"),
        ("tab.csv", f"campaign_id\tcontact_id\ncmp_a\t{U1}\n"),
        ("plain.tsv", f"campaign_id\tcontact_id\ncmp_a\t{U1}\n"),
        ("export.txt", f"campaign_id;contact_id\ncmp_a;{U1}\n"),
        ("misnamed.tsv", f"campaign_id,contact_id\ncmp_a,{U1}\n"),
        ("crlf.csv", f"campaign_id,contact_id\r\ncmp_a,{U1}\r\n"),
        ("excel_hint.csv", f"sep=;\ncampaign_id;contact_id\ncmp_a;{U1}\n"),
    ],
)
def test_csv_separators_are_detected_from_the_header(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert pairs(path) == [("cmp_a", U1)]


def test_delimiter_option_forces_the_separator(tmp_path: Path) -> None:
    path = tmp_path / "piped.csv"
    path.write_text(f"campaign_id|contact_id|note\ncmp_a|{U1}|a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match="one column only: is the separator right"):
        pairs(path)
    assert pairs(path, delimiter="|") == [("cmp_a", U1)]


@pytest.mark.parametrize("name", ["export.csv.gz", "export.tsv.gz", "gzipped_but_named.csv"])
def test_gzip_is_read_by_name_or_by_content(tmp_path: Path, name: str) -> None:
    sep = "\t" if ".tsv" in name else ","
    path = tmp_path / name
    path.write_bytes(gzip.compress(f"campaign_id{sep}contact_id\ncmp_a{sep}{U1}\n".encode()))
    assert pairs(path) == [("cmp_a", U1)]


def test_parquet_numbers_and_binary_uuids_become_plain_id_strings(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.parquet"
    pl.DataFrame(
        {
            "campaign_id": [12345.0, 1e20, 7.5],
            "campaign_int": [12345, 2**62, 0],
            "contact_id": [uuid.UUID(U1).bytes, uuid.UUID(U2).bytes, b"abc"],
        }
    ).write_parquet(path)
    assert pairs(path) == [
        ("12345", U1),
        ("100000000000000000000", U2),
        ("7.5", "abc"),
    ]
    assert [c for c, _ in pairs(path, campaign_column="campaign_int")] == [
        "12345",
        str(2**62),
        "0",
    ]


def test_a_date_column_is_not_taken_for_ids(tmp_path: Path) -> None:
    path = tmp_path / "dated.parquet"
    pl.DataFrame({"campaign_id": [datetime.date(2024, 1, 1)], "contact_id": [U1]}).write_parquet(
        path
    )
    with pytest.raises(InputError, match="holds Date values, not ids"):
        pairs(path)


def test_excel_numbers_read_as_typed_and_sheets_by_name(tmp_path: Path) -> None:
    xlsxwriter = pytest.importorskip("xlsxwriter")
    path = tmp_path / "export.xlsx"
    with xlsxwriter.Workbook(path) as wb:
        notes = wb.add_worksheet("Notes")
        notes.write_row(0, 0, ["nothing here"])
        sheet = wb.add_worksheet("Contacts")
        sheet.write_row(0, 0, ["Campaign ID", "Contact ID"])
        sheet.write_row(1, 0, [12345, U1])
        sheet.write_formula(2, 0, '=HYPERLINK("https://example.com","cmp_b")', None, "cmp_b")
        sheet.write(2, 1, U2)
    assert pairs(path, sheet="Contacts") == [("12345", U1), ("cmp_b", U2)]
    assert pairs(path, sheet="  contacts ") == [("12345", U1), ("cmp_b", U2)]
    # The first sheet has no id columns: the one sheet that has them is read.
    assert pairs(path) == [("12345", U1), ("cmp_b", U2)]


def test_json_lines_and_json_arrays(tmp_path: Path) -> None:
    lines = tmp_path / "export.jsonl"
    lines.write_text(
        f'{{"campaign_id": 12345, "contact_id": "{U1}", "extra": [1]}}\n\n'
        f'{{"campaign_id": "cmp_b", "contact_id": "{U2}"}}\n',
        encoding="utf-8",
    )
    assert pairs(lines) == [("12345", U1), ("cmp_b", U2)]
    array = tmp_path / "export.json"
    array.write_text(f'[{{"campaignId": "cmp_a", "contactId": "{U1}"}}]', encoding="utf-8")
    assert pairs(array) == [("cmp_a", U1)]


# -- encodings -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_unicode_exports_are_read(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "unicode.txt"
    path.write_bytes(f"Campaign ID\tContact ID\nkampagne_ü\t{U1}\ncmp_a\t{U2}\n".encode(codec))
    if codec == "utf-16-le":  # no BOM: told apart by its zero bytes
        assert not path.read_bytes().startswith(b"\xff\xfe")
    assert pairs(path) == [("kampagne_ü", U1), ("cmp_a", U2)]
    rows = plan_of(path)
    assert rows[0][1] == "invalid"  # 'ü' is not allowed in a campaign id, but was read
    assert rows[1][1:4] == ("send", "cmp_a", U2)


def test_windows_1252_text_reads_and_only_its_bad_ids_are_invalid(tmp_path: Path) -> None:
    path = tmp_path / "crm.csv"
    path.write_bytes(
        f"name,campaign_id,contact_id\nJosé,cmp_a,{U1}\nRené,cmp_é,{U2}\n".encode("cp1252")
    )
    rows = plan_of(path)
    assert rows[0][1:4] == ("send", "cmp_a", U1)
    assert rows[1][1] == "invalid"
    assert "not UTF-8 text; save the file as CSV UTF-8" in rows[1][4]


# -- columns -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("campaign", "contact"),
    [
        ("campaign_id", "contact_id"),
        ("Campaign ID", "Contact ID"),
        ("campaignId", "contactId"),
        ("campaign", "contact"),
        ("CAMPAIGN-ID", " contact id "),
    ],
)
def test_header_spellings_are_matched(tmp_path: Path, campaign: str, contact: str) -> None:
    path = write_csv(tmp_path / "in.csv", [("x", "cmp_a", U1)], ("name", campaign, contact))
    assert pairs(path) == [("cmp_a", U1)]


def test_explicit_column_flags_win(tmp_path: Path) -> None:
    header = ("campaign_id", "Kampagne", "contact_id", "Kontakt")
    path = write_csv(tmp_path / "in.csv", [("old", "cmp_new", U1, U2)], header)
    assert pairs(path, campaign_column="Kampagne", contact_column="Kontakt") == [("cmp_new", U2)]
    assert pairs(path, campaign_column="kampagne") == [("cmp_new", U1)]  # loosely, if unique


def test_a_missing_column_names_what_was_found_and_the_flag(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [("cmp_a", "a@b.c")], ("campaign_id", "email"))
    with pytest.raises(InputError) as caught:
        pairs(path)
    assert str(caught.value) == (
        "no contact_id column: the columns found are 'campaign_id', 'email'; "
        "name the right one with --contact-column NAME"
    )
    with pytest.raises(InputError, match="column 'Contact' given by --contact-column is not"):
        pairs(path, contact_column="Contact")


def test_two_columns_that_could_be_the_id_are_not_guessed(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "in.csv", [("a", "b", U1)], ("campaign_id", "Campaign ID", "contact_id")
    )
    with pytest.raises(InputError, match=r"could all be the campaign id.*--campaign-column"):
        pairs(path)


def test_contacts_only_file_with_a_campaign_option(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [(U1,), (U2,)], ("Contact ID",))
    campaign = new_uuid(99).upper()
    assert [r[1:4] for r in plan_of(path, campaign=campaign)] == [
        ("send", campaign.lower(), U1),
        ("send", campaign.lower(), U2),
    ]
    with pytest.raises(InputError, match="--campaign 'a b' is not a campaign id"):
        Source(path, ReadOptions(campaign="a b")).columns()


# -- ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("campaign", "contact", "expected"),
    [
        ("cmp_a", U1, ("cmp_a", U1)),
        ("00123", U1, ("00123", U1)),
        ("12345678901234567890", U1, ("12345678901234567890", U1)),
        (" cmp_a\t", f"\u00a0{U1.upper()} ", ("cmp_a", U1)),
        ("CMP_A", U1, ("CMP_A", U1)),  # tokens keep their case; UUIDs are lower-cased
        (U2.upper(), U1, (U2, U1)),
        ('"cmp_a"', f"'{U1}'", ("cmp_a", U1)),
        ("\u201ccmp_a\u201d", U1, ("cmp_a", U1)),
        ("'-abc", U1, ("-abc", U1)),  # a spreadsheet's text marker, as our results escape it
        ("\u200bcmp_a\u200b", U1, ("cmp_a", U1)),
        ("cmp_a", f"{U1[:4]}\u200b{U1[4:]}", "contact_id has an invisible character inside"),
        ('=HYPERLINK("https://x","cmp_a")', U1, "campaign_id is a spreadsheet formula"),
        ("cmp a", U1, "campaign_id has a space inside"),
        ("cmp/../admin", U1, "campaign_id must be a UUID or up to 128 letters"),
        ("c" * 129, U1, "campaign_id must be a UUID or up to 128 letters"),
        ("cmp_a", U1 + "x", "contact_id is not a UUID"),
        ("cmp_a", "x" * 5000, "contact_id is 5000 characters long: not an id"),
        ('cmp"a', U1, "campaign_id has quote characters inside"),
        ("", U1, "campaign_id is empty"),
        ("cmp_a", None, "contact_id is empty"),
        (None, None, "the row is empty"),
    ],
)
def test_ids_are_tidied_or_explained(
    campaign: str | None, contact: str | None, expected: tuple[str, str] | str
) -> None:
    raw = pl.DataFrame(
        {"campaign_id": [campaign, "cmp_z"], "contact_id": [contact, U3]},
        schema={"campaign_id": pl.String, "contact_id": pl.String},
    )
    first, clean = normalise(raw).iter_rows(named=True)
    assert (clean["campaign_id"], clean["contact_id"], clean["reason"]) == ("cmp_z", U3, None)
    if isinstance(expected, tuple):
        assert (first["campaign_id"], first["contact_id"], first["reason"]) == (*expected, None)
        assert first["key"] is not None
    else:
        assert first["reason"] is not None and first["reason"].startswith(expected)
        assert first["key"] is None


def test_the_same_pair_written_differently_has_one_key() -> None:
    raw = pl.DataFrame(
        {"campaign_id": ["cmp_a", " cmp_a", '"cmp_a"'], "contact_id": [U1, U1.upper(), U1]}
    )
    assert normalise(raw)["key"].n_unique() == 1
    keys = pl.DataFrame({"a": ["ab", "a"], "b": ["c", "bc"]}).select(
        pair_key(pl.col("a"), pl.col("b"))
    )
    assert keys["key"].n_unique() == 2


def test_ragged_rows_and_embedded_newlines(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text(
        "campaign_id,contact_id,note\n"
        f'cmp_a,{U1},"two\nlines"\n'
        "cmp_a\n"
        f"cmp_a,{U2},Smith, John\n"
        f"cmp_a,{U3},\n",
        encoding="utf-8",
    )
    assert [r[:2] for r in plan_of(path)] == [
        (1, "send"),
        (2, "invalid"),
        (3, "invalid"),
        (4, "send"),
    ]
    detail = plan_of(path)[2][4]
    assert detail.startswith("the row has more fields than the header")


def test_quoted_newlines_keep_rows_aligned_across_read_chunks(tmp_path: Path) -> None:
    """Several MB of multi-line notes: polars reads it in chunks; rows must not shift."""
    rows = [
        ("cmp_a", new_uuid(i), f'line one\nline, two {i}\n"quoted"' * (i % 7))
        for i in range(60_000)
    ]
    path = write_csv(tmp_path / "notes.csv", rows, ("campaign_id", "contact_id", "note"))
    assert path.stat().st_size > 5 << 20
    with path.open(newline="", encoding="utf-8") as f:
        expected = [(r["campaign_id"], r["contact_id"]) for r in csv.DictReader(f)]
    assert pairs(path) == expected


# -- the plan ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_million_duplicate_rows_plan_one_send(tmp_path: Path) -> None:
    path = tmp_path / "dupes.csv"
    path.write_text("campaign_id,contact_id\n" + f"cmp_a,{U1}\n" * 1_000_000, encoding="utf-8")
    source = Source(path)
    plan = build_plan(source, History())
    assert (plan.total_rows, plan.count(RowAction.SEND), plan.count(RowAction.DUPLICATE)) == (
        1_000_000,
        1,
        999_999,
    )
    assert plan.campaign_counts == {"cmp_a": 1} and plan.campaigns == 1
    sent = [e for batch, _ in work_batches(source, plan) for e in batch]
    assert [(e.row, e.contact_id) for e in sent] == [(1, U1)]


def history(
    settled: list[tuple[str, str, Outcome]],
    rows: list[tuple[int, str, str]],
    sent: list[tuple[str, str]],
) -> History:
    """As the journal reads a results file back: records of rows without a call are keyed
    by their row number and their cells as stored."""
    frame = pl.DataFrame(
        {
            "campaign_id": [c for c, _, _ in settled],
            "contact_id": [k for _, k, _ in settled],
            "prev": [OUTCOME_CODE[o.value] for _, _, o in settled],
        },
        schema={"campaign_id": pl.String, "contact_id": pl.String, "prev": pl.UInt8},
    ).select(pair_key(pl.col("campaign_id"), pl.col("contact_id")), "prev")
    sent_lines = pl.DataFrame(sent, schema=["campaign_id", "contact_id"], orient="row").select(
        pair_key(pl.col("campaign_id"), pl.col("contact_id")), pl.lit(1, pl.Int32).alias("delta")
    )
    recorded = pl.DataFrame(rows, schema=["row", "campaign_id", "contact_id"], orient="row")
    row_keys = recorded.select(
        pair_key(pl.col("campaign_id"), pl.col("contact_id")) + pl.col("row").cast(pl.UInt128)
    ).to_series()
    return History.from_records(frame, row_keys, [sent_lines])


def test_history_settles_pairs_and_rows_and_remembers_lost_requests(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "in.csv",
        [("cmp_a", U1), ("cmp_a", U2), ("bad id", U1), ("cmp_a", U3), ("cmp_a", U3)],
    )
    earlier = history(
        settled=[
            ("cmp_a", U1, Outcome.REJECTED),
            ("cmp_a", U1, Outcome.REMOVED),  # settled twice: removed is what counts
        ],
        # Recorded as invalid / duplicate without a call; the record of row 4 is of another
        # input whose row 4 held other cells: it says nothing of this input's row 4.
        rows=[(3, "bad id", U1), (5, "cmp_a", U3), (4, "cmp_b", U3)],
        sent=[("cmp_a", U1), ("cmp_a", U3)],  # U1 was settled since; U3 was never answered
    )
    source = Source(path)
    plan = build_plan(source, earlier)
    assert plan.actions["action"].to_list() == [
        RowAction.SETTLED,
        RowAction.SEND,
        RowAction.RECORDED,
        RowAction.SEND,
        RowAction.RECORDED,
    ]
    assert plan.settled_before() == {Outcome.REMOVED: 1, Outcome.INVALID: 1, Outcome.DUPLICATE: 1}
    sent = [e for batch, _ in work_batches(source, plan) for e in batch]
    assert [(e.row, e.attempted_before) for e in sent] == [(2, False), (4, True)]
    assert plan.count(RowAction.INVALID) == 0


def test_the_plan_matches_a_plain_reading_of_the_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random duplicates and history, sorted keys worked through in tiny slices."""
    monkeypatch.setattr(plan_module, "SORT_SLICE", 13)
    rnd = random.Random(11)
    contacts = [new_uuid(i) for i in range(1, 300)]
    rows = [(rnd.choice(["cmp_a", "cmp_b", "bad id"]), rnd.choice(contacts)) for _ in range(2000)]
    path = write_csv(tmp_path / "in.csv", rows)
    settled = {p for p in rows[::7] if p[0] != "bad id"}
    unanswered = {p for p in rows[::5] if p[0] != "bad id"} - settled
    done = history(
        [(c, k, Outcome.NOT_ENROLLED) for c, k in sorted(settled)], rows=[], sent=sorted(unanswered)
    )
    plan = build_plan(Source(path), done)

    seen: set[tuple[str, str]] = set()
    expected = []
    for pair in rows:
        if pair[0] == "bad id":
            expected.append((RowAction.INVALID, False))
        elif pair in seen:
            expected.append((RowAction.DUPLICATE, False))
        else:
            seen.add(pair)
            expected.append(
                (RowAction.SETTLED if pair in settled else RowAction.SEND, pair in unanswered)
            )
    got = list(
        zip(plan.actions["action"].to_list(), plan.actions["attempted"].to_list(), strict=True)
    )
    assert [a for a, _ in got] == [a for a, _ in expected]
    assert [t for (a, t) in got if a == RowAction.SEND] == [
        t for (a, t) in expected if a == RowAction.SEND
    ]


def test_a_resume_skips_to_the_first_row_with_work_past_multiline_records(
    tmp_path: Path,
) -> None:
    rows = [
        ("cmp_a", new_uuid(i), f"note {i}\nspans\n\nlines" if i % 3 else "") for i in range(1, 3001)
    ]
    path = write_csv(tmp_path / "in.csv", rows, ("campaign_id", "contact_id", "note"))
    done = history([(c, k, Outcome.REMOVED) for c, k, _ in rows[:2900]], rows=[], sent=[])
    source = Source(path)
    plan = build_plan(source, done)
    assert plan.count(RowAction.SETTLED) == 2900
    sent = [(e.row, e.contact_id) for batch, _ in work_batches(source, plan) for e in batch]
    assert sent == [(i, new_uuid(i)) for i in range(2901, 3001)]


def test_a_file_changed_between_the_passes_stops_the_run(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [("cmp_a", U1), ("cmp_a", U2)])
    source = Source(path)
    plan = build_plan(source, History())
    write_csv(path, [("cmp_a", U1), ("cmp_a", U2), ("cmp_a", U3)])
    with pytest.raises(InputError, match="changed while it was being read"):
        list(work_batches(source, plan))


# -- safe output ---------------------------------------------------------------------------


def test_formula_looking_cells_are_escaped_and_ids_read_back_exactly(
    tmp_path: Path, serve: Serve
) -> None:
    pair = ("-abc", U1)  # a valid campaign id that a spreadsheet would take for a formula
    api = Sandbox([pair])
    server = serve(api)
    src = write_csv(
        tmp_path / "in.csv", [pair, ('=HYPERLINK("https://evil","x")', U2), ("+cmp", U3)]
    )
    out = tmp_path / "results.csv"
    args = ["run", str(src), "--out", str(out), "--rate", "500/s", "--yes"]

    first = run_cli(args, cli_env(server.base_url))

    assert first.returncode == 1, first.stderr  # two invalid rows
    records = {int(r["row"]): r for r in read_results(out)}
    assert records[1]["campaign_id"] == "'-abc" and records[1]["status"] == "removed"
    assert records[2]["campaign_id"] == '\'=HYPERLINK("https://evil","x")'
    assert records[3]["campaign_id"] == "'+cmp"
    assert not any(v.startswith(("=", "+", "-", "@")) for r in records.values() for v in r.values())
    assert api.state.removed == {pair: 1}

    second = run_cli(args, cli_env(server.base_url))  # resume: row 1 is settled, not resent

    assert second.returncode == 1, second.stderr
    assert api.state.deletes[pair] == 1
    assert len(read_results(out)) == 3

    again = tmp_path / "again.csv"  # the results file itself, fed back as an input
    again.write_bytes(out.read_bytes())
    assert ("'-abc", U1) in pairs(again)
    assert ("send", "-abc", U1) in [r[1:4] for r in plan_of(again)]


def test_a_dry_run_reads_back_results_with_a_torn_last_line(tmp_path: Path) -> None:
    """The torn line is ignored (it is redone), and the file is left as it was."""
    from bulk_unenroll.results.journal import read_history
    from bulk_unenroll.results.records import HEADER

    out = tmp_path / "results.csv"
    row = f"1,cmp_a,{U1},removed,200,,1,req_1,,2026-01-01T00:00:00Z\n"
    torn = f"2,cmp_a,{U2},remov"
    out.write_text(HEADER + row + torn, encoding="utf-8")
    found = read_history(out)
    assert len(found.settled) == 1
    assert out.read_text(encoding="utf-8").endswith(torn)
    codes = found.prev(
        normalise(pl.DataFrame({"campaign_id": ["cmp_a"] * 2, "contact_id": [U1, U2]}))["key"]
    )
    assert codes.to_list() == [OUTCOME_CODE["removed"], None]


def test_blank_lines_at_the_end_are_not_rows_but_in_the_middle_they_are(tmp_path: Path) -> None:
    path = tmp_path / "tail.csv"
    path.write_text(
        f"campaign_id,contact_id\ncmp_a,{U1}\n\n,\ncmp_a,{U2}\n\n,\n\n", encoding="utf-8"
    )
    source = Source(path)
    plan = build_plan(source, History())
    assert (plan.total_rows, plan.ignored_tail) == (4, 3)
    assert [r[:2] for r in plan_of(path)] == [
        (1, "send"),
        (2, "invalid"),
        (3, "invalid"),
        (4, "send"),
    ]
    assert plan_of(path)[1][4] == "the row is empty"

    contacts = tmp_path / "contacts.csv"
    contacts.write_text(f"contact_id\n{U1}\n\n", encoding="utf-8")
    assert [r[:2] for r in plan_of(contacts, campaign="cmp_a")] == [(1, "send")]

    blank = tmp_path / "blank.csv"
    blank.write_text("campaign_id,contact_id\n\n,\n", encoding="utf-8")
    with pytest.raises(InputError, match="has a header but only empty rows"):
        build_plan(Source(blank), History())


def test_the_separator_that_agrees_with_the_data_wins(tmp_path: Path) -> None:
    path = tmp_path / "european.csv"
    path.write_text(f"Kampagne, ID;Kontakt, ID\ncmp_a;{U1}\ncmp_b;{U2}\n", encoding="utf-8")
    options = {"campaign_column": "Kampagne, ID", "contact_column": "Kontakt, ID"}
    assert pairs(path, **options) == [("cmp_a", U1), ("cmp_b", U2)]


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ("\u0441mp_a", "campaign_id has a character that is not plain ASCII"),  # a Cyrillic es
        ("cmp\x07a", "campaign_id has a control character inside"),
    ],
)
def test_lookalike_and_control_characters_are_named(cell: str, reason: str) -> None:
    raw = pl.DataFrame({"campaign_id": [cell], "contact_id": [U1]})
    assert normalise(raw)["reason"][0].startswith(reason)


def test_a_cut_short_gzip_file_says_so(tmp_path: Path) -> None:
    data = gzip.compress(("campaign_id,contact_id\n" + f"cmp_a,{U1}\n" * 50_000).encode())
    path = tmp_path / "export.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="is cut short"):
        build_plan(Source(path), History())


def test_row_keys_take_the_quick_way_only_where_it_agrees_with_the_record() -> None:
    """Rows recorded without a call are matched by row number and cells as stored; valid
    pairs reuse their pair key, which must give the same key as the stored cells."""
    from bulk_unenroll.keys import CAMPAIGN, CONTACT
    from bulk_unenroll.plan import _row_keys, row_key

    raw = pl.DataFrame(
        {
            CAMPAIGN: ["cmp_a", "-starts-with-dash", " cmp_b ", "=formula", "", "x" * 300],
            CONTACT: [U1, U2, U1.upper(), U1, U2, "not\na uuid"],
        }
    )
    df = normalise(raw)
    quick = _row_keys(df, 7)
    full = df.select(
        row_key(pl.col(CAMPAIGN), pl.col(CONTACT), pl.int_range(7, 7 + pl.len()))
    ).to_series()
    assert quick.to_list() == full.to_list()
