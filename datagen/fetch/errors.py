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
``robots_unreachable``. A detail never quotes response bytes.
"""
from __future__ import annotations


class FetchError(Exception):
    def __init__(self, reason: str, detail: str, retryable: bool = False, retry_after_s: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.retry_after_s = retry_after_s
