"""Polite, bounded, retrying HTTP downloads with httpx's AsyncClient.

Why each choice:
- asyncio + httpx.AsyncClient: downloads are latency-bound, not CPU-bound; one
  thread with hundreds of sockets beats a thread per download, and httpx keeps
  connections alive per host (most LAION/COYO URLs hit a few big CDNs).
- Two limits: a global limit (sockets, memory; ``ClientSlots``) and a per-host semaphore
  (politeness; the usual cause of 429 storms is many connections to one host).
  The host slot is taken BEFORE the global one, so requests queued for a busy
  host never sit on global slots that other hosts could use.
- A 429/503 with ``Retry-After`` pauses the whole host (every request to it
  waits), not just the one request: the server told us to slow down. The wait
  is capped (``retry_after_max_s``) so one host cannot stall a run.
- Retries with exponential backoff and jitter for what is usually transient
  (timeouts, connection resets, DNS "try again", truncated bodies, 408, 429,
  5xx); never for 4xx, unknown hosts or redirect loops, which will fail the
  same way again. Slots are released while sleeping.
- httpx's timeout bounds connect and each read; ``total_timeout_s`` bounds the
  whole attempt, so a server that drips one byte a second cannot hang the run
  (img2dataset's "hangs near the end").
- The body is streamed and abandoned as soon as it passes ``max_bytes``; a
  ``Content-Length`` over the cap is refused before reading anything.
- The Content-Type is not trusted either way (hosts mislabel images as
  text/html or octet-stream); Pillow decides what is an image.
- Every connection, the first and each redirect hop's, goes through the
  address guard (``datagen.fetch.guard``): resolved, checked, connected to the
  checked address. Opt-outs (``datagen.fetch.optout``) are read from the
  headers before any body byte. No error detail ever quotes the response
  body or the server's reason phrase: only status, length and content type,
  so nothing an internal endpoint says can land in an output file.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable, Optional

import httpx

from datagen.fetch.config import FetchConfig
from datagen.fetch.errors import FetchError
from datagen.fetch.guard import DNS, AddressPolicy, GuardedTransport
from datagen.fetch.health import HostBackoff, InFlight
from datagen.fetch.optout import RobotsRules, opt_out

RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
_DNS_MESSAGES = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "no address associated with hostname",
    "getaddrinfo failed",
)


@functools.lru_cache(maxsize=2)
def _tls_context(verify: bool):
    """One TLS context per process: loading the CA bundle costs ~40 ms, too much to pay per batch."""
    return httpx.create_ssl_context(verify=verify)


def address_policy(cfg: FetchConfig) -> AddressPolicy:
    return AddressPolicy.from_strings(cfg.allow_loopback, cfg.allow_networks)


def make_client(cfg: FetchConfig, connections: int, max_redirects: Optional[int] = None) -> httpx.AsyncClient:
    """One AsyncClient whose connections all pass the address guard (a client belongs to the event loop
    that made it, so one set per batch). ``trust_env=False``: an environment proxy would bypass the guard."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        transport=GuardedTransport(address_policy(cfg), _tls_context(cfg.verify_tls), limits),
        timeout=httpx.Timeout(cfg.timeout_s),
        follow_redirects=True,
        max_redirects=cfg.max_redirects if max_redirects is None else max_redirects,
        headers={"User-Agent": cfg.user_agent},
        trust_env=False,
    )


def policy_summary(cfg: FetchConfig) -> dict:
    """The safety settings a run used, for the manifest (steps[fetch].stats.policy)."""
    return {
        "allow_local_files": cfg.allow_local_files,
        "allow_loopback": cfg.allow_loopback,
        "allow_networks": list(cfg.allow_networks),
        "respect_x_robots_tag": cfg.respect_x_robots_tag,
        "respect_robots": cfg.respect_robots,
    }


class ClientSlots:
    """The global concurrency limit, as ``concurrency`` numbered slots spread over small AsyncClients.

    Why not one big client and an ``asyncio.Semaphore``: httpcore's pool does
    work quadratic in its size on every request (httpcore 1.0
    ``_assign_requests_to_connections``), so one 64-connection client spent
    ~7 ms CPU per image and fetched ~100 images/s in bench/bench_fetch.py; with
    4-connection shards it is ~1 ms and 600-800 images/s. Slot ``i`` always uses client
    ``i // SHARD``, so no client ever has more than ``SHARD`` requests in flight
    (never a pool timeout) and each pool stays small. Free slots are a LIFO, so
    a request usually lands on the client that just finished one, where a
    kept-alive connection is likely waiting.
    """

    SHARD = 4

    def __init__(self, cfg: FetchConfig):
        self.clients = [
            make_client(cfg, min(self.SHARD, cfg.concurrency - start))
            for start in range(0, cfg.concurrency, self.SHARD)
        ]
        self._free: asyncio.LifoQueue[int] = asyncio.LifoQueue()
        for i in reversed(range(cfg.concurrency)):
            self._free.put_nowait(i)

    @contextlib.asynccontextmanager
    async def slot(self):
        i = await self._free.get()
        try:
            yield self.clients[i // self.SHARD]
        finally:
            self._free.put_nowait(i)

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()


def parse_retry_after(value: Optional[str], cap_s: float) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap_s)


