"""Waiting for a fetch batch so that it always ends: straggler cutoff, shard deadline, clean stop, progress.

img2dataset's jobs hang near the end on a few rows whose hosts never answer
(its #74, #164, #289, #402, #445); Data-Juicer's Ray runs stall on their last
tasks (#810). Every request already has a per-try deadline
(``total_timeout_s``); on top of that, ``wait_rows`` gives up on the rows of a
batch that are still running once
- ``straggler_cutoff.done_fraction`` of the batch is done and ``wait_s`` more
  seconds have passed, or
- the shard task's deadline (``shard_timeout_s``) has passed,
and turns them into ``straggler_timeout`` rejects, so the shard always
finishes (and ``datagen retry-failed`` can pick them up). A ``stop`` event
(``max_failure_rate``) cancels the rest at once. Every ``progress_interval_s``
it logs the hosts with requests in flight; a batch where nothing finished in
that interval logs it as a warning, so a stall is visible while it happens.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Awaitable, Callable, Optional

from datagen.fetch.config import FetchConfig
from datagen.fetch.errors import FetchError

log = logging.getLogger("datagen")


async def wait_rows(coros: list[Awaitable[Any]], cfg: FetchConfig, deadline: Optional[float],
                    stop: asyncio.Event, describe_in_flight: Callable[[], str]) -> list[Any]:
    """Run ``coros`` (one per row) and return their results in order; rows given up on get a
    FetchError("straggler_timeout"). ``deadline`` is a time.monotonic() value or None."""
    n = len(coros)
    tasks = [asyncio.ensure_future(c) for c in coros]
    changed = asyncio.Event()
    done = 0

    cutoff = cfg.straggler_cutoff
    need = math.ceil(cutoff.done_fraction * n) if cutoff is not None else None

    def finished(_t) -> None:
        nonlocal done
        done += 1
        if done == n or done == need:  # the only counts that change what we wait for; the rest is timeouts
            changed.set()

    for t in tasks:
        t.add_done_callback(finished)
    cutoff_at: Optional[float] = None
    why = ""
    t0 = last_tick = time.monotonic()
    done_at_tick = 0
    while done < n and not stop.is_set():
        now = time.monotonic()
        if need is not None and cutoff_at is None and done >= need:
            cutoff_at = now + cutoff.wait_s
        if cutoff_at is not None and now >= cutoff_at:
            why = (f"{done} of {n} rows of the batch were done and this one was still running "
                   f"{cutoff.wait_s:g} s later (fetch.straggler_cutoff)")
            break
        if deadline is not None and now >= deadline:
            why = f"the shard passed its deadline, fetch.shard_timeout_s {cfg.shard_timeout_s:g} s"
            break
        if now - last_tick >= cfg.progress_interval_s:
            stalled = done == done_at_tick
            (log.warning if stalled else log.info)(
                "fetch: %d/%d rows of a batch done after %.0f s%s; %s", done, n, now - t0,
                " (none finished in the last %.0f s)" % (now - last_tick) if stalled else "", describe_in_flight())
            last_tick, done_at_tick = now, done
        waits = [last_tick + cfg.progress_interval_s - now]
        if cutoff_at is not None:
            waits.append(cutoff_at - now)
        if deadline is not None:
            waits.append(deadline - now)
        changed.clear()  # callbacks run only while we await below: no milestone is missed
        try:
            await asyncio.wait_for(_either(changed, stop), max(min(waits), 0.001))
        except asyncio.TimeoutError:
            pass
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    results = []
    for t in tasks:
        if t.cancelled():
            results.append(FetchError("straggler_timeout", f"given up: {why}" if why else "cancelled", retryable=True))
        else:
            results.append(t.result())
    return results


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    if b.is_set():
        return
    wa, wb = asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())
    try:
        await asyncio.wait({wa, wb}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        wa.cancel()
        wb.cancel()
