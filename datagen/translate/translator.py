"""Cache-first translation of many texts through one backend.

Every backend goes through :class:`CachedTranslator`, so the cache contract is
the same for all of them: the key is (backend, masked text, backend options).
The masked text has its protected spans replaced by placeholders, so "3 dogs"
and "5 dogs" share one paid translation. Answers are stored as each backend
request returns, so a run stopped midway (quota exhausted, killed) keeps what it
paid for and a rerun sends only the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

from datagen.core.cache import RequestCache
from datagen.translate.errors import QuotaExhausted
from datagen.translate.protect import Masked, ProtectedSpanError, mask, restore

_LETTER = re.compile(r"[^\W\d_]")
_PLACEHOLDER = re.compile(r'<x id="[0-9]+"/>')


@dataclass(frozen=True)
class Failure:
    """A text the backend could not translate; ``reason`` is a stable reject code."""

    reason: str
    detail: str = ""


class Backend(Protocol):
    name: str

    def options(self) -> dict[str, Any]:
        """Everything besides the text that changes the answer (the cache key). No secrets."""

    def translate(self, masked_texts: list[str]) -> Iterator[tuple[int, str | Failure]]:
        """Yield ``(index, translated masked text or Failure)`` as requests complete.

        May raise :class:`QuotaExhausted`; results yielded before are kept."""


@dataclass(frozen=True)
class Translation:
    text: str | None  # the restored translation, None on failure
    reason: str | None = None
    detail: str | None = None


class CachedTranslator:
    def __init__(self, backend: Backend, cache: RequestCache, stats: dict[str, Any]):
        self.backend = backend
        self.cache = cache
        self.stats = stats
        self.namespace = f"translate:{backend.name}"

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def translate(self, texts: list[str]) -> dict[str, Translation]:
        """Translations of the distinct ``texts`` (keyed by source text)."""
        masked: dict[str, Masked] = {t: mask(t) for t in dict.fromkeys(texts)}
        options = self.backend.options()
        self._count("cache_hits", 0)
        raw: dict[str, str | Failure] = {}
        todo: list[str] = []
        for m in dict.fromkeys(mk.text for mk in masked.values()):
            if not _LETTER.search(_PLACEHOLDER.sub("", m)):
                raw[m] = m  # only spans and punctuation: nothing to translate, nothing to pay
                continue
            hit = self.cache.get(self.namespace, {"text": m, "options": options})
            if hit is not None:
                raw[m] = hit
                self._count("cache_hits")
            else:
                todo.append(m)
        self._count("cache_misses", len(todo))
        if todo:
            done = 0
            try:
                for i, out in self.backend.translate(todo):
                    raw[todo[i]] = out
                    if isinstance(out, str):
                        self.cache.put(self.namespace, {"text": todo[i], "options": options}, out)
                        done += 1
            except QuotaExhausted as e:
                raise QuotaExhausted(e.backend, e.detail, translated=done, pending=len(todo) - done) from e
        result: dict[str, Translation] = {}
        for text, mk in masked.items():
            out = raw.get(mk.text, Failure("translate_backend_no_answer"))
            if isinstance(out, Failure):
                result[text] = Translation(None, out.reason, out.detail)
                continue
            try:
                result[text] = Translation(restore(out, mk.spans))
            except ProtectedSpanError as e:
                result[text] = Translation(None, "translate_protected_spans", str(e))
        return result
