"""`verify`: did the removals hold? Lists each campaign of a results file through the API and
checks that every pair recorded `removed` or `not_enrolled` is absent now.

A results file records what the API answered; people who must sign off want to see the API
agree today. Listing is read-only and costs one call per 100 enrollments, so one campaign is
read whole (checked for drift, see `api.listing`), then all its pairs are judged at once and
recorded in the verify file. The verify file is the resume point: a rerun skips campaigns
whose pairs all have a verdict, and a stop loses at most the campaign being read.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
import polars as pl

from .api import client
from .api.listing import PER_PAGE, CampaignLister, End, Headway, Listing
from .api.session import Hold, Session
from .config import JobConfig
from .errors import AuthError, ResultsFileError
from .events import Event, Naming, field_name
from .keys import LOW_BITS, pair_key, rows_by_campaign
from .limits import PLANS, Plan
from .models import CAMPAIGN_NOT_FOUND, Outcome, StopReason, Summary
from .page.figures import VerifyFigures
from .results.journal import Lock, companion
from .results.records import (
    CSV_CHUNK_BYTES,
    TIMESTAMP,
    escape_cell,
    is_latest,
    key_bucket,
    latest,
    mend_tail,
    read_errors,
    stamp,
    unescape,
)

CHECKED = (Outcome.REMOVED, Outcome.NOT_ENROLLED)
"""Recorded outcomes that claim the pair is not enrolled: what verify checks."""
HOLDS = "holds"
ENROLLED_AGAIN = "enrolled_again"
CAMPAIGN_GONE = "campaign_gone"
UNCHECKED = "unchecked"
NOT_SAMPLED = "not_sampled"
"""Unchecked, and left out of `--sample`'s pairs to check one by one."""
VERDICTS = (HOLDS, ENROLLED_AGAIN, CAMPAIGN_GONE, UNCHECKED, NOT_SAMPLED)
OPEN = (UNCHECKED, NOT_SAMPLED)
"""Verdicts a rerun tries again."""
Verdict = tuple[str, str, str]
"""A pair's (recorded outcome, verdict, detail)."""
COLUMNS = ("campaign_id", "contact_id", "recorded", "verdict", "detail", "checked_at")
PAIR = ["campaign_id", "contact_id"]


@dataclass
class VerifyPlan:
    """What is left to check: the pairs, as a frame read campaign by campaign."""

    todo: pl.DataFrame
    """`campaign_id`, `contact_id` (as sent) and `status` (the recorded outcome) of each pair
    left to check, in file order; campaigns and outcomes as categoricals (they repeat)."""
    pairs: int
    """Pairs RESULTS records removed or not_enrolled."""
    campaigns: int
    checked_before: int
    """Of them, pairs an earlier verify into the same file already judged."""

    @property
    def pairs_left(self) -> int:
        return self.todo.height

    @property
    def least_calls(self) -> int:
        """One call per campaign left: the cost when each lists on one page."""
        return self.todo.get_column("campaign_id").n_unique() if self.pairs_left else 0

    def by_campaign(self) -> Iterator[tuple[str, list[tuple[str, str]]]]:
        """Each campaign's (contact, recorded outcome) pairs, campaigns in the order the file
        first names them: Python objects for one campaign at a time, never for every pair."""
        for campaign, at in rows_by_campaign(self.todo.get_column("campaign_id")):
            pairs = self.todo[at].select("contact_id", pl.col("status").cast(pl.String))
            yield str(campaign), list(pairs.iter_rows())


@dataclass
class VerifySummary:
    verdicts: Counter[str] = field(default_factory=Counter)
    """Per pair, its latest verdict in the verify file (earlier verifies' included)."""
    calls: int = 0
    campaigns_read: int = 0
    pairs_left: int = 0
    """Pairs of the campaigns the run stopped before reading: a rerun checks them."""
    stop_reason: StopReason = StopReason.COMPLETE
    stop_event: Event | None = None

    @property
    def exit_code(self) -> int:
        """0 every removal holds; 1 some pair is enrolled again or unchecked; 75 stopped
        early (rerun to continue); 3 the key or the setup was refused."""
        if self.stop_reason is StopReason.ABORTED:
            return 3
        if self.stop_reason is not StopReason.COMPLETE:
            return 75
        return 1 if any(self.verdicts[v] for v in (ENROLLED_AGAIN, *OPEN)) else 0


