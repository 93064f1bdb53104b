"""English and Chinese wording of the scene families (relation, universal, grounding).

Both languages are written natively from the same item. As elsewhere, every
yes/no answer starts with its verdict ("Yes"/"No", 是的/不是), a denied relation
states the true one after the verdict, a denied quantifier names the exceptions,
and a box is written exactly once in the answer (or once in the question for
region description), so the independent checker can read them back.
"""

from __future__ import annotations

import random

from datagen.synth.items import COLOURS, Item
from datagen.synth.lexicon import indefinite_article
from datagen.synth.vocab import MASS_NOUNS, PREDICATES, open_term


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _join(parts: list[str], word: str = "and") -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" {word} " + parts[-1]


def _en(name: str) -> str:
    return open_term(name).en


def _zh(name: str) -> str:
    return open_term(name).zh


def _en_clause(s: str, p: str, o: str) -> str:
    return f"the {_en(s)} is {p} the {_en(o)}"


def _zh_clause(s: str, p: str, o: str) -> str:
    return PREDICATES[p].format(s=_zh(s), o=_zh(o))


def _ref_en(name: str, box: str, fmt: str) -> str:
    return f"<ref>the {_en(name)}</ref>{box}" if fmt == "qwen" else box


def _ref_zh(name: str, box: str, fmt: str) -> str:
    return f"<ref>{_zh(name)}</ref>{box}" if fmt == "qwen" else box


def render_en(item: Item, rng: random.Random, full: bool) -> tuple[str, str] | None:
    f, pick = item.facts, rng.choice
    if item.family == "relation":
        s, p, o = f["s"], f["p"], f["o"]
        x = f"the {_en(s)} {p} the {_en(o)}"
        q = pick([f"Is {x}?", f"In the image, is {x}?", f"Looking at the picture, is {x}?",
                  f"Would you say {x}?", f"Is it true that {_en_clause(s, p, o)}?"])
        ts, tp, to = f["truth"]
        if item.polarity == "positive":
            a = f"Yes, {_en_clause(s, p, o)}." if full else "Yes."
        else:
            a = f"No, {_en_clause(ts, tp, to)}."
        return q, a
    if item.family == "universal":
        lab, col = f["label"], f["asked"]
        xs = open_term(lab).en_plural
        q = pick([f"Are all the {xs} {col}?", f"Is every {_en(lab)} in the image {col}?",
                  f"Are all of the {xs} in this picture {col}?", f"Are the {xs} all {col}?"])
        if item.polarity == "positive":
            a = f"Yes, all the {xs} are {col}." if full else "Yes, all of them."
        elif f["none"]:
            a = f"No, none of the {xs} is {col}; they are {_join(f['exceptions'])}."
        else:
            a = f"No, not all of them: some {xs} are {_join(f['exceptions'], 'or')}."
        return q, a
    if item.family == "grounding":
        form, fmt = f["form"], f.get("box_format", "qwen")
        if form == "find":
            lab = f["label"]
            q = pick([f"Where is the {_en(lab)}? Give its box.", f"Find the {_en(lab)} in the image and give its bounding box.",
                      f"Locate the {_en(lab)} and answer with its bounding box.", f"Show me where the {_en(lab)} is with a box."])
            if item.polarity == "negative":
                return q, f"There is no {_en(lab)} in this image."
            ref = _ref_en(lab, f["box"], fmt)
            return q, (f"The {_en(lab)} is here: {ref}." if full else ref)
        q = pick([f"Describe the region {f['box']} briefly.", f"What is in the region {f['box']}?",
                  f"Give a short description of the area {f['box']}."])
        if form == "region":
            phrase = f["phrase"].rstrip(".")
            return q, _cap(phrase) + "."
        cols = f.get("colours") or []
        phrase = f"{_join(cols)} {_en(f['label'])}" if cols else _en(f["label"])
        return q, _cap(phrase if f["label"] in MASS_NOUNS else f"{indefinite_article(phrase)} {phrase}") + "."
    return None


def render_zh(item: Item, rng: random.Random, full: bool) -> tuple[str, str] | None:
    f, pick = item.facts, rng.choice
    if item.family == "relation":
        s, p, o = f["s"], f["p"], f["o"]
        c = _zh_clause(s, p, o)
        q = pick([f"{c}吗？", f"图中{c}吗？", f"从图上看，{c}吗？", f"画面里是不是{c}？"])
        if item.polarity == "positive":
            a = f"是的，{c}。" if full else "是的。"
        else:
            a = f"不是，{_zh_clause(*f['truth'])}。"
        return q, a
    if item.family == "universal":
        lab, col = f["label"], f["asked"]
        x, zc = _zh(lab), COLOURS[col]
        q = pick([f"所有的{x}都是{zc}的吗？", f"图中的{x}全都是{zc}的吗？", f"这些{x}都是{zc}的吗？"])
        if item.polarity == "positive":
            a = f"是的，所有的{x}都是{zc}的。" if full else "是的，都是。"
        else:
            exc = "、".join(dict.fromkeys(COLOURS[e] for e in f["exceptions"]))
            a = f"不是，没有一{open_term(lab).zh_measure}{x}是{zc}的，它们是{exc}的。" if f["none"] else \
                f"不是，并非所有的{x}都是{zc}的，有的是{exc}的。"
        return q, a
    if item.family == "grounding":
        form, fmt = f["form"], f.get("box_format", "qwen")
        if form == "find":
            x = _zh(f["label"])
            q = pick([f"{x}在哪里？请给出它的边界框。", f"请在图中找出{x}，并给出它的边界框。", f"请用边界框标出{x}的位置。"])
            if item.polarity == "negative":
                return q, f"图中没有{x}。"
            ref = _ref_zh(f["label"], f["box"], fmt)
            return q, (f"{x}在这里：{ref}。" if full else ref)
        if form == "region":
            return None  # VG region phrases are English; the object-phrase form covers Chinese
        q = pick([f"请简要描述区域{f['box']}。", f"区域{f['box']}里是什么？", f"请简单说明{f['box']}这个区域的内容。"])
        t = open_term(f["label"])
        cols = "、".join(dict.fromkeys(COLOURS[c] for c in (f.get("colours") or [])))
        return q, f"一{t.zh_measure}{cols + '的' if cols else ''}{t.zh}。"
    return None
