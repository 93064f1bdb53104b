"""What the templates may claim about one image, derived from its annotations.

The generator asks questions only about facts that are safe to state:
- counts exclude COCO crowd regions (``iscrowd``), and a category that has a
  crowd region is never counted at all (its count is unknown);
- "the dog" is only said when exactly one dog is annotated and no dog crowd;
- an object too small to make out (under ``min_object_share`` of the image, or
  a sliver thinner than ``min_object_side`` of a side) gets no question at all,
  but still counts as present: no negative may claim it is absent; a category
  with such an instance is not counted either (is the sliver a third dog?);
- spatial relations are stated only when a human would call them without
  hesitation: neither box is whole-image "stuff" (a table under everything),
  the boxes do not largely overlap (one inside the other has no left/right),
  the offset along the named axis is beyond a margin and dominates the other
  axis; each pair gets one relation, on its dominant axis;
- size relations are only stated beyond a margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datagen.synth.lexicon import LEXICON


class BadAnnotation(ValueError):
    """A pair row whose objects cannot be trusted; carries a stable reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Obj:
    label: str
    bbox: tuple[float, float, float, float]
    attributes: tuple[str, ...]
    iscrowd: bool

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return x + w / 2, y + h / 2

    @property
    def area(self) -> float:
        return self.bbox[2] * self.bbox[3]


@dataclass(frozen=True)
class Geometry:
    """The thresholds that decide which boxes are visible and which relations are safe to state."""

    spatial_margin: float = 0.1  # centre offset along the named axis, as a share of that image side
    spatial_dominance: float = 2.0  # the named axis' pixel offset must be this many times the other's
    max_overlap: float = 0.5  # intersection / smaller box above this: no relation (containment is 1.0)
    stuff_labels: tuple[str, ...] = ("dining table", "bed", "couch")
    stuff_share: float = 0.6  # a stuff box covering this share of the image is the background
    min_object_share: float = 0.005  # box area / image area below this: too small to ask about
    min_object_side: float = 0.02  # box width/W or height/H below this: a sliver
    min_edge_side: float = 0.12  # a box on the image border thinner than this share: cut to a sliver

    @classmethod
    def from_config(cls, cfg) -> "Geometry":
        return cls(cfg.spatial_margin, cfg.spatial_dominance, cfg.spatial_max_overlap, tuple(cfg.stuff_labels),
                   cfg.stuff_share, cfg.min_object_share, cfg.min_object_side, cfg.min_edge_side)


def visible(o: Obj, width: float, height: float, geo: Geometry) -> bool:
    """Big enough to ask about: area and thinner side above the recipe's shares, and not a thin
    strip on the image border (a sleeve at the edge is a person cut to a sliver)."""
    x, y, w, h = o.bbox
    if width <= 0 or height <= 0:
        return False
    if (w * h) / (width * height) < geo.min_object_share or min(w / width, h / height) < geo.min_object_side:
        return False
    at_x_edge = x <= 1 or x + w >= width - 1
    at_y_edge = y <= 1 or y + h >= height - 1
    return not ((at_x_edge and w / width < geo.min_edge_side) or (at_y_edge and h / height < geo.min_edge_side))


def overlap_of_smaller(a: Obj, b: Obj) -> float:
    """Intersection area over the smaller box's area: 1.0 when one box contains the other."""
    ax, ay, aw, ah = a.bbox
    bx, by, bw, bh = b.bbox
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return (iw * ih) / min(a.area, b.area)


def is_stuff(o: Obj, width: float, height: float, geo: Geometry) -> bool:
    return o.label in geo.stuff_labels and o.area >= geo.stuff_share * width * height


@dataclass
class ImageFacts:
    key: str
    width: float
    height: float
    objects: list[Obj]
    captions: list[str]
    ocr_texts: list[str]
    geo: Geometry = field(default_factory=Geometry)
    ocr_ran: bool = False  # the row has an OCR result (possibly empty): "no text" is then a fact
    ocr_dropped: dict[str, int] = field(default_factory=dict)  # reason -> OCR lines not used
    present: set[str] = field(default_factory=set)  # any annotation, crowd and tiny ones included
    counts: dict[str, int] = field(default_factory=dict)  # non-crowd instances
    crowd: set[str] = field(default_factory=set)
    hidden: set[str] = field(default_factory=set)  # labels with an instance too small to ask about
    visible: set[str] = field(default_factory=set)  # labels with at least one instance big enough
    mentioned: set[str] = field(default_factory=set)  # labels the captions name: never "absent"

    def __post_init__(self) -> None:
        for o in self.objects:
            self.present.add(o.label)
            if o.iscrowd:
                self.crowd.add(o.label)
                self.visible.add(o.label)
                continue
            self.counts[o.label] = self.counts.get(o.label, 0) + 1
            if visible(o, self.width, self.height, self.geo):
                self.visible.add(o.label)
            else:
                self.hidden.add(o.label)
        self.mentioned = mentioned_labels(self.captions)

    def countable(self, max_count: int) -> list[str]:
        """Labels whose count is known (no crowd region, every instance visible) and small enough to ask about."""
        return sorted(lab for lab, n in self.counts.items()
                      if lab not in self.crowd and lab not in self.hidden and 1 <= n <= max_count)

    def unique_objects(self) -> list[Obj]:
        """Visible objects that "the <label>" refers to without ambiguity."""
        return sorted(
            (o for o in self.objects
             if not o.iscrowd and self.counts.get(o.label) == 1 and o.label not in self.crowd and o.label not in self.hidden),
            key=lambda o: o.label,
        )

    def not_absent(self) -> set[str]:
        """Labels no negative may claim are missing: annotated (however small) or named by a caption."""
        return self.present | self.mentioned


