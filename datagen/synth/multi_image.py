"""Multi-image and in-context samples (MMICL style).

Images are declared in the text ("Image 0 is <image_0>." / "图0是<image_0>。"),
questions refer to them by index, and few-shot examples built as separate
samples are merged by ``merge_samples``, which renumbers every example's
placeholders by an offset so that no index collides. ``placeholder_errors``
states the contract (every ``<image_N>`` names exactly one image of the row's
list, every image is named) and the tests check it with hypothesis.

Rows get keys ``mm_<hash of the image keys>``; which images are grouped
depends on the batch (images are grouped within one batch), and is
deterministic for a given batch and seed.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from datagen.records import to_json
from datagen.synth.facts import ImageFacts
from datagen.synth.lexicon import LEXICON, en_count_phrase, en_number, en_with_article, term, zh_count_phrase, zh_number

PLACEHOLDER = re.compile(r"<image(?:_(\d+))?>")


@dataclass
class Sample:
    """Text with placeholders numbered from 0 and the images they name, in order."""

    images: list[str]
    turns: list[dict[str, Any]]


def _sub(text: str, offset: int) -> str:
    def repl(m: re.Match) -> str:
        idx = 0 if m.group(1) is None else int(m.group(1))
        return f"<image_{idx + offset}>"

    return PLACEHOLDER.sub(repl, text)


def renumber_text(text: str, offset: int) -> str:
    """``<image>`` -> ``<image_{offset}>``, ``<image_k>`` -> ``<image_{k+offset}>``; also the
    plain-text indices "Image k"/"image k"/"图k" that refer to placeholders."""
    text = re.sub(r"\b([Ii]mages?) (\d+)\b", lambda m: f"{m.group(1)} {int(m.group(2)) + offset}", text)
    text = re.sub(r"图(\d+)", lambda m: f"图{int(m.group(1)) + offset}", text)
    return _sub(text, offset)


def merge_samples(samples: list[Sample]) -> Sample:
    """Concatenate samples into one; each sample's images are renumbered after the previous ones."""
    images: list[str] = []
    turns: list[dict[str, Any]] = []
    for s in samples:
        off = len(images)
        images.extend(s.images)
        turns.extend({**t, "content": renumber_text(t["content"], off)} for t in s.turns)
    return Sample(images, turns)


def placeholder_errors(images: list[str], texts: list[str]) -> list[str]:
    """Violations of the placeholder contract for a multi-image row (empty list: fine)."""
    errs = []
    seen = Counter()
    for t in texts:
        for m in PLACEHOLDER.finditer(t):
            if m.group(1) is None:
                errs.append("bare <image> in a multi-image sample")
                continue
            i = int(m.group(1))
            if i >= len(images):
                errs.append(f"<image_{i}> but only {len(images)} images")
            seen[i] += 1
    for i in range(len(images)):
        if seen[i] == 0:
            errs.append(f"image {i} ({images[i]}) never referenced")
        elif seen[i] > 1:
            errs.append(f"<image_{i}> declared {seen[i]} times")
    if len(set(images)) != len(images):
        errs.append("the same image key twice in one sample")
    return errs


# ---------------------------------------------------------------------------- rendering

def _declare(n: int, lang: str) -> str:
    if lang == "en":
        return " ".join(f"Image {i} is <image_{i}>." for i in range(n))
    return "".join(f"图{i}是<image_{i}>。" for i in range(n))


def _which_images(idxs: list[int], lang: str) -> str:
    if lang == "en":
        if len(idxs) == 1:
            return f"Image {idxs[0]}"
        return "Images " + ", ".join(map(str, idxs[:-1])) + f" and {idxs[-1]}"
    return "和".join(f"图{i}" for i in idxs)


def cross_image_items(facts: list[ImageFacts], neg_slots: set[str], rng) -> dict[str, Any]:
    """Plan the questions of one cross-image sample; the polar items named in ``neg_slots``
    ("which": which image shows X, "exists": does image k show X) ask about an absent category."""
    present = sorted(set().union(*(f.present for f in facts)))
    seen = sorted(set().union(*(f.visible for f in facts)))  # ask only about what one can make out
    absent = sorted(set(LEXICON) - set().union(*(f.not_absent() for f in facts)))
    which_label = rng.choice(absent if "which" in neg_slots else seen)
    k = rng.randrange(len(facts))
    exists_label = rng.choice(sorted(set(absent) - {which_label}) if "exists" in neg_slots else sorted(facts[k].visible))
    countable = sorted(lab for lab in present if all(lab not in f.crowd and lab not in f.hidden for f in facts)
                       and sum(f.counts.get(lab, 0) for f in facts) > 0)
    i, j = rng.sample(range(len(facts)), 2)
    return {
        "which": (which_label, [x for x, f in enumerate(facts) if which_label in f.present]),
        "exists": (k, exists_label, exists_label in facts[k].present),
        "count": rng.choice(countable) if countable else None,
        "diff": (i, j, sorted(facts[i].visible - facts[j].present)),
    }


