"""Opt-out signals of image hosts: the X-Robots-Tag header and (when asked) robots.txt.

LAION promised to honour these; img2dataset honours X-Robots-Tag
``noai, noimageai, noindex, noimageindex`` for all agents or for its own
token. We do the same for our token and for img2dataset's (we write its
layout, so a site that opted out of img2dataset opted out of us).

robots.txt (RFC 9309, ``fetch.respect_robots``) is read once per origin
(scheme, host, port) per process through the guarded session, so it obeys the
same address rules. 2xx: its rules apply (first 500 KiB, as the RFC allows);
4xx: no rules; 5xx, 429 or unreachable: everything is disallowed
(``robots_unreachable``), as the RFC says. Python's ``urllib.robotparser``
matches the rules: it does not expand ``*``/``$`` inside paths.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterable, Optional
from urllib.robotparser import RobotFileParser

from yarl import URL

from datagen.fetch.errors import FetchError

OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
OUR_TOKENS = frozenset({"datagen", "img2dataset"})
ROBOTS_MAX_BYTES = 500 * 1024


# Directives that carry a value after a colon; "max-snippet: 20" is not an agent prefix.
_VALUED = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def opt_out(values: Iterable[str], tokens: Iterable[str] = OUR_TOKENS) -> Optional[str]:
    """The X-Robots-Tag value that opts out of us, or None. ``values``: every X-Robots-Tag header line.

    A line is ``[agent:] directive, directive``; a line for another agent
    (``googlebot: noindex``) does not apply to us."""
    tokens = {t.lower() for t in tokens}
    for value in values:
        head, sep, rest = value.partition(":")
        head = head.strip().lower()
        if sep and "," not in head and head not in _VALUED and head not in OPT_OUT_DIRECTIVES:
            if head not in tokens:
                continue  # another agent's line
            value_part = rest
        else:
            value_part = value
        directives = {d.split(":", 1)[0].strip().lower() for d in value_part.split(",")}
        if directives & OPT_OUT_DIRECTIVES:
            return value.strip()
    return None


def origin_of(url: URL) -> str:
    return f"{url.scheme}://{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"


class RobotsRules:
    """robots.txt verdicts per origin; ``store`` may outlive one batch (it holds parsed rules only).
    ``fetch(url, max_bytes)`` -> (status, the body's first max_bytes), raising FetchError: the
    downloader's guarded GET (``datagen.fetch.http``)."""

    def __init__(self, fetch: Callable[[str, int], Awaitable[tuple[int, bytes]]], user_agent: str,
                 store: Optional[dict] = None):
        self.fetch = fetch
        self.user_agent = user_agent
        self.store: dict[str, tuple[Optional[RobotFileParser], str]] = store if store is not None else {}
        self._pending: dict[str, asyncio.Task] = {}
        self.fetched = 0

    async def check(self, url: URL) -> None:
        """Raise FetchError robots_disallowed / robots_unreachable when ``url`` may not be fetched."""
        if url.path == "/robots.txt":
            return
        origin = origin_of(url)
        if origin not in self.store:
            task = self._pending.get(origin)
            if task is None:
                task = self._pending[origin] = asyncio.ensure_future(self._load(origin))
            await asyncio.shield(task)
        parser, detail = self.store[origin]
        if parser is None:
            raise FetchError("robots_unreachable", f"{origin}/robots.txt: {detail}; RFC 9309 says assume disallow")
        if not parser.can_fetch(self.user_agent, str(url)):
            raise FetchError("robots_disallowed", f"{url} is disallowed for {self.user_agent!r} by {origin}/robots.txt")

    async def _load(self, origin: str) -> None:
        try:
            verdict = await self._fetch(origin)
        except FetchError as e:
            if e.reason == "blocked_address":  # the origin itself is refused: that is the row's reason
                raise
            verdict = (None, e.detail)
        except Exception as e:  # noqa: BLE001 - aiohttp's errors, timeouts: the origin is unreachable
            verdict = (None, f"{type(e).__name__}")
        self.store[origin] = verdict

    async def _fetch(self, origin: str) -> tuple[Optional[RobotFileParser], str]:
        self.fetched += 1
        status, body = await self.fetch(f"{origin}/robots.txt", ROBOTS_MAX_BYTES)
        if status == 429 or status >= 500:
            return None, f"HTTP {status}"
        parser = RobotFileParser()
        if 400 <= status < 500:
            parser.parse([])  # no robots.txt: no rules
            return parser, f"HTTP {status}"
        if not 200 <= status < 300:
            return None, f"HTTP {status}"
        parser.parse(body[:ROBOTS_MAX_BYTES].decode("utf-8", "replace").splitlines())
        return parser, f"HTTP {status}"
