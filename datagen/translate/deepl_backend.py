"""The ``deepl`` backend: the official DeepL client, with the COCO lexicon as a glossary.

Why these settings:
- ``tag_handling="xml"``: protected spans travel as ``<x id="N"/>`` tags, which
  DeepL moves with the words around them but never translates; the text
  around them is XML-escaped (:func:`datagen.translate.protect.to_xml`).
- The glossary (the checked COCO lexicon, en and plural -> zh) is created once
  per account and lexicon version; its id is kept in the request cache and
  checked with a free ``GET /v2/glossaries/{id}`` before use, so reruns do not
  pile up glossaries.
- 429 and 5xx are retried by the deepl client itself with exponential backoff
  (``deepl.http_client.max_network_retries``, a module-wide setting of the
  client library; we set it from the config).
- HTTP 456 (quota exhausted) stops the run with :class:`QuotaExhausted`; a
  rejected key (403) stops it too: both would otherwise reject every row.

The auth key is read from the environment variable named in the config and
handed to the deepl client only.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterator, Mapping

import deepl

from datagen.core.cache import RequestCache
from datagen.translate.config import DeepLSettings
from datagen.translate.errors import BackendConfigError, QuotaExhausted
from datagen.translate.lexicon_check import TermLike
from datagen.translate.protect import from_xml, to_xml
from datagen.translate.translator import Failure

GLOSSARY_NAMESPACE = "deepl_glossary"


def glossary_entries(lexicon: Mapping[str, TermLike], exclude: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """en -> zh glossary entries: singular, plural and the COCO name of each category."""
    entries: dict[str, str] = {}
    for name, t in lexicon.items():
        if name in exclude:
            continue
        for form in (t.en, t.en_plural, name):
            form = form.strip()
            if form and form not in entries:
                entries[form] = t.zh
    return entries


class DeepLBackend:
    name = "deepl"

    def __init__(self, settings: DeepLSettings, cache: RequestCache, lexicon: Mapping[str, TermLike] | None,
                 stats: dict[str, Any]):
        key = os.environ.get(settings.auth_key_env)
        if not key:
            raise BackendConfigError(
                f"translate backend 'deepl' needs an API key in the environment variable {settings.auth_key_env!r} "
                f"(translate.deepl.auth_key_env); it is not set"
            )
        deepl.http_client.max_network_retries = settings.max_retries
        deepl.http_client.min_connection_timeout = settings.timeout_s
        self.settings = settings
        self.cache = cache
        self.stats = stats
        self.client = deepl.Translator(key, server_url=settings.server_url, send_platform_info=False)
        self.entries = (
            glossary_entries(lexicon, settings.glossary_exclude) if settings.glossary and lexicon else {}
        )
        self.entries_sha = (
            hashlib.sha256(json.dumps(self.entries, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
            if self.entries else None
        )
        self._glossary_id: str | None = None

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def options(self) -> dict[str, Any]:
        s = self.settings
        return {"source_lang": s.source_lang, "target_lang": s.target_lang, "formality": s.formality,
                "glossary": self.entries_sha, "tag_handling": "xml", "format": 1}

    def glossary_id(self) -> str | None:
        """The id of the lexicon glossary on this account, created on first use."""
        if not self.entries:
            return None
        if self._glossary_id is not None:
            return self._glossary_id
        s = self.settings
        request = {"server": self.client.server_url, "entries": self.entries_sha, "source": s.source_lang,
                   "target": s.target_lang}
        cached = self.cache.get(GLOSSARY_NAMESPACE, request)
        if cached:
            try:
                self._raise_quota(lambda: self.client.get_glossary(cached))
                self._glossary_id = cached
                self._count("glossary_reused")
                return cached
            except deepl.GlossaryNotFoundException:
                pass  # deleted on the account: make a new one
        info = self._raise_quota(lambda: self.client.create_glossary(
            f"datagen-coco-lexicon-{self.entries_sha}",
            source_lang=s.source_lang,
            target_lang=s.target_lang.split("-")[0],
            entries=self.entries,
        ))
        self._count("glossaries_created")
        self.cache.put(GLOSSARY_NAMESPACE, request, info.glossary_id)
        self._glossary_id = info.glossary_id
        return info.glossary_id

    def _raise_quota(self, call):
        try:
            return call()
        except deepl.QuotaExceededException as e:
            raise QuotaExhausted("deepl", f"HTTP 456: {e}") from None
        except deepl.AuthorizationException as e:
            raise BackendConfigError(
                f"DeepL rejected the key in ${self.settings.auth_key_env} (HTTP 403): {e}"
            ) from None

    def translate(self, masked_texts: list[str]) -> Iterator[tuple[int, str | Failure]]:
        try:
            gid = self.glossary_id()
        except deepl.DeepLException as e:
            raise RuntimeError(
                f"DeepL glossary setup failed ({e}); fix the account or set translate.deepl.glossary: false"
            ) from None
        s = self.settings
        for start in range(0, len(masked_texts), s.batch_size):
            chunk = masked_texts[start: start + s.batch_size]
            xml = [to_xml(t) for t in chunk]
            try:
                results = self._raise_quota(lambda: self.client.translate_text(
                    xml,
                    source_lang=s.source_lang,
                    target_lang=s.target_lang,
                    formality=s.formality,
                    glossary=gid,
                    tag_handling="xml",
                    ignore_tags=["x"],
                    preserve_formatting=True,
                ))
            except deepl.DeepLException as e:
                code = getattr(e, "http_status_code", None)
                reason = f"translate_deepl_http_{code}" if code else "translate_deepl_error"
                self._count("deepl_failed_requests")
                for j in range(len(chunk)):
                    yield start + j, Failure(reason, str(e)[:300])
                continue
            self._count("deepl_requests")
            self._count("deepl_characters_sent", sum(len(x) for x in xml))
            if len(results) != len(chunk):
                for j in range(len(chunk)):
                    yield start + j, Failure("translate_deepl_bad_response",
                                             f"{len(results)} translations for {len(chunk)} texts")
                continue
            for j, r in enumerate(results):
                self._count("deepl_billed_characters", int(r.billed_characters or 0))
                yield start + j, from_xml(r.text)

    def close(self) -> None:
        self.client.close()
