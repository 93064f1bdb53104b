"""Chinese templates, written natively (not translated from the English ones).

Category nouns and classifiers come from the checked lexicon (两匹斑马, 一辆汽车);
colours from ``items.COLOURS``. Yes/no answers start with their verdict and
mirror the verb of the question, as a Chinese speaker answers: 能看到…吗 ->
能/不能 (看不到), 有…吗 -> 有/没有, 是…吗 -> 是的/不是. Each yes/no question
template is written with the verb its answer takes. Counts put the true number
first, as in English, so the independent checker can read them back.
Activity and "why" questions only about people and animals; no colour
questions about people.
"""

from __future__ import annotations

import random

from datagen.synth.items import COLOURS, Item
from datagen.synth.lexicon import animate, term, zh_count_phrase, zh_number

REL = {"left": "左边", "right": "右边", "above": "上方", "below": "下方"}
SIZE = {"bigger": "大", "larger": "大", "smaller": "小"}
OPP = {"大": "小", "小": "大"}


def _n(label: str) -> str:
    return term(label).zh


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return "、".join(parts[:-1]) + "和" + parts[-1]


def inventory_phrase(inv: list[tuple[str, int | str]]) -> str:
    """"两匹斑马、一辆汽车和许多人" (crowd: 许多, uncertain count: 一些)."""
    return _join([f"许多{_n(lab)}" if n == "many" else f"一些{_n(lab)}" if n == "some" else zh_count_phrase(lab, n) for lab, n in inv])


def _colours(cols: list[str]) -> str:
    return _join(list(dict.fromkeys(COLOURS[c] for c in cols)))


# Yes/no answers by the question's verb: (yes, no) openings, short and full.
YES = {"有": ("有。", "有，"), "能": ("能。", "能，"), "是": ("是的。", "是的，")}
NO = {"有": ("没有。", "没有，"), "能": ("不能。", "不能，"), "是": ("不是。", "不是，")}

