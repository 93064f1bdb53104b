"""Images/s of the CLIP score step, batched, against one-image-at-a-time scoring.

Both sides run in this process on the same tiny random-weight model (the
offline fallback architecture), the same decoded rows and the same thread
count, so the ratio says what batching buys; absolute numbers on a real
ViT-B/32 are much lower. Usage:

    .venv/bin/python bench/bench_clip.py [--n 256] [--batch-size 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np


def _jpeg(seed: int, side: int = 96) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, size=(side, side + seed % 17, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from datagen.filters.clip import TINY_UNTRAINED_CONFIG, ClipConfig, ClipScoreStep, _decode, clip_scores
    from datagen.core.records import pairs_table
    from datagen.core.steps import RunContext

    torch.set_num_threads(args.threads)
    rows = [{"key": f"b{i}", "source": "bench", "caption": f"a photo of thing number {i}", "image": _jpeg(i)}
            for i in range(args.n)]
    table = pairs_table(rows)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(run_dir=Path(tmp), recipe_dir=Path(tmp))
        cfg = ClipConfig(model="tiny", model_config=TINY_UNTRAINED_CONFIG, pretrained=None, min_score=None,
                         device="cpu", batch_size=args.batch_size)
        step = ClipScoreStep(cfg, ctx)
        lc = step.load()
        step.process(pairs_table(rows[:4]))  # warm-up

        t0 = time.perf_counter()
        batched = np.array(step.process(table).kept.column("clip_score").to_pylist(), dtype=np.float32)
        t_batched = time.perf_counter() - t0

        t0 = time.perf_counter()
        single = np.array([
            clip_scores(lc.model, lc.preprocess, lc.tokenizer, [_decode(r["image"])], [r["caption"]], lc.device)[0]
            for r in rows
        ], dtype=np.float32)
        t_single = time.perf_counter() - t0

    max_diff = float(np.abs(batched - single).max())
    print(f"rows={args.n} batch_size={args.batch_size} threads={args.threads} model=tiny-untrained "
          f"({TINY_UNTRAINED_CONFIG['vision_cfg']['image_size']} px)")
    print(f"baseline one-at-a-time: {args.n / t_single:8.1f} images/s  ({t_single:.2f} s)")
    print(f"step, batched:          {args.n / t_batched:8.1f} images/s  ({t_batched:.2f} s)")
    print(f"speed-up (batched / one-at-a-time): {t_single / t_batched:.2f}x   max |score diff| = {max_diff:.2e}")


if __name__ == "__main__":
    main()