def default_out(results: Path) -> Path:
    return results.with_name(results.stem + ".verify.csv")


def again_file(out: Path) -> Path:
    """The ready input file of the pairs found enrolled again."""
    return companion(out, ".enrolled-again.csv")


def unchecked_file(out: Path) -> Path:
    return companion(out, ".unchecked.csv")


def claimed_absent(results: Path, closed: pl.Series | None = None) -> tuple[pl.DataFrame, int, int]:
    """The pairs RESULTS says are not enrolled (latest record per pair), ids as sent, in file
    order, less those whose keys are in `closed` (sorted); campaigns and outcomes as
    categoricals (a few bytes a pair beside its contact). Beside them, how many pairs it
    says are not enrolled and in how many campaigns, `closed` or not: counted in the same
    pass, so the pairs judged before are never held (8M pairs of 10M records held 1.5 GiB)."""
    with (
        read_errors(results),
        latest(results) as found,
        tempfile.TemporaryDirectory(prefix="bulk-unenroll-") as tmp,
    ):
        claimed = found.records.filter(pl.col("status").is_in([o.value for o in CHECKED]))
        claimed = claimed.select(unescape("campaign_id"), unescape("contact_id"), "status")
        counts = claimed.select(pl.len(), pl.col("campaign_id").n_unique())
        todo = claimed
        if closed is not None and not closed.is_empty():
            key = pair_key(pl.col("campaign_id"), pl.col("contact_id"))
            todo = claimed.filter(~key.is_in(closed.implode()))
        spool = Path(tmp) / "todo.parquet"
        sink = todo.select(
            pl.col("campaign_id").cast(pl.Categorical),
            "contact_id",
            pl.col("status").cast(pl.Categorical),
        ).sink_parquet(spool, lazy=True)
        figures = pl.collect_all([counts, sink], engine="streaming")[0]
        pairs, campaigns = figures.row(0)
        return pl.read_parquet(spool), int(pairs), int(campaigns) if pairs else 0


def read_verdicts(out: Path) -> dict[tuple[str, str], str]:
    """The latest verdict per pair in an earlier verify file (a torn last line is cut), as
    Python objects: for a few pairs (tests, a look by hand); the commands use `judged`."""
    found = judged(out, *PAIR)
    rows = found.frame.filter(found.latest).select(*PAIR, "verdict").iter_rows()
    return {(campaign, contact): verdict for campaign, contact, verdict in rows}


@dataclass
class Judged:
    """Every record of a verify file: its pair's `key` and `verdict` beside the columns asked
    for, in file order, and whether it is the latest record of its pair (`latest`)."""

    frame: pl.DataFrame
    latest: pl.Series

    def verdicts(self) -> Counter[str]:
        """Per verdict, the pairs whose latest record gives it."""
        counts = self.frame.get_column("verdict").filter(self.latest).value_counts()
        return Counter({str(v): int(n) for v, n in counts.iter_rows()})

    def closed(self) -> pl.Series:
        """The sorted keys of pairs judged for good (a rerun does not check them again)."""
        verdict = self.frame.get_column("verdict")
        done = self.latest & ~verdict.is_in(list(OPEN))
        return self.frame.get_column("key").filter(done).sort()


