"""Lexicon check: COCO category words must come out in their context-correct Chinese form.

Published Chinese versions of LLaVA data translated COCO words out of context
(orange -> the colour 橙色, remote -> 远程, parking meter -> 停车费). The checked
lexicon (:mod:`datagen.synth.lexicon`) holds the right noun (``zh``) and the
known mistranslations (``zh_avoid``) of each of the 80 categories.

Why a context heuristic: an English category word is not always the category.
"an orange shirt" is a colour, "the shirt is orange" too, "they train dogs" is
a verb, "bus stop" is a compound whose Chinese (公交车站) need not contain the
category noun. Demanding 橙子 in those would reject good translations, so a
mention counts only in noun context:

- plural forms always count;
- a mention right after a copula or shade word ("is orange", "bright orange")
  is an adjective, after a subject pronoun or modal ("they train", "will sink",
  "to book") a verb: neither counts;
- a mention followed directly by another content word ("orange shirt",
  "remote-controlled") is a modifier and does not count, except for pairs
  that keep the sense ("remote control") and yes/no questions with a
  predicate adjective ("Is the orange ripe?");
- everything else counts ("an orange on the table", "the remote.", "a dog runs").

For a counted category the translation must contain ``zh`` (or one of the few
common correct variants in :data:`ACCEPTED_VARIANTS`: 电视 for TV, 一杯 for a cup); ``zh_avoid`` terms
are forbidden unless the same text also uses the word in a non-noun sense (then
the colour 橙色 may be right). An avoid term that contains the right noun
("在沙发上" for couch) is only a mistake when the English has no preposition
before the word ("on the couch" really is 在沙发上).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Protocol

from datagen.translate.protect import strip_spans


class TermLike(Protocol):
    en: str
    en_plural: str
    zh: str
    zh_avoid: tuple[str, ...]


_FUNCTION_WORDS = frozenset(
    """a an the this that these those it its there here his her their our my your
    on in at with near next under above below behind beside besides by from of to into onto over for against
    between inside outside around along across through toward towards beneath among upon
    and or but nor while which who whose whom where when as than so then if
    is are was were be been being has have had can could will would may might should must does do did
    not also too very just still nearby each every some any all both either neither no one two three
    sits stands lies rests appears seems looks""".split()
)
_COPULA_OR_SHADE = frozenset("is are was were be been being looks look appears seems bright dark light pale deep "
                             "vivid dull reddish yellowish".split())
_VERB_CUES = frozenset("i you we they he she to will would can could should must may might do does did not "
                       "can't cannot won't don't doesn't didn't".split())
_PREPOSITIONS = frozenset("on in at onto into upon under beside near by against behind over".split())
_DETERMINERS = frozenset("a an the this that his her their its my your our some".split())
# "<category> <next word>" pairs that still name the category.
SAME_SENSE_FOLLOWERS: dict[str, frozenset[str]] = {
    "remote": frozenset({"control", "controls", "controller", "controllers"}),
    "tv": frozenset({"set", "sets", "screen", "screens"}),
}


# Other correct renderings that good translators use for a category ("a cup of tea" is 一杯茶, not
# 一杯杯子; "TV" is usually 电视). Accepted in place of the lexicon's ``zh``; ``zh_avoid`` still applies.
# Candidates for a ``zh_also`` field in datagen.synth.lexicon.
ACCEPTED_VARIANTS: dict[str, tuple[str, ...]] = {
    "bicycle": ("单车",), "car": ("轿车", "车"), "motorcycle": ("摩托",), "bus": ("公共汽车", "巴士", "大巴"),
    "train": ("列车",), "truck": ("货车",), "boat": ("艇",), "traffic light": ("红绿灯", "信号灯"),
    "stop sign": ("停止标志", "停车牌"), "parking meter": ("停车收费表", "咪表"), "bench": ("长凳",),
    "sheep": ("羊",), "elephant": ("象",), "handbag": ("手袋", "包"), "umbrella": ("伞",),
    "suitcase": ("手提箱", "旅行箱"), "skis": ("滑雪板", "雪板"), "snowboard": ("滑雪板",), "sports ball": ("足球", "篮球"),
    "bottle": ("瓶",), "wine glass": ("酒杯",), "cup": ("杯",), "fork": ("叉",), "knife": ("刀",),
    "spoon": ("勺", "汤匙"), "orange": ("橘子", "柑橘"), "broccoli": ("西蓝花", "花椰菜"), "pizza": ("比萨", "匹萨"),
    "donut": ("甜圈",), "chair": ("椅",), "potted plant": ("盆景", "盆花"), "dining table": ("桌",),
    "toilet": ("厕所", "坐便器"), "tv": ("电视",), "laptop": ("笔记本", "手提电脑"), "remote": ("遥控",),
    "microwave": ("微波",), "oven": ("烤炉",), "toaster": ("吐司机", "多士炉"), "sink": ("水池", "洗手池", "洗碗池"),
    "clock": ("钟",), "teddy bear": ("玩具熊",), "hair drier": ("电吹风",),
}


@dataclass(frozen=True)
class Mention:
    category: str
    start: int
    end: int
    noun: bool  # counts for the check
    after_preposition: bool


@lru_cache(maxsize=8)
def _pattern(forms: tuple[tuple[str, str], ...]) -> re.Pattern:
    alts = sorted({f for f, _ in forms}, key=len, reverse=True)  # longest first: "hot dog" before "dog"
    return re.compile(r"(?<![A-Za-z])(" + "|".join(re.escape(a) for a in alts) + r")(?![A-Za-z])", re.I)


def _forms(lexicon: Mapping[str, TermLike]) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for name, t in lexicon.items():
        for f in (name, t.en, t.en_plural):
            out.setdefault(f.lower(), name)
    return tuple(sorted(out.items()))


def _plural_forms(lexicon: Mapping[str, TermLike]) -> dict[str, str]:
    return {t.en_plural.lower(): name for name, t in lexicon.items()}


def find_mentions(source: str, lexicon: Mapping[str, TermLike]) -> list[Mention]:
    """Category mentions in English ``source`` (outside protected spans), with their context."""
    text = strip_spans(source)
    forms = _forms(lexicon)
    by_form = dict(forms)
    plurals = _plural_forms(lexicon)
    out = []
    for m in _pattern(forms).finditer(text):
        form = m.group(1).lower()
        cat = by_form[form]
        before = re.search(r"([A-Za-z']+)\s+$", text[: m.start()])
        prev = before.group(1).lower() if before else None
        prev2_m = re.search(r"([A-Za-z']+)\s+[A-Za-z']+\s+$", text[: m.start()])
        prev2 = prev2_m.group(1).lower() if prev2_m else None
        after = re.match(r"(?:\s+|-)([A-Za-z]+)", text[m.end():])
        nxt = after.group(1).lower() if after else None
        is_plural = form in plurals and form != lexicon[cat].en.lower()
        if is_plural:
            noun = True
        elif prev in _COPULA_OR_SHADE or prev in _VERB_CUES:
            noun = False
        elif nxt is not None and nxt not in _FUNCTION_WORDS and not nxt.endswith(("ing", "ed", "s", "ly")):
            # "Is the orange ripe?": copula, determiner, word, adjective, end of clause -> a noun
            question = (prev in _DETERMINERS and prev2 in _COPULA_OR_SHADE
                        and re.match(r"(?:\s+|-)[A-Za-z]+\s*[?.!,]", text[m.end():]) is not None)
            noun = question or nxt in SAME_SENSE_FOLLOWERS.get(cat, frozenset())
        else:
            noun = True
        after_prep = prev in _PREPOSITIONS or (prev in _DETERMINERS and prev2 in _PREPOSITIONS)
        out.append(Mention(cat, m.start(), m.end(), noun, after_prep))
    return out


def lexicon_violations(source: str, target: str, lexicon: Mapping[str, TermLike]) -> list[str]:
    """Categories whose translation in ``target`` is wrong: missing ``zh`` or a known mistranslation."""
    mentions = find_mentions(source, lexicon)
    tgt = strip_spans(target)
    bad = []
    for cat in dict.fromkeys(m.category for m in mentions):
        ms = [m for m in mentions if m.category == cat]
        if not any(m.noun for m in ms):
            continue
        term = lexicon[cat]
        if not any(z in tgt for z in (term.zh, *ACCEPTED_VARIANTS.get(cat, ()))):
            bad.append(cat)
            continue
        if not all(m.noun for m in ms):
            continue  # the word is also used as a colour/verb here: avoid terms may be right
        for avoid in term.zh_avoid:
            if term.zh in avoid and any(m.after_preposition for m in ms):
                continue
            if avoid in tgt:
                bad.append(cat)
                break
    return bad


def default_lexicon() -> Mapping[str, TermLike]:
    from datagen.synth.lexicon import LEXICON

    return LEXICON
