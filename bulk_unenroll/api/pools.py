"""One httpx client over many one-connection pools.

httpx's async pool rescans its connections on every request and every response it closes
(encode/httpx#3215), checking each idle one with a poll and a getpeername: the more
connections it holds, the more each request costs. A tool that does its own work between
requests leaves connections idle more often than a bare loop, so it pays more of that scan:
at 8 in flight, one pool of 8 cost the tool 1.2 ms of CPU per request, pools of 4 0.95 ms,
pools of 1 0.72 ms, level with a bare httpx loop (docs/benchmarks.md).

So every connection gets a pool of its own, and a request takes the free pool with the lowest
number: a light load reuses one connection, a heavy one spreads over as many as it needs.

httpx reads HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY only when it builds its own
transport, so passing ours turned them off: `proxy_mounts` puts them back, each proxy over
pools of its own, mapped exactly as httpx maps them.
"""

from __future__ import annotations

import heapq
import itertools
import ssl
from collections.abc import AsyncIterator, Callable

import httpx
from httpx._utils import get_environment_proxies  # httpx is pinned: its own mapping, not a copy


class PooledTransport(httpx.AsyncBaseTransport):
    """Up to `max_connections` keep-alive connections, one per httpcore pool."""

    def __init__(
        self,
        max_connections: int,
        context: ssl.SSLContext | None = None,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        count = max(1, max_connections)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        context = context or httpx.create_ssl_context()  # the CA bundle once, not once per pool
        self.proxy = proxy
        self._pools = [
            httpx.AsyncHTTPTransport(verify=context, limits=limits, proxy=proxy)
            for _ in range(count)
        ]
        self._free = list(range(count))  # a heap: the lowest free pool first
        self._overflow = itertools.cycle(range(count))

    @property
    def in_use(self) -> int:
        """Pools a request holds now (until its body is read and closed)."""
        return len(self._pools) - len(self._free)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._free:
            index = heapq.heappop(self._free)
            release: Callable[[], None] = lambda: heapq.heappush(self._free, index)  # noqa: E731
        else:  # more requests than connections: queue on one, as a single pool would
            index, release = next(self._overflow), lambda: None
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        # The connection stays taken until the body is read and closed.
        response.stream = _Releasing(response.stream, release)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def proxy_mounts(
    max_connections: int, context: ssl.SSLContext
) -> dict[str, PooledTransport | None]:
    """The environment's proxies as httpx mounts (None: NO_PROXY, go direct); one
    PooledTransport per proxy, however many schemes share it."""
    by_url: dict[str, PooledTransport] = {}
    mounts: dict[str, PooledTransport | None] = {}
    for pattern, url in get_environment_proxies().items():
        if url is not None and url not in by_url:
            # An https:// proxy trusts the same CAs (httpcore refuses a context for http://).
            tls = context if url.startswith("https://") else None
            proxy = httpx.Proxy(url, ssl_context=tls)
            by_url[url] = PooledTransport(max_connections, context, proxy)
        mounts[pattern] = None if url is None else by_url[url]
    return mounts


class _Releasing(httpx.AsyncByteStream):
    """A response body that frees its pool once closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
