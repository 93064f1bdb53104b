"""Thumbnail quality against speed: datagen's decode + resize + encode next to the other ways of making
the same 256-pixel thumbnail, on the download benchmark's photographs (issue 10's choices, reproducible).

For each method, over ``--images`` JPEGs of 300x200 to 1024x768 (``bench_download.make_kit``: crops of
the photographs that ship with scikit-image and scikit-learn, sensor noise, qualities 85-96):

- quality: PSNR of the stored thumbnail (encoded at quality 90, decoded again) against the reference,
  a full decode resized with Lanczos and not encoded; mean and worst image;
- speed: CPU ms per image for decode + resize + encode on one core (``time.process_time``, best of
  ``--passes``), and the ratio to ``pillow_bicubic``: Pillow's ``draft`` + bicubic without checks
  (datagen's path before the N/8 decode, and its fallback), as bare as the others.

Methods: ``datagen`` is ``datagen.fetch.image.process_image`` itself (libjpeg-turbo's smallest N/8
scale at least the target through simplejpeg, its resize: OpenCV's blur + bicubic at the box's exact
scale, the encode, the checks); ``img2dataset`` is
its recipe (OpenCV full decode, INTER_AREA); ``cv2_reduced`` decodes at 1/2, 1/4 or 1/8 in OpenCV
first; ``pillow_hamming`` and ``pillow_bilinear`` are ``pillow_bicubic`` with a cheaper filter;
``simplejpeg_kX`` is datagen's N/8 decode with a margin of X, without the checks. The recipes are
``bench_download``'s, the ones its ceiling times.

    python bench/bench_resize.py                 # 400 images
    python bench/bench_resize.py --images 1000 --passes 5
"""
from __future__ import annotations

import argparse
import functools
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

from bench_download import MAX_SIDE, QUALITY, cv2_full, cv2_reduced, make_kit, pillow_draft  # noqa: E402
from datagen.fetch.config import FetchConfig  # noqa: E402
from datagen.fetch.image import _encode, _resize, _scaled_jpeg, process_image, target_size  # noqa: E402


def datagen(data: bytes, cfg=FetchConfig(max_side=MAX_SIDE, jpeg_quality=QUALITY)) -> bytes:
    return process_image(data, None, cfg).data


def simplejpeg_at(margin: float):
    """datagen's N/8 decode (``_scaled_jpeg``) with another margin, then its resize (``_resize``)."""
    import simplejpeg

    def run(data: bytes) -> bytes:
        h, w = simplejpeg.decode_jpeg_header(data)[:2]
        size = target_size(w, h, MAX_SIDE)
        arr, box = _scaled_jpeg(data, w, h, size, margin)
        return _encode(_resize(arr, size, box), "jpeg", QUALITY, None)

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
    methods = {"datagen": datagen, "pillow_bicubic": pillow_draft, "img2dataset": cv2_full, "cv2_reduced": cv2_reduced,
               "pillow_hamming": functools.partial(pillow_draft, resample=Image.Resampling.HAMMING),
               "pillow_bilinear": functools.partial(pillow_draft, resample=Image.Resampling.BILINEAR)}
    methods |= {"simplejpeg_k1.00": simplejpeg_at(1.0), "simplejpeg_k1.15": simplejpeg_at(1.15)}
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
