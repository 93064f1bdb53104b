"""Chinese templates, written natively (not translated from the English ones).

Category nouns and classifiers come from the checked lexicon (两匹斑马, 一辆汽车);
colours from ``items.COLOURS``. Yes/no answers start with their verdict
(是的/有 or 不/没有), counts put the true number first, as in English, so the
independent checker can read them back.
"""

from __future__ import annotations

import random

from datagen.synth import scene_templates
from datagen.synth.items import COLOURS, Item
from datagen.synth.scene import FAMILIES as SCENE_FAMILIES
from datagen.synth.lexicon import term, zh_count_phrase, zh_number

REL = {"left": "左边", "right": "右边", "above": "上方", "below": "下方"}
SIZE = {"bigger": "大", "larger": "大", "smaller": "小"}
OPP = {"大": "小", "小": "大"}


def _n(label: str) -> str:
    return term(label).zh


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return "、".join(parts[:-1]) + "和" + parts[-1]


def inventory_phrase(inv: list[tuple[str, int | None]]) -> str:
    """"两匹斑马、一辆汽车和许多人"."""
    return _join([f"许多{_n(lab)}" if n is None else zh_count_phrase(lab, n) for lab, n in inv])


def _colours(cols: list[str]) -> str:
    return _join(list(dict.fromkeys(COLOURS[c] for c in cols)))