def _dns_errno(exc: BaseException) -> Optional[int]:
    """The getaddrinfo error number behind an httpx.ConnectError, or None if it was not a DNS failure."""
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return e.errno if e.errno is not None else 0
        e = e.__cause__ or e.__context__
    text = str(exc).lower()
    return 0 if any(m in text for m in _DNS_MESSAGES) else None


@dataclass
class DownloadCounters:
    retries: int = 0
    redirects: int = 0
    bytes: int = 0
    host_pauses: int = 0
    cache_hits: int = 0
    robots_fetched: int = 0
    dns: tuple = (0, 0, 0)  # the worker's DNS cache during the batch: lookups, hits, failures


class HostGate:
    """Per-host concurrency slots and per-host pauses requested by Retry-After."""

    def __init__(self, per_host: int, open_at: Optional[dict[str, float]] = None):
        self.per_host = per_host
        self._slots: dict[str, asyncio.Semaphore] = {}
        # host -> time.monotonic() before which no request may start; pass a dict that outlives the
        # batch so a host that asked us to back off is not hit again at full speed by the next batch
        self._open_at = open_at if open_at is not None else {}

    def slot(self, host: str) -> asyncio.Semaphore:
        sem = self._slots.get(host)
        if sem is None:
            sem = self._slots[host] = asyncio.Semaphore(self.per_host)
        return sem

    def pause(self, host: str, seconds: float) -> None:
        self._open_at[host] = max(self._open_at.get(host, 0.0), time.monotonic() + seconds)

    async def wait_open(self, host: str) -> None:
        while True:
            wait = self._open_at.get(host, 0.0) - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(wait)


