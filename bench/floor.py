"""The floor of this stack: a minimal loop of httpx.AsyncClient DELETEs at a fixed concurrency.

    python -m bench.floor BASE_URL N CONCURRENCY START [pooled]

Sends one DELETE for each of `bench.common.pairs(N, START)` over one client with a pool of
CONCURRENCY connections, from CONCURRENCY tasks; prints {"wall": s, "cpu": s} of the loop alone.
Nothing is parsed, written or paced: whatever the tool does beyond this is its own overhead.
`pooled` gives the loop the tool's own transport (one connection per pool, pools.py), to show
the tool's overhead apart from the transport's gain.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx

from bulk_unenroll.api.pools import PooledTransport

from .common import API_KEY, pairs


async def floor(urls: list[str], concurrency: int, pooled: bool) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    transport = PooledTransport(concurrency) if pooled else None
    async with httpx.AsyncClient(headers=headers, limits=limits, transport=transport) as client:
        queue = iter(urls)

        async def worker() -> None:
            for url in queue:
                await client.delete(url)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    base_url, n, concurrency, start = sys.argv[1], *map(int, sys.argv[2:5])
    pooled = sys.argv[5:6] == ["pooled"]
    urls = [f"{base_url}/v1/campaigns/{c}/contacts/{p}" for c, p in pairs(n, start)]
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(floor(urls, concurrency, pooled))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu}))


if __name__ == "__main__":
    main()
