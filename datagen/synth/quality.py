"""Measurements of synthesised conversations, read from the text alone (for tests and bench/).

- ``phrasing_counts``: distinct question phrasings per task and language, with category names,
  numbers, colours, relations, size words, quoted text and image indices masked, so that
  "Is there a dog?" and "Is there a cat?" count once;
- ``detailed_lengths``: English detailed descriptions in words, Chinese ones in characters;
- ``activity_questions``: activity / "why" questions, split by whether their subject is a
  person or animal (the only fitting subjects).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable

from datagen.synth.checker import en_categories, zh_categories
from datagen.synth.items import COLOURS
from datagen.synth.lexicon import EN_NUMBER_WORDS, LEXICON

_EN_CAT = "|".join(re.escape(f) for f in sorted({f for t in LEXICON.values() for f in (t.en, t.en_plural)}, key=len, reverse=True))
_ZH_CAT = "|".join(re.escape(t.zh) for t in sorted(LEXICON.values(), key=lambda t: -len(t.zh)))
_MEASURES = "".join(sorted({t.zh_measure for t in LEXICON.values()}))
_ANIMATE = {lab for lab, t in LEXICON.items() if t.supercategory in ("person", "animal")}
ACTIVITY = {"en": re.compile(r"\b(doing|why|up to)\b|looking at\?", re.IGNORECASE), "zh": re.compile("做什么|干什么|为什么|在看什么")}


def mask_question(text: str, lang: str) -> str:
    """The phrasing of a question: its last line, with names, numbers and the like masked."""
    text = text.split("\n")[-1]
    text = re.sub(r'"[^"]*"|“[^”]*”', "<T>", text)
    if lang == "en":
        text = re.sub(rf"\b({_EN_CAT})\b", "<X>", text, flags=re.IGNORECASE)
        text = re.sub(r"\b(" + "|".join(EN_NUMBER_WORDS) + r"|\d+)\b", "<N>", text, flags=re.IGNORECASE)
        text = re.sub(r"\b(" + "|".join(COLOURS) + r")\b", "<C>", text, flags=re.IGNORECASE)
        text = re.sub(r"to the left of|to the right of|\babove\b|\bbelow\b", "<R>", text)
        text = re.sub(r"\b(bigger|larger|smaller)\b", "<S>", text)
        text = re.sub(r"\ban? <", "a <", text)
    else:
        text = re.sub(rf"[零一二两三四五六七八九十\d]+(?=[{_MEASURES}])", "<N>", text)
        text = re.sub(r"图\d+", "图<N>", text)
        text = re.sub(_ZH_CAT, "<X>", text)
        text = re.sub(rf"([几多少这那]|<N>)[{_MEASURES}]", r"\1<M>", text)  # 几只/三辆: the classifier follows the noun
        text = re.sub("|".join(sorted(set(COLOURS.values()))), "<C>", text)
        text = re.sub("左边|右边|上方|下方", "<R>", text)
        text = re.sub(r"更大|更小", "更<S>", text)
        text = re.sub(r"(<X>)(大|小)(吗|？)", r"\1<S>\3", text)
    return text


def _pairs(conv_rows: Iterable[dict]):
    for row in conv_rows:
        for conv in row["conversations"]:
            ts = conv["turns"]
            for i in range(0, len(ts) - 1, 2):
                yield conv["lang"], ts[i]["task"], ts[i]["content"], ts[i + 1]["content"]


def phrasing_counts(conv_rows: Iterable[dict]) -> dict[str, dict[str, int]]:
    seen: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for lang, task, q, _ in _pairs(conv_rows):
        seen[lang][task].add(mask_question(q, lang))
    return {lang: {task: len(v) for task, v in sorted(tasks.items())} for lang, tasks in sorted(seen.items())}


def detailed_lengths(conv_rows: Iterable[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"en": [], "zh": []}
    for lang, task, _, a in _pairs(conv_rows):
        if task == "detailed_description" and lang in out:
            out[lang].append(len(a.split()) if lang == "en" else len(a))
    return out


def activity_questions(conv_rows: Iterable[dict]) -> dict[str, int]:
    """Activity questions about people/animals ("fitting") and about anything else ("unfitting")."""
    out = {"fitting": 0, "unfitting": 0}
    for lang, task, q, _ in _pairs(conv_rows):
        if lang not in ACTIVITY or not ACTIVITY[lang].search(q.split("\n")[-1]):
            continue
        cats = en_categories(q) if lang == "en" else zh_categories(q)
        out["fitting" if any(c in _ANIMATE for c in cats) else "unfitting"] += 1
    return out
