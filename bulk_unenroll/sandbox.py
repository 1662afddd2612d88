"""A fake LeadLex API on loopback: real HTTP, the documented bodies and headers, plan limits
and fault knobs. Used by `make demo`, rehearsals (`bulk-unenroll sandbox`) and the tests.
It shares no code with the client, so the client is tested against an independent reading
of the docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import polars as pl

from .config import ReadOptions
from .errors import InputError
from .limits import Rate

DAY = 86_400.0
Reply = tuple[str, int, dict[str, str], bytes]
"""What to do (answer, hang, reset before or after answering), the status, headers, body."""
TIME_SCALE_HEADER = "X-Sandbox-Time-Scale"
"""How many times faster than real time the sandbox's limits run (a rehearsal's short day)."""
ROUTE = re.compile(r"^(?:/[^?]*)?/api-gateway/v1/campaigns/([^/?]+)/contacts/([^/?]+)/?(?:\?.*)?$")
"""The API lives under any path ending in /api-gateway, like the real default base URL; other
paths get the gateway's own 404 (`Sandbox.wrong_route`), as a mistyped --base-url does."""
ADD_ROUTE = re.compile(r"^(?:/[^?]*)?/api-gateway/v1/campaigns/([^/?]+)/contacts/?(?:\?.*)?$")
"""Add Contacts to Campaign: `POST .../v1/campaigns/{id}/contacts`."""
ADD_MAX = 500
"""Most contact ids one Add Contacts call takes."""
LIST_ROUTE = re.compile(r"^(?:/[^?]*)?/api-gateway/v1/campaigns/([^/?]+)/contacts/?(?:\?(.*))?$")
"""List Campaign Contacts: `GET .../v1/campaigns/{id}/contacts?page=N&per_page=M`."""
Pair = tuple[str, str]
RESET_FORMATS = ("epoch", "epoch-ms", "seconds-until", "iso", "http-date")
"""How X-RateLimit-Reset can be written: the documented Unix seconds, and what gateways send."""
RETRY_AFTER_FORMATS = ("seconds", "http-date", "none")
WRONG_ROUTE_ANSWERS = ("not_found", "bare")
"""`404 {"error": {"code": "not_found", "message": "Route not found"}}`, or 404 with no body."""


@dataclass
class Faults:
    """Probabilities per request, and a fixed latency. All zero: a well-behaved API."""

    latency: float = 0.0
    error_503: float = 0.0
    html_500: float = 0.0
    reset_before: float = 0.0
    """Connection dropped before the removal is processed."""
    reset_after: float = 0.0
    """The removal happens, then the connection drops: the answer is lost."""
    hang: float = 0.0
    """Accept the request and never answer."""
    hang_after: float = 0.0
    """Process the removal, then never answer: the answer is lost to a timeout or a kill."""
    empty_2xx: float = 0.0
    """Process, then answer 200 with an empty body."""
    malformed_2xx: float = 0.0
    """Process, then answer 200 with a JSON body cut short."""
    empty_5xx: float = 0.0
    """Answer 502 with an empty body, without processing."""
    no_content_2xx: float = 0.0
    """Process, then answer 204 No Content."""
    text_2xx: float = 0.0
    """Process, then answer 200 with a plain-text body."""
    bare_429: float = 0.0
    """Answer 429 with no headers at all, without processing (1.0: a server that only 429s)."""
    retry_after: str = "seconds"
    """Retry-After on per-window 429s: one of RETRY_AFTER_FORMATS."""


@dataclass
class Limits:
    """A per-window limit enforced as a strict sliding window, and a daily quota."""

    per_window: int | None = None
    window: float = 60.0
    per_day: int | None = None
    day_seconds: float = DAY
    """The quota resets at multiples of this many seconds since `day_start` (00:00 UTC daily)."""
    day_start: float = 0.0
    """Unix time a quota day begins at (the epoch by default); lets a bench time a reset."""
    time_scale: float = 1.0
    """A plan's day and minute both run this many times faster (announced in a header)."""
    reset_format: str = "epoch"
    """How X-RateLimit-Reset is written: one of RESET_FORMATS."""

    @classmethod
    def plan(cls, name: str, day_seconds: float = DAY) -> Limits:
        """A plan's limits; a shorter day shortens its minute by the same factor, so a
        rehearsal spends a day's quota in a compressed day, as the real plan would in one."""
        per_day, per_minute = {"starter": (100, 10), "pro": (1000, 50), "org": (10_000, 200)}[name]
        scale = DAY / day_seconds
        return cls(per_minute, 60.0 / scale, per_day, day_seconds, time_scale=scale)


