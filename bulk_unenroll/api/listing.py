"""List one campaign's enrolled contacts, page by page, and prove nobody was missed.

The list is newest first and paginated by offset, so other clients change it under a reader.
An enrollment added (at the front: it is the newest) pushes every item one place down: one is
read twice, harmless. An enrollment removed from a page already read pulls every later item
one place up, and the item that crosses the page boundary is never read. A listing that missed
an enrolled contact would settle an unsubscribe as `not_enrolled` without removing it, so a
pass over the pages counts only when:

- no page's `meta` total is smaller than the one before it: a removal ahead of an item can
  move it up only if fewer enrollments were added meanwhile, which lowers the total (so an
  unchanged or larger total means nobody moved up a page);
- each page holds as many items as its total says it should;
- page 1, read again at the end, still holds someone from the first read of page 1, so every
  enrollment added during the pass is on it (and is taken into the list).

A one-page list is one answer, a snapshot by itself. Otherwise it is drift: the listing starts
again (from the page 1 just read) up to `MAX_PASSES` times while it still pays off, and else
ends without contact ids. An answer without a total cannot show drift: only a list that fits
in one page is taken from it. This rests on the documented API: the list is newest first
(enrollments are added at the front), and without a `status` filter (none is sent) it holds
enrollments in every status, a removed one being the only kind that leaves it. Every page
goes through the run's `Session`, paced, quota-aware and retried like any call; the caller
keeps its own DELETEs off a campaign while it is listed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import httpx

from ..models import CONTACT_ID_RE, Enrollment
from . import client
from .session import Final, Request, Session

PER_PAGE = 100
"""The documented maximum: the fewest calls per enrollment listed."""
MAX_PASSES = 10
"""Reads of the whole list before a listing that keeps drifting gives up (the caller's
`pays_off` may end it sooner)."""


class End(Enum):
    """How a listing ended."""

    COMPLETE = "complete"
    """Every enrolled contact, from a snapshot: `contact_ids` is the whole list."""
    NOT_WORTH_IT = "not_worth_it"
    """The caller's `pays_off` said the pages still to read cost more than they could save."""
    DRIFTING = "drifting"
    """The list kept changing (or its pages disagreed with its totals) for every pass."""
    REFUSED = "refused"
    """403: the key lacks campaigns:read. No other campaign can be listed either."""
    FAILED = "failed"
    """An answer ended it: a 404 (no such campaign, or no listing route), another 4xx, no
    total on a list longer than a page, or retries spent."""
    STOPPED = "stopped"
    """The run stopped before the listing ended."""


@dataclass(frozen=True, slots=True)
class Headway:
    """Where a listing stands, for the caller's `pays_off`."""

    calls: int
    """Calls spent on this campaign so far (all passes)."""
    calls_to_finish: int
    """Calls the current pass still needs at the least (its pages and the closing re-read)."""
    seen: frozenset[str]
    """Contact ids read so far in the current pass."""


@dataclass(frozen=True, slots=True)
class Listing:
    """What listing one campaign found."""

    campaign_id: str
    end: End
    contact_ids: frozenset[str] | None = None
    """Every contact enrolled when the snapshot was read; None unless COMPLETE."""
    read_at: datetime | None = None
    """When the snapshot's last answer came (COMPLETE only)."""
    calls: int = 0
    passes: int = 0
    detail: str = ""
    """Why it ended as it did, and the drift it met, in words."""
    request_id: str = ""
    """The X-Request-ID of the listing's last answer, for support."""


class _Ended(Exception):
    def __init__(self, end: End, detail: str) -> None:
        super().__init__(detail)
        self.end, self.detail = end, detail


class _Drift(Exception):
    def __init__(self, detail: str, first: client.Page | None = None) -> None:
        super().__init__(detail)
        self.detail, self.first = detail, first


