"""English templates: fifteen or more phrasings per family, answers short, full or with a reason.

Grammar goes through the lexicon (articles by sound, irregular plurals, number
words), never through string concatenation of a label. Every answer to a
yes/no item starts with its verdict ("Yes"/"No"/"There is no"), and every
answer that states a count puts the true count first; the independent checker
relies on that reading order, not on hidden fields.

What a careful annotator would not sign, and these templates never write:
asking what a bench is "doing" (activity and "why" questions only for people
and animals), asking the colour of a person, a refusal that does not fit the
question ("so I cannot describe it" to a why-question), and a description
that claims to list everything ("In total, I can see...").
"""

from __future__ import annotations

import random

from datagen.synth.items import Item
from datagen.synth.lexicon import animate, en_count_phrase, en_number, en_with_article, indefinite_article, term

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


def inventory_phrase(inv: list[tuple[str, int | str]]) -> str:
    """"two zebras, a car and a crowd of people" (crowd: "many", uncertain count: "some")."""
    parts = []
    for lab, n in inv:
        if n == "many":
            parts.append("a crowd of people" if lab == "person" else f"many {term(lab).en_plural}")
        elif n == "some":
            parts.append(f"some {term(lab).en_plural}")
        elif n == 1:
            parts.append(en_with_article(lab))
        else:
            parts.append(en_count_phrase(lab, n))
    return _join(parts)


def _there_be(label: str, n: int) -> str:
    return f"there is {en_count_phrase(label, n)}" if n == 1 else f"there are {en_count_phrase(label, n)}"


# ---------------------------------------------------------------------------- questions

