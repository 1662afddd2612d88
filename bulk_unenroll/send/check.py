"""`run --check-enrollment`: list a campaign's contacts before its DELETEs, and settle the
pairs the listing shows are not enrolled as `not_enrolled` without sending them.

A cross product ("these unsubscribers from every campaign") is mostly pairs that were never
enrolled, each a DELETE answering `enrollment_not_found`; one page lists 100 enrollments. A
campaign is listed when its rows to send outnumber the calls its listing takes, and only while
they still do (`pays_off`). Every campaign is listed before the first row is handed to a
worker, so none of the run's own DELETEs can move a list while it is read, and the rows the
listings settle are recorded right after them (`Job._record_listed`); a listing that
drifted, failed or stopped settles nothing (`api/listing.py`). A key without campaigns:read
turns the check off for the run, with a note: the rows get their DELETEs as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ..api.listing import CampaignLister, End, Headway, Listing
from ..events import Event, Note, Said, Setting
from ..models import Enrollment, Outcome, RowResult, Summary
from ..plan import listable
from ..results.records import stamp

FRESH = timedelta(minutes=15)
"""The oldest listing that still settles rows: a listing is a snapshot of the campaign."""


class EnrollmentCheck:
    """The listings of one run, and the rows they settle."""

    def __init__(
        self,
        lister: CampaignLister,
        rows_per_campaign: dict[str, int],
        summary: Summary,
        on_event: Callable[[Event], None],
    ) -> None:
        self.lister = lister
        self.rows = {c: n for c, n in rows_per_campaign.items() if listable(c, n)}
        self.summary = summary
        self.on_event = on_event
        self.listings: dict[str, Listing] = {}
        """Campaign -> its complete listing; only these settle rows."""

    async def list_campaigns(self, stopping: Callable[[], bool]) -> None:
        """List every campaign worth it, largest first, until the run stops or the key is
        refused; say what came of it."""
        listed = calls = 0
        if self.rows:
            self.on_event(
                Said(
                    (
                        Setting.CHECK_ENROLLMENT,
                        f": listing the contacts of {len(self.rows):,} campaign(s) "
                        "before their DELETEs",
                    )
                )
            )
        for campaign, rows in sorted(self.rows.items(), key=lambda item: -item[1]):
            if stopping():
                return
            listing = await self.lister.list_campaign(campaign, _pays_off(rows))
            calls += listing.calls
            self.summary.listing_calls += listing.calls
            if listing.end is End.REFUSED:
                self.on_event(
                    Said(
                        (
                            Setting.CHECK_ENROLLMENT,
                            f" is off for this run: {listing.detail}; every row gets its "
                            "DELETE as usual (give the key campaigns:read to list instead)",
                        )
                    )
                )
                return
            if listing.end is End.COMPLETE:
                listed += 1
                self.listings[campaign] = listing
            elif listing.end is not End.STOPPED:
                self.on_event(
                    Note(
                        f"campaign {campaign} not listed ({listing.detail}): "
                        "its rows get their DELETEs"
                    )
                )
        if listed:
            self.on_event(
                Said(
                    (
                        Setting.CHECK_ENROLLMENT,
                        f": listed {listed:,} campaign(s) in {calls:,} call(s); "
                        "rows not enrolled there are settled without a DELETE",
                    )
                )
            )

    def forget_stale(self) -> None:
        """Drop listings read more than `FRESH` ago (the run waited for the daily quota among
        them): someone enrolled since would be settled without the DELETE a row asks for.
        Their rows get DELETEs instead."""
        now = datetime.now(UTC)
        for campaign, listing in list(self.listings.items()):
            if listing.read_at is not None and now - listing.read_at > FRESH:
                del self.listings[campaign]
                self.on_event(
                    Note(
                        f"campaign {campaign}'s listing is more than {FRESH.seconds // 60} "
                        "minutes old (the run waited for the quota): its rows get their DELETEs"
                    )
                )

    def settles(self, e: Enrollment) -> bool:
        """Its campaign's listing shows the row is not enrolled. Not so when it needs its
        DELETE: enrolled, not listed, or sent before without a definite answer (the DELETE's
        answer then says that an earlier attempt may have removed it)."""
        listing = self.listings.get(e.campaign_id)
        if listing is None or listing.contact_ids is None or e.attempted_before:
            return False
        return e.contact_id not in listing.contact_ids

    def record(self, e: Enrollment) -> RowResult:
        """The record of a row the listing `settles`."""
        listing = self.listings[e.campaign_id]
        assert listing.contact_ids is not None, "only a complete listing settles rows"
        self.summary.settled_by_listing += 1
        self.summary.rows_settled_by_calls += 1
        read_at = listing.read_at or datetime.now(UTC)
        return RowResult(
            e.row,
            e.campaign_id,
            e.contact_id,
            Outcome.NOT_ENROLLED,
            http_status=200,
            attempts=0,
            request_id=listing.request_id,
            detail=(
                f"not in the campaign's contact listing read at {stamp(read_at)} "
                f"({len(listing.contact_ids):,} enrolled, {listing.calls} call(s)): "
                "no DELETE sent (enrollment check)"
            ),
            finished_at=datetime.now(UTC),
        )


def _pays_off(rows: int) -> Callable[[Headway], bool]:
    """A listing pays off while all its calls, spent and still needed, are fewer than the
    DELETEs of the campaign's rows it can replace."""

    def pays_off(headway: Headway) -> bool:
        return headway.calls + headway.calls_to_finish < rows

    return pays_off
