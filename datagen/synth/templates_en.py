"""English templates: several phrasings per family, answers short or full.

Grammar goes through the lexicon (articles by sound, irregular plurals, number
words), never through string concatenation of a label. Every answer to a
yes/no item starts with its verdict ("Yes"/"No"/"There is no"), and every
answer that states a count puts the true count first; the independent checker
relies on that reading order, not on hidden fields.
"""

from __future__ import annotations

import random

from datagen.synth import scene_templates
from datagen.synth.items import Item
from datagen.synth.scene import FAMILIES as SCENE_FAMILIES
from datagen.synth.lexicon import en_count_phrase, en_number, en_with_article, indefinite_article, term

REL = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
OPP_SIZE = {"bigger": "smaller", "larger": "smaller", "smaller": "bigger"}


def _the(label: str) -> str:
    return f"the {term(label).en}"


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def inventory_phrase(inv: list[tuple[str, int | None]]) -> str:
    """"two zebras, a car and a crowd of people"."""
    parts = []
    for lab, n in inv:
        if n is None:
            parts.append(f"a crowd of {term(lab).en_plural}")
        elif n == 1:
            parts.append(en_with_article(lab))
        else:
            parts.append(en_count_phrase(lab, n))
    return _join(parts)


def _there_be(label: str, n: int) -> str:
    return f"there is {en_count_phrase(label, n)}" if n == 1 else f"there are {en_count_phrase(label, n)}"


def _colours(cols: list[str]) -> str:
    return _join(list(cols))