def render(item: Item, rng: random.Random, full: bool) -> tuple[str, str] | None:
    f = item.facts
    fam = item.family
    pick = rng.choice
    if fam in SCENE_FAMILIES:
        return scene_templates.render_zh(item, rng, full)
    if fam == "existence":
        x = _n(f["label"])
        q = pick([f"图中有{x}吗？", f"这张图片里能看到{x}吗？", f"图片中是否有{x}？", f"你能在图中看到{x}吗？", f"照片里有没有{x}？", f"画面中出现了{x}吗？"])
        if item.polarity == "positive":
            a = pick([f"是的，图中有{x}。", f"有，画面中可以看到{x}。"]) if full else pick(["是的。", "有。"])
        else:
            a = pick([f"没有，图中没有{x}。", f"不，画面中看不到{x}。"]) if full else "没有。"
        return q, a
    if fam == "counting":
        lab, n = f["label"], f["count"]
        t = term(lab)
        m, x = t.zh_measure, t.zh
        q = pick([f"图中有几{m}{x}？", f"数一数图中有几{m}{x}。", f"这张图片里一共有多少{m}{x}？", f"画面中能看到几{m}{x}？", f"请问照片里有几{m}{x}？"])
        a = pick([f"图中有{zh_count_phrase(lab, n)}。", f"画面里一共有{zh_count_phrase(lab, n)}。"]) if full else f"{zh_number(n)}{m}。"
        return q, a
    if fam == "wrong_count":
        lab, n, claimed = f["label"], f["count"], f["claimed"]
        t = term(lab)
        cx = zh_count_phrase(lab, claimed)
        q = pick([f"图中的{cx}在做什么？", f"请描述图中的{cx}。", f"这{cx}在图中的什么位置？", f"图片里那{cx}看起来怎么样？", f"说说照片中的{cx}。"])
        wrong = f"{zh_number(claimed)}{t.zh_measure}"
        if full:
            a = pick([f"其实图中有{zh_count_phrase(lab, n)}，而不是{wrong}。", f"图中实际上有{zh_count_phrase(lab, n)}，不是{wrong}。"])
        else:
            a = f"其实是{zh_count_phrase(lab, n)}。"
        return q, a
    if fam == "spatial":
        a_, b_ = _n(f["a"]), _n(f["b"])
        if f["form"] == "open":
            q = pick([f"{a_}在{b_}的什么位置？", f"{a_}相对于{b_}在哪里？", f"请说明{a_}相对于{b_}的位置。", f"{a_}位于{b_}的哪一侧？", f"从图中看，{a_}在{b_}的哪个方向？"])
            a = f"{a_}在{b_}的{REL[f['truth']]}。" if full else f"在{b_}的{REL[f['truth']]}。"
            return q, a
        rel = REL[f["asked"]]
        q = pick([f"{a_}在{b_}的{rel}吗？", f"图中的{a_}是在{b_}的{rel}吗？", f"{a_}位于{b_}的{rel}吗？", f"从图上看，{a_}在{b_}的{rel}吗？", f"画面里{a_}是不是在{b_}的{rel}？"])
        if item.polarity == "positive":
            a = f"是的，{a_}在{b_}的{rel}。" if full else "是的。"
        else:
            a = f"不，{a_}在{b_}的{REL[f['truth']]}。" if full else "不是。"
        return q, a
    if fam == "relative_size":
        a_, b_ = _n(f["a"]), _n(f["b"])
        s = SIZE[f["asked"]]
        if f["form"] == "choice":
            q = pick([f"图中{a_}和{b_}哪个看起来更{s}？", f"{a_}和{b_}，哪一个在画面中显得更{s}？", f"这张图片里，{a_}和{b_}谁看起来更{s}？", f"比较一下{a_}和{b_}，哪个在图中更{s}？", f"{a_}与{b_}相比，哪个在照片里更{s}？"])
            w = _n(f["winner"])
            return q, (f"{w}看起来更{s}。" if full else f"{w}。")
        q = pick([f"图中的{a_}比{b_}{s}吗？", f"{a_}看起来比{b_}{s}吗？", f"画面中{a_}是不是比{b_}{s}？", f"在这张图片里，{a_}显得比{b_}{s}吗？", f"{a_}在图中占的面积比{b_}{s}吗？"])
        if item.polarity == "positive":
            a = f"是的，{a_}看起来比{b_}{s}。" if full else "是的。"
        else:
            a = f"不，{a_}看起来比{b_}{OPP[s]}。" if full else "不是。"
        return q, a
    if fam == "false_premise":
        c, anchor = _n(f["label"]), f.get("anchor")
        if anchor:
            p = _n(anchor)
            q = pick([f"请描述{p}旁边的{c}。", f"{p}旁边的{c}在做什么？", f"{p}附近的{c}是什么颜色的？", f"说说{p}旁边的{c}。", f"{p}边上的{c}为什么在那里？"])
        else:
            q = pick([f"请描述图中的{c}。", f"图中的{c}在做什么？", f"图中的{c}是什么颜色的？", f"图片里的{c}在哪里？", f"说说照片中的{c}。"])
        if full and f.get("inventory"):
            inv = inventory_phrase(f["inventory"])
            a = pick([f"图中没有{c}，所以无法描述它。图中可以看到{inv}。", f"画面里没有{c}。图片中有{inv}。"])
        else:
            a = f"图中没有{c}。"
        return q, a
    if fam == "attribute":
        x, col, true = _n(f["label"]), COLOURS[f["asked"]], _colours(f["true"])
        m = term(f["label"]).zh_measure  # 这张长椅, 那辆卡车: the demonstrative takes the classifier
        if f["form"] == "premise":
            q = pick([f"请描述图中{col}的{x}。", f"{col}的{x}在做什么？", f"图中{col}的{x}在哪里？", f"说说那{m}{col}的{x}。", f"{col}的{x}旁边有什么？"])
            return q, f"图中没有{col}的{x}，{x}是{true}的。"
        q = pick([f"{x}是{col}的吗？", f"图中的{x}是{col}的吗？", f"这{m}{x}是不是{col}的？", f"{x}的颜色是{col}吗？", f"画面里的{x}是{col}的吗？"])
        if item.polarity == "positive":
            a = f"是的，{x}是{col}的。" if full else "是的。"
        else:
            a = f"不是，{x}是{true}的。" if full else "不是。"
        return q, a
    if fam == "scene_text":
        quoted = _join([f"“{t}”" for t in f["texts"]])
        q = pick(["图中的文字写的是什么？", "图片上写着什么字？", "你能读出图中的文字吗？", "照片里的文字内容是什么？", "画面中有哪些文字？"])
        a = pick([f"图中的文字是{quoted}。", f"上面写着{quoted}。"]) if full else f"{quoted}。"
        return q, a
    if fam == "brief_description":
        q = pick(["简要描述一下这张图片。", "用一句话概括这张图片。", "这张图片展示了什么？请简短回答。", "请简单说说图中的内容。", "给这张照片写一段简短的描述。"])
        if f.get("zh_captions"):
            return q, f["zh_captions"][0]
        if f.get("inventory"):
            return q, pick(["图中有", "这张图片里有", "画面中可以看到"]) + inventory_phrase(f["inventory"]) + "。"
        return None
    if fam == "detailed_description":
        q = pick(["详细描述一下这张图片。", "请详细说说图中都有什么。", "仔细看这张图片，描述你看到的一切。", "请对这张照片做详细的描述。", "写一段详细的文字描述这张图片。"])
        parts = list(f.get("zh_captions") or [])
        if f.get("inventory"):
            parts.append(pick(["图中有", "画面中可以看到"]) + inventory_phrase(f["inventory"]) + "。")
        for a_lab, rel, b_lab in f.get("relations") or []:
            parts.append(f"{_n(a_lab)}在{_n(b_lab)}的{REL[rel]}。")
        if not parts:
            return None
        return q, "".join(parts)
    raise ValueError(f"no Chinese templates for family {fam!r}")
