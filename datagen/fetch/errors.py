"""The one exception of the fetch step, carrying a stable reason code.

Every failure in fetching or decoding a row is turned into a ``FetchError``
whose ``reason`` lands in the rejects table. Reasons are short stable codes
that people group by and retry on; ``detail`` is free text for humans.

Codes: ``empty_url``, ``unsupported_scheme``, ``invalid_url``,
``file_not_found``, ``read_error``, ``http_<status>``, ``timeout``,
``connection_error``, ``dns_error``, ``too_many_redirects``, ``too_large``,
``bad_content_encoding``, ``not_an_image``, ``image_truncated``,
``decode_error``, ``encode_error``, ``bad_bbox``, ``fetch_error`` (anything
unforeseen); refused by the safety policy: ``blocked_address``,
``local_file_not_allowed``, ``opted_out``, ``robots_disallowed``,
``robots_unreachable``; given up by the watchdogs: ``straggler_timeout`` (a
batch's last rows past ``straggler_cutoff`` or the shard past
``shard_timeout_s``), ``host_backoff`` (the host refused ``host_backoff_after``
times in a row). A detail never quotes response bytes.

``datagen retry-failed`` re-fetches ``RETRYABLE`` reasons by default; the rest
(404, not an image, blocked, opted out, ...) fail the same way again and are
retried only when named.
"""
from __future__ import annotations


import re

# What `datagen retry-failed` retries when no --reasons are given: failures that say nothing about the image.
RETRYABLE = ("timeout", "connection_error", "dns_error", "http_5xx", "http_408", "http_429", "image_truncated",
             "straggler_timeout", "host_backoff", "robots_unreachable")


def reason_matches(reason: str, patterns) -> bool:
    """``http_5xx``/``http_4xx`` match a status class; any other pattern matches one reason exactly."""
    for p in patterns:
        m = re.fullmatch(r"http_([1-5])xx", p)
        if (m and re.fullmatch(rf"http_{m.group(1)}\d\d", reason)) or p == reason:
            return True
    return False


class FetchFailureRateExceeded(Exception):
    """``fetch.max_failure_rate`` was passed: the run stops; finished shards are kept and a rerun resumes."""


class FetchError(Exception):
    def __init__(self, reason: str, detail: str, retryable: bool = False, retry_after_s: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.retry_after_s = retry_after_s
