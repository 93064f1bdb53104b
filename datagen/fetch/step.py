"""The fetch step: fill ``image``, ``image_sha256``, ``width``, ``height`` of pair rows.

Input rows have ``image`` null and ``url`` set (http(s) URL, file:// URL or an
absolute path); rows that already carry bytes pass through untouched, with
missing sha256/size filled from the bytes (when ``max_side`` is set they get the
full treatment instead: EXIF, RGB, resize, boxes). Output keeps every column and
the row order; every row that cannot be fetched or decoded becomes a reject
with a stable reason code (see ``datagen.fetch.errors``), so rows in = kept +
rejected.

Why it is built this way:
- The step owns one event loop, in a daemon thread, with its HTTP clients
  (``Downloader``: connection pools, per-host gates, robots client) and its
  decode pool, for as long as the step lives in this process (``close`` ends
  them). Every batch of every shard runs on them: kept-alive connections and
  DNS answers carry over from batch to batch instead of being re-opened every
  ``executor.batch_size`` rows (``bench/bench_fetch.py`` compares the two;
  docs/benchmark-history.md). ``process`` hands the batch to that loop
  and waits, so the step works in any process or Ray worker, and from inside
  a running loop (a notebook) too. Shard-scoped state stays per shard: the
  host backoff and the deadline are renewed by ``begin_task``; the straggler
  cutoff is per batch.
- Network work is asyncio (``datagen.fetch.http``). Decoding and encoding run
  in a small thread pool (the decoders release the GIL), overlapped with
  downloads, when the process has cores to spare; in a process with one core
  to itself (a pool of one process a core, the usual run) the loop's own
  thread decodes each row as its body arrives, since threads there only
  passed the GIL back and forth (``decode_threads``). Once other processes of
  the pass have no task left, the step decodes in threads on their cores too,
  for the rest of the pass (``_borrow``; ``decoded_on_borrowed_cores`` counts
  the rows).
- Local files are read where rows are decoded (the thread pool, or the loop's
  thread), never through the network limits.
- ``cache_downloads`` (off by default) keeps raw bytes and permanent failures
  in ``<run>/cache/fetch.sqlite`` (``datagen.core.cache.RequestCache``, keyed by the
  URL only), so changing e.g. ``max_side`` re-encodes without re-downloading.
  Step checkpoints already cover reruns with the same config.
- Counts go to ``ctx.stat("fetch")``: rows_in, ok, passthrough, reencoded,
  bytes (stored), bytes_downloaded, retries, redirects, host_pauses,
  cache_hits, dns_lookups, dns_cache_hits, rejects per reason and
  errors_by_host; ``derive_stats`` turns them into ``failures``, the error
  breakdown the manifest and the run summary show (``datagen.fetch.health``).
- Nothing hangs and nobody waits blind (``datagen.fetch.watch``,
  ``datagen.fetch.health``): a batch always ends (straggler cutoff, shard
  deadline), a refusing host is left alone for the rest of the shard, the
  failure rate of the last downloads warns or stops the run.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import pyarrow as pa
from PIL import ImageFile

from datagen.core.cache import RequestCache
from datagen.fetch.config import RUN_CONTROL_KEYS, FetchConfig, policy_summary
from datagen.fetch.errors import FetchError, FetchFailureRateExceeded
from datagen.fetch.health import FailureMonitor, HostBackoff, add_failures, breakdown
from datagen.fetch.watch import wait_rows
from datagen.fetch.image import StoredImage, probe_size, process_image
from datagen.fetch.location import locate, read_file
from datagen.core.records import PAIR_SCHEMA, reject, rejects_table
from datagen.core.steps import RunContext, Step, StepOutput, borrowed_cores

if TYPE_CHECKING:
    from datagen.fetch.http import Downloader

# The network stack (aiohttp, yarl, the address guard, the downloader: 0.12 s) is imported where it is used:
# a run's driver imports this module for the step's fingerprint and statistics only, before its pool
# starts; the pool's processes get it preloaded from the fork server (``datagen.core.poolserver``).


class _Passthrough:
    """A row that arrived with bytes and keeps them; fills whatever metadata was missing."""

    def __init__(self, sha256: Optional[str], size: Optional[tuple[int, int]]):
        self.sha256 = sha256
        self.size = size


Result = Union[StoredImage, _Passthrough, FetchError]


class _Loop:
    """An event loop running in a daemon thread; ``run`` waits for a coroutine from any thread (even one
    that runs a loop of its own). Daemon: a pool process that never closes its steps still exits."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fetch-loop", daemon=True)
        self.thread.start()

    def run(self, coro) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:  # e.g. Ctrl-C while waiting: do not leave the batch running
            fut.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


