"""One request (a pair's DELETE, a campaign's Add Contacts POST, a page of a campaign's
enrollments), and the pure tables that turn its answer into an outcome, a retry or an abort."""

from __future__ import annotations

import json
import math
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx

from ..errors import InputError
from ..events import Event, Said, Setting
from ..models import CAMPAIGN_NOT_FOUND, Enrollment, Outcome
from ..scrub import redact
from .pools import PooledTransport, proxy_mounts

USER_AGENT = "bulk-unenroll/0.1"
MAY_FOLLOW_A_REMOVAL = frozenset({500, 502, 504, 546})
"""Answers that can come after LeadLex applied the DELETE: its own answer was lost behind a
crash (500), a bad upstream (502), a gateway timeout (504) or a platform resource limit (546).
A 503 or a 429 is a refusal: nothing was applied."""
QUICK_ANSWER = 2.0
"""Seconds: a 502/504 faster than this came from a gateway shedding load, not one that waited
for LeadLex and gave up."""


class Action(Enum):
    DONE = "done"
    """A definite outcome for the row."""
    RETRY = "retry"
    """Transient: try again after a backoff (the row's retries are spent)."""
    SLOW_DOWN = "slow_down"
    """Per-minute 429: pause every worker, retry without spending the row's retries."""
    OVERLOADED = "overloaded"
    """A gateway shed the call (503, quick 502/504, platform error): slow the shared pace,
    retry without spending the row's retries."""
    QUOTA = "quota"
    """Daily quota spent: stop or wait for the reset."""
    ABORT = "abort"
    """The key or the setup is wrong: stop the whole run."""
    UNCLEAR_404 = "unclear_404"
    """A 404 naming neither the campaign nor the enrollment: no such campaign, or no such route
    (a wrong --base-url). It may settle its own row (`outcome`), and only once another answer
    showed the route exists; never a campaign's rows (the runner decides)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What one attempt learnt: a response, or why there was none."""

    status: int | None
    code: str = ""
    message: str = ""
    request_id: str = ""
    headers: httpx.Headers | None = None
    error: str = ""
    """Transport failure (timeout, reset); empty when a response arrived."""
    maybe_applied: bool = False
    """The server may have acted without us seeing the answer."""
    setup_fault: Event | None = None
    """A connection that failed for a reason that points at the setup (TLS trust, host name,
    port, proxy) rather than a passing outage: the cause and what to check."""
    seconds: float = 0.0
    """How long the answer took."""
    added: tuple[str, ...] | None = None
    """An Add Contacts answer's `data.contact_ids` (the newly added); None when it named none."""


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    outcome: Outcome | None = None
    detail: str = ""
    route_exists: bool = False
    """Only LeadLex's DELETE route gives this answer, so the base URL is right."""
    says: Event | None = None
    """The detail as an event, when it names a setting to check."""


def classify(answer: Answer) -> Verdict:
    """The classification table, from (HTTP status, error code) to what happens next."""
    status, code = answer.status, answer.code
    if status is None:
        return Verdict(Action.RETRY, detail=answer.error)
    if 200 <= status < 300:
        # Any 2xx means the enrollment is gone; the detail says what the body lacked.
        return Verdict(Action.DONE, Outcome.REMOVED, answer.message, route_exists=True)
    if 300 <= status < 400:
        return _redirected(status)
    if status in (401, 403):
        return _key_refused(status, code)
    if status == 404:
        return _not_found(answer)
    if status == 429:
        if answer.headers is not None and answer.headers.get("x-ratelimit-remaining") == "0":
            return Verdict(Action.QUOTA, detail="daily quota spent")
        return Verdict(Action.SLOW_DOWN, detail="rate limited (429)")
    if overloaded(answer):
        platform = answer.headers.get("sb-error-code", "") if answer.headers else ""
        said = " ".join(filter(None, (code, platform)))
        return Verdict(Action.OVERLOADED, detail=f"HTTP {status}" + (f" {said}" if said else ""))
    if status in (408, 425) or status >= 500:
        return Verdict(Action.RETRY, detail=f"HTTP {status}" + (f" {code}" if code else ""))
    return Verdict(Action.DONE, Outcome.REJECTED, answer.message or f"HTTP {status}")


