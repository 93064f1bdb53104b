"""Config of the fetch step (owned by datagen.fetch).

Defaults are chosen for public image hosts (LAION/COYO/CC URLs): a short
per-request timeout because a slow host rarely gets faster, a few retries with
backoff because transient 5xx/429/connection resets are common at scale, a
per-host cap so one CDN never sees more than a handful of our connections (the
usual cause of 429 storms), and a byte cap so a mislabelled video or a
decompression bomb cannot blow up a worker's memory.
"""
from __future__ import annotations

from typing import Optional

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator

import datagen


class StragglerCutoff(BaseModel):
    """When most of a batch is done, stop waiting for the last few slow rows (img2dataset's "hangs near the end")."""

    model_config = ConfigDict(extra="forbid")

    done_fraction: float = Field(
        0.95, gt=0, le=1, description="Share of a fetch batch's rows that must be done before the clock starts."
    )
    wait_s: float = Field(
        30.0, gt=0, description="Seconds the remaining rows may still take after that; then they are rejected as "
        "straggler_timeout (retryable with `datagen retry-failed`)."
    )


# Settings that steer how a run is watched and stopped, or how many threads do its work, never what a fetched
# row holds: they stay out of the fetch step's fingerprint and the recipe hash, so changing one (say, to
# resume after max_failure_rate stopped a run) reuses every finished shard.
RUN_CONTROL_KEYS = frozenset({
    "progress_interval_s", "failure_window", "warn_failure_rate", "max_failure_rate",
    "dns_cache_ttl_s", "dns_negative_ttl_s", "pre_resolve", "workers",
})


class FetchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # --- network
    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout in seconds (connect, and each read).")
    total_timeout_s: float = Field(
        60.0, gt=0, description="Hard deadline for one attempt, headers and body, so a slow-drip server cannot hang a run."
    )
    retries: int = Field(2, ge=0, description="Retries after the first try, for timeouts, connection errors, 429 and 5xx.")
    backoff_s: float = Field(0.5, ge=0, description="First backoff; doubles per retry, with jitter.")
    backoff_max_s: float = Field(30.0, ge=0, description="Cap on one backoff sleep.")
    retry_after_max_s: float = Field(
        60.0, ge=0, description="Cap on a server's Retry-After (429/503); longer waits are cut to this."
    )
    shard_timeout_s: Optional[float] = Field(
        None, gt=0, description="Deadline for fetching one shard task's rows, from its first batch: rows not done "
        "by then are rejected as straggler_timeout and the shard finishes. null: no deadline (each request is "
        "still bounded by total_timeout_s per try)."
    )
    straggler_cutoff: Optional[StragglerCutoff] = Field(
        default_factory=lambda: StragglerCutoff(done_fraction=0.95, wait_s=60.0),
        description="Once done_fraction of a fetch batch is done, the rest get wait_s more seconds, then become "
        "straggler_timeout rejects (retryable with `datagen retry-failed`). null: wait for every row."
    )
    progress_interval_s: float = Field(
        30.0, gt=0, description="Every this many seconds a fetch batch logs its progress and the hosts with "
        "requests in flight; a batch where no row finished in that time logs a warning naming them."
    )
    failure_window: int = Field(
        2000, ge=1, description="Downloads (last tries of rows) that the failure-rate warning and "
        "max_failure_rate look at."
    )
    warn_failure_rate: Optional[float] = Field(
        0.5, ge=0, le=1, description="Warn, naming the dominant reason, when more than this share of the last "
        "failure_window downloads failed. null: never warn."
    )
    max_failure_rate: Optional[float] = Field(
        None, ge=0, le=1, description="Stop the run (exit code 6, finished shards kept; rerun to resume) when more "
        "than this share of the last failure_window downloads failed. null: never stop."
    )
    host_backoff_after: int = Field(
        20, ge=0, description="After this many refusals in a row from one host (401, 403, 429 after retries, "
        "X-Robots-Tag opt-outs), the shard's remaining rows for that host are rejected as host_backoff without "
        "a request. 0: never back off."
    )
    dns_cache_ttl_s: float = Field(
        300.0, ge=0, description="How long a worker reuses a host's resolved addresses (shared by all its "
        "requests). 0: resolve for every connection."
    )
    dns_negative_ttl_s: float = Field(
        60.0, ge=0, description="How long a worker remembers that a host name does not resolve (rows to it fail "
        "as dns_error without another lookup). Temporary resolver failures are never cached."
    )
    pre_resolve: bool = Field(
        False, description="Resolve every host of a fetch batch (concurrently, through the DNS cache) before the "
        "first download."
    )
    concurrency: int = Field(16, ge=1, description="Most downloads in flight at once.")
    per_host_concurrency: int = Field(4, ge=1, description="Most downloads in flight to one host at once.")
    max_redirects: int = Field(5, ge=0, description="Redirects followed before rejecting with too_many_redirects.")
    max_bytes: int = Field(20_000_000, ge=1, description="Largest body or file accepted; larger ones are rejected too_large.")
    user_agent: str = Field(
        f"datagen/{datagen.__version__} (+image-text dataset builder; img2dataset-compatible)",
        description="User-Agent header sent with every request.",
    )
    verify_tls: bool = Field(True, description="Check TLS certificates.")
    cache_downloads: bool = Field(
        False,
        description="Keep downloaded bytes and permanent failures (4xx, unknown host, redirect loops) in "
        "<run>/cache/fetch.sqlite, so a rerun after changing this config (e.g. max_side) downloads nothing twice. "
        "Off by default: it stores a second copy of every image.",
    )

    # --- safety (see datagen/fetch/guard.py and the README's security section)
    allow_local_files: bool = Field(
        False,
        description="Read local paths and file:// URLs. Off by default: a public URL list (LAION, COYO, CC) must "
        "not make the run read this machine's files. Turn on for your own folders and bundled data.",
    )
    allow_loopback: bool = Field(
        False,
        description="Allow downloads from loopback addresses (127.0.0.0/8, ::1), e.g. a mirror or test server on "
        "this machine. Every other private, link-local, CGNAT, multicast and reserved address stays refused.",
    )
    allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs of trusted internal mirrors that downloads may reach, e.g. ['10.1.2.0/24']. Checked "
        "after DNS on every connection and redirect hop; all other non-public addresses stay refused.",
    )
    respect_x_robots_tag: bool = Field(
        True,
        description="Reject images served with X-Robots-Tag noai, noimageai, noindex or noimageindex (for all "
        "agents, or for 'datagen' or 'img2dataset') as opted_out. Turning it off is recorded in the manifest.",
    )
    respect_robots: bool = Field(
        False,
        description="Also read robots.txt once per host (cached) and reject disallowed URLs as robots_disallowed "
        "(RFC 9309: a robots.txt that fails with 5xx or cannot be reached disallows everything: robots_unreachable).",
    )
    robots_user_agent: str = Field(
        "datagen", description="The product token matched against robots.txt User-agent lines."
    )

    @field_validator("allow_networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        out = []
        for i, text in enumerate(v):
            try:
                out.append(str(ipaddress.ip_network(text.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"allow_networks[{i}] = {text!r} is not a CIDR like '10.0.0.0/8' or 'fd00::/8'")
        return out

    # --- image processing
    max_side: Optional[int] = Field(None, ge=16, description="Cap the longer side (pixels); null keeps the size.")
    max_pixels: int = Field(
        89_478_485, ge=1, description="Largest decoded image (width*height) accepted; Pillow's bomb limit by default."
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="Quality of re-encoded JPEGs.")
    keep_png: bool = Field(False, description="Store PNG inputs as (RGB) PNG instead of converting them to JPEG.")
    keep_original_jpeg: bool = Field(
        True,
        description="Store an upright RGB JPEG that needs no resize byte-for-byte instead of re-encoding it "
        "(no generation loss, less CPU).",
    )
    workers: Optional[int] = Field(
        None, ge=0, description="Threads that decode and encode images (the decoders release the GIL); 0: the "
        "event loop's own thread does it. null: 0 in a process with one core to itself (a pool of one process "
        "a core, the usual case: threads only passed the GIL back and forth), else one thread a core.")


def policy_summary(cfg: FetchConfig) -> dict:
    """The safety settings a run used, for the manifest (steps[fetch].stats.policy)."""
    return {
        "allow_local_files": cfg.allow_local_files,
        "allow_loopback": cfg.allow_loopback,
        "allow_networks": list(cfg.allow_networks),
        "respect_x_robots_tag": cfg.respect_x_robots_tag,
        "respect_robots": cfg.respect_robots,
    }
