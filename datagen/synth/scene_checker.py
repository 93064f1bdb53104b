"""Independent checks of the scene families (relation, universal, grounding).

Like ``checker``, it reads the rendered text back and re-derives the truth from
the raw pair row: triples from ``meta.relationships`` and ``objects``, colours
from ``objects[*].attributes``, boxes from ``objects[*].bbox`` (already in the
stored image) or ``meta.regions`` scaled by the stored/original size. It shares
the vocabulary tables with generation (the words both sides must agree on) but
none of the planning: no Scene, no merging code, no items.
"""

from __future__ import annotations

import json
import re
from typing import Any

from datagen.synth import vocab
from datagen.synth.items import COLOURS
from datagen.synth.lexicon import LEXICON

TASKS = ("relation", "universal", "grounding")
BOX_TOLERANCE = 0.01  # rounding to a 0-1000 grid or two decimals moves an edge by at most 0.005

_NAMES: dict[str, str] = {}  # English surface form (singular or plural) -> vocabulary name
_ZH_NAMES: dict[str, str] = {}
for _n in vocab.CONCEPTS:
    _t = vocab.open_term(_n)
    _NAMES[_t.en.lower()] = _n
    _NAMES[_t.en_plural.lower()] = _n
    _ZH_NAMES.setdefault(_t.zh, _n)
_EN_NAME = "|".join(re.escape(x) for x in sorted(_NAMES, key=len, reverse=True))
_ZH_NAME = "|".join(re.escape(x) for x in sorted(_ZH_NAMES, key=len, reverse=True))
_EN_PRED = "|".join(re.escape(p) for p in sorted(vocab.PREDICATES, key=len, reverse=True))
EN_TRIPLE = re.compile(rf"\bthe ({_EN_NAME})(?: is)? ({_EN_PRED}) the ({_EN_NAME})\b", re.I)
ZH_TRIPLES = [(p, re.compile(re.escape(t).replace(r"\{s\}", f"({_ZH_NAME})").replace(r"\{o\}", f"({_ZH_NAME})")))
              for p, t in sorted(vocab.PREDICATES.items(), key=lambda kv: -len(kv[1]))]
QWEN_BOX = re.compile(r"<box>\((\d+),(\d+)\),\((\d+),(\d+)\)</box>")
LLAVA_BOX = re.compile(r"\[(\d(?:\.\d+)?), (\d(?:\.\d+)?), (\d(?:\.\d+)?), (\d(?:\.\d+)?)\]")
_COL_EN = "|".join(sorted(COLOURS, key=len, reverse=True))
_COL_ZH = "|".join(sorted(set(COLOURS.values()), key=len, reverse=True))


def _meta(row: dict) -> dict:
    m = row.get("meta")
    if isinstance(m, str) and m:
        try:
            return json.loads(m)
        except ValueError:
            return {}
    return m if isinstance(m, dict) else {}


def _name_of(obj: dict) -> str | None:
    c = vocab.concept(obj.get("label"))
    return c.name if c else None


def boxes_in(text: str) -> list[list[float]]:
    """Every box written in ``text``, as [x1, y1, x2, y2] in 0-1."""
    out = [[int(v) / 1000 for v in m.groups()] for m in QWEN_BOX.finditer(text)]
    out += [[float(v) for v in m.groups()] for m in LLAVA_BOX.finditer(text)]
    return out


def _norm(box: list[float], w: float, h: float) -> list[float]:
    x, y, bw, bh = box
    return [min(1.0, max(0.0, v)) for v in (x / w, y / h, (x + bw) / w, (y + bh) / h)]


def _same_box(a: list[float], b: list[float]) -> bool:
    return all(abs(x - y) <= BOX_TOLERANCE for x, y in zip(a, b))