EXISTENCE_Q = [
    ("图中有{x}吗？", "有"), ("这张图片里能看到{x}吗？", "能"), ("图片中是否有{x}？", "有"), ("你能在图中看到{x}吗？", "能"),
    ("照片里有没有{x}？", "有"), ("画面中有{x}吗？", "有"), ("这张照片里有{x}吗？", "有"), ("能在画面里找到{x}吗？", "能"),
    ("图上有没有{x}？", "有"), ("请看图片：里面有{x}吗？", "有"), ("这幅图中能看见{x}吗？", "能"), ("图片里是不是有{x}？", "有"),
    ("画面中是否能看到{x}？", "能"), ("照片中是否有{x}出现？", "有"), ("你在这张图里能找到{x}吗？", "能"), ("图中是否能找到{x}？", "能"),
]
COUNTING_Q = [
    "图中有几{m}{x}？", "数一数图中有几{m}{x}。", "这张图片里一共有多少{m}{x}？", "画面中能看到几{m}{x}？", "请问照片里有几{m}{x}？",
    "图片上的{x}有几{m}？", "你能数出图中有几{m}{x}吗？", "这张照片里{x}的数量是多少？", "画面里一共有几{m}{x}？", "请数一下图中的{x}。",
    "图里能数出多少{m}{x}？", "这幅图中有多少{m}{x}？", "照片中出现了几{m}{x}？", "告诉我图中{x}的数量。", "图中的{x}一共有几{m}？",
]
WRONG_COUNT_Q_ANY = [
    "请描述图中的{cx}。", "这{cx}在图中的什么位置？", "图片里那{cx}看起来怎么样？", "说说照片中的{cx}。", "图中的{cx}是怎么摆放的？",
    "能介绍一下画面里的{cx}吗？", "那{cx}在图片的哪个位置？", "描述一下图里的{cx}。", "照片中的{cx}都在哪里？", "图中这{cx}有什么特点？",
    "请说明画面中{cx}的位置。",
]
WRONG_COUNT_Q_ANIMATE = ["图中的{cx}在做什么？", "照片里的{cx}在看什么？", "画面中的{cx}为什么聚在一起？", "图中那{cx}正在干什么？"]
SPATIAL_OPEN_Q = [
    "{a}在{b}的什么位置？", "{a}相对于{b}在哪里？", "请说明{a}相对于{b}的位置。", "{a}位于{b}的哪一侧？", "从图中看，{a}在{b}的哪个方向？",
    "{a}在{b}的哪边？", "{a}和{b}的位置关系是怎样的？", "图中{a}在{b}的哪一边？", "请描述{a}相对{b}的方位。", "{a}处在{b}的什么方向？",
    "{a}相对{b}在哪个位置？", "画面里{a}在{b}的哪一侧？", "说说{a}在{b}的哪边。", "照片中{a}和{b}相比在什么方位？", "{a}在{b}哪一侧？",
]
SPATIAL_YN_Q = [
    ("{a}在{b}的{rel}吗？", "是"), ("图中的{a}是在{b}的{rel}吗？", "是"), ("{a}位于{b}的{rel}吗？", "是"), ("从图上看，{a}在{b}的{rel}吗？", "是"),
    ("画面里{a}是不是在{b}的{rel}？", "是"), ("{a}是在{b}的{rel}吧？", "是"), ("照片中{a}处在{b}的{rel}吗？", "是"), ("请确认：{a}在{b}的{rel}吗？", "是"),
    ("图中{a}的位置是在{b}的{rel}吗？", "是"), ("能看出{a}在{b}的{rel}吗？", "能"), ("{a}是否位于{b}的{rel}？", "是"), ("这张图里{a}在{b}的{rel}吗？", "是"),
    ("看这张照片，{a}是不是在{b}的{rel}？", "是"), ("能说{a}在{b}的{rel}吗？", "能"), ("画面中，{a}在{b}的{rel}吗？", "是"),
]
SIZE_CHOICE_Q = [
    "图中{a}和{b}哪个看起来更{s}？", "{a}和{b}，哪一个在画面中显得更{s}？", "这张图片里，{a}和{b}谁看起来更{s}？", "比较一下{a}和{b}，哪个在图中更{s}？",
    "{a}与{b}相比，哪个在照片里更{s}？", "{a}和{b}中哪一个显得更{s}？", "画面里{a}和{b}哪个占的面积更{s}？", "{a}、{b}，哪个看起来更{s}一些？",
    "请比较{a}和{b}：哪个更{s}？", "照片中，{a}和{b}哪一个更{s}？", "在这张图里，{a}和{b}谁显得更{s}？", "{a}和{b}哪个在图中看上去更{s}？",
    "你觉得{a}和{b}哪个更{s}？", "图片中{a}与{b}哪个显得更{s}？", "就画面来看，{a}和{b}哪个更{s}？",
]
SIZE_YN_Q = [
    ("图中的{a}比{b}{s}吗？", "是"), ("{a}看起来比{b}{s}吗？", "是"), ("画面中{a}是不是比{b}{s}？", "是"), ("在这张图片里，{a}显得比{b}{s}吗？", "是"),
    ("{a}在图中占的面积比{b}{s}吗？", "是"), ("照片里{a}比{b}{s}吗？", "是"), ("{a}是否比{b}{s}？", "是"), ("从图上看，{a}比{b}{s}吗？", "是"),
    ("能说{a}比{b}{s}吗？", "能"), ("{a}显得比{b}{s}吧？", "是"), ("这张照片中{a}看上去比{b}{s}吗？", "是"), ("画面里的{a}比{b}{s}吗？", "是"),
    ("{a}是不是看起来比{b}{s}？", "是"), ("请确认：{a}比{b}{s}吗？", "是"), ("图里{a}在画面中比{b}{s}吗？", "是"),
]
PREMISE_ANY = [
    "请描述图中的{c}。", "图片里的{c}在哪里？", "说说照片中的{c}。", "图中的{c}看起来怎么样？", "画面里的{c}在什么位置？",
    "介绍一下图中的{c}。", "图中的{c}有多大？", "照片里的{c}有什么特点？", "请指出图中的{c}。",
]
PREMISE_ANCHOR_ANY = ["请描述{p}旁边的{c}。", "说说{p}旁边的{c}。", "{p}附近的{c}看起来怎么样？", "{c}离{p}有多远？", "{p}边上的{c}是什么样子的？", "介绍一下{p}旁的{c}。"]
PREMISE_ANIMATE = ["图中的{c}在做什么？", "照片里的{c}在看什么？", "画面中的{c}为什么在那里？", "图里的{c}正在干什么？"]
PREMISE_ANCHOR_ANIMATE = ["{p}旁边的{c}在做什么？", "{p}边上的{c}为什么在那里？", "{p}附近的{c}在看什么？"]
PREMISE_COLOUR = ["图中的{c}是什么颜色的？", "照片里的{c}是什么颜色？"]
PREMISE_ANCHOR_COLOUR = ["{p}附近的{c}是什么颜色的？"]
ATTR_YN_Q = [
    ("{x}是{col}的吗？", "是"), ("图中的{x}是{col}的吗？", "是"), ("这{m}{x}是不是{col}的？", "是"), ("{x}的颜色是{col}吗？", "是"),
    ("画面里的{x}是{col}的吗？", "是"), ("照片中的{x}是{col}的吗？", "是"), ("能说这{m}{x}是{col}的吗？", "能"), ("{x}看起来是{col}的吗？", "是"),
    ("图里那{m}{x}是{col}的吧？", "是"), ("请确认：{x}是{col}的吗？", "是"), ("这{m}{x}的颜色是不是{col}？", "是"), ("{x}是否是{col}的？", "是"),
    ("画面中的{x}是{col}的吗？", "是"), ("图片上的{x}是{col}的吗？", "是"), ("你看这{m}{x}是{col}的吗？", "是"),
]
ATTR_OPEN_Q = ["{x}是什么颜色的？", "图中的{x}是什么颜色？", "这{m}{x}是什么颜色的？", "请说出{x}的颜色。", "画面里的{x}是什么颜色的？", "照片中{x}的颜色是什么？"]
ATTR_PREMISE_Q_ANY = ["请描述图中{col}的{x}。", "图中{col}的{x}在哪里？", "说说那{m}{col}的{x}。", "{col}的{x}旁边有什么？", "{col}的{x}有多大？"]
ATTR_PREMISE_Q_ANIMATE = ["{col}的{x}在做什么？", "那{m}{col}的{x}在看什么？"]
TEXT_OPEN_Q = [
    "图中的文字写的是什么？", "图片上写着什么字？", "你能读出图中的文字吗？请读出来。", "照片里的文字内容是什么？", "画面中有哪些文字？",
    "图上的字写的是什么？", "请把图中的文字读出来。", "这张图片里写了什么？", "照片上能看到什么文字？", "图中印着什么字？",
    "画面里的文字是什么意思？先读出来。", "请告诉我图中写着什么。", "图片中可以读到哪些字？", "这张照片上的文字是什么？", "图里的标识上写的是什么？",
]
TEXT_YN_Q = [("图中的文字是{t}吗？", "是"), ("图片上写的是{t}吗？", "是"), ("照片里能看到{t}这几个字吗？", "能"), ("画面中的文字是不是{t}？", "是"),
             ("图上写着{t}吗？", "是"), ("能在图中读到{t}吗？", "能")]