EXISTENCE_Q = [
    "Is there {ax} in the image?", "Can you see {ax} in this picture?", "Does the image contain {ax}?",
    "Is {ax} visible in the photo?", "Do you see {ax} anywhere in the image?", "Is there {ax} in this photo?",
    "Does this picture show {ax}?", "Is {ax} present in the image?", "Can {ax} be seen in this photo?",
    "Would I find {ax} in this picture?", "Is there {ax} anywhere in the scene?", "Does the photo include {ax}?",
    "Look at the image: is there {ax}?", "Do you notice {ax} in the picture?", "Does {ax} appear in this image?",
    "Quick check: is there {ax} here?",
]
COUNTING_Q = [
    "How many {xs} are there in the image?", "How many {xs} can you see?", "Count the {xs} in this picture.",
    "What is the number of {xs} in the image?", "How many {xs} does the photo show?", "How many {xs} are in this picture?",
    "Can you count the {xs} for me?", "Tell me how many {xs} you see.", "How many {xs} appear in the image?",
    "What's the count of {xs} in this photo?", "Please count the {xs} in the image.", "How many {xs} are visible here?",
    "In this picture, how many {xs} are there?", "Could you tell me the number of {xs} shown?", "How many {xs} do you count?",
]
# A premise with the wrong count; activity wording only for people and animals.
WRONG_COUNT_Q_ANY = [
    "Can you describe the {xs} in this picture?", "Where are the {xs} located in the image?", "Describe the {xs} you see in the photo.",
    "Tell me about the {xs} in this image.", "What do the {xs} in the picture look like?", "Where exactly are the {xs} in this photo?",
    "Describe the {xs} in the image.", "What can you say about the {xs} here?", "Point out where the {xs} are.",
    "How are the {xs} arranged in the picture?", "Give me a short description of the {xs}.",
]
WRONG_COUNT_Q_ANIMATE = [
    "What are the {xs} in the image doing?", "Why are the {xs} together in this picture?",
    "What are the {xs} in the photo looking at?", "What are the {xs} up to in this image?",
]
SPATIAL_OPEN_Q = [
    "Where is {a} relative to {b}?", "How is {a} positioned relative to {b}?", "Describe where {a} is in relation to {b}.",
    "Where can {a} be found compared with {b}?", "What is the position of {a} compared with {b}?", "Where is {a}, seen from {b}?",
    "In which direction is {a} from {b}?", "Where would you say {a} is, relative to {b}?", "How would you describe the position of {a} relative to {b}?",
    "Where is {a} with respect to {b}?", "Where does {a} sit in relation to {b}?", "Can you tell me where {a} is compared with {b}?",
    "Where is {a} placed with respect to {b}?", "Looking at the picture, where is {a} compared with {b}?", "What is the spatial relation of {a} to {b}?",
]
SPATIAL_YN_Q = [
    "Is {a} {rel} {b}?", "In the image, is {a} {rel} {b}?", "Would you say {a} is {rel} {b}?",
    "Looking at the picture, is {a} {rel} {b}?", "Is {a} located {rel} {b} in the image?", "Is {a} placed {rel} {b}?",
    "Can you confirm that {a} is {rel} {b}?", "Does {a} appear {rel} {b}?", "In this photo, is {a} {rel} {b}?",
    "Is it true that {a} is {rel} {b}?", "Check for me: is {a} {rel} {b}?", "From what you see, is {a} {rel} {b}?",
    "Is {a} positioned {rel} {b}?", "Does the picture show {a} {rel} {b}?", "Is {a} found {rel} {b} in this picture?",
]
SIZE_CHOICE_Q = [
    "Which looks {cmp} in the image, {a} or {b}?", "Which one appears {cmp} in this picture: {a} or {b}?", "In the photo, which is {cmp}, {a} or {b}?",
    "Which takes up a {cmp} part of the image, {a} or {b}?", "Between {a} and {b}, which looks {cmp} here?", "Which of the two looks {cmp}: {a} or {b}?",
    "Comparing {a} and {b}, which appears {cmp}?", "Which seems {cmp} in the picture, {a} or {b}?", "Of {a} and {b}, which one looks {cmp}?",
    "Which is shown {cmp}, {a} or {b}?", "Which covers a {cmp} area of the photo, {a} or {b}?", "Which one looks {cmp} to you, {a} or {b}?",
    "Which is {cmp} in this image, {a} or {b}?", "Looking at {a} and {b}, which appears {cmp}?", "Which object looks {cmp}: {a} or {b}?",
]
SIZE_YN_Q = [
    "Is {a} {cmp} than {b} in the image?", "Does {a} look {cmp} than {b}?", "In this picture, does {a} appear {cmp} than {b}?",
    "Would you say {a} looks {cmp} than {b} here?", "Is {a} shown {cmp} than {b} in the photo?", "Does {a} take up a {cmp} area than {b}?",
    "Is {a} {cmp} than {b} in this photo?", "Does {a} seem {cmp} than {b}?", "Comparing the two, is {a} {cmp} than {b}?",
    "Is it true that {a} looks {cmp} than {b}?", "In the picture, is {a} {cmp} than {b}?", "Does {a} appear {cmp} than {b} in the image?",
    "Looking at the photo, is {a} {cmp} than {b}?", "Would you call {a} {cmp} than {b}?", "Is {a} drawn {cmp} than {b} in this image?",
]
PREMISE_ANY = [
    "Describe {c} in the image.", "Where is {c} in this picture?", "Tell me about {c} in this photo.",
    "What does {c} in the image look like?", "Where exactly is {c} located?", "Can you describe {c} for me?",
    "What is special about {c} in this picture?", "How big is {c} in the photo?", "Point out {c} in the image.",
]
PREMISE_ANCHOR_ANY = [
    "Describe {c} next to {p}.", "Can you tell me about {c} beside {p}?", "What does {c} near {p} look like?",
    "Where is {c} relative to {p}?", "How far is {c} from {p}?", "Tell me about {c} by {p}.",
]
PREMISE_ANIMATE = [
    "What is {c} in this picture doing?", "Why is {c} in the image?", "What is {c} in the photo looking at?",
    "What is {c} up to in this picture?",
]
PREMISE_ANCHOR_ANIMATE = ["What is {c} near {p} doing?", "Why is {c} so close to {p}?", "What is {c} next to {p} looking at?"]
PREMISE_COLOUR = ["What color is {c} in the photo?", "What colour is {c} in this picture?"]
PREMISE_ANCHOR_COLOUR = ["What color is {c} next to {p}?"]
ATTR_YN_Q = [
    "Is the {x} {col}?", "Is the {x} in the image {col}?", "Would you describe the {x} as {col}?",
    "Does the {x} look {col}?", "Is the {x} in this picture {col}?", "Is the {x} {col} in color?",
    "Can you confirm the {x} is {col}?", "Is the color of the {x} {col}?", "Does the {x} appear {col} in the photo?",
    "Is the {x} here {col}?", "Would you call the {x} {col}?", "Is the {x} shown here {col}?",
    "Looking at the {x}, is it {col}?", "Is the {x} mostly {col}?", "In this photo, is the {x} {col}?",
]
ATTR_OPEN_Q = [
    "What color is the {x}?", "What colour is the {x} in the image?", "Which color does the {x} have?",
    "Can you tell me the color of the {x}?", "What color is the {x} in this picture?", "Describe the color of the {x}.",
]
ATTR_PREMISE_Q_ANY = [
    "Describe the {cx} in the image.", "Where is the {cx} in this picture?", "Tell me about the {cx}.",
    "What is next to the {cx}?", "How big is the {cx}?",
]
ATTR_PREMISE_Q_ANIMATE = ["What is the {cx} doing?", "What is the {cx} looking at?"]
TEXT_OPEN_Q = [
    "What does the text in the image say?", "What is written in this picture?", "Can you read the text in the image?",
    "What words appear in the photo?", "What does the writing in the image say?", "Read out the text you see.",
    "Is there any writing here? What does it say?", "What text can you make out in this picture?", "Transcribe the text in the image.",
    "What do the letters in the photo spell?", "Which words can be read in this image?", "Tell me what the visible text says.",
    "What is printed in the picture?", "What does it say in the image?", "Please read the text shown in this photo.",
]
TEXT_YN_Q = [
    "Does the text in the image say {t}?", "Is {t} written in this picture?", "Does the writing read {t}?",
    "Can you see the word {t} in the photo?", "Does the picture show the text {t}?", "Is the text in the image {t}?",
]
BRIEF_Q = [
    "Describe the image briefly.", "Give a short description of this picture.", "What does this image show? Answer in one sentence.",
    "Summarize the photo in a sentence.", "Provide a one-sentence summary of the picture.", "What is this picture of?",
    "In a few words, what do you see?", "Write a caption for this image.", "Briefly, what is happening in the photo?",
    "Sum up this image in one line.", "What's in this picture, in short?", "Give me a quick description of the image.",
    "How would you caption this photo?", "Describe this picture in one sentence.", "What does the photo depict, briefly?",
]
DETAILED_Q = [
    "Describe the image in detail.", "Give a detailed description of this picture.", "What can you see in this photo? Please be thorough.",
    "Tell me what you notice in this image.", "Write a detailed paragraph about the picture.", "Describe this photo as fully as you can.",
    "Walk me through what this image shows.", "Give me a thorough description of the scene.", "What is in this picture? Include the details.",
    "Describe the scene in this image, with details.", "Paint a picture in words of this photo.", "Explain in detail what the image shows.",
    "Describe everything important in this picture.", "Can you describe this image in a few sentences?", "Write a careful description of the photo.",
]
INVENTORY_LEAD = ["I can make out {inv}.", "Among other things, the picture shows {inv}.", "In the picture I can see {inv}."]


