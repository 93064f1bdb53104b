"""The scene families: relation, universal (quantifiers) and grounding.

They need more than COCO's labels: relationship triples, attribute words,
region descriptions and boxes (Visual Genome), and they work on COCO rows too
where the annotations allow (grounding and quantifiers need only boxes and
attributes). Everything here is planned from a :class:`Scene`, the safe reading
of one pair row:

- names go through the open vocabulary (``vocab``): an object we cannot name in
  both languages is present but never asked about;
- Visual Genome annotates one thing several times; boxes of the same name that
  overlap by IoU > 0.7 are merged (attributes united) before anything counts;
- boxes are in pixels of the stored image (the fetch step moves ``objects``;
  region boxes are scaled here from ``meta.vg_width/vg_height``) and are
  written normalised, in the recipe's ``box_format``.

Claims stay conservative: "all the umbrellas are red" only when every umbrella
has an annotated colour; a relation is denied only by a certainly-false swap
(``vocab.CONTRAST`` or trading subject and object of an asymmetric predicate),
never because a triple is missing (VG relations are not exhaustive).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from datagen.synth.items import COLOURS, WRONG_COLOUR_CHOICES, Item
from datagen.synth import vocab
from datagen.synth.lexicon import LEXICON

FAMILIES = ("relation", "universal", "grounding")
BOX_FORMATS = ("qwen", "llava")
MERGE_IOU = 0.7
MIN_BOX_SHARE = 0.01  # boxes under 1% of the image are slivers: never asked to find them
MAX_BOX_SHARE = 0.95  # a box that is the whole image says nothing about where a thing is


def iou(a: list[float], b: list[float]) -> float:
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class SceneObject:
    name: str | None  # vocabulary name, None when we cannot say it in both languages
    bbox: list[float]  # [x, y, w, h] in stored-image pixels
    attributes: set[str]
    crowd: bool

    @property
    def colours(self) -> list[str]:
        return sorted(a for a in self.attributes if a in COLOURS)


@dataclass
class Scene:
    width: float
    height: float
    objects: list[SceneObject]
    raw_objects: list[dict]  # as annotated, for absent-object filtering
    relations: list[tuple[int, str, int]]  # (subject index, predicate, object index) into ``objects``
    regions: list[tuple[str, list[float]]]  # (phrase, [x, y, w, h] stored pixels)
    open_vocab: bool  # objects carry synsets (Visual Genome): labels are not COCO's closed set
    captions: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    crowd_names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for o in self.objects:
            if o.name is None:
                continue
            if o.crowd:
                self.crowd_names.add(o.name)
            else:
                self.counts[o.name] = self.counts.get(o.name, 0) + 1

    def unique(self, name: str | None) -> SceneObject | None:
        """The one object ``name`` refers to, or None when there are several, a crowd, or none."""
        if name is None or self.counts.get(name) != 1 or name in self.crowd_names:
            return None
        return next(o for o in self.objects if o.name == name and not o.crowd)

    def norm(self, bbox: list[float]) -> list[float]:
        """[x1, y1, x2, y2] in 0-1 of the stored image, clipped."""
        x, y, w, h = bbox
        clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
        return [clip(x / self.width), clip(y / self.height), clip((x + w) / self.width), clip((y + h) / self.height)]

    def absent_names(self) -> list[str]:
        """Names that may be called absent: hypernym-filtered vocabulary leaves, never one a
        region phrase or caption mentions; on closed-vocabulary rows (COCO) only the closed set,
        since COCO annotates nothing else and a missing hat there is no evidence."""
        text = " ".join(p for p, _ in self.regions) + " " + " ".join(self.captions)
        words = set(re.findall(r"[a-z]+", text.lower()))
        out = []
        for n in vocab.absent_candidates(self.raw_objects):
            c = vocab.CONCEPTS[n]
            if not self.open_vocab and n not in LEXICON:
                continue
            if set(n.split()) & words or set(c.en_plural.split()) & words:
                continue
            out.append(n)
        return out

    def findable(self, o: SceneObject) -> bool:
        share = (o.bbox[2] * o.bbox[3]) / (self.width * self.height)
        return MIN_BOX_SHARE <= share <= MAX_BOX_SHARE


def _meta(row: dict[str, Any]) -> dict:
    meta = row.get("meta")
    if isinstance(meta, str) and meta:
        try:
            meta = json.loads(meta)
        except ValueError:
            return {}
    return meta if isinstance(meta, dict) else {}


def scene_from_row(row: dict[str, Any]) -> Scene | None:
    """The scene of a pair row, or None when it has no objects or no usable size."""
    raw = [o for o in (row.get("objects") or []) if o and o.get("bbox") and len(o["bbox"]) == 4]
    width, height = row.get("width"), row.get("height")
    if not raw or not width or not height:
        return None
    meta = _meta(row)
    merged: list[SceneObject] = []
    index: dict[int, int] = {}  # raw index -> merged index
    for i, o in enumerate(raw):
        c = vocab.concept(o.get("label"))
        name = c.name if c else None
        box = [float(v) for v in o["bbox"]]
        attrs = {" ".join(str(a).lower().split()) for a in (o.get("attributes") or [])}
        crowd = bool(o.get("iscrowd"))
        hit = next((j for j, m in enumerate(merged)
                    if name is not None and m.name == name and not crowd and not m.crowd and iou(m.bbox, box) > MERGE_IOU), None)
        if hit is None:
            index[i] = len(merged)
            merged.append(SceneObject(name, box, attrs, crowd))
        else:
            index[i] = hit
            merged[hit].attributes |= attrs
    relations = []
    for r in meta.get("relationships") or []:
        try:
            s, p, ob = index[int(r["subject"])], vocab.predicate(r.get("predicate")), index[int(r["object"])]
        except (KeyError, TypeError, ValueError):
            continue
        if p and s != ob:
            relations.append((s, p, ob))
    sx = float(width) / float(meta.get("vg_width") or width)
    sy = float(height) / float(meta.get("vg_height") or height)
    regions = []
    for r in meta.get("regions") or []:
        phrase, box = " ".join(str(r.get("phrase") or "").split()), r.get("bbox")
        if phrase and box and len(box) == 4 and "<" not in phrase:
            regions.append((phrase, [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]))
    open_vocab = any(o.get("synsets") for o in raw)
    caps = [c for c in (row.get("captions") or []) + [row.get("caption")] if isinstance(c, str)]
    return Scene(float(width), float(height), merged, raw, relations, regions, open_vocab, caps)


# ----------------------------------------------------------------------------- boxes

def format_box(box01: list[float], fmt: str) -> str:
    """Qwen-VL ``<box>(x1,y1),(x2,y2)</box>`` on a 0-1000 grid, or LLaVA-1.5/Shikra ``[x1, y1, x2, y2]`` in 0-1."""
    if fmt == "qwen":
        x1, y1, x2, y2 = (round(v * 1000) for v in box01)
        return f"<box>({x1},{y1}),({x2},{y2})</box>"
    if fmt == "llava":
        return "[" + ", ".join(f"{v:.2f}" for v in box01) + "]"
    raise ValueError(f"unknown box format {fmt!r}; expected one of {BOX_FORMATS}")


# ------------------------------------------------------------------------ candidates

def _colourless(name: str, skip: set[str]) -> bool:
    """No colour claims about people (their colours are their clothes') or ``attribute_skip_labels``."""
    c = vocab.concept(name)
    return name in skip or (c is not None and (c.synset == "person.n.01" or "person.n.01" in vocab.ancestors(c.synset)))


def _triples(sc: Scene) -> set[tuple[str, str, str]]:
    return {(sc.objects[s].name, p, sc.objects[o].name) for s, p, o in sc.relations
            if sc.objects[s].name and sc.objects[o].name}


def _relation_items(sc: Scene, polarity: str) -> list[Item]:
    real = _triples(sc)
    out = []
    for s, p, o in sorted(real):
        if sc.unique(s) is None or sc.unique(o) is None or s == o:
            continue
        if polarity == "positive":
            out.append(Item("relation", "positive", {"s": s, "p": p, "o": o, "truth": [s, p, o]}))
            continue
        asked = []
        if p in vocab.CONTRAST:
            asked.append((s, vocab.CONTRAST[p], o))
        if p in vocab.ASYMMETRIC:
            asked.append((o, p, s))
        for a in asked:
            if a not in real and vocab.predicate(a[1]):
                out.append(Item("relation", "negative", {"s": a[0], "p": a[1], "o": a[2], "truth": [s, p, o]}))
    return out


def _universal_items(sc: Scene, polarity: str, rng: random.Random, skip: set[str]) -> list[Item]:
    out = []
    for name, n in sorted(sc.counts.items()):
        if n < 2 or name in sc.crowd_names or _colourless(name, skip) or name in vocab.MASS_NOUNS:
            continue
        objs = [o for o in sc.objects if o.name == name and not o.crowd]
        cols = [o.colours for o in objs]
        if any(not c for c in cols):
            continue  # a thing without an annotated colour could be any colour
        zh_sets = [{COLOURS[c] for c in cs} for cs in cols]
        everyone = set.intersection(*zh_sets)
        if polarity == "positive":
            for c in sorted({c for cs in cols for c in cs if COLOURS[c] in everyone}):
                out.append(Item("universal", "positive", {"label": name, "asked": c, "count": n}))
        else:
            some = sorted({c for cs in cols for c in cs if COLOURS[c] not in everyone})
            none = [c for c in WRONG_COLOUR_CHOICES if not any(COLOURS[c] in z for z in zh_sets)]
            options = some + ([rng.choice(none)] if none else [])
            for c in options:
                exceptions = sorted({x for cs, z in zip(cols, zh_sets) if COLOURS[c] not in z for x in cs})
                out.append(Item("universal", "negative", {"label": name, "asked": c, "count": n, "exceptions": exceptions,
                                                           "none": not any(COLOURS[c] in z for z in zh_sets)}))
    return out


def _grounding_items(sc: Scene, polarity: str, rng: random.Random, box_format: str, used_absent: set[str],
                     skip: set[str]) -> list[Item]:
    out = []
    if polarity == "negative":
        pool = [n for n in sc.absent_names() if n not in used_absent]
        if pool:
            name = rng.choice(pool)
            out.append(Item("grounding", "negative", {"form": "find", "label": name, "box": None}))
        return out
    for o in sc.objects:
        if o.name and sc.unique(o.name) is o and sc.findable(o):
            box = format_box(sc.norm(o.bbox), box_format)
            out.append(Item("grounding", "positive", {"form": "find", "label": o.name, "box": box, "box_format": box_format}))
            cols = [] if _colourless(o.name, skip) else o.colours
            out.append(Item("grounding", "positive", {"form": "describe", "label": o.name, "colours": cols,
                                                       "box": box, "box_format": box_format}))
    for phrase, bbox in sc.regions[:8]:
        share = bbox[2] * bbox[3] / (sc.width * sc.height)
        if MIN_BOX_SHARE <= share <= MAX_BOX_SHARE:
            out.append(Item("grounding", "positive", {"form": "region", "label": phrase, "phrase": phrase,
                                                       "box": format_box(sc.norm(bbox), box_format), "box_format": box_format}))
    return out


def scene_items(sc: Scene | None, family: str, polarity: str, rng: random.Random, box_format: str = "qwen",
                used_absent: set[str] | None = None, skip_labels: set[str] | None = None) -> list[Item]:
    """Every item of ``family``/``polarity`` this scene supports (the planner draws and dedups)."""
    if sc is None:
        return []
    if family == "relation":
        return _relation_items(sc, polarity)
    if family == "universal":
        return _universal_items(sc, polarity, rng, skip_labels or set())
    if family == "grounding":
        return _grounding_items(sc, polarity, rng, box_format, used_absent or set(), skip_labels or set())
    raise ValueError(f"not a scene family: {family!r}")


def positive_candidates(sc: Scene | None, box_format: str, skip_labels: set[str]) -> dict[str, int]:
    rng = random.Random(0)  # counting only: no draw depends on it
    return {f: len(scene_items(sc, f, "positive", rng, box_format, skip_labels=skip_labels)) for f in FAMILIES}