def _redirected(status: int) -> Verdict:
    redirect = Said(
        (
            f"the API answered a redirect (HTTP {status}): check ",
            Setting.BASE_URL,
            "; redirects are not followed for a DELETE",
        )
    )
    return Verdict(Action.ABORT, detail=str(redirect), says=redirect)


def _key_refused(status: int, code: str) -> Verdict:
    """A 401 or 403: the key, not the row; the run stops."""
    if status == 401:
        return Verdict(
            Action.ABORT,
            detail="the API key was rejected (401 invalid_key): "
            "it is invalid, expired or revoked; set a valid LEADLEX_API_KEY",
        )
    return Verdict(
        Action.ABORT,
        detail="the API key lacks permission (403 "
        f"{code or 'insufficient_permissions'}): give it campaigns:write",
    )


def _not_found(answer: Answer) -> Verdict:
    """The API's two documented 404s, and any other: unclear (see `Action.UNCLEAR_404`)."""
    if answer.code == "enrollment_not_found":
        return Verdict(Action.DONE, Outcome.NOT_ENROLLED, route_exists=True)
    if answer.code in CAMPAIGN_NOT_FOUND:
        return Verdict(Action.DONE, Outcome.REJECTED, "no campaign with this id", route_exists=True)
    return Verdict(
        Action.UNCLEAR_404,
        Outcome.REJECTED,
        f"{said_404(answer)}: no campaign with this id, or no such route; "
        "recorded for this row only",
    )


def overloaded(answer: Answer) -> bool:
    """A gateway shedding load: a 503, a quick 502/504, or a platform error (`sb-error-code`)."""
    status = answer.status
    if status is None or status < 500:
        return False
    if status == 503 or (answer.headers is not None and "sb-error-code" in answer.headers):
        return True
    return status in (502, 504) and answer.seconds < QUICK_ANSWER


def said_404(answer: Answer) -> str:
    """An undocumented 404 in a few words, for details and messages."""
    said = f"404 {answer.code}" if answer.code else "404 without a LeadLex error code"
    if answer.message:
        said += f" ({answer.message})" if answer.code else f", {answer.message}"
    return said


def classify_add(answer: Answer) -> Verdict:
    """Add Contacts' table: the DELETE's, but a 2xx restores (which pairs, `added` says) and
    its documented 400s (`too_many_contacts`, `missing_required_field`) reject the batch."""
    verdict = classify(answer)
    if verdict.outcome is Outcome.REMOVED:
        return Verdict(Action.DONE, Outcome.RESTORED, answer.message, route_exists=True)
    if verdict.outcome is Outcome.NOT_ENROLLED:  # undocumented for a POST: the batch's answer
        return Verdict(Action.DONE, Outcome.REJECTED, said_404(answer), route_exists=True)
    if verdict.outcome is Outcome.REJECTED and answer.status == 400:
        said = " ".join(filter(None, (f"400 {answer.code}".strip(), answer.message)))
        return Verdict(Action.DONE, Outcome.REJECTED, said, route_exists=bool(answer.code))
    return verdict


def add_url(base_url: str, campaign_id: str) -> str:
    """The campaign's contacts collection (Add Contacts), the id percent-encoded."""
    return f"{base_url.rstrip('/')}/v1/campaigns/{quote(campaign_id, safe='')}/contacts"


def url_for(base_url: str, enrollment: Enrollment) -> str:
    """Percent-encode both ids, so nothing in a cell can change the path or the query."""
    campaign = quote(enrollment.campaign_id, safe="")
    contact = quote(enrollment.contact_id, safe="")
    return f"{base_url.rstrip('/')}/v1/campaigns/{campaign}/contacts/{contact}"