def render(item: Item, rng: random.Random, full: bool) -> tuple[str, str] | None:
    f = item.facts
    fam = item.family
    pick = rng.choice
    if fam == "existence":
        lab = f["label"]
        ax = en_with_article(lab)
        q = pick(EXISTENCE_Q).format(ax=ax)
        if item.polarity == "positive":
            a = pick([f"Yes, there is {ax} in the image.", f"Yes, I can see {ax} in the picture.", f"Yes, {ax} is visible in the photo."]) if full else "Yes."
        else:
            a = pick([f"No, there is no {term(lab).en} in the image.", f"No, I don't see {ax} in this picture.", f"No, the photo shows no {term(lab).en}."]) if full else "No."
        return q, a
    if fam == "counting":
        lab, n = f["label"], f["count"]
        q = pick(COUNTING_Q).format(xs=term(lab).en_plural)
        if full:
            a = pick([f"{_cap(_there_be(lab, n))} in the image.", f"I can count {en_count_phrase(lab, n)} in the picture.",
                      f"I see {en_count_phrase(lab, n)} here."])
        else:
            a = f"{_cap(en_number(n))}."
        return q, a
    if fam == "wrong_count":
        lab, n, claimed = f["label"], f["count"], f["claimed"]
        xs = f"{en_number(claimed)} {term(lab).en_plural}"
        q = pick(WRONG_COUNT_Q_ANY + (WRONG_COUNT_Q_ANIMATE if animate(lab) else [])).format(xs=xs)
        if full:
            a = pick([
                f"Actually, {_there_be(lab, n)} in the image, not {en_number(claimed)}.",
                f"I count {en_count_phrase(lab, n)} in the image, not {en_number(claimed)}.",
                f"There {'is' if n == 1 else 'are'} only {en_count_phrase(lab, n)} here, not {en_number(claimed)}." if n < claimed
                else f"There are {en_count_phrase(lab, n)} here, not just {en_number(claimed)}.",
            ])
        else:
            a = f"{_cap(_there_be(lab, n))}."
        return q, a
    if fam == "spatial":
        a_, b_ = _the(f["a"]), _the(f["b"])
        if f["form"] == "open":
            q = pick(SPATIAL_OPEN_Q).format(a=a_, b=b_)
            a = f"{_cap(a_)} is {REL[f['truth']]} {b_}." if full else f"{_cap(REL[f['truth']])} {b_}."
            return q, a
        rel = REL[f["asked"]]
        q = pick(SPATIAL_YN_Q).format(a=a_, b=b_, rel=rel)
        if item.polarity == "positive":
            a = f"Yes, {a_} is {rel} {b_}." if full else "Yes."
        else:
            a = f"No, {a_} is {REL[f['truth']]} {b_}." if full else "No."
        return q, a
    if fam == "relative_size":
        a_, b_ = _the(f["a"]), _the(f["b"])
        cmp = f["asked"]
        if f["form"] == "choice":
            q = pick(SIZE_CHOICE_Q).format(a=a_, b=b_, cmp=cmp)
            w = _the(f["winner"])
            a = f"{_cap(w)} looks {cmp}." if full else f"{_cap(w)}."
            return q, a
        q = pick(SIZE_YN_Q).format(a=a_, b=b_, cmp=cmp)
        if item.polarity == "positive":
            a = f"Yes, {a_} looks {cmp} than {b_}." if full else "Yes."
        else:
            a = f"No, {a_} looks {OPP_SIZE[cmp]} than {b_}." if full else "No."
        return q, a
    if fam == "false_premise":
        lab, anchor = f["label"], f.get("anchor")
        c = _the(lab)
        live, coloured = animate(lab), lab != "person"
        if anchor:
            pool = PREMISE_ANCHOR_ANY + (PREMISE_ANCHOR_ANIMATE if live else []) + (PREMISE_ANCHOR_COLOUR if coloured else [])
            q = pick(pool).format(c=c, p=_the(anchor))
        else:
            pool = PREMISE_ANY + (PREMISE_ANIMATE if live else []) + (PREMISE_COLOUR if coloured else [])
            q = pick(pool).format(c=c)
        x = term(lab).en
        base = pick([f"There is no {x} in this image.", f"There is no {x} in this picture.", f"I can't answer that: there is no {x} in the photo."])
        if full and f.get("inventory"):
            a = f"{base} {pick(['I can see', 'The image shows'])} {inventory_phrase(f['inventory'])}."
        else:
            a = base
        return q, a
    if fam == "attribute":
        lab, col, true = f["label"], f.get("asked"), f["true"]
        x = term(lab).en
        if f["form"] == "premise":
            cx = f"{col} {x}"
            q = pick(ATTR_PREMISE_Q_ANY + (ATTR_PREMISE_Q_ANIMATE if animate(lab) else [])).format(cx=cx)
            return q, f"There is no {cx} in the image; the {x} is {_join(true)}."
        if f["form"] == "open":
            q = pick(ATTR_OPEN_Q).format(x=x)
            return q, (f"The {x} is {_join(true)}." if full else f"{_cap(_join(true))}.")
        q = pick(ATTR_YN_Q).format(x=x, col=col)
        if item.polarity == "positive":
            a = f"Yes, the {x} is {col}." if full else "Yes."
        else:
            a = f"No, the {x} is {_join(true)}." if full else "No."
        return q, a
    if fam == "scene_text":
        quoted = _join([f'"{t}"' for t in f["texts"]]) if f["texts"] else ""
        if f["form"] == "premise":  # OCR ran and found no text at all
            q = pick(TEXT_OPEN_Q)
            return q, pick(["There is no text in this picture that I can read.", "There is no readable text in this image."])
        if f["form"] == "yesno":
            q = pick(TEXT_YN_Q).format(t=f'"{f["asked"]}"')
            if item.polarity == "positive":
                return q, (f'Yes, it says "{f["asked"]}".' if full else "Yes.")
            return q, (f"No, it says {quoted}." if full else f"No, it says {quoted}.")
        q = pick(TEXT_OPEN_Q)
        a = pick([f"The text in the image reads {quoted}.", f"It says {quoted}."]) if full else f"{quoted}."
        return q, a
    if fam == "brief_description":
        q = pick(BRIEF_Q)
        if f.get("captions"):
            return q, f["captions"][0]
        if f.get("inventory"):
            return q, f"The image shows {inventory_phrase(f['inventory'])}."
        return None
    if fam == "detailed_description":
        q = pick(DETAILED_Q)
        parts = list(f.get("captions") or [])[:1]  # one lead caption: several would each bring the subject in again
        if f.get("inventory"):
            parts.append(pick(INVENTORY_LEAD).format(inv=inventory_phrase(f["inventory"])))
        rels = [f"{_the(a_lab)} is {REL[rel]} {_the(b_lab)}" for a_lab, rel, b_lab in f.get("relations") or []]
        if rels:
            parts.append(_cap(", and ".join(rels)) + ".")
        if not parts:
            return None
        return q, " ".join(parts)
    raise ValueError(f"no English templates for family {fam!r}")


__all__ = ["render", "inventory_phrase", "indefinite_article"]