WHICH_Q_EN = ["Which image shows {ax}?", "In which of the images can you see {ax}?", "Which of these images contains {ax}?",
              "Which picture has {ax} in it?", "In which image does {ax} appear?", "Where can I find {ax}: which image?"]
WHICH_Q_ZH = ["哪张图片里有{x}？", "在哪张图中可以看到{x}？", "这些图片中，哪张包含{x}？", "哪一张图里出现了{x}？", "{x}出现在哪张图片中？", "请指出哪张图里有{x}。"]
EXISTS_Q_EN = ["Is there {ax} in image {k}?", "Does image {k} show {ax}?", "Can you see {ax} in image {k}?",
               "Is {ax} visible in image {k}?", "Does image {k} contain {ax}?", "Look at image {k}: is there {ax}?"]
EXISTS_Q_ZH = [("图{k}中有{x}吗？", "有"), ("图{k}里能看到{x}吗？", "能"), ("图{k}中是否有{x}？", "有"),
               ("图{k}里有没有{x}？", "有"), ("在图{k}中能找到{x}吗？", "能"), ("请看图{k}：里面有{x}吗？", "有")]
COUNT_Q_EN = ["How many {xs} are there across all the images?", "Counting every image, how many {xs} can you see?",
              "How many {xs} do the images show in total?", "Across these pictures, how many {xs} are there?",
              "Add up the {xs} in all the images: how many?", "What is the total number of {xs} over all the images?"]
COUNT_Q_ZH = ["所有图片里一共有几{m}{x}？", "把每张图都算上，一共有多少{m}{x}？", "这些图片中总共有几{m}{x}？",
              "所有图加起来有多少{m}{x}？", "数一数全部图片里的{x}，一共几{m}？", "这几张图里{x}的总数是多少？"]
DIFF_Q_EN = ["What does image {i} show that image {j} does not?", "Which kinds of objects are in image {i} but not in image {j}?",
             "What does image {i} have that is missing from image {j}?", "What appears in image {i} and not in image {j}?",
             "Name the objects of image {i} that image {j} lacks.", "What can you find in image {i} that you cannot find in image {j}?"]
DIFF_Q_ZH = ["图{i}里有哪些东西是图{j}里没有的？", "图{i}和图{j}相比，多了哪些物体？", "哪些物体出现在图{i}中却不在图{j}中？",
             "图{i}有什么是图{j}没有的？", "请列出图{i}里有而图{j}里没有的物体。", "对比图{i}和图{j}，图{i}独有哪些东西？"]


def _en_shown(label: str, f: ImageFacts) -> str:
    """How many of ``label`` an image shows, agreeing in number: "a horse", "two horses", "many people"."""
    n = f.counts.get(label, 0)
    if label in f.crowd or label in f.hidden:
        return f"some {term(label).en_plural}"
    return en_with_article(label) if n == 1 else en_count_phrase(label, n)


