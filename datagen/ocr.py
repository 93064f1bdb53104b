"""Optional OCR step: read the text in each image with RapidOCR (PP-OCR models on onnxruntime).

Scene text is something a captioner rarely writes down and a user often asks
about ("what does the sign say?"). This step adds an ``ocr`` column that the
template synthesis makes scene-text questions from and that the LLM step adds
to an image's symbolic context. ``rapidocr-onnxruntime`` ships its detection,
angle and recognition models inside the wheel, so it runs offline; it is
imported lazily because most recipes do not use this step.

Output column ``ocr``: ``list<struct{text, bbox: [x, y, w, h] pixels, score}>``,
the axis-aligned box around each detected (possibly rotated) text line, in
reading order as RapidOCR returns it. Rows without image bytes keep a null
``ocr`` (not an empty list: "not looked at" differs from "no text"); images
that do not decode are rejected with ``ocr_undecodable_image``.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from datagen.core.records import reject, rejects_table
from datagen.core.steps import RunContext, Step, StepOutput

OCR_ITEM_TYPE = pa.struct([("text", pa.string()), ("bbox", pa.list_(pa.float64())), ("score", pa.float64())])
OCR_TYPE = pa.list_(OCR_ITEM_TYPE)


class OcrConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_score: float = Field(0.5, ge=0, le=1, description="Drop text lines recognised with a lower confidence.")
    max_items: int = Field(50, ge=1, description="Keep at most this many text lines per image.")
    use_angle_cls: bool = Field(True, description="Classify upside-down text lines (slower, reads rotated signs).")
    threads: int = Field(1, ge=1, description="onnxruntime intra-op threads per worker process.")


def quad_to_xywh(points: Any) -> list[float]:
    """RapidOCR's four corner points -> the enclosing [x, y, w, h] box in pixels."""
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
    return [x0, y0, max(xs) - x0, max(ys) - y0]


class OcrStep(Step):
    name = "ocr"
    kind = "map"
    version = 1

    def __init__(self, config: OcrConfig, ctx: RunContext):
        super().__init__(config, ctx)
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR  # lazy: heavy import, optional step

            n = self.config.threads
            self._engine = RapidOCR(text_score=self.config.min_score, intra_op_num_threads=n, inter_op_num_threads=1)
        return self._engine

    def __getstate__(self) -> dict:  # process pools: each worker loads its own sessions
        state = dict(self.__dict__)
        state["_engine"] = None
        return state

    def read_text(self, image_bytes: bytes) -> list[dict]:
        """OCR one encoded image; raises ``ValueError`` if it does not decode."""
        from PIL import Image, UnidentifiedImageError

        try:
            img = Image.open(io.BytesIO(image_bytes))
            img.load()
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ValueError(f"image does not decode: {e}") from None
        result, _elapsed = self.engine(img.convert("RGB"), use_cls=self.config.use_angle_cls)
        items = []
        for points, text, score in result or []:
            text, score = str(text).strip(), float(score)
            if text and score >= self.config.min_score:
                items.append({"text": text, "bbox": quad_to_xywh(points), "score": round(score, 4)})
        return items[: self.config.max_items]

    def process(self, table: pa.Table) -> StepOutput:
        stat = self.ctx.stat(self.name)
        images = table.column("image").to_pylist()
        keep_idx, ocr, rejects = [], [], []
        meta_cols = [c for c in ("key", "source", "url") if c in table.column_names]
        n_text = 0
        for i, data in enumerate(images):
            if data is None:
                keep_idx.append(i)
                ocr.append(None)
                stat["no_image"] = stat.get("no_image", 0) + 1
                continue
            try:
                items = self.read_text(data)
            except ValueError as e:
                row = {c: table.column(c)[i].as_py() for c in meta_cols}
                rejects.append(reject(row, self.name, "ocr_undecodable_image", str(e)[:300]))
                continue
            keep_idx.append(i)
            ocr.append(items)
            n_text += bool(items)
        kept = table.take(pa.array(keep_idx, type=pa.int64()))
        if "ocr" in kept.column_names:
            kept = kept.drop_columns(["ocr"])
        kept = kept.append_column(pa.field("ocr", OCR_TYPE), pa.array(ocr, type=OCR_TYPE))
        stat["rows"] = stat.get("rows", 0) + len(images)
        stat["rows_with_text"] = stat.get("rows_with_text", 0) + n_text
        stat["text_lines"] = stat.get("text_lines", 0) + sum(len(x or []) for x in ocr)
        return StepOutput(kept, rejects_table(rejects))

    def close(self) -> None:
        self._engine = None