def render(item: Item, rng: random.Random, full: bool) -> tuple[str, str] | None:
    f = item.facts
    fam = item.family
    pick = rng.choice
    if fam in SCENE_FAMILIES:
        return scene_templates.render_en(item, rng, full)
    if fam == "existence":
        lab = f["label"]
        ax = en_with_article(lab)
        q = pick([
            f"Is there {ax} in the image?",
            f"Can you see {ax} in this picture?",
            f"Does the image contain {ax}?",
            f"Is {ax} visible in the photo?",
            f"Do you see {ax} anywhere in the image?",
            f"Is there {ax} in this photo?",
        ])
        if item.polarity == "positive":
            a = pick([f"Yes, there is {ax} in the image.", f"Yes, I can see {ax} in the picture."]) if full else "Yes."
        else:
            a = pick([f"No, there is no {term(lab).en} in the image.", f"No, I don't see {ax} in this picture."]) if full else "No."
        return q, a
    if fam == "counting":
        lab, n = f["label"], f["count"]
        xs = term(lab).en_plural
        q = pick([
            f"How many {xs} are there in the image?",
            f"How many {xs} can you see?",
            f"Count the {xs} in this picture.",
            f"What is the number of {xs} in the image?",
            f"How many {xs} does the photo show?",
        ])
        if full:
            a = pick([f"{_cap(_there_be(lab, n))} in the image.", f"I can count {en_count_phrase(lab, n)} in the picture."])
        else:
            a = f"{_cap(en_number(n))}."
        return q, a
    if fam == "wrong_count":
        lab, n, claimed = f["label"], f["count"], f["claimed"]
        xs = f"{en_number(claimed)} {term(lab).en_plural}"
        q = pick([
            f"What are the {xs} in the image doing?",
            f"Can you describe the {xs} in this picture?",
            f"Where are the {xs} located in the image?",
            f"Describe the {xs} you see in the photo.",
            f"Tell me about the {xs} in this image.",
        ])
        if full:
            a = pick([
                f"Actually, {_there_be(lab, n)} in the image, not {en_number(claimed)}.",
                f"I count {en_count_phrase(lab, n)} in the image, not {en_number(claimed)}.",
            ])
        else:
            a = f"{_cap(_there_be(lab, n))}."
        return q, a
    if fam == "spatial":
        a_, b_ = _the(f["a"]), _the(f["b"])
        if f["form"] == "open":
            q = pick([
                f"Where is {a_} relative to {b_}?",
                f"How is {a_} positioned relative to {b_}?",
                f"Describe where {a_} is in relation to {b_}.",
                f"Where can {a_} be found compared with {b_}?",
                f"What is the position of {a_} compared with {b_}?",
            ])
            a = f"{_cap(a_)} is {REL[f['truth']]} {b_}." if full else f"{_cap(REL[f['truth']])} {b_}."
            return q, a
        rel = REL[f["asked"]]
        q = pick([
            f"Is {a_} {rel} {b_}?",
            f"In the image, is {a_} {rel} {b_}?",
            f"Would you say {a_} is {rel} {b_}?",
            f"Looking at the picture, is {a_} {rel} {b_}?",
            f"Is {a_} located {rel} {b_} in the image?",
        ])
        if item.polarity == "positive":
            a = f"Yes, {a_} is {rel} {b_}." if full else "Yes."
        else:
            a = f"No, {a_} is {REL[f['truth']]} {b_}." if full else "No."
        return q, a
    if fam == "relative_size":
        a_, b_ = _the(f["a"]), _the(f["b"])
        cmp = f["asked"]
        if f["form"] == "choice":
            q = pick([
                f"Which looks {cmp} in the image, {a_} or {b_}?",
                f"Which one appears {cmp} in this picture: {a_} or {b_}?",
                f"In the photo, which is {cmp}, {a_} or {b_}?",
                f"Which takes up a {cmp} part of the image, {a_} or {b_}?",
                f"Between {a_} and {b_}, which looks {cmp} here?",
            ])
            w = _the(f["winner"])
            a = f"{_cap(w)} looks {cmp}." if full else f"{_cap(w)}."
            return q, a
        q = pick([
            f"Is {a_} {cmp} than {b_} in the image?",
            f"Does {a_} look {cmp} than {b_}?",
            f"In this picture, does {a_} appear {cmp} than {b_}?",
            f"Would you say {a_} looks {cmp} than {b_} here?",
            f"Is {a_} shown {cmp} than {b_} in the photo?",
        ])
        if item.polarity == "positive":
            a = f"Yes, {a_} looks {cmp} than {b_}." if full else "Yes."
        else:
            a = f"No, {a_} looks {OPP_SIZE[cmp]} than {b_}." if full else "No."
        return q, a
    if fam == "false_premise":
        lab, anchor = f["label"], f.get("anchor")
        c = _the(lab)
        if anchor:
            p = _the(anchor)
            q = pick([
                f"Describe {c} next to {p}.",
                f"What is {c} near {p} doing?",
                f"Can you tell me about {c} beside {p}?",
                f"What color is {c} next to {p}?",
                f"Why is {c} so close to {p}?",
            ])
        else:
            q = pick([
                f"Describe {c} in the image.",
                f"What is {c} in this picture doing?",
                f"What color is {c} in the photo?",
                f"Where is {c} in the image?",
                f"Tell me about {c} in this picture.",
            ])
        base = f"There is no {term(lab).en} in this image"
        if full and f.get("inventory"):
            inv = inventory_phrase(f["inventory"])
            a = pick([f"{base}, so I cannot describe it. I can see {inv}.", f"{base}. The image shows {inv}."])
        else:
            a = f"{base}."
        return q, a
    if fam == "attribute":
        lab, col, true = f["label"], f["asked"], f["true"]
        x = term(lab).en
        if f["form"] == "premise":
            cx = f"{col} {x}"
            q = pick([
                f"Describe the {cx} in the image.",
                f"What is the {cx} doing?",
                f"Where is the {cx} in this picture?",
                f"Tell me about the {cx}.",
                f"What is next to the {cx}?",
            ])
            a = f"There is no {cx} in the image; the {x} is {_colours(true)}."
            return q, a
        q = pick([
            f"Is the {x} {col}?",
            f"Is the {x} in the image {col}?",
            f"Would you describe the {x} as {col}?",
            f"Does the {x} look {col}?",
            f"Is the {x} in this picture {col}?",
        ])
        if item.polarity == "positive":
            a = f"Yes, the {x} is {col}." if full else "Yes."
        else:
            a = f"No, the {x} is {_colours(true)}." if full else "No."
        return q, a
    if fam == "scene_text":
        quoted = _join([f'"{t}"' for t in f["texts"]])
        q = pick([
            "What does the text in the image say?",
            "What is written in this picture?",
            "Can you read the text in the image?",
            "What words appear in the photo?",
            "What does the writing in the image say?",
        ])
        a = pick([f"The text in the image reads {quoted}.", f"It says {quoted}."]) if full else f"{quoted}."
        return q, a
    if fam == "brief_description":
        q = pick([
            "Describe the image briefly.",
            "Give a short description of this picture.",
            "What does this image show? Answer in one sentence.",
            "Summarize the photo in a sentence.",
            "Provide a one-sentence summary of the picture.",
        ])
        if f.get("captions"):
            return q, f["captions"][0]
        if f.get("inventory"):
            return q, f"The image shows {inventory_phrase(f['inventory'])}."
        return None
    if fam == "detailed_description":
        q = pick([
            "Describe the image in detail.",
            "Give a detailed description of this picture.",
            "What can you see in this photo? Please be thorough.",
            "Tell me everything you notice in this image.",
            "Write a detailed paragraph about the picture.",
        ])
        parts = list(f.get("captions") or [])
        if f.get("inventory"):
            parts.append(pick(["In total, I can see", "Altogether, the image shows"]) + f" {inventory_phrase(f['inventory'])}.")
        for a_lab, rel, b_lab in f.get("relations") or []:
            parts.append(f"{_cap(_the(a_lab))} is {REL[rel]} {_the(b_lab)}.")
        if not parts:
            return None
        return q, " ".join(parts)
    raise ValueError(f"no English templates for family {fam!r}")


__all__ = ["render", "inventory_phrase", "indefinite_article"]
