"""The ``llm`` backend: any OpenAI-compatible chat server, several texts per request.

Why batches: one request per short turn wastes most tokens on the instructions.
A batch goes out as a numbered JSON list and must come back as a JSON list of
the same length and ids. A malformed answer (not JSON, missing or extra items)
is retried as two half batches, down to single texts; a single text that still
comes back malformed is a reject (``translate_llm_malformed``), never a guess.

The prompt carries the lexicon entries of the categories mentioned in the
batch, so chat models use the same checked nouns as the DeepL glossary.
Transport (concurrency, retries with backoff on 429/5xx, token counts) is
:class:`datagen.llm.client.ChatClient`; caching is per text in
:class:`~datagen.translate.translator.CachedTranslator`, so a text's cached
translation does not depend on which batch it travelled in.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, Mapping

from datagen.translate.config import LLMSettings
from datagen.translate.lexicon_check import TermLike, find_mentions
from datagen.translate.translator import Failure

PROMPT_VERSION = 1
LANG_NAMES = {"zh": "Simplified Chinese", "en": "English"}

SYSTEM_PROMPT = """You translate {src} instruction-tuning data about images into natural, fluent {tgt}.
You get a JSON array of items {{"id": <number>, "text": <string>}}.
Rules:
- Translate every item completely; leave no {src} sentence untranslated.
- Tags like <x id="0"/> stand for image placeholders, numbers and code: copy each tag exactly once, unchanged, \
to the place where it belongs in the translated sentence.
- Use the glossary for object names; they are physical objects in a photo (an orange is the fruit, a remote is \
a remote control).
- Reply with ONLY a JSON array of {{"id": <same id>, "text": <translation>}}, one entry per item, same order."""


def build_messages(texts: list[str], glossary: dict[str, str], source_lang: str, target_lang: str) -> list[dict]:
    src, tgt = LANG_NAMES.get(source_lang, source_lang), LANG_NAMES.get(target_lang, target_lang)
    items = json.dumps([{"id": i + 1, "text": t} for i, t in enumerate(texts)], ensure_ascii=False)
    user = ""
    if glossary:
        user += "Glossary:\n" + "\n".join(f"{en} = {zh}" for en, zh in sorted(glossary.items())) + "\n\n"
    user += "Items:\n" + items
    return [{"role": "system", "content": SYSTEM_PROMPT.format(src=src, tgt=tgt)},
            {"role": "user", "content": user}]


_FENCE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$", re.I)


def parse_reply(reply: str, n: int) -> list[str] | None:
    """The n translations from a model reply, or None when the reply is malformed."""
    body = _FENCE.sub("", reply.strip())
    start, end = body.find("["), body.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(body[start: end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, list) or len(data) != n:
        return None
    out = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            out.append(item)
            continue
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            return None
        if str(item.get("id")) != str(i + 1):
            return None
        out.append(item["text"])
    return out


class LLMBackend:
    name = "llm"

    def __init__(self, settings: LLMSettings, lexicon: Mapping[str, TermLike] | None, stats: dict[str, Any],
                 source_lang: str = "en", target_lang: str = "zh"):
        from datagen.llm.client import ChatClient

        self.settings = settings
        self.lexicon = lexicon
        self.stats = stats
        self.source_lang, self.target_lang = source_lang, target_lang
        self.client = ChatClient(
            settings.base_url, settings.model, api_key_env=settings.api_key_env, concurrency=settings.concurrency,
            max_retries=settings.max_retries, timeout_s=settings.timeout_s, cache=None,
            temperature=settings.temperature, max_tokens=settings.max_tokens,
        )

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def options(self) -> dict[str, Any]:
        s = self.settings
        return {"model": s.model, "temperature": s.temperature, "max_tokens": s.max_tokens,
                "prompt": PROMPT_VERSION, "source": self.source_lang, "target": self.target_lang}

    def _glossary(self, texts: list[str]) -> dict[str, str]:
        if not self.lexicon:
            return {}
        out = {}
        for t in texts:
            for m in find_mentions(t, self.lexicon):
                if m.noun:
                    out[self.lexicon[m.category].en] = self.lexicon[m.category].zh
        return out

    def translate(self, masked_texts: list[str]) -> Iterator[tuple[int, str | Failure]]:
        size = self.settings.batch_size
        batches = [list(range(i, min(i + size, len(masked_texts)))) for i in range(0, len(masked_texts), size)]
        while batches:
            requests = []
            for b in batches:
                texts = [masked_texts[i] for i in b]
                requests.append(build_messages(texts, self._glossary(texts), self.source_lang, self.target_lang))
            results = self.client.complete_many(requests, namespace="translate")
            retry: list[list[int]] = []
            for b, res in zip(batches, results):
                if isinstance(res, BaseException):
                    reason = getattr(res, "reason", None) or "llm_error"
                    self._count("llm_failed_requests")
                    for i in b:
                        yield i, Failure(f"translate_{reason}", str(res)[:300])
                    continue
                self._count("llm_requests")
                self._count("llm_prompt_tokens", res.prompt_tokens)
                self._count("llm_completion_tokens", res.completion_tokens)
                parsed = parse_reply(res.text, len(b))
                if parsed is None:
                    self._count("llm_malformed_replies")
                    if len(b) > 1:
                        half = len(b) // 2
                        retry += [b[:half], b[half:]]
                    else:
                        yield b[0], Failure("translate_llm_malformed", res.text[:200])
                    continue
                for i, text in zip(b, parsed):
                    yield i, text
            batches = retry

    def close(self) -> None:
        pass