def _parse(response: httpx.Response, seconds: float = 0.0, *, adding: bool = False) -> Answer:
    request_id = response.headers.get("x-request-id", "")
    status = response.status_code
    code = message = ""
    confirmed = False
    added: tuple[str, ...] | None = None
    try:
        body = json.loads(response.content) if response.content else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        error, data = body.get("error"), body.get("data")
        if isinstance(error, dict):
            code = str(error.get("code") or "")
            message = str(error.get("message") or "")
        if isinstance(data, dict) and not adding:
            confirmed = data.get("removed") is True
        if isinstance(data, dict) and adding and isinstance(data.get("contact_ids"), list):
            # Lower-cased and trimmed like the pairs' ids, so an added id in capitals matches.
            added = tuple(str(c).strip().lower() for c in data["contact_ids"])
            confirmed = True
    if 200 <= status < 300 and not confirmed:
        said = _lacking(body, response, "contact_ids" if adding else "removed")
        taken = "every id taken as enrolled now" if adding else "taken as removed"
        message = f"HTTP {status} with {said}: {taken} (any 2xx is)"
    elif not isinstance(body, dict) and (status >= 500 or status == 404):
        message = _lacking(body, response)
    # Server text goes into results and logs: a gateway that echoes our key must not leak it,
    # whole or cut off. Scrubbed before it is cut, so no cut can leave a piece behind.
    key = response.request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    code, message, request_id = (redact(t, key)[:300] for t in (code, message, request_id))
    return Answer(
        status=status,
        code=code,
        message=message,
        request_id=request_id,
        headers=response.headers,
        maybe_applied=status in MAY_FOLLOW_A_REMOVAL,  # a 2xx is a definite answer
        seconds=seconds,
        added=added,
    )


def _lacking(body: object, response: httpx.Response, field: str = "removed") -> str:
    """The body, as far as it differs from the documented JSON."""
    if not response.content:
        return "no body"
    if body is None:
        kind = response.headers.get("content-type", "").split(";")[0] or "no content type"
        return f"a non-JSON body ({kind}, {len(response.content)} bytes)"
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, dict) and field in data:
        return f"data.{field} = {json.dumps(data[field])[:20]}"
    return f"JSON lacking data.{field}"


PROXY_SETTINGS = "the proxy settings (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY)"


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Trust the CA bundle if given, else SSL_CERT_FILE / SSL_CERT_DIR, else certifi's."""
    where: tuple[str | Setting, ...] = ("SSL_CERT_FILE/SSL_CERT_DIR",)
    if ca_bundle is not None:
        where = (Setting.CA_BUNDLE, f" {ca_bundle}")
    try:
        if ca_bundle is not None:
            return ssl.create_default_context(cafile=ca_bundle)
        return httpx.create_ssl_context()
    except OSError as exc:
        ssl_error = isinstance(exc, ssl.SSLError)
        reason = "it holds no PEM certificate" if ssl_error else exc.strerror or str(exc)
        raise InputError(
            Said(
                (
                    "cannot load the CA certificates of ",
                    *where,
                    f": {reason}; give a PEM file of the CA certificates to trust",
                )
            )
        ) from None


def make_client(
    api_key: str, timeout: float, max_connections: int, ca_bundle: Path | None = None
) -> httpx.AsyncClient:
    context = tls_context(ca_bundle)
    try:
        mounts = proxy_mounts(max_connections, context)
    except (ValueError, ImportError, httpx.InvalidURL):
        raise InputError(
            "a proxy URL in HTTPS_PROXY, HTTP_PROXY or ALL_PROXY (either case) cannot be used: "
            "write it as http://host:port or https://host:port"
        ) from None
    return httpx.AsyncClient(
        headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        # Small pools: httpx's one big pool slows down as connections grow (pools.py).
        transport=PooledTransport(max_connections, context),
        mounts=mounts,
        follow_redirects=False,
    )