def _triples(row: dict) -> set[tuple[str, str, str]]:
    objs = row.get("objects") or []
    out = set()
    for r in _meta(row).get("relationships") or []:
        try:
            s, o = _name_of(objs[int(r["subject"])]), _name_of(objs[int(r["object"])])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        p = " ".join(str(r.get("predicate") or "").lower().split())
        if s and o:
            out.add((s, p, o))
    return out


def _read_triple(text: str, lang: str) -> tuple[str, str, str] | None:
    if lang == "en":
        m = EN_TRIPLE.search(text)
        return (_NAMES[m.group(1).lower()], m.group(2).lower(), _NAMES[m.group(3).lower()]) if m else None
    for p, rx in ZH_TRIPLES:
        m = rx.search(text)
        if m:
            return _ZH_NAMES[m.group(1)], p, _ZH_NAMES[m.group(2)]
    return None


def _instances(row: dict, name: str) -> list[dict]:
    """The annotated instances of ``name``, duplicates (same name, IoU > 0.7) folded together."""
    groups: list[tuple[list[float], set[str]]] = []
    for o in row.get("objects") or []:
        if _name_of(o) != name or o.get("iscrowd"):
            continue
        cols = {a.lower() for a in (o.get("attributes") or []) if a.lower() in COLOURS}
        for box, acc in groups:
            x1, y1 = max(box[0], o["bbox"][0]), max(box[1], o["bbox"][1])
            x2 = min(box[0] + box[2], o["bbox"][0] + o["bbox"][2])
            y2 = min(box[1] + box[3], o["bbox"][1] + o["bbox"][3])
            inter = max(0, x2 - x1) * max(0, y2 - y1)
            if inter / (box[2] * box[3] + o["bbox"][2] * o["bbox"][3] - inter) > 0.7:
                acc |= cols
                break
        else:
            groups.append((list(o["bbox"]), set(cols)))
    return [{"bbox": b, "colours": c} for b, c in groups]


def _verdict(a: str, lang: str) -> bool | None:
    a = a.strip()
    if lang == "en":
        return True if a.lower().startswith("yes") else False if a.lower().startswith("no") else None
    return True if a.startswith("是的") else False if a.startswith("不是") else None


def implied_present(row: dict) -> set[str]:
    """COCO names an open-vocabulary row must not call absent (hypernyms/hyponyms of what is there)."""
    objs = [o for o in row.get("objects") or [] if o]
    if not any(o.get("synsets") for o in objs):
        return set()
    return {lab for lab in LEXICON if vocab.blocked_by(vocab.CONCEPTS[lab], objs)}


