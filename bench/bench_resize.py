"""Thumbnail quality against speed: datagen's decode + resize + encode next to the other ways of making
the same 256-pixel thumbnail, on the download benchmark's photographs (issue 10's choices, reproducible).

For each method, over ``--images`` JPEGs of 300x200 to 1024x768 (``bench_download.make_kit``: crops of
the photographs that ship with scikit-image and scikit-learn, sensor noise, qualities 85-96):

- quality: PSNR of the stored thumbnail (encoded at quality 90, decoded again) against the reference,
  a full decode resized with Lanczos and not encoded; mean and worst image;
- speed: CPU ms per image for decode + resize + encode on one core (``time.process_time``, best of
  ``--passes``), and the ratio to ``pillow_bicubic``: datagen's method without datagen's checks
  (truncation, EXIF, sha256), as bare as the others.

Methods: ``datagen`` is ``datagen.fetch.image.process_image`` itself (DCT-scaled decode by Pillow's
``draft``, bicubic with the exact box, encode, the checks); ``img2dataset`` is its recipe (OpenCV full
decode, INTER_AREA); ``cv2_reduced`` decodes at 1/2, 1/4 or 1/8 in OpenCV first; ``pillow_hamming`` and
``pillow_bilinear`` are datagen's path with a cheaper filter; ``simplejpeg_kX`` decodes at libjpeg-turbo's
finer N/8 scales to at least X times the target, then bicubic with the exact box (only when simplejpeg
is installed: ``pip install simplejpeg``; not a datagen dependency).

    python bench/bench_resize.py                 # 400 images
    python bench/bench_resize.py --images 1000 --passes 5
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench_download import MAX_SIDE, QUALITY, make_kit  # noqa: E402 - the same photographs
from datagen.fetch.config import FetchConfig  # noqa: E402
from datagen.fetch.image import RESAMPLE, process_image, target_size  # noqa: E402


def _encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def datagen(data: bytes, cfg=FetchConfig(max_side=MAX_SIDE, jpeg_quality=QUALITY)) -> bytes:
    return process_image(data, None, cfg).data


def _pillow(data: bytes, resample) -> bytes:
    img = Image.open(io.BytesIO(data))
    size = target_size(*img.size, MAX_SIDE)
    box = img.draft("RGB", size)
    return _encode(img.convert("RGB").resize(size, resample, box=box[1] if box else None))


def pillow_bicubic(data: bytes) -> bytes:  # datagen's recipe without its checks: the speed baseline
    return _pillow(data, RESAMPLE)


def pillow_hamming(data: bytes) -> bytes:
    return _pillow(data, Image.Resampling.HAMMING)


def pillow_bilinear(data: bytes) -> bytes:
    return _pillow(data, Image.Resampling.BILINEAR)


def _cv2(data: bytes, reduced: bool) -> bytes:
    import cv2

    flag = cv2.IMREAD_COLOR
    if reduced:
        w, h = Image.open(io.BytesIO(data)).size
        for f, reduced_flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if max(w, h) / f >= MAX_SIDE:
                flag = reduced_flag
                break
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    size = target_size(img.shape[1], img.shape[0], MAX_SIDE) if not reduced else target_size(w, h, MAX_SIDE)
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes()


def img2dataset(data: bytes) -> bytes:
    return _cv2(data, reduced=False)


def cv2_reduced(data: bytes) -> bytes:
    return _cv2(data, reduced=True)


def simplejpeg_at(margin: float):
    import simplejpeg

    def run(data: bytes) -> bytes:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        size = target_size(w, h, MAX_SIDE)
        arr = simplejpeg.decode_jpeg(data, min_width=min(w, math.ceil(size[0] * margin)),
                                     min_height=min(h, math.ceil(size[1] * margin)))
        dh, dw = arr.shape[:2]
        # libjpeg-turbo decodes at N/8 to ceil(w * N / 8) pixels; the picture spans w * N / 8 of them
        n = next((k for k in range(1, 17) if -(-w * k // 8) == dw and -(-h * k // 8) == dh), 8)
        return _encode(Image.fromarray(arr).resize(size, RESAMPLE, box=(0, 0, w * n / 8, h * n / 8)))

    return run


def reference(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(img.resize(target_size(*img.size, MAX_SIDE), Image.Resampling.LANCZOS), dtype=np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 10 * math.log10(255 ** 2 / max(mse, 1e-9))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--kit", type=Path, default=Path(tempfile.gettempdir()) / "datagen-bench-resize")
    args = ap.parse_args()
    kit = make_kit(args.kit / f"kit-{args.images}", args.images, 0, 0)
    datas = [p.read_bytes() for p in sorted((kit / "img").iterdir())]
    refs = [reference(d) for d in datas]
    methods = {"datagen": datagen, "pillow_bicubic": pillow_bicubic, "img2dataset": img2dataset,
               "cv2_reduced": cv2_reduced, "pillow_hamming": pillow_hamming, "pillow_bilinear": pillow_bilinear}
    try:
        methods |= {"simplejpeg_k1.00": simplejpeg_at(1.0), "simplejpeg_k1.15": simplejpeg_at(1.15)}
    except ImportError:
        print("simplejpeg is not installed: its N/8 scales are left out (pip install simplejpeg)")
    print(f"{len(datas)} JPEGs (mean {sum(map(len, datas)) / len(datas) / 1e3:.0f} KB) -> longer side {MAX_SIDE}, "
          f"quality {QUALITY}; PSNR of the stored thumbnail against a full decode resized with Lanczos")
    rows: dict[str, tuple[float, float, float]] = {}  # name -> (mean PSNR, worst PSNR, ms per image)
    for name, fn in methods.items():
        scores = []
        for data, ref in zip(datas, refs):
            got = np.asarray(Image.open(io.BytesIO(fn(data))).convert("RGB"), dtype=np.float32)
            if got.shape != ref.shape:
                raise SystemExit(f"{name}: a {got.shape} thumbnail where the reference is {ref.shape}")
            scores.append(psnr(got, ref))
        best = math.inf
        for _ in range(args.passes):
            t0 = time.process_time()
            for data in datas:
                fn(data)
            best = min(best, time.process_time() - t0)
        rows[name] = (float(np.mean(scores)), min(scores), 1000 * best / len(datas))
    base = rows["pillow_bicubic"][2]
    for name, (mean, worst, ms) in rows.items():
        print(f"  {name:17s} PSNR mean {mean:5.2f} dB, worst {worst:5.2f} dB; {ms:.2f} ms per image "
              f"(decode + resize + encode, one core); {base / ms:.2f}x pillow_bicubic's speed")

if __name__ == "__main__":
    main()