def render_cross(items: dict, facts: list[ImageFacts], lang: str, rng) -> list[dict[str, Any]]:
    n = len(facts)
    label, which = items["which"]
    turns = []
    pol = "positive" if which else "negative"
    if lang == "en":
        ax = en_with_article(label)
        q = rng.choice(WHICH_Q_EN).format(ax=ax)
        a = f"{_which_images(which, 'en')}." if which else f"None of the images shows {ax}."
    else:
        x = term(label).zh
        q = rng.choice(WHICH_Q_ZH).format(x=x)
        a = f"{_which_images(which, 'zh')}。" if which else f"这些图片里都没有{x}。"
    turns.append(("multi_image_which", pol, q, a))
    k, lab, yes = items["exists"]
    if lang == "en":
        ax = en_with_article(lab)
        q = rng.choice(EXISTS_Q_EN).format(ax=ax, k=k)
        a = f"Yes, image {k} shows {_en_shown(lab, facts[k])}." if yes else f"No, there is no {term(lab).en} in image {k}."
    else:
        x = term(lab).zh
        q, verb = rng.choice(EXISTS_Q_ZH)
        q = q.format(k=k, x=x)
        if verb == "能":
            a = f"能，图{k}中可以看到{x}。" if yes else f"不能，图{k}中看不到{x}。"
        else:
            a = f"有，图{k}中有{x}。" if yes else f"没有，图{k}中没有{x}。"
    turns.append(("multi_image_existence", "positive" if yes else "negative", q, a))
    if items["count"]:
        lab = items["count"]
        total = sum(f.counts.get(lab, 0) for f in facts)
        if lang == "en":
            q = rng.choice(COUNT_Q_EN).format(xs=term(lab).en_plural)
            a = f"{en_number(total).capitalize()} in total: " + ", ".join(
                f"{en_count_phrase(lab, f.counts.get(lab, 0))} in image {k}" for k, f in enumerate(facts)) + "."
        else:
            t = term(lab)
            q = rng.choice(COUNT_Q_ZH).format(m=t.zh_measure, x=t.zh)
            a = f"一共{zh_number(total)}{t.zh_measure}：" + "，".join(f"图{k}中{zh_count_phrase(lab, f.counts.get(lab, 0))}" for k, f in enumerate(facts)) + "。"
        turns.append(("multi_image_count", "positive", q, a))
    i, j, diff = items["diff"]
    if lang == "en":
        q = rng.choice(DIFF_Q_EN).format(i=i, j=j)
        a = ("Image {} shows {}, which image {} does not.".format(i, _en_join([_en_shown(d, facts[i]) for d in diff]), j)
             if diff else f"Nothing: every kind of object in image {i} also appears in image {j}.")
    else:
        q = rng.choice(DIFF_Q_ZH).format(i=i, j=j)
        a = (f"图{i}里有{_zh_join([term(d).zh for d in diff])}，图{j}里没有。" if diff else f"图{i}里的每类物体在图{j}里也都有。")
    # A comparison, not a yes/no claim: neutral, so it does not tilt the polarity ratio.
    turns.append(("multi_image_difference", "neutral", q, a))
    out = []
    for k, (task, pol, q, a) in enumerate(turns):
        if k == 0:
            q = _declare(n, lang) + "\n" + q
        out.append({"role": "user", "content": q, "task": task, "polarity": pol, "generator": "template"})
        out.append({"role": "assistant", "content": a, "task": task, "polarity": pol, "generator": "template"})
    return out


def _zh_join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else "、".join(parts[:-1]) + "和" + parts[-1]


def _en_join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# In-context questions (MMICL prompt format); counting ones say "how many"/"几", which the checker reads.
SHOT_COUNT_EN = ["how many {xs} are in image 0?", "how many {xs} does image 0 show?", "how many {xs} can you count in image 0?",
                 "how many {xs} appear in image 0?", "in image 0, how many {xs} are there?", "how many {xs} are visible in image 0?"]
SHOT_EXISTS_EN = ["is there {ax} in image 0?", "does image 0 show {ax}?", "can you see {ax} in image 0?",
                  "is {ax} visible in image 0?", "does image 0 contain {ax}?", "does {ax} appear in image 0?"]
SHOT_COUNT_ZH = ["图0中有几{m}{x}？", "图0里一共有几{m}{x}？", "图0中能数出几{m}{x}？", "请问图0中有几{m}{x}？",
                 "数一数，图0里有几{m}{x}？", "图0中的{x}有几{m}？"]
SHOT_EXISTS_ZH = [("图0中有{x}吗？", "有"), ("图0里有没有{x}？", "有"), ("图0中是否有{x}？", "有"),
                  ("图0里能看到{x}吗？", "能"), ("在图0中能找到{x}吗？", "能"), ("请看图0：里面有{x}吗？", "有")]