def check(row: dict[str, Any], task: str, lang: str, q: str, a: str) -> list[str]:
    q = q.removeprefix("<image>\n")
    if task == "relation":
        asked = _read_triple(q, lang)
        if asked is None:
            return ["no subject-predicate-object in question"]
        real = _triples(row)
        v = _verdict(a, lang)
        if v is None:
            return ["no yes/no verdict"]
        if v:
            return [] if asked in real else [f"says yes, {asked} is not annotated"]
        if asked in real:
            return [f"says no, {asked} is annotated"]
        stated = _read_triple(a, lang)
        if stated is None or stated not in real:
            return [f"correction {stated} is not an annotated relation"]
        s, p, o = stated
        if asked not in ((s, vocab.CONTRAST.get(p), o), (o, p, s) if p in vocab.ASYMMETRIC else None):
            return [f"{asked} is not a certainly-false variant of {stated}"]
        return []
    if task == "universal":
        if lang == "en":
            m = re.search(rf"\b({_EN_NAME})\b.*?\b({_COL_EN})\b", q, re.I)
            name, col = (_NAMES[m.group(1).lower()], COLOURS[m.group(2).lower()]) if m else (None, None)
        else:
            m = re.search(rf"({_ZH_NAME}).*?({_COL_ZH})", q)
            name, col = (_ZH_NAMES[m.group(1)], m.group(2)) if m else (None, None)
        if name is None:
            return ["no object name and colour in question"]
        inst = _instances(row, name)
        if any(o.get("iscrowd") and _name_of(o) == name for o in row.get("objects") or []):
            return [f"{name} has a crowd region: 'all' cannot be known"]
        if len(inst) < 2 or any(not i["colours"] for i in inst):
            return [f"{name}: {len(inst)} instances, not all with a colour: cannot quantify"]
        zh = [{COLOURS[c] for c in i["colours"]} for i in inst]
        truth = all(col in z for z in zh)
        v = _verdict(a, lang)
        if v is None:
            return ["no yes/no verdict"]
        if v != truth:
            return [f"verdict {v}, all {name} {col}: {truth}"]
        if not v:
            body = a.split(";", 1)[-1] if lang == "en" and ";" in a else a.split(":", 1)[-1] if lang == "en" else a.split("，")[-1]
            stated = {COLOURS[c.lower()] for c in re.findall(rf"\b({_COL_EN})\b", body, re.I)} if lang == "en" \
                else set(re.findall(_COL_ZH, body))
            others = {c for z in zh if col not in z for c in z}
            if not stated or stated - others:
                return [f"exceptions {sorted(stated)}, truth {sorted(others)}"]
        return []
    if task == "grounding":
        w, h = float(row.get("width") or 0), float(row.get("height") or 0)
        qboxes, aboxes = boxes_in(q), boxes_in(a)
        if qboxes:  # describe a region
            box = qboxes[0]
            meta = _meta(row)
            sx, sy = w / float(meta.get("vg_width") or w), h / float(meta.get("vg_height") or h)
            phrase = a.strip().rstrip("。.").lower()
            for r in meta.get("regions") or []:
                b = r["bbox"]
                if _same_box(box, _norm([b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy], w, h)) and \
                        " ".join(str(r["phrase"]).split()).rstrip(".").lower() == phrase:
                    return []
            found = list(re.finditer(rf"\b({_EN_NAME})\b" if lang == "en" else _ZH_NAME, a, re.I))
            name = (_NAMES[found[-1].group(0).lower()] if lang == "en" else _ZH_NAMES[found[-1].group(0)]) if found else None
            before = a[:found[-1].start()] if found else a  # the colour words come before the name ("an orange cup")
            for o in row.get("objects") or []:
                if _name_of(o) == name and _same_box(box, _norm(o["bbox"], w, h)):
                    cols = {c.lower() for c in re.findall(rf"\b({_COL_EN})\b", before, re.I)} if lang == "en" else \
                        set(re.findall(_COL_ZH, before))
                    have = {c.lower() for c in o.get("attributes") or []}
                    have |= {COLOURS[c] for c in have if c in COLOURS}
                    return [] if cols <= have else [f"colours {sorted(cols - have)} not annotated on the {name}"]
            return [f"no region or {name} object at box {box} described as {a!r}"]
        if lang == "en":
            m = re.search(rf"\bthe ({_EN_NAME})\b", q, re.I)
            name = _NAMES[m.group(1).lower()] if m else None
        else:
            m = re.search(_ZH_NAME, q)
            name = _ZH_NAMES[m.group(0)] if m else None
        if name is None:
            return ["no object name in question"]
        inst = _instances(row, name)
        if a.startswith(("There is no", "图中没有")):
            objs = [o for o in row.get("objects") or [] if o]
            if inst or vocab.blocked_by(vocab.CONCEPTS[name], objs):
                return [f"says no {name}, but a {name} or a related thing is annotated"]
            return []
        if len(inst) != 1 or len(aboxes) != 1:
            return [f"{len(inst)} {name} instances, {len(aboxes)} boxes in answer: expected one each"]
        if not _same_box(aboxes[0], _norm(inst[0]["bbox"], w, h)):
            return [f"box {aboxes[0]} is not the {name} at {_norm(inst[0]['bbox'], w, h)}"]
        return []
    return [f"unknown task {task!r}"]
