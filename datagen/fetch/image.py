"""Decode, check, straighten, convert, resize and encode one image; move its boxes along.

Why each choice:
- Pillow, with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left False and ``load()``
  inside a try: a truncated download must become a reject, never a half-grey
  image that silently trains the model on garbage. Pillow alone is not enough:
  a PNG whose zlib stream ends cleanly after a few rows decodes as an all-black
  picture. Rows that never arrive stay zero, so the last scanline in stream
  order (the last row, or the last row of the last Adam7 pass) is blank; only
  then is the IDAT inflated a second time and counted against what the header
  promises (a second inflate of every PNG would add 0.25-0.4 of its
  processing time: bench/bench_fetch.py). A JPEG must end with its end-of-image marker after its
  last scan.
- The header size is checked against ``max_pixels`` before any pixel is decoded,
  so a decompression bomb costs nothing.
- JPEGs that must shrink are decoded at a reduced scale inside libjpeg-turbo
  (DCT scaling): the IDCT and colour conversion run on the smaller picture.
  An RGB or grey JPEG goes through simplejpeg, which offers every N/8 scale:
  the smallest that is at least the target (``JPEG_MARGIN``, 1.0; the DCT
  scaling is itself a good shrink, and the resize after it has little left
  to do. A margin of 1.15 was closer to the reference with Pillow's resize;
  with the OpenCV one below it buys nothing, 35.73 dB either way on
  ``bench/bench_resize.py``, and costs 3% of ``process_image``). Any JPEG
  libjpeg-turbo has a complaint about (corrupt data, a short file), and CMYK
  or multi-picture ones, go the way they went before:
  Pillow with ``draft`` (1/2, 1/4, 1/8), so Pillow still decides what is
  truncated or broken. The picture's region in the scaled decode (w x N/8,
  which libjpeg rounds up to whole pixels) is kept as the resize's box so the
  geometry stays exact (boxes keep lining up with pixels; without it the
  thumbnail shifts by up to half a pixel, 3-4 dB).
- The resize (``_resize``): a shrink by at most ``CV_MAX_SHRINK`` (2x) per
  axis, which is every N/8-decoded JPEG but the very largest, is a Gaussian
  pre-blur of ``CV_BLUR`` x sqrt(r^2 - 1) source pixels (the blur that takes
  a source already soft by about half a pixel to about half an output pixel:
  the antialiasing a plain bicubic lacks; 0.45 measured closer to the
  reference than the 0.5 of that reasoning, 35.73 against 35.65 dB), then
  OpenCV's bicubic at the exact scale of the box (``fx``/``fy``, so a
  fractional box stays exact), both in fixed point and SIMD: 0.2 ms where
  Pillow's antialiased bicubic took 1.0 ms on the download kit (the largest
  part of ``process_image`` after the decode). Larger shrinks go through
  Pillow's bicubic (``RESAMPLE``, CLIP's own preprocessing filter), whose
  kernel widens with the shrink. ``bench/bench_resize.py`` measures both
  against a full decode resized with Lanczos, next to img2dataset's recipe
  (OpenCV full decode, INTER_AREA): see the README's table. OpenCV runs one
  thread per call (``cv2.setNumThreads(1)``): the pool's processes (and the
  fetch step's decode threads, where a process has cores to spare) already
  use every core.
- Conversion to RGB comes BEFORE the resize: Pillow resizes palette images with
  nearest-neighbour, and alpha must be composited on white first (a transparent
  PNG on black looks like a different picture to CLIP).
- EXIF orientation is applied last, with the same orientation -> transpose table
  as ``PIL.ImageOps.exif_transpose``. We do it ourselves rather than call
  ``exif_transpose`` because we need the method to move the COCO boxes by the
  same transform; resize and transpose commute, so doing it last is exact. The
  stored image carries no EXIF, so no reader can rotate it a second time.
- The stored JPEG is encoded by OpenCV (``_encode``): libjpeg-turbo with
  Pillow's settings (accurate DCT, 4:2:0, the standard tables at
  ``jpeg_quality``), so the same bytes as Pillow's ``save``, in 0.14 instead
  of 0.19 ms and without building a Pillow image from the resized array
  (0.06 ms). Pillow still encodes PNGs and JPEGs that carry an ICC profile.
- An upright RGB JPEG that needs no resize is stored byte-for-byte
  (``keep_original_jpeg``): re-encoding would lose quality and cost CPU for
  nothing. It is still fully decoded first, to catch truncation.
- The original size (upright, before any resize) is kept next to the stored
  one: quality rules judge the picture the source had, not our thumbnail.
- Reject details never quote the bytes (an internal endpoint's reply must not
  land in an output file): only the length and the Content-Type.
- Boxes (``objects[*].bbox`` = [x, y, w, h] in pixels of the original image) are
  scaled by the resize factors per axis, then their corners are mapped by the
  transpose, so they stay on the same pixels.
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, UnidentifiedImageError

from datagen.fetch.config import FetchConfig
from datagen.fetch.errors import FetchError

# Never decode half images; stated here so no other module's setting can leak in unnoticed.
ImageFile.LOAD_TRUNCATED_IMAGES = False

T = Image.Transpose
# EXIF orientation -> the transpose that makes the image upright (same table as ImageOps.exif_transpose).
ORIENTATION_TRANSPOSE = {
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_270,
    7: T.TRANSVERSE,
    8: T.ROTATE_90,
}

# Where a point (x, y) of a w x h image lands after each transpose (continuous pixel-edge coordinates).
_POINT_MAP: dict[T, Callable[[float, float, int, int], tuple[float, float]]] = {
    T.FLIP_LEFT_RIGHT: lambda x, y, w, h: (w - x, y),
    T.FLIP_TOP_BOTTOM: lambda x, y, w, h: (x, h - y),
    T.ROTATE_180: lambda x, y, w, h: (w - x, h - y),
    T.ROTATE_90: lambda x, y, w, h: (y, w - x),  # Pillow's ROTATE_90 is counter-clockwise
    T.ROTATE_270: lambda x, y, w, h: (h - y, x),
    T.TRANSPOSE: lambda x, y, w, h: (y, x),
    T.TRANSVERSE: lambda x, y, w, h: (h - y, w - x),
}

RESAMPLE = Image.Resampling.BICUBIC  # see the module doc
JPEG_MARGIN = 1.0  # a JPEG is decoded at the smallest N/8 scale at least this many times the target (module doc)
CV_MAX_SHRINK = 2.0  # the largest shrink per axis that OpenCV's blur + bicubic does (module doc); Pillow above it
CV_BLUR = 0.45  # the pre-blur's sigma, times sqrt(r^2 - 1) for a shrink by r (module doc)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_BYTES_LITERAL = re.compile(r"b'[^']*'|b\"[^\"]*\"")


@dataclass
class StoredImage:
    data: bytes
    sha256: str
    width: int
    height: int
    format: str  # "jpeg" | "png"
    objects: Optional[list[dict]]  # the row's objects with boxes moved to the stored image; None if the row had none
    reencoded: bool
    original_width: int = 0  # upright size before any resize (what quality rules judge)
    original_height: int = 0


def transform_bbox(bbox: list[float], scale_x: float, scale_y: float, method: Optional[T], w: int, h: int) -> list[float]:
    """Move one [x, y, w, h] box: scale per axis, then transpose inside the scaled ``w`` x ``h`` image."""
    x0, y0 = bbox[0] * scale_x, bbox[1] * scale_y
    x1, y1 = (bbox[0] + bbox[2]) * scale_x, (bbox[1] + bbox[3]) * scale_y
    if method is not None:
        f = _POINT_MAP[method]
        x0, y0 = f(x0, y0, w, h)
        x1, y1 = f(x1, y1, w, h)
    left, right = sorted((x0, x1))
    top, bottom = sorted((y0, y1))
    return [left, top, right - left, bottom - top]


def check_objects(objects: Optional[list[dict]]) -> None:
    """Raise ``bad_bbox`` for a box that is not four finite numbers (null boxes are allowed)."""
    for i, obj in enumerate(objects or []):
        bbox = (obj or {}).get("bbox")
        if bbox is None:
            continue
        if len(bbox) != 4 or not all(v is not None and math.isfinite(v) for v in bbox):
            raise FetchError("bad_bbox", f"objects[{i}].bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")


def target_size(width: int, height: int, max_side: Optional[int]) -> tuple[int, int]:
    """The size after capping the longer side at ``max_side`` (aspect kept, never upscaled)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is no reason to drop a good image
        return 1
    return value if value in ORIENTATION_TRANSPOSE else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):  # 16-bit greyscale: keep the top 8 bits instead of clipping at 255
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
    if img.mode in _ALPHA_MODES or img.has_transparency_data:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes: (x start, y start, x step, y step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_raw_size(width: int, height: int, depth: int, color: int, interlace: int) -> int:
    """Bytes of filtered scanlines an IHDR promises (one filter byte per row)."""
    bits = _PNG_CHANNELS[color] * depth
    if not interlace:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            total += h * (1 + (w * bits + 7) // 8)
    return total


def _png_complete(data: bytes) -> Optional[str]:
    """Why a PNG's pixel data falls short of its header, or None. Inflates IDAT in bounded steps."""
    try:
        width, height, depth, color, _c, _f, interlace = struct.unpack(">IIBBBBB", data[16:29])
        need = _png_raw_size(width, height, depth, color, interlace)
    except (struct.error, KeyError):
        return None  # Pillow will have its own word about a broken header
    inflate, got, pos, ended = zlib.decompressobj(), 0, 8, False
    try:
        while pos + 8 <= len(data) and got <= need:
            length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
            if ctype == b"IDAT":
                # inflate in slices of at most 1 MiB: counting must not hold a second copy of the pixels
                got += len(inflate.decompress(data[pos + 8:pos + 8 + length], min(need + 1 - got, 1 << 20)))
                while inflate.unconsumed_tail and got <= need:
                    got += len(inflate.decompress(inflate.unconsumed_tail, min(need + 1 - got, 1 << 20)))
            elif ctype == b"IEND":
                ended = True
                break
            pos += 12 + length
    except zlib.error as e:
        return f"PNG pixel data is corrupt ({e})"
    if got < need:
        return f"PNG pixel data holds {got} of the {need} bytes its {width}x{height} header promises"
    if not ended:
        return "PNG has no IEND chunk"
    return None


def _jpeg_complete(data: bytes) -> Optional[str]:
    """Why a JPEG is cut short, or None: its last end-of-image marker must follow its last scan. (No scan
    may start after the last EOI: searched from there, not back from the end over the whole image.)"""
    eoi = data.rfind(b"\xff\xd9")
    if eoi < 0 or data.find(b"\xff\xda", eoi) >= 0:
        return "JPEG has no end-of-image marker after its last scan"
    return None


def _last_scanline_blank(img: Image.Image, interlace: int) -> bool:
    """Whether the scanline a PNG stream delivers last is all zeros (what a missing row looks like)."""
    w, h = img.size
    y, x0, dx = h - 1, 0, 1
    if interlace:
        for px, py, sx, sy in reversed(_ADAM7):
            pw, ph = (w - px + sx - 1) // sx, (h - py + sy - 1) // sy
            if pw > 0 and ph > 0:
                y, x0, dx = py + (ph - 1) * sy, px, sx
                break
    row = np.asarray(img.crop((0, y, w, y + 1)))
    return not row[0, x0::dx].any()


def check_complete(data: bytes, img: Image.Image, fmt: Optional[str] = None) -> None:
    """Raise ``image_truncated`` for decoded PNG/JPEG data that ended early (see the module doc). ``fmt``:
    the format of ``data`` when ``img`` does not say it (a picture decoded by simplejpeg)."""
    why = None
    fmt = fmt or img.format
    if fmt == "PNG" and _last_scanline_blank(img, img.info.get("interlace", 0)):
        why = _png_complete(data)
    elif fmt in ("JPEG", "MPO"):
        why = _jpeg_complete(data)
    if why:
        raise FetchError("image_truncated", f"{why} ({len(data)} bytes)")


def _describe(data: bytes, content_type: Optional[str]) -> str:
    return f"{len(data)} bytes" + (f" of Content-Type {content_type!r}" if content_type else "")


def _open(data: bytes, cfg: FetchConfig, content_type: Optional[str] = None) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise FetchError("not_an_image", f"{_describe(data, content_type)} that no image decoder recognises")
    except Image.DecompressionBombError as e:
        raise FetchError("too_large", str(e))
    except (OSError, EOFError, SyntaxError) as e:
        if isinstance(e, EOFError) or "truncated" in str(e).lower():
            raise FetchError("image_truncated", f"{_describe(data, content_type)} end inside the image header")
        raise FetchError("decode_error", f"cannot open image ({_describe(data, content_type)}): {type(e).__name__}")
    except Exception as e:
        raise FetchError("decode_error", f"cannot open image ({_describe(data, content_type)}): {type(e).__name__}")
    w, h = img.size
    if w < 1 or h < 1:
        raise FetchError("decode_error", f"image has size {w}x{h}")
    if w * h > cfg.max_pixels:
        raise FetchError("too_large", f"{w}x{h} = {w * h} pixels > max_pixels {cfg.max_pixels}")
    return img


def _scaled_jpeg(data: bytes, width: int, height: int, size: tuple[int, int], margin: float = JPEG_MARGIN):
    """An RGB or grey JPEG decoded to an RGB array at the smallest N/8 scale that leaves at least ``margin``
    times ``size``, and the picture's box in it; None when libjpeg-turbo has any complaint (strict: its
    warnings too) or the scale cannot be told from the size, and Pillow decodes it as before."""
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True,
                                     min_width=min(width, math.ceil(size[0] * margin)),
                                     min_height=min(height, math.ceil(size[1] * margin)))
    except ValueError:
        return None
    dh, dw = arr.shape[:2]
    # libjpeg-turbo makes ceil(w * N / 8) pixels of a w-pixel side; the picture spans w * N / 8 of them
    n = [k for k in range(1, 9) if -(-width * k // 8) == dw and -(-height * k // 8) == dh]
    if len(n) != 1:
        return None
    return arr, (0, 0, width * n[0] / 8, height * n[0] / 8)


@functools.lru_cache(maxsize=None)
def _cv2():
    import cv2  # here, not at the top: the driver never resizes (the pool's fork server preloads it)

    cv2.setNumThreads(1)  # one thread per call: datagen's processes (and decode threads) already use every core
    return cv2


def _resize(pixels, size: tuple[int, int], box: Optional[tuple[float, float, float, float]]):
    """``pixels`` (an RGB array, or an RGB Pillow image) shrunk to ``size``; ``box``: the picture's region
    in it (None: all of it). A shrink by at most ``CV_MAX_SHRINK`` goes through OpenCV (a Gaussian
    pre-blur, then bicubic at the box's exact scale) and gives an array, a larger one through Pillow
    (module doc) and gives a Pillow image."""
    if box is None:
        box = (0, 0, *(pixels.size if isinstance(pixels, Image.Image) else pixels.shape[1::-1]))
    rx, ry = box[2] / size[0], box[3] / size[1]
    if max(rx, ry) > CV_MAX_SHRINK:
        img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
        return img.resize(size, RESAMPLE, box=box)
    pixels = np.asarray(pixels)
    cv2 = _cv2()
    sx, sy = (CV_BLUR * math.sqrt(max(r * r - 1, 0.0)) for r in (rx, ry))
    kx, ky = (int(round(s * 6 + 1)) | 1 if s > 0.05 else 1 for s in (sx, sy))  # OpenCV's own size for 8 bits
    if kx > 1 or ky > 1:
        pixels = cv2.GaussianBlur(pixels, (kx, ky), sigmaX=sx, sigmaY=sy)
    # fx/fy, not a size: OpenCV then maps with exactly this scale (a size would stretch the rounded-up
    # edge pixel of the N/8 decode over the picture); the output covers the box and a bit more, cut off
    out = cv2.resize(pixels, None, fx=1 / rx, fy=1 / ry, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(out[:size[1], :size[0]])


def probe_size(data: bytes, cfg: FetchConfig) -> tuple[int, int]:
    """Width and height from the header only (for rows that arrive with bytes and need no re-encode)."""
    return _open(data, cfg).size


def process_image(
    data: bytes, objects: Optional[list[dict]], cfg: FetchConfig, content_type: Optional[str] = None
) -> StoredImage:
    """Turn downloaded bytes into the stored image; raise FetchError with a reason code on any failure."""
    if len(data) > cfg.max_bytes:
        raise FetchError("too_large", f"{len(data)} bytes > max_bytes {cfg.max_bytes}")
    check_objects(objects)
    img = _open(data, cfg, content_type)
    fmt, src_mode = img.format, img.mode
    width, height = img.size
    method = ORIENTATION_TRANSPOSE.get(_orientation(img))
    swaps = method in (T.ROTATE_90, T.ROTATE_270, T.TRANSPOSE, T.TRANSVERSE)
    original = (height, width) if swaps else (width, height)
    new_w, new_h = target_size(width, height, cfg.max_side)  # in the raw orientation; the cap is symmetric
    resize = (new_w, new_h) != (width, height)

    # the ICC profile, from the header (Pillow reads it before any pixel; the scaled decode has no info)
    icc = img.info.get("icc_profile") if src_mode.startswith(("RGB", "P")) else None
    scaled = None  # (RGB array, the picture's box in it) from simplejpeg's N/8 decode
    if resize and fmt == "JPEG" and src_mode in ("RGB", "L"):
        scaled = _scaled_jpeg(data, width, height, (new_w, new_h))
    draft_box = None
    if resize and scaled is None and fmt in ("JPEG", "MPO"):  # MPO: multi-picture JPEGs from cameras
        drafted = img.draft(None, (new_w, new_h))
        draft_box = drafted[1] if drafted else None
    try:
        if scaled is None:
            img.load()
    except Image.DecompressionBombError as e:
        raise FetchError("too_large", str(e))
    except (OSError, EOFError, SyntaxError, ValueError) as e:
        text = str(e)
        if isinstance(e, EOFError) or "truncated" in text.lower():
            raise FetchError("image_truncated", f"{fmt} data ends early ({len(data)} bytes): {text}")
        text = _BYTES_LITERAL.sub("b'...'", text)[:80]  # Pillow quotes chunk ids; no response bytes in rejects
        raise FetchError("decode_error", f"cannot decode {fmt} ({len(data)} bytes): {type(e).__name__}: {text}")
    except Exception as e:
        raise FetchError("decode_error", f"cannot decode {fmt} ({len(data)} bytes): {type(e).__name__}")

    check_complete(data, img, fmt)

    if cfg.keep_original_jpeg and fmt == "JPEG" and src_mode == "RGB" and method is None and not resize:
        return StoredImage(data, hashlib.sha256(data).hexdigest(), width, height, "jpeg", _copy_objects(objects),
                           reencoded=False, original_width=width, original_height=height)

    try:
        if scaled is not None:
            img = _resize(scaled[0], (new_w, new_h), scaled[1])
        else:
            img = _to_rgb(img)
            if resize:
                img = _resize(img, (new_w, new_h), draft_box)
        if method is not None:
            img = (Image.fromarray(img) if isinstance(img, np.ndarray) else img).transpose(method)
    except Exception as e:
        raise FetchError("decode_error", f"cannot convert {fmt} {src_mode} image: {e!r}")
    height_out, width_out = img.shape[:2] if isinstance(img, np.ndarray) else (img.height, img.width)

    moved = _copy_objects(objects)
    if moved:
        sx, sy = new_w / width, new_h / height
        for obj in moved:
            if obj.get("bbox") is not None:
                obj["bbox"] = transform_bbox(list(obj["bbox"]), sx, sy, method, new_w, new_h)

    out_fmt = "png" if (cfg.keep_png and fmt == "PNG") else "jpeg"
    try:
        out = _encode(img, out_fmt, cfg.jpeg_quality, icc)
    except Exception as e:
        raise FetchError("encode_error", f"cannot encode {out_fmt}: {e!r}")
    return StoredImage(out, hashlib.sha256(out).hexdigest(), width_out, height_out, out_fmt, moved, reencoded=True,
                       original_width=original[0], original_height=original[1])


def _encode(pixels, fmt: str, quality: int, icc: Optional[bytes]) -> bytes:
    """An RGB array or Pillow image as ``fmt`` bytes. A JPEG without an ICC profile goes through OpenCV's
    encoder straight from the array: the same libjpeg-turbo settings as Pillow's (accurate DCT, 4:2:0
    chroma, the standard tables at ``quality``), the same bytes (``tests/test_image_decode.py``), 0.14
    against 0.19 ms, and no Pillow image to build first (0.06 ms). Pillow encodes PNGs, and JPEGs with an
    ICC profile to embed."""
    if fmt == "jpeg" and not icc:
        cv2 = _cv2()
        arr = pixels if isinstance(pixels, np.ndarray) else np.asarray(pixels)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, quality,
                                cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420])
        if not ok:
            raise ValueError(f"OpenCV could not encode a {arr.shape} {arr.dtype} array as JPEG")
        return buf.tobytes()
    img = Image.fromarray(pixels) if isinstance(pixels, np.ndarray) else pixels
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", icc_profile=icc)
    else:
        img.save(buf, format="JPEG", quality=quality, icc_profile=icc)
    return buf.getvalue()


def _copy_objects(objects: Optional[list[dict]]) -> Optional[list[dict[str, Any]]]:
    if objects is None:
        return None
    return [dict(o) if o is not None else None for o in objects]
