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

from pydantic import BaseModel, ConfigDict, Field

import datagen


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

    # --- image processing
    max_side: Optional[int] = Field(None, ge=16, description="Cap the longer side (pixels); null keeps the size.")
    max_pixels: int = Field(
        89_478_485, ge=1, description="Largest decoded image (width*height) accepted; Pillow's bomb limit by default."
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="Quality of re-encoded JPEGs.")
    allow_local_files: bool = Field(
        True,
        description="Read local paths and file:// URLs. Set false for public URL lists (LAION, COYO, CC) so a "
        "crafted row cannot make the run read files from this machine.",
    )
    keep_png: bool = Field(False, description="Store PNG inputs as (RGB) PNG instead of converting them to JPEG.")
    keep_original_jpeg: bool = Field(
        True,
        description="Store an upright RGB JPEG that needs no resize byte-for-byte instead of re-encoding it "
        "(no generation loss, less CPU).",
    )
    workers: int = Field(2, ge=1, description="Threads that decode and encode images (Pillow releases the GIL).")
