"""Reduced-scale decoding in ``process_image``: exact sizes, pixels close to a full decode, every format.

The reference for each case is what a careful script would do without any
shortcut: decode the whole picture with Pillow, make it upright, convert to RGB
and resize it with the same filter. The shortcut (DCT scaling inside
libjpeg-turbo: simplejpeg's N/8 scales, or Pillow's ``draft`` when libjpeg-turbo
complains) must give the same size to the pixel and nearly the same pixels.
"""
from __future__ import annotations

import io

import math

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from datagen.fetch.config import FetchConfig
from datagen.fetch.image import JPEG_MARGIN, RESAMPLE, process_image, target_size


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
    """Every reduced-scale decode, (source size, decoded size, "simplejpeg" or "draft"), so a test can see
    that the JPEG was decoded small, and by which decoder (a decode simplejpeg refused is not listed)."""
    seen: list[tuple[tuple[int, int], tuple[int, int], str]] = []
    original, decode = JpegImageFile.draft, simplejpeg.decode_jpeg

    def spy(self, mode, size):
        before = self.size
        result = original(self, mode, size)
        seen.append((before, self.size, "draft"))
        return result

    def spy_decode(data, *args, **kw):
        arr = decode(data, *args, **kw)
        h, w = simplejpeg.decode_jpeg_header(data)[:2]
        seen.append(((w, h), (arr.shape[1], arr.shape[0]), "simplejpeg"))
        return arr

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy_decode)
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
    (before, after, how), = drafts
    assert before == size and after[0] < size[0] and max(after) >= 256  # decoded small, never below the target
    assert how == "simplejpeg"


@pytest.mark.parametrize("size,scaled", [
    # target 256x179: 3/8 gives 375x263 (2/8, 250x175, is too small)
    ((1000, 700), (375, 263)),
    # target 256x110: 1/8 gives 263x113, already enough
    ((2100, 900), (263, 113)),
    # target 256x171: 6/8 gives 300x201 (5/8, 250x167, is too small)
    ((400, 267), (300, 201)),
])
def test_jpeg_is_decoded_at_the_smallest_eighth_scale_with_the_margin(size, scaled, drafts):
    data = encode(photo_like(*size), "JPEG", quality=92)
    img, _ = decoded(data, 256)
    assert drafts == [(size, scaled, "simplejpeg")]
    target = target_size(*size, 256)
    need = [math.ceil(t * JPEG_MARGIN) for t in target]
    assert scaled[0] >= need[0] and scaled[1] >= need[1]
    assert mean_diff(img, reference(data, 256)) < 2.5


def test_a_jpeg_libjpeg_complains_about_is_decoded_by_pillow_as_before(drafts):
    """Extra bytes before the end marker: libjpeg-turbo warns (simplejpeg, strict, refuses); Pillow decodes
    it, as it did before simplejpeg, and decides. The row is kept, from Pillow's draft."""
    good = encode(photo_like(1000, 700, seed=5), "JPEG", quality=90)
    data = good[:-2] + b"\x00" * 7 + good[-2:]
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(data, strict=True)
    img, out = decoded(data, 256)
    assert [how for _, _, how in drafts] == ["draft"] and out.reencoded
    assert img.size == (256, 179) and mean_diff(img, reference(good, 256)) < 2.5


def test_a_grey_jpeg_is_scaled_and_stored_as_rgb(drafts):
    data = encode(photo_like(1000, 700, seed=6).convert("L"), "JPEG", quality=90)
    img, out = decoded(data, 256)
    assert [how for _, _, how in drafts] == ["simplejpeg"]
    assert img.mode == "RGB" and img.size == (256, 179)
    assert mean_diff(img, reference(data, 256)) < 2.5


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


