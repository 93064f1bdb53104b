"""Reduced-scale decoding in ``process_image``: exact sizes, pixels close to a full decode, every format.

The reference for each case is what a careful script would do without any
shortcut: decode the whole picture with Pillow, make it upright, convert to RGB
and resize it with the same filter. The shortcut (``draft``: DCT scaling inside
libjpeg) must give the same size to the pixel and nearly the same pixels.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from datagen.fetch.config import FetchConfig
from datagen.fetch.image import RESAMPLE, process_image, target_size


def photo_like(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth gradients and blobs plus mild noise: JPEG-compressible like a photograph, not flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0)
    g = 128 + 90 * np.cos((x + y) / 61.0)
    b = 255 * (x / w) * (1 - y / h)
    arr = np.stack([r, g, b], -1) + rng.normal(0, 4, (h, w, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def reference(data: bytes, max_side: int) -> Image.Image:
    full = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return full.resize(target_size(*full.size, max_side), RESAMPLE)


def decoded(data: bytes, max_side: int) -> tuple[Image.Image, object]:
    out = process_image(data, None, FetchConfig(max_side=max_side))
    return Image.open(io.BytesIO(out.data)), out


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


@pytest.fixture
def drafts(monkeypatch):
    """Every scale ``draft`` chose, so a test can see that the JPEG was decoded small."""
    seen: list[tuple[tuple[int, int], tuple[int, int]]] = []
    original = JpegImageFile.draft

    def spy(self, mode, size):
        before = self.size
        result = original(self, mode, size)
        seen.append((before, self.size))
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    return seen


@pytest.mark.parametrize("size,progressive", [((1024, 768), False), ((1000, 700), False), ((999, 661), True),
                                              ((300, 1024), False), ((2100, 900), True)])
def test_reduced_scale_jpeg_has_exact_size_and_close_pixels(size, progressive, drafts):
    data = encode(photo_like(*size), "JPEG", quality=92, progressive=progressive)
    img, out = decoded(data, 256)
    ref = reference(data, 256)
    assert img.size == ref.size == target_size(*size, 256)
    assert (out.width, out.height) == img.size and (out.original_width, out.original_height) == size
    assert mean_diff(img, ref) < 2.5  # re-encoding at quality 90 alone costs about 1
    (before, after), = drafts
    assert before == size and after[0] < size[0] and max(after) >= 256  # decoded small, never below the target


def test_exif_orientation_is_honoured_at_reduced_scale(drafts):
    raw = photo_like(1000, 600, seed=3)
    raw.paste((255, 0, 0), (0, 0, 200, 120))  # a red corner that must end up where exif_transpose puts it
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    data = encode(raw, "JPEG", quality=95, exif=exif.tobytes())
    img, out = decoded(data, 256)
    ref = reference(data, 256)
    assert img.size == ref.size == (154, 256)
    assert (out.original_width, out.original_height) == (600, 1000)
    assert mean_diff(img, ref) < 2.5
    assert np.asarray(img)[10, -10].tolist()[0] > 200 and np.asarray(img)[10, 10].tolist()[0] < 200
    assert drafts and drafts[0][1][0] < 1000


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("GIF", {}), ("WEBP", {"quality": 95})])
def test_other_formats_resize_from_a_full_decode(fmt, kw, drafts):
    src = photo_like(900, 600, seed=1)
    data = encode(src.convert("P") if fmt == "GIF" else src, fmt, **kw)
    img, out = decoded(data, 256)
    ref = reference(data, 256)
    assert img.size == ref.size == (256, 171)
    assert mean_diff(img, ref) < 2.5
    assert out.format == "jpeg" and not drafts  # draft is a JPEG-only shortcut


def test_small_jpeg_is_neither_drafted_nor_resized(drafts):
    data = encode(photo_like(200, 150), "JPEG", quality=90)
    out = process_image(data, None, FetchConfig(max_side=256))
    assert out.data == data and not out.reencoded and not drafts
