"""Cheap quality rules on pair rows: image size, aspect ratio, caption length.

Defaults follow published practice (DESIGN.md section 6): LAION dropped alt-text
under 5 characters and images under 5 KB; DataComp's basic filter keeps
captions of more than 2 words, a shorter side of at least 200 px and an aspect
ratio of at most 3. The demo recipe relaxes the pixel rule for its small
pictures. Each rule is a reject reason of its own, so the summary says which
rule cost how many rows.

Size rules judge the image's original size (``original_width``/``height``,
which fetch records before any resize), not the stored thumbnail: with
``max_side: 512`` a 2000x700 photo is stored at 512x179, and judging that
would reject a fine picture as ``image_too_small`` instead of judging its
aspect ratio. Rows without the original size fall back to ``width``/``height``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from datagen.core.records import reject, rejects_table
from datagen.core.steps import Step, StepOutput


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_side: int | None = Field(200, ge=1, description="Shorter image side in pixels at least (DataComp: 200).")
    max_aspect: float | None = Field(3.0, ge=1, description="Longer side / shorter side at most (DataComp: 3).")
    min_image_bytes: int | None = Field(None, ge=0, description="Encoded image size at least (LAION: 5000).")
    min_caption_chars: int | None = Field(5, ge=0, description="Caption length in characters at least (LAION: 5).")
    min_caption_words: int | None = Field(2, ge=0, description="Caption words at least (DataComp: more than 2).")
    max_caption_chars: int | None = Field(2000, ge=1)


def _check(row: dict, n_bytes: int | None, cfg: QualityConfig) -> tuple[str, str] | None:
    """The first failing rule as (reason, detail), or None if the row passes."""
    caption = (row.get("caption") or "").strip()
    if not caption:
        return "caption_empty", "empty caption"
    if cfg.min_caption_chars is not None and len(caption) < cfg.min_caption_chars:
        return "caption_too_short", f"{len(caption)} chars < {cfg.min_caption_chars}"
    if cfg.min_caption_words is not None and len(caption.split()) < cfg.min_caption_words:
        # Chinese and Japanese captions have no spaces: count characters as words there.
        if not any("\u3400" <= ch <= "\u9fff" for ch in caption):
            return "caption_too_short", f"{len(caption.split())} words < {cfg.min_caption_words}"
    if cfg.max_caption_chars is not None and len(caption) > cfg.max_caption_chars:
        return "caption_too_long", f"{len(caption)} chars > {cfg.max_caption_chars}"
    w, h = row.get("original_width"), row.get("original_height")
    if w is None or h is None:
        w, h = row.get("width"), row.get("height")
    if w is None or h is None:
        return "no_image", "width/height unknown: the image was not fetched"
    if cfg.min_side is not None and min(w, h) < cfg.min_side:
        return "image_too_small", f"{w}x{h}: shorter side < {cfg.min_side}"
    if cfg.max_aspect is not None and max(w, h) / max(1, min(w, h)) > cfg.max_aspect:
        return "aspect_ratio", f"{w}x{h}: ratio {max(w, h) / max(1, min(w, h)):.2f} > {cfg.max_aspect}"
    if cfg.min_image_bytes is not None and (n_bytes or 0) < cfg.min_image_bytes:
        return "image_file_too_small", f"{n_bytes or 0} bytes < {cfg.min_image_bytes}"
    return None


class QualityFilterStep(Step):
    name = "quality"
    kind = "filter"

    def process(self, table: pa.Table) -> StepOutput:
        cols = [c for c in ("key", "source", "url", "caption", "width", "height", "original_width", "original_height")
                if c in table.column_names]
        light = table.select(cols).to_pylist()
        sizes = pc.binary_length(table.column("image")).to_pylist() if "image" in table.column_names else None
        keep, rejects = [], []
        for i, row in enumerate(light):
            failed = _check(row, sizes[i] if sizes else None, self.config)
            if failed:
                rejects.append(reject(row, self.name, failed[0], failed[1]))
            else:
                keep.append(i)
        return StepOutput(table.take(pa.array(keep, type=pa.int64())), rejects_table(rejects))