def _root_cause(exc: BaseException) -> BaseException | None:
    """The TLS, DNS or refusal error under httpx's ConnectError (httpx, httpcore, anyio, OS)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        error = todo.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ssl.SSLError | socket.gaierror | ConnectionRefusedError):
            return error
        if isinstance(error, BaseExceptionGroup):
            todo.extend(error.exceptions)
        todo += [error.__cause__, error.__context__]
    return None


Check = tuple[str | Setting, ...]
"""What to check, in words and settings; empty when a retry may cure it."""


def connect_fault(exc: httpx.TransportError, proxy: httpx.URL | None) -> tuple[str, Check]:
    """Why no connection could be made, and what to check when the cause is one a retry will
    not cure (an untrusted certificate, no TLS on the port, an unknown host name, a refused
    port, a proxy refusing the tunnel); no check for causes that may pass (unreachable)."""
    url = exc.request.url
    target = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
    via = f" through the proxy {proxy}" if proxy else ""
    if isinstance(exc, httpx.ProxyError):
        return (
            f"the proxy {proxy} refused the tunnel to {target} ({exc})",
            (f"check {PROXY_SETTINGS} and that the proxy lets this machine reach {target}",),
        )
    cause = _root_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"certificate verify failed for {target}{via} ({cause.verify_message})",
            (
                "if a proxy or gateway on your network inspects TLS, pass its CA certificate with ",
                Setting.CA_BUNDLE,
                " PATH (or set SSL_CERT_FILE); otherwise check the host in ",
                Setting.BASE_URL,
            ),
        )
    if isinstance(cause, ssl.SSLError):
        reason = (cause.reason or "no TLS").lower().replace("_", " ")
        return (
            f"TLS handshake with {target}{via} failed ({reason})",
            (
                "is it a plain-HTTP port? check the scheme and port in ",
                Setting.BASE_URL,
                ", ",
                Setting.CA_BUNDLE,
                f" and {PROXY_SETTINGS}",
            ),
        )
    if isinstance(cause, socket.gaierror):
        host = proxy.host if proxy else url.host
        return (
            f"host name {host} not resolved ({cause.strerror})",
            (
                "check the host in ",
                f"the proxy {proxy}" if proxy else Setting.BASE_URL,
                f", {PROXY_SETTINGS} and this machine's DNS",
            ),
        )
    if isinstance(cause, ConnectionRefusedError):
        if proxy:
            return f"connection refused by the proxy {proxy}", (f"check {PROXY_SETTINGS}",)
        return (
            f"connection refused by {target}",
            ("check the host and port in ", Setting.BASE_URL, f" and {PROXY_SETTINGS}"),
        )
    return f"{type(exc).__name__}: {exc}", ()


async def delete(
    client: httpx.AsyncClient, base_url: str, enrollment: Enrollment, timeout: float
) -> Answer:
    """Send one DELETE. Never raises for the network: a lost answer is an Answer too."""
    return await _exchange(client, lambda: client.delete(url_for(base_url, enrollment)), timeout)


async def add_contacts(
    client: httpx.AsyncClient,
    base_url: str,
    campaign_id: str,
    contact_ids: Sequence[str],
    source: str,
    timeout: float,
) -> Answer:
    """Send one Add Contacts POST (at most 500 ids). Never raises for the network."""
    body = {"contact_ids": list(contact_ids), "source": source}
    url = add_url(base_url, campaign_id)
    return await _exchange(client, lambda: client.post(url, json=body), timeout, adding=True)


async def _exchange(
    client: httpx.AsyncClient,
    send: Callable[[], Awaitable[httpx.Response]],
    timeout: float,
    *,
    adding: bool = False,
) -> Answer:
    """One request and its answer, or why none came (a lost answer is an Answer too)."""
    started = anyio.current_time()
    try:
        # Watchdog: a server that trickles bytes can dodge httpx's per-read timeout.
        with anyio.fail_after(timeout * 2 + 5):
            response = await send()
    except (httpx.ConnectError, httpx.ProxyError) as exc:  # the request never left
        transport = client._transport_for_url(exc.request.url)  # the one httpx chose
        proxy = transport.proxy if isinstance(transport, PooledTransport) else None
        cause, check = connect_fault(exc, proxy.url if proxy else None)
        fault = Said((f"{cause}: ", *check)) if check else None
        return Answer(None, error=f"could not connect: {cause}", setup_fault=fault)
    except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        return Answer(None, error=f"could not connect ({type(exc).__name__})")
    except (httpx.TimeoutException, TimeoutError):
        return Answer(None, error="no answer within the timeout", maybe_applied=True)
    except httpx.TransportError as exc:
        return Answer(None, error=f"connection lost ({type(exc).__name__})", maybe_applied=True)
    except httpx.HTTPError as exc:  # e.g. a body that fails to decode: the answer is lost
        return Answer(None, error=f"unreadable answer ({type(exc).__name__})", maybe_applied=True)
    return _parse(response, anyio.current_time() - started, adding=adding)


# -- List Campaign Contacts: GET /v1/campaigns/{id}/contacts?page=N&per_page=M ---------------


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a campaign's enrollments, newest first, as one answer saw them."""

    contact_ids: tuple[str, ...]
    """Trimmed and lower-cased, like the input's contact ids (UUIDs)."""
    total: int | None
    """The campaign's enrollments when this page was read (`meta`); None: the answer said not."""


