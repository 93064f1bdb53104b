"""What the templates may claim about one image, derived from its annotations.

The generator asks questions only about facts that are safe to state:
- counts exclude COCO crowd regions (``iscrowd``), and a category that has a
  crowd region is never counted at all (its count is unknown);
- "the dog" is only said when exactly one dog is annotated and no dog crowd;
- spatial and size relations are only stated beyond a margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datagen.synth.lexicon import LEXICON
from datagen.synth.scene import scene_from_row


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


@dataclass
class ImageFacts:
    key: str
    width: float
    height: float
    objects: list[Obj]
    captions: list[str]
    ocr_texts: list[str]
    present: set[str] = field(default_factory=set)  # any annotation, crowd included
    counts: dict[str, int] = field(default_factory=dict)  # non-crowd instances
    crowd: set[str] = field(default_factory=set)
    scene: Any = None  # datagen.synth.scene.Scene: relations, quantifiers, grounding, open vocabulary

    def __post_init__(self) -> None:
        for o in self.objects:
            self.present.add(o.label)
            if o.iscrowd:
                self.crowd.add(o.label)
            else:
                self.counts[o.label] = self.counts.get(o.label, 0) + 1

    def countable(self, max_count: int) -> list[str]:
        """Labels whose count is known (no crowd region) and small enough to ask about."""
        return sorted(lab for lab, n in self.counts.items() if lab not in self.crowd and 1 <= n <= max_count)

    def unique_objects(self) -> list[Obj]:
        """Objects that "the <label>" refers to without ambiguity."""
        return sorted(
            (o for o in self.objects if not o.iscrowd and self.counts.get(o.label) == 1 and o.label not in self.crowd),
            key=lambda o: o.label,
        )


def horizontal_relation(a: Obj, b: Obj, width: float, margin: float) -> str | None:
    """'left' / 'right' (a relative to b) when box centres differ by more than margin*width."""
    dx = (a.center[0] - b.center[0]) / width
    if dx < -margin:
        return "left"
    if dx > margin:
        return "right"
    return None


def vertical_relation(a: Obj, b: Obj, height: float, margin: float) -> str | None:
    """'above' / 'below' (a relative to b); image y grows downwards."""
    dy = (a.center[1] - b.center[1]) / height
    if dy < -margin:
        return "above"
    if dy > margin:
        return "below"
    return None


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
        if c[-1] not in ".!?。！？":  # Chinese captions (COCO-CN) end in 。
            c += "."
        if c.lower() not in seen:
            seen.add(c.lower())
            out.append(c)
    return out


def _clean_ocr(row: dict[str, Any], min_score: float) -> list[str]:
    out = []
    for line in row.get("ocr") or []:
        text = " ".join(str(line.get("text") or "").split())
        score = line.get("score")
        if not text or (score is not None and score < min_score):
            continue
        # Quotes delimit the text in answers and placeholders must never be forged by image text.
        if any(q in text for q in '"“”') or "<image" in text:
            continue
        # OCR on photographs returns stray marks ("■", "|"); a question about them teaches nothing.
        if sum(ch.isalnum() for ch in text) < 2:
            continue
        if text not in out:
            out.append(text)
    return out


def facts_from_row(row: dict[str, Any], ocr_min_score: float = 0.5) -> ImageFacts:
    """Validate a pair row's annotations; raise BadAnnotation(reason, detail) on anything unusable."""
    key = row.get("key")
    if not key:
        raise BadAnnotation("missing_key", f"pair row without a key (source {row.get('source')!r})")
    width, height = row.get("width"), row.get("height")
    objs = []
    # Open-vocabulary rows (Visual Genome: objects carry synsets) feed only the scene families;
    # the COCO families below would read their names as COCO categories.
    open_vocab = any(o and o.get("synsets") for o in row.get("objects") or [])
    for i, o in enumerate([] if open_vocab else row.get("objects") or []):
        label = o.get("label")
        if label not in LEXICON:
            raise BadAnnotation("unknown_label", f"row {key!r} objects[{i}].label={label!r} is not a COCO category name")
        bbox = o.get("bbox")
        if bbox is None or len(bbox) != 4 or any(v is None for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0:
            raise BadAnnotation("bad_bbox", f"row {key!r} objects[{i}].bbox={bbox!r}: expected [x, y, w, h] with w, h > 0")
        objs.append(Obj(label, tuple(float(v) for v in bbox), tuple(a.lower() for a in (o.get("attributes") or [])), bool(o.get("iscrowd"))))
    if objs and (not width or not height or width <= 0 or height <= 0):
        raise BadAnnotation("bad_size", f"row {key!r} has objects but width={width!r} height={height!r}")
    if open_vocab and (not width or not height or width <= 0 or height <= 0):
        raise BadAnnotation("bad_size", f"row {key!r} has objects but width={width!r} height={height!r}")
    return ImageFacts(
        key=key,
        width=float(width or 0),
        height=float(height or 0),
        objects=objs,
        captions=_clean_captions(row),
        ocr_texts=_clean_ocr(row, ocr_min_score),
        scene=scene_from_row(row),
    )