@dataclass
class State:
    """The sandbox's own record, the truth the tests compare results against."""

    enrolled: set[Pair] = field(default_factory=set)
    campaigns: set[str] = field(default_factory=set)
    removed: Counter[Pair] = field(default_factory=Counter)
    """Pairs this server actually removed (count is always 1)."""
    deletes: Counter[Pair] = field(default_factory=Counter)
    """DELETE requests that reached the handler, per pair."""
    added: Counter[Pair] = field(default_factory=Counter)
    """Pairs Add Contacts enrolled (again), per pair."""
    adds: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    """Add Contacts requests that reached the handler: (campaign, the ids in the body)."""
    calls: int = 0
    rate_limited: int = 0
    quota_refused: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    enrolled_at: dict[Pair, int] = field(default_factory=dict)
    """When each enrollment was added, as a sequence number: the listing is newest first. A
    pair enrolled without one (by any handler) gets the next number when it is next listed;
    a removal drops it."""
    pages: int = 0
    """Listing pages served (GET answers of 200)."""
    churned_out: set[Pair] = field(default_factory=set)
    """Pairs the second client (`churn`) removed while a listing was being read."""
    churned_in: set[Pair] = field(default_factory=set)
    """Pairs the second client enrolled while a listing was being read."""


class Sandbox:
    """The API's behaviour, independent of transport."""

    def __init__(
        self,
        enrolled: Iterable[Pair] = (),
        *,
        campaigns: Iterable[str] = (),
        limits: Limits | None = None,
        faults: Faults | None = None,
        api_key: str | None = None,
        forbidden: bool = False,
        seed: int | None = None,
        wrong_route: str = "not_found",
        unknown_campaign_code: str = "campaign_not_found",
        can_read: bool = True,
        churn: float = 0.0,
    ) -> None:
        in_order = enrolled_in_order(enrolled)
        self.state = State(enrolled=set(in_order))
        self.state.enrolled_at = {pair: n for n, pair in enumerate(in_order)}
        self._next_added = len(in_order)
        self.can_read = can_read
        """False: the key lacks campaigns:read (a listing answers 403)."""
        self.churn = churn
        """A second client at work: the probability, per listing page after the first, that it
        removes an enrollment from the pages already read and that it enrolls a new contact."""
        self.state.campaigns = {c for c, _ in self.state.enrolled} | set(campaigns)
        self.limits = limits or Limits()
        self.faults = faults or Faults()
        self.api_key = api_key
        self.forbidden = forbidden
        self.wrong_route = wrong_route
        """What a path outside /api-gateway gets: one of WRONG_ROUTE_ANSWERS."""
        self.unknown_campaign_code = unknown_campaign_code
        """The documented `campaign_not_found`, or `not_found` as the campaign-start page says."""
        self._random = random.Random(seed)
        self._window: deque[float] = deque()
        self._day: tuple[int, int] = (-1, 0)
        self._ids = itertools.count(1)

    def _quota_headers(self) -> dict[str, str]:
        lim = self.limits
        if lim.per_day is None:
            return {}
        index, used = self._day
        return {
            "X-RateLimit-Limit": str(lim.per_day),
            "X-RateLimit-Remaining": str(max(0, lim.per_day - used)),
            "X-RateLimit-Reset": _reset_header(
                math.ceil(lim.day_start + (index + 1) * lim.day_seconds), lim.reset_format
            ),
        }

    def _admit(self) -> tuple[int, dict[str, str]] | None:
        """Count this call against the limits; a 429 (status, headers) if it is refused."""
        lim, now = self.limits, time.time()
        if lim.per_day is not None:
            index = int((now - lim.day_start) // lim.day_seconds)
            if index != self._day[0]:
                self._day = (index, 0)
            if self._day[1] >= lim.per_day:
                self.state.quota_refused += 1
                return 429, self._quota_headers()
        if lim.per_window is not None:
            tick = time.monotonic()
            while self._window and self._window[0] <= tick - lim.window:
                self._window.popleft()
            if len(self._window) >= lim.per_window:
                self.state.rate_limited += 1
                headers = self._quota_headers()
                wait = max(1, math.ceil(self._window[0] + lim.window - tick))
                if self.faults.retry_after == "seconds":
                    headers["Retry-After"] = str(wait)
                elif self.faults.retry_after == "http-date":
                    headers["Retry-After"] = formatdate(math.ceil(now) + wait, usegmt=True)
                return 429, headers
            self._window.append(tick)
        if lim.per_day is not None:
            self._day = (self._day[0], self._day[1] + 1)
        return None

    def handle(
        self, method: str, path: str, headers: dict[str, str], payload: bytes = b""
    ) -> Reply:
        """Decide the answer: (what to do, status, headers, body)."""
        self.state.calls += 1
        extra = {"X-Request-ID": f"req_{next(self._ids):08x}"}
        if self.limits.time_scale != 1.0:
            extra[TIME_SCALE_HEADER] = f"{self.limits.time_scale:g}"
        listed = LIST_ROUTE.match(path)
        if method == "GET" and listed:
            return self._list_contacts(unquote(listed[1]), listed[2] or "", headers, extra)
        adding = ADD_ROUTE.match(path) if method == "POST" else None
        match = adding or (ROUTE.match(path) if method == "DELETE" else None)
        if match is None:
            if self.wrong_route == "bare":
                return "answer", 404, {}, b""
            return "answer", *_error(404, "not_found", "Route not found", {})
        refused = self._refused(headers, extra)
        if refused is not None:
            return refused
        lost, roll = _pick(self._random.random(), self._faults_before(extra))
        if lost is not None:
            return lost
        limited = self._admit()
        if limited is not None:
            return "answer", *_error(
                429, "rate_limited", "Rate limit exceeded", {**extra, **limited[1]}
            )
        extra.update(self._quota_headers())
        if adding is not None:
            return self._add_contacts(unquote(adding[1]), payload, extra, roll)
        return self._delete((unquote(match[1]), unquote(match[2])), extra, roll)

    def _refused(self, headers: dict[str, str], extra: dict[str, str]) -> Reply | None:
        """The key's answers: 401 for a key that is not one, 403 without campaigns:write."""
        key = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not key.startswith("wbk_") or (self.api_key is not None and key != self.api_key):
            return "answer", *_error(401, "invalid_key", "Invalid or expired API key", extra)
        if self.forbidden:
            return "answer", *_error(
                403, "insufficient_permissions", "Missing campaigns:write", extra
            )
        return None

    def _faults_before(self, extra: dict[str, str]) -> list[tuple[float, Reply]]:
        """Faults that come before the API decides anything: nothing is applied."""
        f = self.faults
        return [
            (f.hang, ("hang", 0, {}, b"")),
            (f.reset_before, ("reset_before", 0, {}, b"")),
            (
                f.error_503,
                (
                    "answer",
                    503,
                    {**extra, "Content-Type": "application/json"},
                    b'{"error":{"code":"service_unavailable","message":"try later"}}',
                ),
            ),
            (
                f.html_500,
                (
                    "answer",
                    500,
                    {**extra, "Content-Type": "text/html"},
                    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                ),
            ),
            (f.empty_5xx, ("answer", 502, {**extra}, b"")),
            (f.bare_429, ("answer", 429, {}, b"")),
        ]

    def _delete(self, pair: Pair, extra: dict[str, str], roll: float) -> Reply:
        """Remove Contact from Campaign as documented, then the faults that lose its answer
        or garble it (`roll` picks one)."""
        st = self.state
        st.deletes[pair] += 1
        campaign, contact = pair
        if campaign not in st.campaigns:
            code = self.unknown_campaign_code
            return "answer", *_error(404, code, "No campaign with this ID", extra)
        if pair not in st.enrolled:
            return "answer", *_error(
                404, "enrollment_not_found", "Contact is not enrolled in this campaign", extra
            )
        st.enrolled.discard(pair)
        st.enrolled_at.pop(pair, None)  # enrolled again later, it is the newest
        st.removed[pair] += 1
        f, as_json = self.faults, {**extra, "Content-Type": "application/json"}
        garbled, _ = _pick(
            roll,
            [
                (f.reset_after, ("reset_after", 0, {}, b"")),
                (f.hang_after, ("hang", 0, {}, b"")),
                (f.empty_2xx, ("answer", 200, as_json, b"")),
                (f.malformed_2xx, ("answer", 200, as_json, b'{"data": {"re')),
                (f.no_content_2xx, ("answer", 204, extra, b"")),
                (f.text_2xx, ("answer", 200, {**extra, "Content-Type": "text/plain"}, b"OK")),
            ],
        )
        if garbled is not None:
            return garbled
        body = {"data": {"removed": True, "campaign_id": campaign, "contact_id": contact}}
        return "answer", 200, as_json, json.dumps(body).encode()

    def _add_contacts(
        self, campaign: str, body: bytes, extra: dict[str, str], roll: float
    ) -> Reply:
        """Add Contacts to Campaign as documented: ids already enrolled are skipped; the
        answer names the newly added. `reset_after` and `hang_after` lose the answer."""
        st = self.state
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        ids = request.get("contact_ids") if isinstance(request, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return "answer", *_error(
                400, "missing_required_field", "contact_ids (a list of ids) is required", extra
            )
        st.adds.append((campaign, tuple(ids)))
        if len(ids) > ADD_MAX:
            message = f"At most {ADD_MAX} contacts per request"
            return "answer", *_error(400, "too_many_contacts", message, extra)
        if campaign not in st.campaigns:
            return "answer", *_error(404, "campaign_not_found", "No campaign with this ID", extra)
        added = [c for c in dict.fromkeys(ids) if (campaign, c) not in st.enrolled]
        for contact in added:
            st.enrolled.add((campaign, contact))
            st.added[(campaign, contact)] += 1
        f = self.faults
        if roll < f.reset_after:
            return "reset_after", 0, {}, b""
        if roll < f.reset_after + f.hang_after:
            return "hang", 0, {}, b""
        answer = {"added": len(added), "skipped": len(ids) - len(added), "contact_ids": added}
        headers = {**extra, "Content-Type": "application/json"}
        return "answer", 201, headers, json.dumps({"data": answer}).encode()

    def _list_contacts(
        self, campaign: str, query: str, headers: dict[str, str], extra: dict[str, str]
    ) -> Reply:
        """List Campaign Contacts: one page, newest first, with `meta` totals."""
        key = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not key.startswith("wbk_") or (self.api_key is not None and key != self.api_key):
            return "answer", *_error(401, "invalid_key", "Invalid or expired API key", extra)
        if not self.can_read:
            return "answer", *_error(
                403, "insufficient_permissions", "Missing campaigns:read", extra
            )
        refused = self._admit()
        if refused is not None:
            return "answer", *_error(
                429, "rate_limited", "Rate limit exceeded", {**extra, **refused[1]}
            )
        extra.update(self._quota_headers())
        if campaign not in self.state.campaigns:
            return "answer", *_error(404, "campaign_not_found", "No campaign with this ID", extra)
        asked = dict(part.partition("=")[::2] for part in query.split("&") if part)
        page = _whole(asked.get("page"), 1, 1_000_000)
        per_page = _whole(asked.get("per_page"), 50, 100)
        if page is None or per_page is None:
            return "answer", *_error(400, "invalid_parameter", "page or per_page", extra)
        if page > 1:
            self._second_client(campaign, (page - 1) * per_page)
        contacts = self._enrolled_newest_first(campaign)
        chunk = contacts[(page - 1) * per_page : page * per_page]
        body = {
            "data": {
                "contacts": [_contact(c, self.state.enrolled_at[(campaign, c)]) for c in chunk]
            },
            "meta": {
                "page": page,
                "per_page": per_page,
                "total": len(contacts),
                "total_pages": max(1, math.ceil(len(contacts) / per_page)),
            },
        }
        self.state.pages += 1
        json_type = {**extra, "Content-Type": "application/json"}
        return "answer", 200, json_type, json.dumps(body).encode()

    def _enrolled_newest_first(self, campaign: str) -> list[str]:
        st = self.state
        pairs = [p for p in st.enrolled if p[0] == campaign]
        for pair in sorted(p for p in pairs if p not in st.enrolled_at):
            self._stamp(pair)
        pairs.sort(key=st.enrolled_at.__getitem__, reverse=True)
        return [contact for _, contact in pairs]

    def _second_client(self, campaign: str, read: int) -> None:
        """`churn`: another client either removes one of the `read` newest enrollments (a
        reader that does not notice skips the contact crossing the page boundary) or enrolls
        a contact at the front (pushing one contact onto the next page): one it removed
        before, or a new one."""
        st, rnd = self.state, self._random
        if rnd.random() >= self.churn:
            return
        ahead = self._enrolled_newest_first(campaign)[:read]
        if ahead and rnd.random() < 0.5:
            pair = (campaign, rnd.choice(ahead))
            st.enrolled.discard(pair)
            st.enrolled_at.pop(pair)
            st.churned_out.add(pair)
        else:
            back = sorted(p for p in st.churned_out - st.enrolled if p[0] == campaign)
            pair = (
                rnd.choice(back)
                if back
                else (campaign, f"c0000000-0000-4000-8000-{self._next_added:012d}")
            )
            st.enrolled.add(pair)
            self._stamp(pair)
            st.churned_in.add(pair)

    def enroll(self, pairs: Iterable[Pair]) -> None:
        """Enroll `pairs` now, in this order (the last the newest), as another client would:
        a rehearsal of re-enrollments behind the tool's back."""
        for pair in pairs:
            self.state.enrolled.add(pair)
            self._stamp(pair)

    def _stamp(self, pair: Pair) -> None:
        """Enrolled now: the newest in its campaign's list."""
        self.state.enrolled_at[pair] = self._next_added
        self._next_added += 1


def enrolled_in_order(enrolled: Iterable[Pair]) -> list[Pair]:
    """The order enrollments were added in: as given, or sorted when given as a set."""
    pairs = list(enrolled)
    return sorted(pairs) if isinstance(enrolled, set | frozenset) else pairs


def _whole(text: str | None, default: int, most: int) -> int | None:
    if text is None:
        return default
    return int(text) if text.isdigit() and 1 <= int(text) <= most else None


def _contact(contact_id: str, added: int) -> dict[str, Any]:
    """An item as the docs describe it; the names and times are made up from the id."""
    added_at = datetime.fromtimestamp(1_700_000_000 + added, UTC).isoformat()
    return {
        "contact_id": contact_id,
        "full_name": f"Contact {contact_id[:8]}",
        "email": f"{contact_id[:8]}@example.com",
        "status": "active",
        "current_step": 1,
        "added_at": added_at.replace("+00:00", "Z"),
        "last_sent_at": None,
    }


def _reset_header(reset_at: int, form: str) -> str:
    if form == "epoch-ms":
        return str(reset_at * 1000)
    if form == "seconds-until":
        return str(max(0, math.ceil(reset_at - time.time())))
    if form == "iso":
        return datetime.fromtimestamp(reset_at, UTC).isoformat().replace("+00:00", "Z")
    if form == "http-date":
        return formatdate(reset_at, usegmt=True)
    return str(reset_at)


def _pick(roll: float, table: list[tuple[float, Reply]]) -> tuple[Reply | None, float]:
    """The reply whose share of [0, 1) `roll` falls in (shares in table order), if any, and
    the roll left past the shares it skipped, for the next table to use."""
    for share, reply in table:
        if roll < share:
            return reply, roll
        roll -= share
    return None, roll


def _error(
    status: int, code: str, message: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    return status, {**headers, "Content-Type": "application/json"}, body


REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


async def _serve_connection(
    api: Sandbox, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                return
            method, path, _ = parts
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            received = await reader.readexactly(length) if length else b""
            if path.startswith("/_sandbox/state"):
                st = api.state
                body = json.dumps(
                    {
                        "calls": st.calls,
                        "removed": len(st.removed),
                        "enrolled": len(st.enrolled),
                        "rate_limited": st.rate_limited,
                        "quota_refused": st.quota_refused,
                    }
                ).encode()
                kind, status, out_headers = "answer", 200, {"Content-Type": "application/json"}
            else:
                if api.faults.latency:
                    await asyncio.sleep(api.faults.latency)
                kind, status, out_headers, body = api.handle(method, path, headers, received)
            api.state.statuses[status] += 1
            if kind == "hang":
                await reader.read()  # until the client gives up and closes
                return
            if kind in ("reset_before", "reset_after"):
                writer.transport.abort()
                return
            out = [
                f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
                f"Content-Length: {len(body)}",
            ]
            out += [f"{k}: {v}" for k, v in out_headers.items()]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except ConnectionError:
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(
    api: Sandbox,
    host: str = "127.0.0.1",
    port: int = 0,
    connections: set[asyncio.Task[None]] | None = None,
) -> asyncio.Server:
    """Start listening; the caller owns the server. Open connections' tasks go in
    `connections`, so a shutdown can end hung ones (Python 3.11 servers cannot)."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if connections is not None and task is not None:
            connections.add(task)
        try:
            await _serve_connection(api, reader, writer)
        except asyncio.CancelledError:
            return  # shutting down: end quietly (asyncio logs a cancelled connection task)
        finally:
            if connections is not None and task is not None:
                connections.discard(task)

    return await asyncio.start_server(connection, host, port)


class SandboxThread:
    """The sandbox in a background thread with its own event loop (for tests and benchmarks)."""

    def __init__(self, api: Sandbox, port: int = 0) -> None:
        self.api = api
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.base_url = ""

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _serve(self) -> None:
        connections: set[asyncio.Task[None]] = set()
        server = await serve(self.api, port=self._port, connections=connections)
        port = server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/api-gateway"
        self._ready.set()
        await self._stop.wait()
        # Stop accepting, then end open (possibly hung) connections, then let the loop go.
        server.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()

    def __enter__(self) -> SandboxThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the sandbox did not start within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@contextlib.contextmanager
def running(api: Sandbox) -> Iterator[SandboxThread]:
    with SandboxThread(api) as server:
        yield server


FAULT_KINDS = tuple(
    name for name, p in vars(Faults()).items() if isinstance(p, float) and name != "latency"
)


def _parse_faults(text: str) -> Faults:
    faults = Faults()
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in FAULT_KINDS:
            raise InputError(f"--faults: unknown fault {name!r}; known: {', '.join(FAULT_KINDS)}")
        try:
            setattr(faults, name, float(value))
        except ValueError:
            raise InputError(f"--faults: {item!r} needs a probability, e.g. {name}=0.05") from None
    return faults


def build_from_options(read: ReadOptions, **kw: Any) -> Sandbox:
    """The sandbox described by `bulk-unenroll sandbox` options."""
    rnd = random.Random(kw["seed"])
    pairs: list[Pair] = []
    if kw["enroll_from"] is not None:
        from .input.ids import normalise
        from .input.source import Source

        for raw in Source(kw["enroll_from"], read).batches():
            valid = normalise(raw).filter(pl.col("reason").is_null())
            pairs += valid.select("campaign_id", "contact_id").iter_rows()
    unknown = set(kw["unknown_campaign"])
    campaigns = {c for c, _ in pairs} - unknown
    enrolled = [p for p in pairs if p[0] in campaigns and rnd.random() < kw["enrolled_fraction"]]
    if not kw["day_seconds"] > 0:
        raise InputError(f"--day-seconds {kw['day_seconds']:g} must be more than 0")
    limits = (
        Limits.plan(kw["limit_plan"], kw["day_seconds"])
        if kw["limit_plan"]
        else Limits(day_seconds=kw["day_seconds"])
    )
    limits.reset_format = kw.get("reset_format") or "epoch"
    if kw["rate_limit"]:
        rate = Rate.parse(kw["rate_limit"])
        limits.per_window, limits.window = int(rate.calls), rate.period
        limits.time_scale = 1.0  # a rate given as such runs in real time
    if kw["daily_quota"] is not None:
        limits.per_day = kw["daily_quota"]
    faults = _parse_faults(kw["faults"])
    faults.latency = kw["latency"]
    faults.retry_after = kw.get("retry_after") or "seconds"
    api = Sandbox(
        enrolled,
        campaigns=campaigns,
        limits=limits,
        faults=faults,
        api_key=kw["require_key"],
        seed=kw["seed"],
        wrong_route=kw.get("wrong_route") or "not_found",
        unknown_campaign_code=kw.get("unknown_campaign_code") or "campaign_not_found",
        can_read=not kw.get("no_campaigns_read"),
        churn=kw.get("churn") or 0.0,
    )
    return api


async def serve_forever(api: Sandbox, port: int, ready_file: Path | None) -> None:
    server = await serve(api, port=port)
    host, bound = server.sockets[0].getsockname()[:2]
    url = f"http://{host}:{bound}/api-gateway"
    st = api.state
    print(
        f"LeadLex sandbox: {len(st.enrolled):,} enrollments in {len(st.campaigns):,} campaigns",
        flush=True,
    )
    lim = api.limits
    if lim.time_scale != 1.0 and lim.per_window is not None:
        print(
            f"time runs {lim.time_scale:g}x faster: a quota day of {lim.per_day or 0:,} calls "
            f"lasts {lim.day_seconds:g} s and the plan's minute {lim.window:.3g} s "
            f"({lim.per_window / lim.window:,.0f} calls/s); a run learns this pace from the "
            f"{TIME_SCALE_HEADER} header",
            flush=True,
        )
    print(f"listening on {url}  (point a run at it: --base-url {url})", flush=True)
    if ready_file is not None:
        await anyio.Path(ready_file).write_text(url + "\n", encoding="utf-8")
    async with server:
        await server.serve_forever()