def page_url(base_url: str, campaign_id: str, page: int, per_page: int) -> str:
    campaign = quote(campaign_id, safe="")
    return (
        f"{base_url.rstrip('/')}/v1/campaigns/{campaign}/contacts?page={page}&per_page={per_page}"
    )


def classify_page(answer: Answer) -> Verdict:
    """The listing's table. Unlike a DELETE's, a 403 (the key lacks campaigns:read) and a 404
    end the listing, not the run: the rows go to their DELETEs as if never listed. An
    undocumented 404 before any answer showed the route stops the run as a wrong --base-url,
    as it does for a DELETE. The rest (401, 429, 5xx, lost answers) means what it means for
    a DELETE."""
    status = answer.status
    if status is not None and 200 <= status < 300:
        return Verdict(Action.DONE, detail="listed", route_exists=True)
    if status == 403:
        return Verdict(
            Action.DONE,
            Outcome.REJECTED,
            f"the API key cannot list campaign contacts (403 "
            f"{answer.code or 'insufficient_permissions'}): it lacks campaigns:read",
        )
    if status == 404:
        # Unclear as for a DELETE: until an answer shows the route, a wrong --base-url.
        known = answer.code in CAMPAIGN_NOT_FOUND
        action = Action.DONE if known else Action.UNCLEAR_404
        return Verdict(action, Outcome.REJECTED, said_404(answer), route_exists=known)
    return classify(answer)


async def get_page(
    client: httpx.AsyncClient,
    base_url: str,
    campaign_id: str,
    page: int,
    per_page: int,
    timeout: float,
) -> tuple[Answer, Page | None]:
    """Read one page. Never raises for the network. A 2xx whose body is no page comes back
    as an unreadable answer (status None, so it is retried), the headers kept for the quota."""
    url = page_url(base_url, campaign_id, page, per_page)
    got: list[httpx.Response] = []

    async def send() -> httpx.Response:
        got.append(await client.get(url))
        return got[-1]

    answer = replace(await _exchange(client, send, timeout), maybe_applied=False)  # a GET
    if not got or answer.status is None or not 200 <= answer.status < 300:
        return answer, None
    found = _page_of(got[-1].content)
    if isinstance(found, str):
        return replace(answer, status=None, error=f"HTTP {answer.status} with {found}"), None
    return replace(answer, message=""), found


def _page_of(content: bytes) -> Page | str:
    """The page a body holds, or what it lacks."""
    try:
        body = json.loads(content) if content else None
    except (ValueError, UnicodeDecodeError):
        return "a body that is not JSON"
    data = body.get("data") if isinstance(body, dict) else None
    contacts = data.get("contacts") if isinstance(data, dict) else None
    if not isinstance(contacts, list):
        return "no data.contacts list"
    # Lower-cased and trimmed, as the input's ids are: an id the API spells in capitals must
    # still match its row (a mismatch would settle an enrolled pair as not enrolled).
    ids = tuple(
        str(c.get("contact_id") or "").strip().lower() if isinstance(c, dict) else ""
        for c in contacts
    )
    if not all(ids):
        return "a contact without a contact_id"
    assert isinstance(body, dict)
    return Page(ids, _total_of(body.get("meta")))


def _total_of(meta: object) -> int | None:
    """The enrollments' total in `meta` (`total`, `total_count`, or under `pagination`)."""
    if isinstance(meta, dict) and isinstance(meta.get("pagination"), dict):
        meta = meta["pagination"]
    if not isinstance(meta, dict):
        return None
    for name in ("total", "total_count"):
        value = meta.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def pages_for(total: int, per_page: int) -> int:
    """Pages a listing of `total` enrollments takes (one, even when empty)."""
    return max(1, math.ceil(total / per_page))