class Downloader:
    """Fetches URLs under the global and per-host limits, with retries; raises FetchError with a reason."""

    def __init__(self, cfg: FetchConfig, rng: random.Random, host_open_at: Optional[dict[str, float]] = None,
                 robots_store: Optional[dict] = None, backoff: Optional[HostBackoff] = None,
                 on_outcome: Optional[Callable[[str, Optional[str]], None]] = None):
        """``backoff``: the shard's refusing hosts; ``on_outcome(host, reason or None)``: called once per
        download with its final outcome (the failure monitor)."""
        self.cfg = cfg
        self.rng = rng
        DNS.configure(cfg.dns_cache_ttl_s, cfg.dns_negative_ttl_s)
        self.host_backoff = backoff if backoff is not None else HostBackoff(cfg.host_backoff_after)
        self.on_outcome = on_outcome
        self.in_flight = InFlight()
        self.gate = HostGate(cfg.per_host_concurrency, host_open_at)
        self.slots = ClientSlots(cfg)
        self.counters = DownloadCounters()
        self.robots: Optional[RobotsRules] = None
        if cfg.respect_robots:
            # robots.txt comes through its own small client (RFC 9309: up to 5 redirects), so a row waiting
            # for its host's rules never holds a slot the robots request needs; every hop is checked.
            self.robots = RobotsRules(make_client(cfg, 4, max_redirects=5), cfg.robots_user_agent, robots_store)
            for c in self.slots.clients:
                c.event_hooks = {"request": [self._check_robots], "response": []}

    async def _check_robots(self, request: httpx.Request) -> None:
        assert self.robots is not None
        await self.robots.check(request.url)

    async def __aenter__(self) -> "Downloader":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.slots.aclose()
        if self.robots is not None:
            self.counters.robots_fetched = self.robots.fetched
            await self.robots.client.aclose()

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random, so retries spread out."""
        d = min(self.cfg.backoff_max_s, self.cfg.backoff_s * (2**attempt))
        return d / 2 + self.rng.uniform(0, d / 2)

    def _refuse_backed_off(self, host: str) -> None:
        why = self.host_backoff.refused(host)
        if why is not None:
            raise FetchError("host_backoff", why)

    async def get(self, url: str) -> tuple[bytes, Optional[str]]:
        """The body and its Content-Type; the final outcome goes to the host backoff and ``on_outcome``."""
        try:
            host = httpx.URL(url).host
        except Exception as e:
            raise FetchError("invalid_url", f"{url!r}: {e}")
        try:
            result = await self._get(url, host)
        except FetchError as e:
            self._outcome(host, e.reason)
            raise
        self._outcome(host, None)
        return result

    def _outcome(self, host: str, reason: Optional[str]) -> None:
        self.host_backoff.record(host, reason)
        if self.on_outcome is not None and reason != "host_backoff":
            self.on_outcome(host, reason)

    async def _get(self, url: str, host: str) -> tuple[bytes, Optional[str]]:
        attempt = 0
        while True:
            try:
                self._refuse_backed_off(host)
                await self.gate.wait_open(host)
                async with self.gate.slot(host), self.slots.slot() as client:
                    self._refuse_backed_off(host)  # it may have run out of patience while we queued
                    with self.in_flight.track(host):
                        return await self._attempt(client, url)
            except FetchError as e:
                if e.retry_after_s is not None:  # the host asked everyone to wait, whether we retry or not
                    self.gate.pause(host, e.retry_after_s)
                    self.counters.host_pauses += 1
                if not e.retryable or attempt >= self.cfg.retries:
                    if attempt:
                        e.detail = f"{e.detail} (after {attempt + 1} tries)"
                    raise
                delay = e.retry_after_s if e.retry_after_s is not None else self.backoff(attempt)
                attempt += 1
                self.counters.retries += 1
                await asyncio.sleep(delay)

    async def _attempt(self, client: httpx.AsyncClient, url: str) -> tuple[bytes, Optional[str]]:
        cfg = self.cfg
        state = {"got_response": False}
        try:
            # wait_for rather than asyncio.timeout: the package supports Python 3.10
            return await asyncio.wait_for(self._get_body(client, url, state), cfg.total_timeout_s)
        except FetchError:
            raise
        except (asyncio.TimeoutError, httpx.TimeoutException) as e:
            limit = cfg.timeout_s if isinstance(e, httpx.TimeoutException) else cfg.total_timeout_s
            raise FetchError("timeout", f"GET {url}: no answer within {limit} s ({type(e).__name__})", retryable=True)
        except httpx.TooManyRedirects as e:
            raise FetchError("too_many_redirects", f"GET {url}: more than {cfg.max_redirects} redirects ({e})")
        except httpx.RemoteProtocolError as e:
            if state["got_response"]:
                raise FetchError("image_truncated", f"GET {url}: body cut short ({e})", retryable=True)
            raise FetchError("connection_error", f"GET {url}: {e}", retryable=True)
        except httpx.ConnectError as e:
            errno = _dns_errno(e)
            if errno is not None:
                raise FetchError("dns_error", f"GET {url}: {e}", retryable=errno == socket.EAI_AGAIN)
            raise FetchError("connection_error", f"GET {url}: {e}", retryable=True)
        except httpx.DecodingError as e:
            raise FetchError("bad_content_encoding", f"GET {url}: {e}")
        except httpx.UnsupportedProtocol as e:  # e.g. a redirect to ftp://
            raise FetchError("unsupported_scheme", f"GET {url}: {e}")
        except (httpx.InvalidURL, httpx.LocalProtocolError) as e:
            raise FetchError("invalid_url", f"GET {url}: {e}")
        except httpx.TransportError as e:
            raise FetchError("connection_error", f"GET {url}: {type(e).__name__}: {e}", retryable=True)
        except httpx.HTTPError as e:
            raise FetchError("fetch_error", f"GET {url}: {type(e).__name__}: {e}")

    async def _get_body(self, client: httpx.AsyncClient, url: str, state: dict) -> tuple[bytes, Optional[str]]:
        """One GET: status check, opt-out, size cap, streamed body; FetchError for HTTP-level failures."""
        cfg = self.cfg
        async with client.stream("GET", url) as resp:
            state["got_response"] = True
            self.counters.redirects += len(resp.history)
            content_type = resp.headers.get("content-type")
            if not 200 <= resp.status_code < 300:
                status = resp.status_code
                retry_after = None
                if status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("retry-after"), cfg.retry_after_max_s)
                raise FetchError(
                    f"http_{status}",
                    f"GET {url} -> HTTP {status}",
                    retryable=status in RETRY_STATUSES,
                    retry_after_s=retry_after,
                )
            if cfg.respect_x_robots_tag:
                tag = opt_out(resp.headers.get_list("x-robots-tag"))
                if tag is not None:
                    raise FetchError("opted_out", f"GET {url}: X-Robots-Tag {tag!r} (fetch.respect_x_robots_tag)")
            length = resp.headers.get("content-length")
            if length and length.isdigit() and int(length) > cfg.max_bytes:
                raise FetchError("too_large", f"GET {url}: Content-Length {length} > max_bytes {cfg.max_bytes}")
            chunks, n = [], 0
            async for chunk in resp.aiter_bytes():
                n += len(chunk)
                if n > cfg.max_bytes:
                    raise FetchError("too_large", f"GET {url}: body passed max_bytes {cfg.max_bytes}")
                chunks.append(chunk)
            self.counters.bytes += n
            return b"".join(chunks), content_type