def few_shot_sample(facts: list[ImageFacts], lang: str, rng, query_negative: bool) -> Sample:
    """k solved examples, then a query image, each written as its own one-image sample and merged
    (so each example's <image> is renumbered to its position). Examples mix counting and yes/no
    existence (with "No." answers too), so the model cannot learn to always say yes; the query
    asks about an absent category when ``query_negative``."""
    parts = []
    for k, f in enumerate(facts):
        last = k == len(facts) - 1
        negative = query_negative if last else rng.random() < 0.5
        countable = sorted(lab for lab in f.counts if lab not in f.crowd and lab not in f.hidden)
        if negative:
            lab, n, yes = rng.choice(sorted(set(LEXICON) - f.not_absent())), None, False
        elif countable and not last and rng.random() < 0.5:  # the query stays yes/no: its yes share is the target's
            lab = rng.choice(countable)
            n, yes = f.counts[lab], True
        else:
            lab, n, yes = rng.choice(sorted(f.visible)), None, True
        t = term(lab)
        if lang == "en":
            if n is not None:
                q = "Image 0 is <image>. Question: " + rng.choice(SHOT_COUNT_EN).format(xs=t.en_plural) + " Answer:"
                a = f"{en_number(n).capitalize()}."
            else:
                q = "Image 0 is <image>. Question: " + rng.choice(SHOT_EXISTS_EN).format(ax=en_with_article(lab)) + " Answer:"
                a = "Yes." if yes else "No."
        else:
            if n is not None:
                q = "图0是<image>。问题：" + rng.choice(SHOT_COUNT_ZH).format(m=t.zh_measure, x=t.zh) + "回答："
                a = f"{zh_number(n)}{t.zh_measure}。"
            else:
                q, verb = rng.choice(SHOT_EXISTS_ZH)
                q = "图0是<image>。问题：" + q.format(x=t.zh) + "回答："
                a = ("有。" if yes else "没有。") if verb == "有" else ("能。" if yes else "不能。")
        pol = "negative" if negative else "positive"
        if last:
            turns = [{"role": "user", "content": q, "task": "in_context", "polarity": pol, "generator": "template"},
                     {"role": "assistant", "content": a, "task": "in_context", "polarity": pol, "generator": "template"}]
        else:
            turns = [{"role": "user", "content": f"{q} {a}" if lang == "en" else f"{q}{a}", "task": "in_context", "polarity": pol, "generator": "template"}]
        parts.append(Sample([f.key], turns))
    merged = merge_samples(parts)
    # The solved examples and the query form one user turn, as in MMICL's prompts.
    users = [t for t in merged.turns if t["role"] == "user"]
    joined = {**users[-1], "content": "\n".join(t["content"] for t in users)}
    return Sample(merged.images, [joined, merged.turns[-1]])


def compose_multi_image(usable: list[tuple[dict, ImageFacts]], cfg, ctx, counters: dict[str, Counter]) -> list[dict]:
    """Multi-image rows for one batch: ``share`` of the batch's images, alternating cross-image
    question samples and few-shot in-context samples."""
    mcfg = cfg.multi_image
    with_objects = [f for _, f in usable if f.visible]
    n_img = mcfg.images_per_sample
    if len(with_objects) < max(n_img, mcfg.few_shot + 1, 2):
        return []
    order = sorted(with_objects, key=lambda f: hashlib.sha1(f"{cfg.seed}:{f.key}".encode()).hexdigest())
    rng = ctx.rng("synthesize", cfg.seed, "multi_image", order[0].key, len(order))
    n_samples = math.floor(mcfg.share * len(with_objects) + rng.random())
    rows = []
    pos = 0
    for s in range(n_samples):
        few = mcfg.few_shot > 0 and s % 2 == 1
        size = mcfg.few_shot + 1 if few else n_img
        group = [order[(pos + t) % len(order)] for t in range(size)]
        pos += size
        if len({f.key for f in group}) < size:
            continue
        keys = [f.key for f in group]
        mkey = "mm_" + hashlib.sha1("\x1f".join(keys).encode()).hexdigest()[:16]
        srng = ctx.rng("synthesize", cfg.seed, mkey)
        target_neg = 1 - cfg.positive_ratio
        convs = []
        if few:
            query_negative = srng.random() < target_neg
            for lang in cfg.languages:
                # same example choices in every language: the rng is per sample, not per language
                smp = few_shot_sample(group, lang, ctx.rng("synthesize", cfg.seed, mkey, "shots"), query_negative)
                convs.append({"id": f"{mkey}-c0-{lang}", "lang": lang, "parent_id": None, "turns": smp.turns})
        else:
            # Each yes/no slot is negative with the target share on its own, so each family's yes
            # share is the target's complement (the count question is always positive).
            neg_slots = {slot for slot in ("which", "exists") if srng.random() < target_neg}
            items = cross_image_items(group, neg_slots, srng)
            for lang in cfg.languages:
                turns = render_cross(items, group, lang, ctx.rng("synthesize", cfg.seed, mkey, lang))
                convs.append({"id": f"{mkey}-c0-{lang}", "lang": lang, "parent_id": None, "turns": turns})
        for c in convs:
            for t in c["turns"]:
                if t["role"] == "assistant":
                    counters["family"][t["task"]] += 1
                    counters["polarity"][t["polarity"]] += 1
                    counters["lang"][c["lang"]] += 1
                    counters["family_polarity"][f"{t['task']}:{t['polarity']}"] += 1
                    counters["lang_family_polarity"][f"{c['lang']}:{t['task']}:{t['polarity']}"] += 1
        rows.append({"key": mkey, "source": "multi_image", "images": keys, "conversations": convs,
                     "meta": to_json({"generator": "template", "kind": "few_shot" if few else "cross_image"})})
    return rows