@pytest.mark.parametrize("cut", ["half", "no_end_marker"])
def test_a_cut_jpeg_that_must_shrink_is_still_a_reject(cut, drafts):
    """The scaled decode must not turn a short file into a thumbnail with a grey bottom: libjpeg-turbo's
    warning sends it to Pillow, whose error (or the end-marker check) makes it ``image_truncated``."""
    from datagen.fetch.errors import FetchError

    whole = encode(photo_like(1000, 700, seed=7), "JPEG", quality=90)
    data = whole[: len(whole) // 2] if cut == "half" else whole[:-2]
    with pytest.raises(FetchError) as e:
        process_image(data, None, FetchConfig(max_side=256))
    assert e.value.reason == "image_truncated"
    assert "simplejpeg" not in [how for _, _, how in drafts]


@pytest.fixture
def resizes(monkeypatch):
    """Which library did each resize: "opencv" (``cv2.resize``) or "pillow" (``Image.resize``)."""
    import cv2

    from datagen.fetch import image as image_mod

    seen: list[str] = []
    cv_resize, pil_resize = cv2.resize, Image.Image.resize
    monkeypatch.setattr(cv2, "resize", lambda *a, **kw: seen.append("opencv") or cv_resize(*a, **kw))
    monkeypatch.setattr(Image.Image, "resize", lambda *a, **kw: seen.append("pillow") or pil_resize(*a, **kw))
    assert image_mod._cv2() is cv2
    return seen


def test_opencv_resize_is_the_documented_blur_then_bicubic_at_the_box_scale():
    """``_resize`` against the computation the module doc states, done here by hand: a Gaussian of
    CV_BLUR * sqrt(r^2 - 1) per axis, OpenCV's bicubic at fx = 1 / r, the picture's size cut out."""
    import cv2

    from datagen.fetch.image import CV_BLUR, _resize

    arr = np.asarray(photo_like(375, 263, seed=9))
    box, size = (0, 0, 375, 262.5), (256, 179)  # a 1000x700 JPEG at 3/8: libjpeg rounds 262.5 rows up
    rx, ry = 375 / 256, 262.5 / 179
    sx, sy = CV_BLUR * math.sqrt(rx * rx - 1), CV_BLUR * math.sqrt(ry * ry - 1)
    k = lambda s: int(round(s * 6 + 1)) | 1  # noqa: E731 - OpenCV's kernel size for 8-bit pictures
    want = cv2.resize(cv2.GaussianBlur(arr, (k(sx), k(sy)), sigmaX=sx, sigmaY=sy), None, fx=1 / rx, fy=1 / ry,
                      interpolation=cv2.INTER_CUBIC)[:179, :256]
    got = _resize(arr, size, box)
    assert got.shape[1::-1] == size and np.array_equal(got, want)


def test_opencv_resize_maps_the_box_not_the_whole_array(resizes):
    """The rows and columns past the box (libjpeg's rounded-up edge, here made white) are not stretched
    over the picture: every output pixel but the last row and column comes from inside the box."""
    from datagen.fetch.image import _resize

    arr = np.full((101, 101, 3), 255, np.uint8)
    arr[:50, :50] = 0
    got = np.asarray(_resize(arr, (40, 40), (0, 0, 50.5, 50.5)))
    assert resizes == ["opencv"] and got.shape == (40, 40, 3)
    assert got[:38, :38].max() <= 1  # a size of (40, 40) for the whole array would put white from column 20 on


@pytest.mark.parametrize("size,how", [((1000, 700), ["opencv"]),     # 3/8 decode, shrink 1.46: OpenCV
                                      ((6000, 4000), ["pillow"])])   # 1/8 decode is 750 px, shrink 2.9: Pillow
def test_shrinks_past_two_go_through_pillow(size, how, resizes):
    data = encode(photo_like(*size, seed=4), "JPEG", quality=90)
    img, _ = decoded(data, 256)
    assert resizes == how and img.size == target_size(*size, 256)


def test_a_picture_not_in_rgb_is_converted_before_opencv_resizes_it(resizes):
    """A palette PNG becomes RGB first (Pillow would resize a palette with nearest-neighbour). Its bands
    cost the quality-90 encode alone about 3.7 levels: the resize may add half a level to that."""
    data = encode(photo_like(300, 200, seed=2).convert("P", dither=Image.Dither.NONE), "PNG")
    ref = reference(data, 256)
    encoded_ref = Image.open(io.BytesIO(encode(ref, "JPEG", quality=90)))
    resizes.clear()
    img, _ = decoded(data, 256)
    assert resizes == ["opencv"] and img.mode == "RGB"
    assert mean_diff(img, ref) < mean_diff(encoded_ref, ref) + 0.5


@pytest.mark.parametrize("case", ["jpeg_opencv_resize", "jpeg_pillow_resize", "jpeg_rotated", "png_kept_size",
                                  "icc_profile"])
def test_stored_jpegs_are_the_bytes_pillows_encoder_makes(case, monkeypatch):
    """``_encode`` hands JPEGs to OpenCV's encoder (faster, no Pillow image to build): the stored bytes must
    be what Pillow's ``save(quality=...)`` made of the same pixels, whichever path they took. A JPEG with an
    ICC profile still goes through Pillow, which embeds the profile."""
    import cv2

    from datagen.fetch import image as image_mod

    sizes = {"jpeg_opencv_resize": (900, 620), "jpeg_pillow_resize": (1400, 900), "jpeg_rotated": (700, 500),
             "png_kept_size": (200, 150), "icc_profile": (700, 500)}
    src = photo_like(*sizes[case], seed=3)
    if case == "png_kept_size":
        data = encode(src, "PNG")
    elif case == "jpeg_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        data = encode(src, "JPEG", quality=92, exif=exif)
    elif case == "icc_profile":
        from PIL import ImageCms

        icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        data = encode(src, "JPEG", quality=92, icc_profile=icc)
    else:
        data = encode(src, "JPEG", quality=92)
    encoded, opencv = [], []
    real_encode, real_imencode = image_mod._encode, cv2.imencode
    monkeypatch.setattr(image_mod, "_encode", lambda px, *a: encoded.append(np.array(px)) or real_encode(px, *a))
    monkeypatch.setattr(cv2, "imencode", lambda *a, **k: opencv.append(a[0]) or real_imencode(*a, **k))
    cfg = FetchConfig(max_side=256, jpeg_quality=87)
    out = process_image(data, None, cfg)
    assert out.format == "jpeg" and out.reencoded and len(encoded) == 1
    assert (out.width, out.height) == encoded[0].shape[1::-1]
    if case == "png_kept_size":
        assert (out.width, out.height) == (200, 150)
    if case == "jpeg_rotated":
        assert (out.width, out.height) == (183, 256)
    stored = Image.open(io.BytesIO(out.data))
    if case == "icc_profile":
        assert not opencv, "an ICC profile to embed goes through Pillow"
        assert stored.info.get("icc_profile") == icc
        return
    assert opencv == [".jpg"], "OpenCV encoded it"
    assert out.data == encode(Image.fromarray(encoded[0]), "JPEG", quality=87)
    assert "icc_profile" not in stored.info and stored.mode == "RGB"
