"""OcrStep on real images with text rendered by Pillow (RapidOCR's bundled models, CPU)."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest
from PIL import Image, ImageDraw, ImageFont

from datagen.llm.prompts import build_context
from datagen.ocr import OCR_TYPE, OcrConfig, OcrStep, quad_to_xywh
from datagen.core.records import pairs_table
from datagen.core.steps import RunContext


def render(text: str, size=(360, 120), at=(30, 25)) -> bytes:
    """A big, clear word in Pillow's bundled font, black on white, as JPEG bytes."""
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text(at, text, fill="black", font=ImageFont.load_default(size=56))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ocr_output(tmp_path_factory):
    """One OCR run shared by the tests: model loading dominates the cost."""
    blank = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(blank, format="PNG")
    table = pairs_table([
        {"key": "t_hello", "source": "t", "image": render("HELLO"), "width": 360, "height": 120,
         "caption": "a sign"},
        {"key": "t_blank", "source": "t", "image": blank.getvalue(), "width": 64, "height": 64},
        {"key": "t_none", "source": "t", "image": None},
        {"key": "t_broken", "source": "t", "url": "http://x/b.jpg", "image": b"\xff\xd8 not really a jpeg"},
    ]).append_column("clip_score", pa.array([0.3, 0.2, 0.1, 0.0]))
    ctx = RunContext(run_dir=tmp_path_factory.mktemp("run"), recipe_dir=tmp_path_factory.mktemp("recipe"))
    step = OcrStep(OcrConfig(min_score=0.5), ctx)
    out = step.process(table)
    step.close()
    return out, ctx


def test_reads_rendered_word_with_box_in_pixels(ocr_output):
    out, _ = ocr_output
    assert out.kept.schema.field("ocr").type == OCR_TYPE
    rows = {r["key"]: r for r in out.kept.to_pylist()}
    found = rows["t_hello"]["ocr"]
    assert any("HELLO" in item["text"].upper() for item in found), found
    item = next(i for i in found if "HELLO" in i["text"].upper())
    x, y, w, h = item["bbox"]
    # the word was drawn from (30, 25) at 56 px: its box must sit around there, inside the image
    assert 0 <= x <= 45 and 0 <= y <= 45 and 100 <= w <= 330 and 25 <= h <= 95
    assert 0.5 <= item["score"] <= 1.0


def test_rows_kept_rejected_and_columns_preserved(ocr_output):
    out, ctx = ocr_output
    rows = {r["key"]: r for r in out.kept.to_pylist()}
    assert set(rows) == {"t_hello", "t_blank", "t_none"}
    assert rows["t_blank"]["ocr"] == []  # looked at, no text
    assert rows["t_none"]["ocr"] is None  # nothing to look at
    assert rows["t_hello"]["clip_score"] == 0.3  # extra stat columns survive
    rej = out.rejects.to_pylist()
    assert [(r["key"], r["reason"], r["step"], r["url"]) for r in rej] == [
        ("t_broken", "ocr_undecodable_image", "ocr", "http://x/b.jpg")]
    assert ctx.stats["ocr"]["rows"] == 4 and ctx.stats["ocr"]["rows_with_text"] == 1
    assert ctx.stats["ocr"]["no_image"] == 1


def test_ocr_feeds_the_llm_context(ocr_output):
    out, _ = ocr_output
    row = next(r for r in out.kept.to_pylist() if r["key"] == "t_hello")
    context = build_context(row)
    assert "Text seen in the image:" in context
    line = next(ln for ln in context.splitlines() if "HELLO" in ln.upper())
    assert json.loads(line[2 : line.index(" at [")]).upper().startswith("HELLO")


def test_quad_to_xywh():
    assert quad_to_xywh([[10, 5], [50, 7], [49, 30], [9, 28]]) == [9.0, 5.0, 41.0, 25.0]
