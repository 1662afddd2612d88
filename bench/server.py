"""The sandbox in its own process for the benchmarks, so server and client never share a GIL.

    python -m bench.server --ready-file F --stats-file S --pairs N [--rate-limit 40/s]
        [--latency 0.2] [--per-day N] [--day-seconds S] [--day-start UNIX]

Enrolls `bench.common.pairs(N)`; on SIGTERM writes what it saw to the stats file: the status
counts and the monotonic arrival time of every admitted call (CLOCK_MONOTONIC is system-wide
on Linux, so the client's clock reads the same).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path

from bulk_unenroll.limits import Rate
from bulk_unenroll.sandbox import Faults, Limits, Sandbox, serve

from .common import pairs


class TimedSandbox(Sandbox):
    """Records when each call was admitted (answered with anything but a 429)."""

    admitted: list[float]

    def handle(
        self, method: str, path: str, headers: dict[str, str], payload: bytes = b""
    ) -> tuple[str, int, dict[str, str], bytes]:
        answer = super().handle(method, path, headers, payload)
        if answer[1] != 429:
            self.admitted.append(time.monotonic())
        return answer


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--stats-file", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=0)
    parser.add_argument("--rate-limit")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--per-day", type=int)
    parser.add_argument("--day-seconds", type=float, default=86_400.0)
    parser.add_argument("--day-start", type=float, default=0.0)
    args = parser.parse_args()

    limits = Limits(per_day=args.per_day, day_seconds=args.day_seconds, day_start=args.day_start)
    if args.rate_limit:
        rate = Rate.parse(args.rate_limit)
        limits.per_window, limits.window = int(rate.calls), rate.period
    api = TimedSandbox(pairs(args.pairs), limits=limits, faults=Faults(latency=args.latency))
    api.admitted = []
    server = await serve(api)
    port = server.sockets[0].getsockname()[1]
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    args.ready_file.write_text(f"http://127.0.0.1:{port}/api-gateway\n", encoding="utf-8")
    await stopped.wait()
    server.close()
    st = api.state
    stats = {
        "calls": st.calls,
        "rate_limited": st.rate_limited,
        "quota_refused": st.quota_refused,
        "statuses": {str(k): v for k, v in st.statuses.items()},
        "removed": len(st.removed),
        "admitted": api.admitted,
    }
    args.stats_file.write_text(json.dumps(stats), encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