# Words in captions that name a COCO category without using its own name. An object the
# captions mention is not absent, even when nobody drew its box (COCO misses many).
CAPTION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "men", "woman", "women", "boy", "boys", "girl", "girls", "child", "children", "kid", "kids",
               "people", "player", "players", "lady", "ladies", "guy", "guys", "baby", "astronaut", "skier", "surfer",
               "rider", "crowd", "someone", "he", "she", "cook", "chef", "driver", "student", "worker", "人", "男", "女", "孩"),
    "dining table": ("table", "tables", "桌"),
    "couch": ("sofa", "sofas", "沙发"),
    "tv": ("television", "tv", "电视"),
    "cell phone": ("phone", "phones", "smartphone", "手机"),
    "motorcycle": ("motorbike", "motorbikes", "摩托"),
    "bicycle": ("bike", "bikes", "自行车"),
    "airplane": ("plane", "planes", "jet", "aircraft", "飞机"),
    "car": ("cars", "汽车", "轿车"),
    "cup": ("mug", "mugs", "coffee", "杯"),
    "sports ball": ("ball", "balls", "球"),
    "potted plant": ("plant", "plants", "flower", "flowers", "盆栽", "花"),
    "bird": ("birds", "duck", "ducks", "gull", "gulls", "pigeon", "鸟", "鸭"),
    "boat": ("ship", "ships", "boats", "船"),
    "laptop": ("computer", "computers", "电脑"),
    "donut": ("doughnut", "doughnuts"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer"),
}


def _mention_patterns():
    import re

    forms: dict[str, str] = {}
    for lab, t in LEXICON.items():
        for form in {t.en.lower(), t.en_plural.lower(), lab, t.zh, *CAPTION_SYNONYMS.get(lab, ())}:
            forms.setdefault(form, lab)
    latin = sorted((f for f in forms if f.isascii()), key=len, reverse=True)
    cjk = sorted((f for f in forms if not f.isascii()), key=len, reverse=True)
    # Longest first, so "hot dog" is a hot dog and not a dog, 斑马 a zebra and not a horse (马).
    return (forms, re.compile(r"\b(" + "|".join(re.escape(f) for f in latin) + r")\b"),
            re.compile("(" + "|".join(re.escape(f) for f in cjk) + ")"))


_MENTION_FORMS, _MENTION_LATIN, _MENTION_CJK = _mention_patterns()


def mentioned_labels(captions: list[str]) -> set[str]:
    """Categories named in the captions, by their lexicon forms (EN and ZH) and the synonyms above."""
    text = " ".join(c.lower() for c in captions)
    return {_MENTION_FORMS[m.group(1)] for pat in (_MENTION_LATIN, _MENTION_CJK) for m in pat.finditer(text)}


def spatial_relation(a: Obj, b: Obj, width: float, height: float, geo: Geometry) -> str | None:
    """'left' / 'right' / 'above' / 'below' (a relative to b, image y grows downwards), or None
    when a careful annotator would not state one: stuff background, large overlap or containment,
    an offset within the margin, or no axis that clearly dominates."""
    if is_stuff(a, width, height, geo) or is_stuff(b, width, height, geo):
        return None
    if overlap_of_smaller(a, b) > geo.max_overlap:
        return None
    dx = a.center[0] - b.center[0]
    dy = a.center[1] - b.center[1]
    if abs(dx) >= abs(dy):
        if abs(dx) / width <= geo.spatial_margin or abs(dx) < geo.spatial_dominance * abs(dy):
            return None
        return "left" if dx < 0 else "right"
    if abs(dy) / height <= geo.spatial_margin or abs(dy) < geo.spatial_dominance * abs(dx):
        return None
    return "above" if dy < 0 else "below"


OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def _clean_captions(row: dict[str, Any]) -> list[str]:
    caps = row.get("captions") or []
    if not caps and row.get("caption"):
        caps = [row["caption"]]
    out, seen = [], set()
    for c in caps:
        if not isinstance(c, str):
            continue
        c = " ".join(c.split())
        if not c or "<image" in c:  # a placeholder in a caption would break the image contract
            continue
        c = c[0].upper() + c[1:]
        if c[-1] not in ".!?。！？":
            c += "。" if "\u4e00" <= c[-1] <= "\u9fff" else "."
        if c.lower() not in seen:
            seen.add(c.lower())
            out.append(c)
    return out


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[0-9a-z]+|[\u4e00-\u9fff]", text.lower())


def caption_agrees(text: str, captions: list[str], min_ratio: float) -> bool:
    """True when ``text`` matches a run of words (or CJK characters) in some caption with a
    difflib ratio of at least ``min_ratio``: "YAMAHA" agrees with "A Yamaha emblem", "YAMANS" does not."""
    from difflib import SequenceMatcher

    target = "".join(_words(text))
    if not target:
        return False
    n = len(_words(text))
    for cap in captions:
        ws = _words(cap)
        for size in {max(1, n - 1), n, n + 1}:
            for i in range(0, max(1, len(ws) - size + 1)):
                cand = "".join(ws[i:i + size])
                if cand and SequenceMatcher(None, target, cand).ratio() >= min_ratio:
                    return True
    return False


def _clean_ocr(row: dict[str, Any], ocfg: "OcrRules", captions: list[str]) -> tuple[list[str], dict[str, int]]:
    """OCR lines trustworthy enough to quote, and a count of the others by reason."""
    out: list[str] = []
    dropped: dict[str, int] = {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    for line in row.get("ocr") or []:
        text = " ".join(str(line.get("text") or "").split())
        score = line.get("score")
        bbox = line.get("bbox")
        if not text:
            continue
        # Quotes delimit the text in answers and placeholders must never be forged by image text.
        if any(q in text for q in '"“”') or "<image" in text:
            drop("ocr_quote_or_placeholder")
            continue
        # OCR on photographs returns stray marks ("■", "|"); a question about them teaches nothing.
        if sum(ch.isalnum() for ch in text) < 2:
            drop("ocr_stray_marks")
            continue
        if score is not None and score < ocfg.min_score:
            drop("ocr_low_score")
            continue
        if bbox is not None and len(bbox) == 4 and min(float(bbox[2]), float(bbox[3])) < ocfg.min_height:
            drop("ocr_too_small")
            continue
        if captions and not caption_agrees(text, captions, ocfg.caption_match):
            drop("ocr_caption_mismatch")
            continue
        if text not in out:
            out.append(text)
    return out, dropped


@dataclass(frozen=True)
class OcrRules:
    min_score: float = 0.7
    min_height: float = 12.0  # the text box's shorter side in pixels
    caption_match: float = 0.8  # difflib ratio against the captions' words, when captions exist

    @classmethod
    def from_config(cls, cfg) -> "OcrRules":
        return cls(cfg.ocr_min_score, cfg.ocr_min_height, cfg.ocr_caption_match)


def facts_from_row(row: dict[str, Any], ocr: OcrRules | float | None = None, geo: Geometry | None = None) -> ImageFacts:
    """Validate a pair row's annotations; raise BadAnnotation(reason, detail) on anything unusable."""
    if not isinstance(ocr, OcrRules):
        ocr = OcrRules() if ocr is None else OcrRules(min_score=float(ocr))
    key = row.get("key")
    if not key:
        raise BadAnnotation("missing_key", f"pair row without a key (source {row.get('source')!r})")
    width, height = row.get("width"), row.get("height")
    objs = []
    for i, o in enumerate(row.get("objects") or []):
        label = o.get("label")
        if label not in LEXICON:
            raise BadAnnotation("unknown_label", f"row {key!r} objects[{i}].label={label!r} is not a COCO category name")
        bbox = o.get("bbox")
        if bbox is None or len(bbox) != 4 or any(v is None for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0:
            raise BadAnnotation("bad_bbox", f"row {key!r} objects[{i}].bbox={bbox!r}: expected [x, y, w, h] with w, h > 0")
        objs.append(Obj(label, tuple(float(v) for v in bbox), tuple(a.lower() for a in (o.get("attributes") or [])), bool(o.get("iscrowd"))))
    if objs and (not width or not height or width <= 0 or height <= 0):
        raise BadAnnotation("bad_size", f"row {key!r} has objects but width={width!r} height={height!r}")
    captions = _clean_captions(row)
    texts, dropped = _clean_ocr(row, ocr, captions)
    return ImageFacts(
        key=key,
        width=float(width or 0),
        height=float(height or 0),
        objects=objs,
        captions=captions,
        ocr_texts=texts,
        geo=geo or Geometry(),
        ocr_ran=isinstance(row.get("ocr"), list),
        ocr_dropped=dropped,
    )