class CampaignLister:
    """Lists campaigns through a run's session and HTTP client (one instance per run)."""

    def __init__(
        self,
        session: Session,
        http: httpx.AsyncClient,
        base_url: str,
        timeout: float,
        per_page: int = PER_PAGE,
    ) -> None:
        self.session, self.http, self.base_url = session, http, base_url
        self.timeout, self.per_page = timeout, per_page

    async def list_campaign(
        self, campaign_id: str, pays_off: Callable[[Headway], bool] | None = None
    ) -> Listing:
        """Every contact enrolled in `campaign_id`, or why the listing ended without them.
        `pays_off` is asked before every page after the first; None lists to the end."""
        run = _Run(self, campaign_id, pays_off)
        try:
            ids = await run.read()
        except _Ended as ended:
            return run.listing(ended.end, detail=run.drift_note(ended.detail))
        detail = run.drift_note("")
        return run.listing(End.COMPLETE, ids, datetime.now(UTC), detail)


class _Run:
    """One campaign's listing: its passes and their calls."""

    def __init__(
        self, lister: CampaignLister, campaign_id: str, pays_off: Callable[[Headway], bool] | None
    ) -> None:
        self.lister, self.campaign_id, self.pays_off = lister, campaign_id, pays_off
        self.calls = self.passes = 0
        self.drifts: list[str] = []
        self.request_id = ""

    def listing(
        self,
        end: End,
        ids: frozenset[str] | None = None,
        read_at: datetime | None = None,
        detail: str = "",
    ) -> Listing:
        return Listing(
            self.campaign_id, end, ids, read_at, self.calls, self.passes, detail, self.request_id
        )

    def drift_note(self, detail: str) -> str:
        if not self.drifts:
            return detail
        shown = "; ".join(self.drifts[:3])
        if len(self.drifts) > 3:
            shown += f"; and {len(self.drifts) - 3} more"
        read_again = f"read again after drift ({shown})"
        return f"{detail}; {read_again}" if detail else read_again

    async def read(self) -> frozenset[str]:
        first = await self.page(1)
        while True:
            self.passes += 1
            try:
                return await self.one_pass(first)
            except _Drift as drift:
                self.drifts.append(drift.detail)
                if self.passes >= MAX_PASSES:
                    raise _Ended(
                        End.DRIFTING,
                        f"the list changed while it was read, {self.passes} times in a row",
                    ) from None
                first = drift.first or await self.page(1)

    async def one_pass(self, first: client.Page) -> frozenset[str]:
        """Read the pages after `first`, then page 1 again: every id seen, if no removal can
        have moved anyone onto a page already read."""
        per_page = self.lister.per_page
        if first.total is None:
            if len(first.contact_ids) < per_page:
                # The whole list in one answer, unless the API pages by fewer than asked
                # (its default is 50) or ignores the page asked for: page 2 must be empty.
                await self.nothing_after(1, len(set(first.contact_ids)))
                return frozenset(first.contact_ids)
            raise _Ended(
                End.FAILED,
                "the answer gave no total of enrollments (meta), so a list longer than one "
                "page cannot be checked for changes while it is read",
            )
        total = first.total
        self.check_shape(first, 1, total)
        seen = set(first.contact_ids)
        if client.pages_for(total, per_page) == 1:
            self.check_count(seen, total)
            if total == per_page:  # a full page: is the total the list's, or the page's own?
                await self.nothing_after(1, total)
            return frozenset(seen)  # one answer: a snapshot by itself
        number = 2
        while number <= client.pages_for(total, per_page):  # the list may grow meanwhile
            self.check_worth(client.pages_for(total, per_page) - number + 2, seen)
            page = await self.page(number)
            total = self.check_total(page, number, total)
            self.check_shape(page, number, total)
            seen.update(page.contact_ids)
            number += 1
        self.check_worth(1, seen)
        again = await self.page(1)
        total = self.check_total(again, 1, total, again)
        self.check_shape(again, 1, total, again)
        if not set(first.contact_ids) & set(again.contact_ids):
            raise _Drift(
                "page 1 read again shares nobody with page 1: more new than a page holds", again
            )
        every = seen | set(again.contact_ids)  # with those enrolled meanwhile
        self.check_count(every, total)
        return frozenset(every)

    @staticmethod
    def check_count(ids: set[str], total: int) -> None:
        """Everyone enrolled now is among `ids`, so there are at least `total` of them; fewer
        means pages that overlap (a sort with ties, a page number the API ignores) and others
        never shown: the listing cannot be used."""
        if len(ids) < total:
            raise _Ended(
                End.FAILED,
                f"the pages held {len(ids):,} different contacts for a total of {total:,}: "
                "they overlap, so some enrolled contacts were never shown",
            )

    async def nothing_after(self, number: int, held: int) -> None:
        """Page `number + 1` must be empty: else the answer's count or pages cannot be trusted."""
        after = await self.page(number + 1)
        if after.contact_ids:
            raise _Ended(
                End.FAILED,
                f"page {number} held {held:,} contacts and looked like the whole list, but "
                f"page {number + 1} held {len(after.contact_ids):,} more: the answers' pages "
                "or counts cannot be trusted",
            )

    @staticmethod
    def check_total(
        page: client.Page, number: int, total: int, again: client.Page | None = None
    ) -> int:
        """The page's total, unless it fell: a removal may have pulled someone up onto a page
        already read. (A larger total is new enrollments at the front: they push people down,
        to be read twice, never skipped.)"""
        if page.total is None or page.total < total:
            raise _Drift(f"page {number} counted {_said(page.total)} after {total}", again)
        return page.total

    def check_shape(
        self, page: client.Page, number: int, total: int, again: client.Page | None = None
    ) -> None:
        """A page must hold what its total says: a short page may have dropped someone."""
        per_page = self.lister.per_page
        expected = max(0, min(per_page, total - (number - 1) * per_page))
        if len(page.contact_ids) != expected:
            raise _Drift(
                f"page {number} held {len(page.contact_ids)} contacts where a total of "
                f"{total} means {expected}",
                again,
            )

    def check_worth(self, calls_to_finish: int, seen: set[str]) -> None:
        if self.pays_off is None:
            return
        headway = Headway(self.calls, calls_to_finish, frozenset(seen))
        if not self.pays_off(headway):
            raise _Ended(
                End.NOT_WORTH_IT,
                f"stopped listing after {self.calls} calls: the {calls_to_finish} still needed "
                "would cost more than the DELETEs they could save",
            )

    async def page(self, number: int) -> client.Page:
        """One page through the session; an answer that ends the listing raises `_Ended`."""
        lister = self.lister
        got: list[client.Page] = []

        async def perform() -> client.Answer:
            answer, page = await client.get_page(
                lister.http,
                lister.base_url,
                self.campaign_id,
                number,
                lister.per_page,
                lister.timeout,
            )
            got[:] = [page] if page is not None else []
            return answer

        end = await lister.session.send(
            Request(
                Enrollment(0, self.campaign_id, ""),
                perform,
                classify=client.classify_page,
                waits_for_route=False,  # nothing else is in flight to show it
            )
        )
        self.calls += end.attempts
        if isinstance(end, Final):
            self.request_id = end.answer.request_id or self.request_id
        if not isinstance(end, Final):
            raise _Ended(End.STOPPED, f"the run stopped while page {number} was read")
        if not end.settled:
            raise _Ended(
                End.FAILED,
                f"page {number} got no answer after {end.attempts} attempts "
                f"(last: {end.verdict.detail})",
            )
        if end.answer.status == 403:
            raise _Ended(End.REFUSED, end.verdict.detail)
        if not got:
            raise _Ended(End.FAILED, f"page {number}: {end.verdict.detail}")
        if not all(re.match(CONTACT_ID_RE, c) for c in got[0].contact_ids):
            # An id spelled otherwise (no hyphens, a prefix) would match no row: every
            # enrolled pair of the campaign would look not enrolled. A definite answer, so
            # the listing ends at once, unused, and its rows get their DELETEs.
            raise _Ended(End.FAILED, f"page {number} named a contact_id that is not a UUID")
        return got[0]


def _said(total: int | None) -> str:
    return "no total" if total is None else str(total)