BRIEF_Q = [
    "简要描述一下这张图片。", "用一句话概括这张图片。", "这张图片展示了什么？请简短回答。", "请简单说说图中的内容。", "给这张照片写一段简短的描述。",
    "这张图拍的是什么？", "一句话说说你看到了什么。", "为这张图片写一句说明。", "简单介绍一下这张照片。", "图中是什么场景？简短回答。",
    "用几个字概括这张图。", "请给这张图片配一句话。", "这张照片的主要内容是什么？", "简述一下画面内容。", "这幅图描绘了什么？请简要回答。",
]
DETAILED_Q = [
    "详细描述一下这张图片。", "请详细说说图中都有什么。", "仔细看这张图片，描述你看到的内容。", "请对这张照片做详细的描述。", "写一段详细的文字描述这张图片。",
    "请尽可能完整地描述这张图。", "带我看看这张图片里都有什么。", "请详细介绍画面中的场景。", "描述一下这张照片，包括细节。", "这张图里有什么？请详细说明。",
    "用一段话详细描写这张图片。", "请仔细描述图中的内容和细节。", "详细讲讲这张照片展示了什么。", "能用几句话详细描述这张图吗？", "请认真描述这张图片的画面。",
]


def _yesno(verb: str, yes: bool, full: bool, rest: str) -> str:
    short, lead = (YES if yes else NO)[verb]
    return lead + rest if full else short