def judged(out: Path, *columns: str) -> Judged:
    """What a verify file says, streamed: 16 bytes of key and a verdict per record beside the
    `columns` asked for (a dict of every record held about a kilobyte a pair); none when
    there is no file yet. The ids are read as sent (`unescape`). A torn last line is cut."""
    names = {c: pl.String() for c in COLUMNS}
    empty = pl.DataFrame(
        schema={"key": pl.UInt128, "verdict": pl.String} | {c: pl.String for c in columns}
    )
    if not out.exists():
        return Judged(empty, pl.Series("latest", [], pl.Boolean))
    try:
        mend_tail(out)
        with out.open(newline="", encoding="utf-8") as f:
            if tuple(next(csv.reader(f), ())) != COLUMNS:
                raise ResultsFileError(
                    f"{out} exists but is not a verify file (its first line is not "
                    f"{','.join(COLUMNS)}); nothing was changed: choose another --out"
                )
        with read_errors(out):
            os.environ.setdefault("POLARS_CSV_CHUNK_SIZE", str(CSV_CHUNK_BYTES))
            key = pair_key(unescape("campaign_id"), unescape("contact_id"))
            frame = (
                pl.scan_csv(out, schema=names, truncate_ragged_lines=True)
                .filter(pl.col("verdict").is_not_null())  # blank lines, hand-cut ones
                .select(
                    key,
                    key_bucket(key // pl.lit(LOW_BITS, pl.UInt128)).alias("bucket"),
                    pl.col("verdict").cast(pl.Categorical),
                    *(unescape(c) if c in PAIR else pl.col(c) for c in columns),
                )
                .collect(engine="streaming")
            )
    except OSError as exc:
        raise ResultsFileError(f"cannot read {out}: {exc.strerror or exc}") from None
    latest = is_latest(frame.get_column("key"), frame.get_column("bucket"))
    return Judged(frame.drop("bucket"), latest)


def tally(out: Path) -> VerifyFigures:
    """The latest verdict per pair of a verify file, counted as the report page shows it."""
    found = judged(out, "checked_at")
    counts = found.verdicts()
    # The oldest check among them: a rerun into the same file keeps earlier verdicts, so the
    # page must not date them all by the newest. A cell a spreadsheet re-saved is no moment.
    stamps = found.frame.get_column("checked_at").filter(found.latest)
    moments = stamps.str.to_datetime(TIMESTAMP, time_zone="UTC", strict=False)
    oldest = moments.min()
    unchecked = counts[UNCHECKED] + counts[NOT_SAMPLED]
    return VerifyFigures(
        checked_at=oldest.replace(tzinfo=UTC) if isinstance(oldest, datetime) else None,
        pairs_checked=counts.total() - unchecked,
        still_absent=counts[HOLDS] + counts[CAMPAIGN_GONE],
        enrolled_again=counts[ENROLLED_AGAIN],
        unchecked=unchecked,
        sampled=counts[NOT_SAMPLED] > 0,
        again_file=str(again_file(out)) if counts[ENROLLED_AGAIN] else "",
    )


def plan(results: Path, out: Path) -> VerifyPlan:
    """The pairs left to check: the verify file's judged pairs are read first (their keys
    alone are kept), then left out while RESULTS is read."""
    todo, pairs, campaigns = claimed_absent(results, judged(out).closed())
    return VerifyPlan(todo, pairs, campaigns, pairs - todo.height)


GONE = f"404 {CAMPAIGN_NOT_FOUND[0]}"
"""How a listing's detail names the answer that the campaign does not exist (`said_404`)."""


def judge(pairs: list[tuple[str, str]], listing: Listing, chosen: set[str]) -> list[Verdict]:
    """Each pair's (recorded, verdict, detail) against what the listing found. Of a campaign
    left unread, the `chosen` contacts are the ones to check one by one (`--sample`)."""
    enrolled = listing.contact_ids
    if enrolled is None:
        reason = listing.detail or listing.end.value
        if listing.end is End.FAILED and GONE in reason:
            return [(status, CAMPAIGN_GONE, reason) for _, status in pairs]
        return [
            (status, UNCHECKED, reason)
            if contact in chosen
            else (status, NOT_SAMPLED, f"{reason}; not in --sample's {len(chosen):,}")
            for contact, status in pairs
        ]
    return [
        (status, ENROLLED_AGAIN, "listed as enrolled now")
        if contact in enrolled
        else (status, HOLDS, f"absent from the campaign's {len(enrolled):,} enrollments")
        for contact, status in pairs
    ]


def worth(pairs: int) -> Callable[[Headway], bool]:
    """A listing pays off while all its calls come to no more than the pairs it checks (each
    would otherwise take a DELETE of its own)."""
    return lambda headway: headway.calls + headway.calls_to_finish <= pairs


@contextlib.contextmanager
def holding(out: Path) -> Iterator[None]:
    """One verify at a time reads and writes a verify file (the run's lock, on `<out>.lock`)."""
    lock = Lock(out)
    try:
        yield
    finally:
        lock.release()


class VerdictFile:
    """Appends one campaign's verdicts at a time, whole lines, synced before the next read."""

    def __init__(self, out: Path) -> None:
        new = not out.exists() or out.stat().st_size == 0
        try:
            self._file = out.open("a", newline="", encoding="utf-8")
        except OSError as exc:
            raise ResultsFileError(f"cannot write {out}: {exc.strerror or exc}") from None
        self._writer = csv.writer(self._file, lineterminator="\n")
        if new:
            self._writer.writerow(COLUMNS)

    def write(self, campaign: str, pairs: list[tuple[str, str]], judged: list[Verdict]) -> None:
        now = stamp()
        for (contact, _), (recorded, verdict, detail) in zip(pairs, judged, strict=True):
            cells = (campaign, contact, recorded, verdict, detail, now)
            self._writer.writerow([escape_cell(c) for c in cells])
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def write_followups(out: Path) -> tuple[int, int]:
    """Rewrite the ready input files from the whole verify file: pairs enrolled again (a run
    removes them again), pairs left unchecked. Returns their counts; an empty list's file is
    removed, so a stale one never lingers."""
    found = judged(out, *PAIR)
    keys, verdict = found.frame.get_column("key"), found.frame.get_column("verdict")
    counts = []
    for path, wanted in ((again_file(out), ENROLLED_AGAIN), (unchecked_file(out), UNCHECKED)):
        pairs = _first_seen(found, found.latest & (verdict == wanted), keys)
        counts.append(pairs.height)
        if pairs.is_empty():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        try:
            with path.open("wb") as f:  # valid ids, as sent (as `report --export` writes them)
                pairs.write_csv(f, line_terminator="\n", quote_style="necessary")
        except OSError as exc:
            raise ResultsFileError(
                f"cannot write {path}: {exc.strerror or exc}; the verdicts are intact in {out}"
            ) from None
    return counts[0], counts[1]


def _first_seen(found: Judged, chosen: pl.Series, keys: pl.Series) -> pl.DataFrame:
    """The pairs of the `chosen` records, in the order the verify file first names them."""
    pairs = found.frame.select(*PAIR, "key").filter(chosen)
    if pairs.is_empty():
        return pairs.drop("key")
    first = keys.is_in(pairs.get_column("key").implode()) & keys.is_first_distinct()
    order = pl.DataFrame({"key": keys.filter(first), "at": first.arg_true()})
    return pairs.join(order, on="key").sort("at").select(PAIR)


def sampled(campaign: str, pairs: list[tuple[str, str]], size: int | None) -> set[str]:
    """The campaign's contacts to check one by one if it is not worth listing: all of them,
    or `size` chosen at random, the same on every rerun (seeded by the campaign)."""
    contacts = sorted(contact for contact, _ in pairs)
    if size is None or size >= len(contacts):
        return set(contacts)
    return set(random.Random(campaign).sample(contacts, size))


class Verification:
    """One `verify` invocation: plan, then read campaign after campaign."""

    def __init__(
        self, config: JobConfig, out: Path, say: Callable[[Event], None], sample: int | None = None
    ) -> None:
        self.config = config
        self.sample = sample
        """--sample: at most this many pairs per campaign to check one by one."""
        self.out = out
        self.say = say
        self.summary = VerifySummary()
        self._calls = Summary()
        self._stopping = anyio.Event()

    def _stop(self, reason: StopReason, why: Event) -> None:
        if self.summary.stop_reason is StopReason.COMPLETE:
            self.summary.stop_reason, self.summary.stop_event = reason, why
        self._stopping.set()

    def _session(self) -> Session:
        return Session(
            self.config,
            self._calls,
            stopping=self._stopping,
            stop=self._stop,
            on_event=self.say,
            hold=lambda _in_flight: Hold.GO,
            workers_alive=lambda: 1,
        )

    async def run(self, todo: VerifyPlan) -> VerifySummary:
        session = self._session()
        session.open_audit()
        verdicts = VerdictFile(self.out)
        cfg = self.config
        try:
            http = client.make_client(cfg.api_key.reveal(), cfg.timeout, 1, cfg.ca_bundle)
            async with http:
                lister = CampaignLister(session, http, cfg.base_url, cfg.timeout)
                self.summary.pairs_left = todo.pairs_left
                unclear: list[tuple[str, list[tuple[str, str]], Listing, set[str]]] = []
                for campaign, pairs in todo.by_campaign():
                    chosen = sampled(campaign, pairs, self.sample)
                    listing = await lister.list_campaign(campaign, worth(len(chosen)))
                    if listing.end is End.STOPPED:
                        break
                    if listing.end is End.REFUSED:
                        raise AuthError(f"{listing.detail}; verify needs a key with it")
                    if session.route_unclear(campaign):  # judged once a listing shows the route
                        unclear.append((campaign, pairs, listing, chosen))
                        continue
                    self._judged(verdicts, campaign, pairs, judge(pairs, listing, chosen))
                if not self._stopping.is_set() and not session.wrong_route():
                    for campaign, pairs, listing, chosen in unclear:
                        self._judged(verdicts, campaign, pairs, judge(pairs, listing, chosen))
        finally:
            verdicts.close()
            session.close()
            self.summary.calls = self._calls.calls
        if self.summary.stop_reason is StopReason.ABORTED:
            raise session.abort_error(self.summary.stop_event or str(self.summary.stop_reason))
        self.summary.verdicts = judged(self.out).verdicts()
        return self.summary

    def _judged(
        self,
        verdicts: VerdictFile,
        campaign: str,
        pairs: list[tuple[str, str]],
        said: list[Verdict],
    ) -> None:
        """A campaign's verdicts recorded and counted."""
        verdicts.write(campaign, pairs, said)
        self.summary.campaigns_read += 1
        self.summary.pairs_left -= len(pairs)


def cost_lines(p: VerifyPlan) -> Iterator[str]:
    """The plan in words: what will be checked and what it costs."""
    yield (
        f"{p.pairs:,} pairs recorded removed or not_enrolled in {p.campaigns:,} campaigns; "
        f"{p.checked_before:,} judged by an earlier verify into this file, "
        f"{p.pairs_left:,} in {p.least_calls:,} campaigns to check"
    )
    if p.pairs_left:
        yield (
            f"cost: at least {p.least_calls:,} listing calls (one per campaign); a campaign of "
            f"E enrollments costs ceil(E/{PER_PAGE})+1 calls (the +1 re-reads its first page to "
            "catch changes during the read), and one listed for more calls than it has pairs "
            "here is left unchecked"
        )


def days_line(calls: int, plan: Plan | None) -> str:
    """The least calls in quota days, at --plan's daily limit (else each plan's)."""
    plans = [plan] if plan is not None else list(PLANS.values())
    days = ", ".join(
        f"{math.ceil(calls / p.per_day):,} day(s) of {p.name}'s {p.per_day:,} calls" for p in plans
    )
    return f"quota: at least {days} (a quota day spent stops verify, exit 75; rerun to continue)"


def summary_lines(
    found: VerifySummary, out: Path, again: int, unchecked: int, name: Naming = field_name
) -> Iterator[str]:
    """What verify found, for stdout: counts, cost, follow-ups, the exit code's meaning."""
    counts = ", ".join(f"{v} {found.verdicts[v]:,}" for v in VERDICTS if found.verdicts[v])
    yield f"verified: {counts or 'nothing to check'} (verdicts in {out})"
    yield f"calls: {found.calls:,} listing calls for {found.campaigns_read:,} campaigns read"
    if again:
        yield (
            f"{again:,} pair(s) are enrolled again; to remove them again: bulk-unenroll run "
            f"{again_file(out)} --out NEW_RESULTS.csv"
        )
    if unchecked:
        yield (
            f"{unchecked:,} pair(s) unchecked (see the detail in {out}); a run on "
            f"{unchecked_file(out)} checks them one DELETE each (enrollment_not_found: it held)"
        )
    if found.stop_reason is not StopReason.COMPLETE:
        yield (
            f"stopped early ({found.stop_reason}): "
            f"{found.stop_event.describe(name) if found.stop_event else ''}; "
            f"{found.pairs_left:,} pair(s) left to check: rerun the same command to continue"
        )
