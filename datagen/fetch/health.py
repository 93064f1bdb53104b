"""Watching downloads while they run: failure rate, refusing hosts, requests in flight, error breakdown.

- ``FailureMonitor`` keeps the outcome of the last ``failure_window`` downloads
  of this worker (across batches and shards). Past ``warn_failure_rate`` it
  logs a warning naming the dominant reason and what to check ("62% dns_error
  in the last 2,000 downloads: check the resolver"); past ``max_failure_rate``
  it says stop, and the fetch step ends the run cleanly (finished shards stay;
  a rerun resumes). img2dataset users find out about a broken resolver from
  the final 0.5% success rate; this says so after a window.
- ``HostBackoff``: a host that refused ``host_backoff_after`` times in a row
  (401/403, 429 after retries, opt-outs) is not asked again for the rest of
  the shard; its remaining rows become ``host_backoff`` rejects (counted, and
  retryable later).
- ``InFlight``: requests in flight per host, for the progress line that makes
  a stall visible.
- ``add_failures`` / ``breakdown``: failures by reason and by host, bounded per
  part, turned into the manifest's ``steps[fetch].stats.failures`` and the run
  summary's lines.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, deque
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit

from datagen.fetch.errors import RETRYABLE, reason_matches

log = logging.getLogger("datagen")

# What to look at when a reason dominates the failures.
HINTS = {
    "dns_error": "check the resolver (or fetch.dns_* settings); hosts that do not exist stay dns_error",
    "timeout": "hosts are slow or the link is saturated: lower fetch.concurrency or raise fetch.timeout_s",
    "connection_error": "check the network, a proxy or firewall",
    "http_429": "hosts are rate-limiting us: lower fetch.per_host_concurrency",
    "http_403": "hosts refuse us: check fetch.user_agent",
    "host_backoff": "hosts refuse us: check fetch.user_agent and fetch.per_host_concurrency",
    "blocked_address": "the URLs point at private addresses (see fetch.allow_networks)",
    "straggler_timeout": "hosts are slow: raise fetch.straggler_cutoff.wait_s or fetch.shard_timeout_s",
    "opted_out": "the hosts opted out of AI training (X-Robots-Tag); nothing to fix",
    "file_not_found": "check the paths (relative ones resolve against the table's folder)",
}
REFUSALS = frozenset({"http_401", "http_403", "http_429", "opted_out"})
MAX_HOSTS_PER_PART = 100  # failing hosts kept per part; the rest are summed under OTHER_HOSTS
TOP_HOSTS = 10
OTHER_HOSTS = "(other hosts)"


def hint(reason: str, default: Optional[str] = "see the error breakdown in the run summary") -> Optional[str]:
    if reason in HINTS:
        return HINTS[reason]
    if reason_matches(reason, ["http_5xx"]):
        return "the hosts fail on their side (an outage?): their rows may pass later"
    if reason_matches(reason, ["http_4xx"]) or reason in ("not_an_image", "too_large"):
        return "the URLs no longer serve the image: nothing to retry"
    return default


class FailureMonitor:
    """The last ``window`` download outcomes of this worker; warns and says when to stop."""

    def __init__(self, window: int, warn_rate: Optional[float], max_rate: Optional[float],
                 warn: Optional[Callable[[str], None]] = None):
        """``warn(text)``: where the first warning per dominant reason goes (the run's warnings, which the
        manifest keeps); later ones are only logged."""
        self.window, self.warn_rate, self.max_rate = window, warn_rate, max_rate
        self.outcomes: deque[Optional[str]] = deque(maxlen=window)
        self.failed: Counter = Counter()
        self._since_warning = window  # a warning repeats at most once per window of downloads
        self._warned: set[str] = set()
        self.warn = warn

    def record(self, reason: Optional[str]) -> Optional[str]:
        """Add one outcome (None: success); returns the stop message when max_failure_rate is passed."""
        if len(self.outcomes) == self.window:
            old = self.outcomes[0]
            if old is not None:
                self.failed[old] -= 1
                if not self.failed[old]:
                    del self.failed[old]
        self.outcomes.append(reason)
        if reason is not None:
            self.failed[reason] += 1
        self._since_warning += 1
        if len(self.outcomes) < self.window:
            return None
        rate = sum(self.failed.values()) / self.window
        if self.max_rate is not None and rate > self.max_rate:
            return (f"{self.message(rate)}; that is over fetch.max_failure_rate {self.max_rate:g}, so the run "
                    f"stopped. Finished shards are kept: fix the cause and rerun the same command to resume")
        if self.warn_rate is not None and rate > self.warn_rate and self._since_warning >= self.window:
            self._since_warning = 0
            text = self.message(rate)
            reason = self.dominant()
            if self.warn is not None and reason not in self._warned:
                self._warned.add(reason)
                self.warn(text)
            else:
                log.warning(text)
        return None

    def dominant(self) -> str:
        return max(self.failed.items(), key=lambda kv: (kv[1], kv[0]))[0]

    def message(self, rate: float) -> str:
        reason = self.dominant()
        n = self.failed[reason]
        return (f"{n / self.window:.0%} {reason} in the last {self.window:,} downloads "
                f"({rate:.0%} failed in all): {hint(reason)}")


class HostBackoff:
    """Refusals in a row per host, for one shard; a host at ``after`` is not asked again."""

    def __init__(self, after: int):
        self.after = after
        self.streak: Counter = Counter()

    def refused(self, host: str) -> Optional[str]:
        if self.after and self.streak[host] >= self.after:
            return (f"{host} refused {self.streak[host]} requests in a row; not asked again in this shard "
                    f"(fetch.host_backoff_after)")
        return None

    def record(self, host: str, reason: Optional[str]) -> None:
        if reason in REFUSALS:
            self.streak[host] += 1
        elif reason != "host_backoff":
            self.streak.pop(host, None)


class InFlight:
    """Requests holding a connection slot, per host, with the start of the oldest."""

    def __init__(self):
        self.by_host: Counter = Counter()
        self._started: dict[int, tuple[str, float]] = {}

    @contextlib.contextmanager
    def track(self, host: str):
        token = object()
        self.by_host[host] += 1
        self._started[id(token)] = (host, time.monotonic())
        try:
            yield
        finally:
            self._started.pop(id(token), None)
            self.by_host[host] -= 1
            if not self.by_host[host]:
                del self.by_host[host]

    def describe(self, top: int = 5) -> str:
        if not self.by_host:
            return "no requests in flight"
        now = time.monotonic()
        oldest: dict[str, float] = {}
        for host, t in self._started.values():
            oldest[host] = max(oldest.get(host, 0.0), now - t)
        ranked = sorted(self.by_host.items(), key=lambda kv: (-kv[1], kv[0]))
        parts = [f"{h} {n} (oldest {oldest.get(h, 0):.0f} s)" for h, n in ranked[:top]]
        more = f", +{len(ranked) - top} more hosts" if len(ranked) > top else ""
        return f"{sum(self.by_host.values())} in flight: " + ", ".join(parts) + more


# ----------------------------------------------------------------------------- breakdown

def host_of(url: Optional[str]) -> str:
    if not url:
        return "(no url)"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(invalid url)"
    if parts.scheme in ("http", "https"):
        return (parts.hostname or "(invalid url)").lower()
    return "(local files)"


def add_failures(by_host: dict[str, dict[str, int]], rejects: Iterable[tuple[Optional[str], str]]) -> None:
    """Count (url, reason) failures into ``by_host`` {host: {reason: n}}, keeping it to MAX_HOSTS_PER_PART hosts."""
    for url, reason in rejects:
        reasons = by_host.setdefault(host_of(url), {})
        reasons[reason] = reasons.get(reason, 0) + 1
    _trim(by_host, MAX_HOSTS_PER_PART)


def forget_failures(by_host: dict[str, dict[str, int]], rejects: Iterable[tuple[Optional[str], str]]) -> None:
    """Take failures back out (rows that ``retry-failed`` fetched again)."""
    for url, reason in rejects:
        host = host_of(url)
        reasons = by_host.get(host) if host in by_host else by_host.get(OTHER_HOSTS)
        if reasons and reasons.get(reason):
            reasons[reason] -= 1
            if not reasons[reason]:
                del reasons[reason]
    for host in [h for h, r in by_host.items() if not r]:
        del by_host[host]


def _trim(by_host: dict[str, dict[str, int]], keep: int) -> None:
    if len(by_host) <= keep:
        return
    ranked = sorted((h for h in by_host if h != OTHER_HOSTS), key=lambda h: (-sum(by_host[h].values()), h))
    other = by_host.pop(OTHER_HOSTS, {})
    for h in ranked[keep - 1:]:
        for reason, n in by_host.pop(h).items():
            other[reason] = other.get(reason, 0) + n
    by_host[OTHER_HOSTS] = other


def breakdown(stats: dict[str, Any]) -> dict[str, Any]:
    """The error breakdown of the fetch stats: failures by reason, the top failing hosts with their reasons,
    and how many rows ``datagen retry-failed`` would retry by default."""
    by_reason = {r: n for r, n in (stats.get("rejects") or {}).items() if n}
    by_host = stats.get("errors_by_host") or {}
    _trim(by_host, TOP_HOSTS * 5)
    ranked = sorted(((h, r) for h, r in by_host.items() if h != OTHER_HOSTS), key=lambda hr: (-sum(hr[1].values()), hr[0]))
    downloads = stats.get("rows_in", 0) - stats.get("passthrough", 0)
    failed = sum(by_reason.values())
    return {
        "failed": failed,
        "rate": round(failed / downloads, 4) if downloads else 0.0,
        "by_reason": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
        "top_hosts": [{"host": h, "failed": sum(r.values()), "reasons": dict(sorted(r.items(), key=lambda kv: (-kv[1], kv[0])))}
                      for h, r in ranked[:TOP_HOSTS]],
        "retryable": sum(n for r, n in by_reason.items() if reason_matches(r, RETRYABLE)),
    }


def summary_lines(stats: dict[str, Any]) -> list[str]:
    """The run summary's fetch section (empty when nothing failed): reasons, top failing hosts, what to do."""
    b = stats.get("failures") or breakdown(stats)
    if not b["failed"]:
        return []
    reasons = ", ".join(f"{r} {n}" for r, n in b["by_reason"].items())
    lines = [f"fetch failures: {b['failed']} rows ({b['rate']:.1%} of rows fetched): {reasons}"]
    if b["top_hosts"]:
        lines.append("  top failing hosts:")
        for h in b["top_hosts"]:
            why = ", ".join(f"{r} {n}" for r, n in h["reasons"].items())
            lines.append(f"    {h['host']:<36} {h['failed']:>6}  ({why})")
    top = next(iter(b["by_reason"]))
    if hint(top, default=None):
        lines.append(f"  most common, {top}: {hint(top)}")
    if b["retryable"]:
        lines.append(f"  {b['retryable']} of them may pass later (timeouts, 5xx, DNS, ...): "
                     f"`datagen retry-failed OUT` fetches only those again")
    return lines