def render(item: Item, rng: random.Random, full: bool) -> tuple[str, str] | None:
    f = item.facts
    fam = item.family
    pick = rng.choice
    if fam == "existence":
        x = _n(f["label"])
        q, verb = pick(EXISTENCE_Q)
        q = q.format(x=x)
        if item.polarity == "positive":
            rest = {"有": f"图中有{x}。", "能": f"画面中可以看到{x}。", "是": f"图中有{x}。"}[verb]
        else:
            rest = {"有": f"图中没有{x}。", "能": f"画面中看不到{x}。", "是": f"图中没有{x}。"}[verb]
        return q, _yesno(verb, item.polarity == "positive", full, rest)
    if fam == "counting":
        lab, n = f["label"], f["count"]
        t = term(lab)
        q = pick(COUNTING_Q).format(m=t.zh_measure, x=t.zh)
        a = pick([f"图中有{zh_count_phrase(lab, n)}。", f"画面里一共有{zh_count_phrase(lab, n)}。", f"我数到{zh_count_phrase(lab, n)}。"]) if full else f"{zh_number(n)}{t.zh_measure}。"
        return q, a
    if fam == "wrong_count":
        lab, n, claimed = f["label"], f["count"], f["claimed"]
        t = term(lab)
        q = pick(WRONG_COUNT_Q_ANY + (WRONG_COUNT_Q_ANIMATE if animate(lab) else [])).format(cx=zh_count_phrase(lab, claimed))
        wrong = f"{zh_number(claimed)}{t.zh_measure}"
        if full:
            a = pick([f"其实图中有{zh_count_phrase(lab, n)}，而不是{wrong}。", f"图中实际上有{zh_count_phrase(lab, n)}，不是{wrong}。"])
        else:
            a = f"其实是{zh_count_phrase(lab, n)}。"
        return q, a
    if fam == "spatial":
        a_, b_ = _n(f["a"]), _n(f["b"])
        if f["form"] == "open":
            q = pick(SPATIAL_OPEN_Q).format(a=a_, b=b_)
            a = f"{a_}在{b_}的{REL[f['truth']]}。" if full else f"在{b_}的{REL[f['truth']]}。"
            return q, a
        rel = REL[f["asked"]]
        q, verb = pick(SPATIAL_YN_Q)
        q = q.format(a=a_, b=b_, rel=rel)
        yes = item.polarity == "positive"
        return q, _yesno(verb, yes, full, f"{a_}在{b_}的{rel if yes else REL[f['truth']]}。")
    if fam == "relative_size":
        a_, b_ = _n(f["a"]), _n(f["b"])
        s = SIZE[f["asked"]]
        if f["form"] == "choice":
            q = pick(SIZE_CHOICE_Q).format(a=a_, b=b_, s=s)
            w = _n(f["winner"])
            return q, (f"{w}看起来更{s}。" if full else f"{w}。")
        q, verb = pick(SIZE_YN_Q)
        q = q.format(a=a_, b=b_, s=s)
        yes = item.polarity == "positive"
        return q, _yesno(verb, yes, full, f"{a_}看起来比{b_}{s if yes else OPP[s]}。")
    if fam == "false_premise":
        lab, anchor = f["label"], f.get("anchor")
        c = _n(lab)
        live, coloured = animate(lab), lab != "person"
        if anchor:
            pool = PREMISE_ANCHOR_ANY + (PREMISE_ANCHOR_ANIMATE if live else []) + (PREMISE_ANCHOR_COLOUR if coloured else [])
            q = pick(pool).format(c=c, p=_n(anchor))
        else:
            pool = PREMISE_ANY + (PREMISE_ANIMATE if live else []) + (PREMISE_COLOUR if coloured else [])
            q = pick(pool).format(c=c)
        base = pick([f"图中没有{c}。", f"画面里没有{c}。", f"这张图片里没有{c}。"])
        if full and f.get("inventory"):
            a = base + pick(["图中可以看到", "图片中有"]) + inventory_phrase(f["inventory"]) + "。"
        else:
            a = base
        return q, a
    if fam == "attribute":
        x, true = _n(f["label"]), _colours(f["true"])
        m = term(f["label"]).zh_measure  # 这张长椅, 那辆卡车: the demonstrative takes the classifier
        if f["form"] == "open":
            q = pick(ATTR_OPEN_Q).format(x=x, m=m)
            return q, (f"{x}是{true}的。" if full else f"{true}。")
        col = COLOURS[f["asked"]]
        if f["form"] == "premise":
            pool = ATTR_PREMISE_Q_ANY + (ATTR_PREMISE_Q_ANIMATE if animate(f["label"]) else [])
            return pick(pool).format(col=col, x=x, m=m), f"图中没有{col}的{x}，{x}是{true}的。"
        q, verb = pick(ATTR_YN_Q)
        q = q.format(x=x, col=col, m=m)
        yes = item.polarity == "positive"
        return q, _yesno(verb, yes, full, f"{x}是{col if yes else true}的。")
    if fam == "scene_text":
        quoted = _join([f"“{t}”" for t in f["texts"]]) if f["texts"] else ""
        if f["form"] == "premise":
            return pick(TEXT_OPEN_Q), pick(["图中没有可以辨认的文字。", "画面里没有能读出的文字。"])
        if f["form"] == "yesno":
            q, verb = pick(TEXT_YN_Q)
            q = q.format(t=f"“{f['asked']}”")
            if item.polarity == "positive":
                return q, _yesno(verb, True, full, f"上面写着“{f['asked']}”。")
            return q, _yesno(verb, False, True, f"上面写的是{quoted}。")
        a = pick([f"图中的文字是{quoted}。", f"上面写着{quoted}。"]) if full else f"{quoted}。"
        return pick(TEXT_OPEN_Q), a
    if fam == "brief_description":
        q = pick(BRIEF_Q)
        if f.get("zh_captions"):
            return q, f["zh_captions"][0]
        if f.get("inventory"):
            return q, pick(["图中有", "这张图片里有", "画面中可以看到"]) + inventory_phrase(f["inventory"]) + "。"
        return None
    if fam == "detailed_description":
        q = pick(DETAILED_Q)
        parts = list(f.get("zh_captions") or [])
        if f.get("inventory"):
            parts.append(pick(["图中可以看到", "画面里还能看到", "仔细看，图中有"]) + inventory_phrase(f["inventory"]) + "。")
        rels = [f"{_n(a_lab)}在{_n(b_lab)}的{REL[rel]}" for a_lab, rel, b_lab in f.get("relations") or []]
        if rels:
            parts.append("，".join(rels) + "。")
        if not parts:
            return None
        return q, "".join(parts)
    raise ValueError(f"no Chinese templates for family {fam!r}")
