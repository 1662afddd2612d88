"""Several small connection pools behind one httpx client.

httpx's async pool rescans every connection on each request (encode/httpx#3215), so its cost
per request grows with the connections it holds: at 20-30 it is several times what it is at a
handful. A slow API at a high rate needs that many in flight (rate x latency), so the client
gets small pools: a request takes the first pool with a free connection, which keeps a light
load on one pool (one or two connections) and spreads a heavy one over as many as it needs.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import httpx

POOL_SIZE = 4
"""Connections per pool: measured in docs/benchmarks.md (4 and 8 are close; 32 is 3-4x worse)."""


class PooledTransport(httpx.AsyncBaseTransport):
    """Up to `max_connections` connections, in pools of `pool_size`."""

    def __init__(self, max_connections: int, pool_size: int = POOL_SIZE) -> None:
        count = max(1, math.ceil(max_connections / pool_size))
        size = min(pool_size, max_connections)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        context = httpx.create_ssl_context()  # load the CA bundle once, not once per pool
        self._pools = [
            httpx.AsyncHTTPTransport(verify=context, limits=limits) for _ in range(count)
        ]
        self._busy = [0] * count
        self._size = size

    @property
    def pools(self) -> int:
        return len(self._pools)

    def _pick(self) -> int:
        for index, busy in enumerate(self._busy):
            if busy < self._size:
                return index
        return min(range(len(self._busy)), key=self._busy.__getitem__)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._pick()
        self._busy[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            self._busy[index] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        # The connection stays taken until the body is read and closed.
        response.stream = _Releasing(response.stream, lambda: self._release(index))
        return response

    def _release(self, index: int) -> None:
        self._busy[index] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _Releasing(httpx.AsyncByteStream):
    """A response body that gives its pool slot back once closed."""

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
