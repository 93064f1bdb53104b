"""What the fetch watchdogs cost, and what the DNS cache saves (issue 18).

1. ``wait_rows`` (straggler cutoff, shard deadline, stop, progress) against a
   plain ``asyncio.gather`` over the same coroutines, in this process: each row
   awaits a short sleep (a stand-in for a download), so the ratio shows the
   waiter's own overhead per row.
2. Resolver queries for a LAION-like batch (rows spread over hosts with a
   long tail: a few CDNs hold most rows) with the worker's DNS cache against
   one query per new connection, at most one per row (what a resolver sees
   without a cache; kept-alive connections save some). Counts,
   not times: the resolver here is a fake that answers at once.

    python bench/bench_trust.py [--rows 20000] [--hosts 3000]
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datagen.fetch import FetchConfig  # noqa: E402
from datagen.fetch.guard import DnsCache  # noqa: E402
from datagen.fetch.watch import wait_rows  # noqa: E402


async def _row() -> int:
    await asyncio.sleep(0.001)
    return 1


async def _gather(n: int) -> float:
    t = time.perf_counter()
    await asyncio.gather(*(_row() for _ in range(n)))
    return time.perf_counter() - t


async def _watched(n: int) -> float:
    cfg = FetchConfig(straggler_cutoff={"done_fraction": 0.95, "wait_s": 60}, shard_timeout_s=3600)
    t = time.perf_counter()
    await wait_rows([_row() for _ in range(n)], cfg, time.monotonic() + 3600, asyncio.Event(), lambda: "")
    return time.perf_counter() - t


def bench_waiter(rows: int, reps: int = 5) -> None:
    g = min(asyncio.run(_gather(rows)) for _ in range(reps))
    w = min(asyncio.run(_watched(rows)) for _ in range(reps))
    print(f"batch of {rows} rows: asyncio.gather {g * 1e3:.1f} ms, wait_rows {w * 1e3:.1f} ms "
          f"({w / g:.2f}x; {(w - g) / rows * 1e6:+.1f} us per row)")


def bench_dns(rows: int, hosts: int) -> None:
    rng = random.Random(0)
    weights = [1 / (i + 1) for i in range(hosts)]  # Zipf-like: a few CDNs, a long tail
    names = rng.choices([f"h{i}.example" for i in range(hosts)], weights, k=rows)
    queries = []

    async def resolver(host: str, port: int) -> list[str]:
        queries.append(host)
        return ["192.0.2.1"]

    cache = DnsCache(ttl_s=300, negative_ttl_s=60, resolver=resolver)

    async def main() -> None:
        sem = asyncio.Semaphore(64)

        async def one(h: str) -> None:
            async with sem:
                await cache.resolve(h, 443)

        await asyncio.gather(*(one(h) for h in names))

    asyncio.run(main())
    print(f"{rows} rows over {len(set(names))} hosts: {len(queries)} resolver queries with the cache; without it, "
          f"one per new connection, up to {rows} ({rows / len(queries):.1f}x more; kept-alive connections save some)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--hosts", type=int, default=3000)
    a = ap.parse_args()
    bench_waiter(min(a.rows, 5000))
    bench_dns(a.rows, a.hosts)