CACHE_NAMESPACE = "fetch:http"
# Rows open at once in a batch, per decode thread, on top of fetch.concurrency (``_fetch_rows``).
DECODE_BACKLOG = 4


def _is_permanent(e: FetchError) -> bool:
    """Failures that a rerun would meet again: client errors, unknown hosts, redirect loops."""
    if e.retryable:
        return False
    return e.reason.startswith("http_4") or e.reason in ("dns_error", "too_many_redirects")


async def pre_resolve(urls: list, concurrency: int) -> None:
    """Look up every host of a batch before fetching (``fetch.pre_resolve``), through the worker's DNS cache;
    failures are cached like any answer and show up on the rows that need them."""
    from datagen.fetch import guard

    hosts = sorted({h for h in (_http_host(u) for u in urls) if h})
    sem = asyncio.Semaphore(concurrency)

    async def one(host: str) -> None:
        async with sem:
            try:
                await guard.DNS.resolve(host, 443)
            except OSError:
                pass

    await asyncio.gather(*(one(h) for h in hosts))


def _http_host(url) -> Optional[str]:
    """The host name of an http(s) URL that needs a resolver (not an address literal), else None."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None
    from yarl import URL

    from datagen.fetch import guard

    try:
        host = URL(url).host
    except Exception:  # noqa: BLE001 - the row itself reports a bad URL
        return None
    return host if host and guard._literal(host) is None else None


def _read_and_process(path: Path, objects, cfg: FetchConfig) -> StoredImage:
    return process_image(read_file(path, cfg.max_bytes), objects, cfg)


class FetchStep(Step):
    name = "fetch"
    kind = "map"
    version = 1
    refetch_cached_failures = False  # `datagen retry-failed` asks again what the request cache says failed

    def __init__(self, config: Optional[FetchConfig], ctx: RunContext):
        super().__init__(config if config is not None else FetchConfig(), ctx)
        self.config: FetchConfig
        # Retry-After pauses per host, kept across batches of this process (timing only, never results).
        self._host_open_at: dict[str, float] = {}
        self._robots: dict = {}  # robots.txt verdicts per origin, read once per process
        cfg = self.config
        # The last downloads of this worker, across batches and shards (warnings, max_failure_rate).
        self._monitor = FailureMonitor(cfg.failure_window, cfg.warn_failure_rate, cfg.max_failure_rate, ctx.warn)
        # Made at the first batch, kept until close(): the loop, the clients and the decode pool.
        self._loop: Optional[_Loop] = None
        self._downloader: Optional[Downloader] = None
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None  # None: decoding in the loop's thread
        self._threads = 0
        self._borrowed = False  # the decode pool uses cores that other processes of the pass left idle
        self._stop_event: Optional[asyncio.Event] = None
        self.begin_task()

    def begin_task(self) -> None:
        """A new shard task: its deadline starts at its first batch, and refusing hosts get a new chance."""
        self._backoff = HostBackoff(self.config.host_backoff_after)
        self._task_deadline: Optional[float] = None

    def close(self) -> None:
        """Close the clients (their connections), stop the loop, end the decode pool. A later batch
        would start them again."""
        if self._loop is not None:
            if self._downloader is not None:
                self._loop.run(self._downloader.__aexit__(None, None, None))
                self._downloader = None
            self._loop.close()
            self._loop = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._borrowed = False

    def fingerprint(self) -> str:
        """Settings that only watch or stop the run (RUN_CONTROL_KEYS) do not decide a row's result."""
        cfg = self.config.model_dump(mode="json", exclude=set(RUN_CONTROL_KEYS))
        blob = json.dumps({"name": self.name, "version": self.version, "config": cfg}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ batch

    def process(self, table: pa.Table) -> StepOutput:
        missing = [c for c in ("key", "url") if c not in table.column_names]
        if missing:
            raise ValueError(f"fetch: input table lacks column(s) {missing}; has {table.column_names}")
        cols = {
            name: (table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows)
            for name in ("key", "source", "url", "image", "image_sha256", "width", "height", "objects")
        }
        if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone else's import turned it on: half images would pass
            self.ctx.warn("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; fetch set it back to False")
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        batch_no = self.ctx.stat(self.name).get("batches", 0)
        if self._task_deadline is None and self.config.shard_timeout_s is not None:
            self._task_deadline = time.monotonic() + self.config.shard_timeout_s
        from datagen.fetch import guard

        dns_before = guard.DNS.counters()
        self._stop: Optional[str] = None
        if self._loop is None:
            self._loop = _Loop()
            self._threads = self.decode_threads()
            if self._threads:
                self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="fetch-decode")
        results, counters = self._loop.run(self._fetch_all(cols, batch_no))
        if self._stop is not None:
            raise FetchFailureRateExceeded(self._stop)
        counters.dns = tuple(a - b for a, b in zip(guard.DNS.counters(), dns_before))
        return self._assemble(table, cols, results, counters)

    def _borrow(self) -> Optional[concurrent.futures.ThreadPoolExecutor]:
        """Once other processes of the pass have no task left (``steps.borrowed_cores``), a decode pool
        of one thread per core this process may now use, its own share and the borrowed ones, for the
        rest of the pass (the loop's thread then only downloads); None until then, or when ``fetch.workers``
        is set."""
        if self._borrowed or self.config.workers is not None:
            return self._pool if self._borrowed else None
        extra = borrowed_cores()
        if not extra:
            return None
        old, self._borrowed = self._pool, True
        self._threads = self.ctx.cpu_cores() + extra
        self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="fetch-decode")
        if old is not None:
            old.shutdown(wait=False)  # its queued decodes still run
        return self._pool

    def decode_threads(self) -> int:
        """``fetch.workers``, or when unset: none in a process with one core to itself, else one a core
        (``RunContext.cores``). With none, the event loop's thread decodes each row as its body arrives: in a
        pool of one process a core (bench_download: 2 on 2 cores), decode threads only passed the GIL back
        and forth with the loop: the kit runs 1.07-1.10x faster without them."""
        if self.config.workers is not None:
            return self.config.workers
        cores = self.ctx.cpu_cores()
        return 0 if cores <= 1 else cores

    async def _fetch_all(self, cols: dict[str, list], batch_no: int) -> tuple[list[Result], Any]:
        cache = RequestCache(self.ctx.cache_dir / "fetch.sqlite") if self.config.cache_downloads else None
        try:
            return await self._fetch_rows(cols, batch_no, cache)
        finally:
            if cache is not None:
                cache.close()

    def _on_outcome(self, host: str, reason: Optional[str]) -> None:
        """Every download's final outcome: the failure monitor, which may stop the run."""
        message = self._monitor.record(reason)
        if message is not None and self._stop is None:
            self._stop = message
            if self._stop_event is not None:
                self._stop_event.set()

    def _batch_downloader(self, batch_no: int) -> Downloader:
        """The step's downloader (made in the loop's thread at the first batch), set up for this batch:
        its rng, this shard's host backoff, fresh counters."""
        from datagen.fetch.http import Downloader, DownloadCounters

        d = self._downloader
        if d is None:
            d = self._downloader = Downloader(self.config, self.ctx.rng("fetch", batch_no), self._host_open_at,
                                              self._robots, self._backoff, self._on_outcome)
        d.rng = self.ctx.rng("fetch", batch_no)
        d.host_backoff = self._backoff
        d.counters = DownloadCounters()
        return d

    async def _fetch_rows(
        self, cols: dict[str, list], batch_no: int, cache: Optional[RequestCache]
    ) -> tuple[list[Result], Any]:
        cfg = self.config
        loop = asyncio.get_running_loop()
        pool = self._pool
        stop = self._stop_event = asyncio.Event()
        downloader = self._batch_downloader(batch_no)
        robots_before = downloader.robots.fetched if downloader.robots is not None else 0

        # A row holds its bytes from its download to the end of its decode. The downloads' own limit
        # (fetch.concurrency) ends when the body is in: where the network outruns the decode threads
        # (loopback, a near mirror), the whole batch's bodies waited for them, about 100 MB a worker on
        # bench_download's kit. This bounds the rows open at once: every download slot, and a few rows
        # a decode thread waiting for it.
        open_rows = asyncio.Semaphore(cfg.concurrency + DECODE_BACKLOG * self._threads)

        async def work(fn, *args):
            """``fn(*args)`` in the decode pool, or here in the loop's thread when the step has none."""
            decoders = self._borrow() or pool
            if decoders is None:
                return fn(*args)
            if self._borrowed:
                stats = self.ctx.stat(self.name)
                stats["decoded_on_borrowed_cores"] = stats.get("decoded_on_borrowed_cores", 0) + 1
            return await loop.run_in_executor(decoders, fn, *args)

        async def one(i: int) -> Result:
            async with open_rows:
                return await one_open(i)

        async def one_open(i: int) -> Result:
            try:
                image, objects = cols["image"][i], cols["objects"][i]
                if image is not None:
                    if cfg.max_side is None:
                        return await work(self._passthrough, i, cols)
                    return await work(process_image, image, objects, cfg)
                kind, target = locate(cols["url"][i], self._local_path)
                if kind == "file" and not cfg.allow_local_files:
                    raise FetchError("local_file_not_allowed",
                                     f"{cols['url'][i]!r} is a local path; fetch.allow_local_files is false")
                if kind == "file":  # read and decode in one trip to the pool: one wake-up of the loop per row
                    return await work(_read_and_process, target, objects, cfg)
                data, content_type = await self._download(downloader, target, cache)
                return await work(process_image, data, objects, cfg, content_type)
            except FetchError as e:
                return e
            except Exception as e:  # never lose a row to a bug or an odd input
                return FetchError("fetch_error", f"{type(e).__name__}: {e}")

        try:
            if cfg.pre_resolve:
                await pre_resolve(cols["url"], cfg.concurrency)
            results = await wait_rows([one(i) for i in range(len(cols["key"]))], cfg, self._task_deadline, stop,
                                      downloader.in_flight.describe)
        finally:
            self._stop_event = None
        if downloader.robots is not None:
            downloader.counters.robots_fetched = downloader.robots.fetched - robots_before
        return list(results), downloader.counters

    async def _download(
        self, downloader: Downloader, url: str, cache: Optional[RequestCache]
    ) -> tuple[bytes, Optional[str]]:
        """Download through the optional request cache; only bytes and permanent failures are cached.
        The key holds the safety policy, so opening or closing it never serves an answer of the other policy."""
        if cache is None:
            return await downloader.get(url)
        request = {"url": url, "policy": policy_summary(self.config)}
        hit = cache.get(CACHE_NAMESPACE, request)
        if hit is not None and "reason" in hit and self.refetch_cached_failures:
            hit = None
        if hit is not None:
            downloader.counters.cache_hits += 1
            if "reason" in hit:
                raise FetchError(hit["reason"], f"{hit['detail']} (cached)")
            return base64.b64decode(hit["body"]), hit.get("content_type")
        try:
            data, content_type = await downloader.get(url)
        except FetchError as e:
            if _is_permanent(e):
                cache.put(CACHE_NAMESPACE, request, {"reason": e.reason, "detail": e.detail})
            raise
        cache.put(CACHE_NAMESPACE, request, {"body": base64.b64encode(data).decode("ascii"), "content_type": content_type})
        return data, content_type

    def _local_path(self, path: str) -> Path:
        """A local path as the OS will open it: relative ones against the recipe's folder. Not
        ``RunContext.resolve``: reading needs no resolved links, and resolving cost a syscall per path
        component per row."""
        return Path(self.ctx.recipe_dir, os.path.expanduser(path))

    def _passthrough(self, i: int, cols: dict[str, list]) -> _Passthrough:
        image = cols["image"][i]
        sha = cols["image_sha256"][i] or hashlib.sha256(image).hexdigest()
        size = None
        if cols["width"][i] is None or cols["height"][i] is None:
            size = probe_size(image, self.config)
        return _Passthrough(sha, size)

    # ---------------------------------------------------------------- output

    def _assemble(self, table: pa.Table, cols: dict[str, list], results: list[Result], counters) -> StepOutput:
        kept_idx: list[int] = []
        rejects: list[dict] = []
        new = {"image": [], "image_sha256": [], "width": [], "height": [], "objects": [],
               "original_width": [], "original_height": []}
        stats = Counter()
        for i, res in enumerate(results):
            if isinstance(res, FetchError):
                row = {"key": cols["key"][i], "source": cols["source"][i], "url": cols["url"][i]}
                rejects.append(reject(row, self.name, res.reason, res.detail))
                continue
            kept_idx.append(i)
            if isinstance(res, _Passthrough):
                stats["passthrough"] += 1
                new["image"].append(cols["image"][i])
                new["image_sha256"].append(res.sha256)
                w, h = res.size if res.size else (cols["width"][i], cols["height"][i])
                new["width"].append(w)
                new["height"].append(h)
                new["original_width"].append(w)
                new["original_height"].append(h)
                new["objects"].append(cols["objects"][i])
                stats["bytes"] += len(cols["image"][i])
            else:
                stats["reencoded"] += int(res.reencoded)
                new["image"].append(res.data)
                new["image_sha256"].append(res.sha256)
                new["width"].append(res.width)
                new["height"].append(res.height)
                new["original_width"].append(res.original_width)
                new["original_height"].append(res.original_height)
                new["objects"].append(res.objects)
                stats["bytes"] += len(res.data)

        kept = table.take(pa.array(kept_idx, type=pa.int64()))
        for name in ("image", "image_sha256", "width", "height", "objects", "original_width", "original_height"):
            if name == "objects" and name not in table.column_names:
                continue
            if name in table.column_names:
                field = table.schema.field(name)
            elif name.startswith("original_"):  # size before any resize: what quality rules judge
                field = pa.field(name, pa.int32())
            else:
                field = PAIR_SCHEMA.field(name)
            arr = pa.array(new[name], type=field.type)
            if name in kept.column_names:
                kept = kept.set_column(kept.column_names.index(name), field, arr)
            else:
                kept = kept.append_column(field, arr)

        self._count(len(results), len(kept_idx), stats, rejects, counters)
        return StepOutput(kept=kept, rejects=rejects_table(rejects))

    def derive_stats(self, stats: dict[str, Any]) -> None:
        """The policy is the run's, not a sum over parts (merging would concatenate allow_networks);
        ``failures`` is the error breakdown over all parts."""
        stats["policy"] = policy_summary(self.config)
        stats["failures"] = breakdown(stats)

    def _count(self, n_in: int, n_ok: int, stats: Counter, rejects: list[dict], counters) -> None:
        st = self.ctx.stat(self.name)
        add = {
            "batches": 1,
            "rows_in": n_in,
            "ok": n_ok,
            "passthrough": stats["passthrough"],
            "reencoded": stats["reencoded"],
            "bytes": stats["bytes"],
            "bytes_downloaded": counters.bytes,
            "retries": counters.retries,
            "redirects": counters.redirects,
            "host_pauses": counters.host_pauses,
            "cache_hits": counters.cache_hits,
            "robots_fetched": counters.robots_fetched,
            "dns_lookups": counters.dns[0],
            "dns_cache_hits": counters.dns[1],
        }
        for k, v in add.items():
            st[k] = st.get(k, 0) + v
        st["policy"] = policy_summary(self.config)
        by_reason = st.setdefault("rejects", {})
        for r in rejects:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        add_failures(st.setdefault("errors_by_host", {}), ((r["url"], r["reason"]) for r in rejects))
        if by_reason.get("local_file_not_allowed"):
            self.ctx.warn("fetch refused local paths (local_file_not_allowed): set fetch.allow_local_files: true "
                          "if this source's files are yours; leave it off for public URL lists")
