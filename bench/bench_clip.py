"""Images/s of the CLIP score step, batched, against one-image-at-a-time scoring.

Both sides run in this process on the same tiny random-weight model (the
offline fallback architecture, or with --model a named open_clip architecture
built with random weights), the same decoded rows and the same thread count, so
the ratio says what batching buys. A third figure times the CPU side alone
(JPEG decode + open_clip preprocessing) on the same rows: on a GPU it shows
whether the model or the host feeds the step. Usage:

    .venv/bin/python bench/bench_clip.py [--n 256] [--batch-size 64] [--threads 1]
    python bench/bench_clip.py --model ViT-B-32 --device cuda --precision bf16 --n 4096 --batch-size 256 --side 256
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np


def _jpeg(seed: int, side: int) -> bytes:
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
    ap.add_argument("--model", default="tiny", help="'tiny' (random, 64 px) or an open_clip architecture "
                    "(random weights), e.g. ViT-B-32")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--side", type=int, default=96, help="height of the generated JPEGs (width varies a little)")
    ap.add_argument("--prep-threads", type=int, default=None, help="filters.clip.preprocess_threads "
                    "(default: the step's own choice); the one-thread step is timed too when this is not 1")
    ap.add_argument("--baseline-n", type=int, default=256, help="rows for the one-at-a-time baseline")
    args = ap.parse_args()

    import torch

    from datagen.filters.clip import (TINY_UNTRAINED_CONFIG, ClipConfig, ClipScoreStep, _decode, clip_scores,
                                      preprocess_threads)
    from datagen.core.records import pairs_table
    from datagen.core.steps import RunContext

    torch.set_num_threads(args.threads)
    rows = [{"key": f"b{i}", "source": "bench", "caption": f"a photo of thing number {i}",
             "image": _jpeg(i, args.side)} for i in range(args.n)]
    table = pairs_table(rows)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(run_dir=Path(tmp), recipe_dir=Path(tmp))
        named = {"model": "tiny", "model_config": TINY_UNTRAINED_CONFIG} if args.model == "tiny" else {
            "model": args.model}
        cfg = ClipConfig(**named, pretrained=None, min_score=None, device=args.device, precision=args.precision,
                         batch_size=args.batch_size, preprocess_threads=args.prep_threads)
        step = ClipScoreStep(cfg, ctx)
        lc = step.load()
        threads = preprocess_threads(cfg, lc.device)
        step.process(pairs_table(rows[:4]))  # warm-up

        t0 = time.perf_counter()
        batched = np.array(step.process(table).kept.column("clip_score").to_pylist(), dtype=np.float32)
        t_batched = time.perf_counter() - t0
        t_one_thread = None
        if threads != 1:
            one = ClipScoreStep(cfg.model_copy(update={"preprocess_threads": 1}), ctx)
            t0 = time.perf_counter()
            one.process(table)
            t_one_thread = time.perf_counter() - t0

        base = rows[:args.baseline_n]
        t0 = time.perf_counter()
        single = np.array([
            clip_scores(lc.model, lc.preprocess, lc.tokenizer, [_decode(r["image"])], [r["caption"]], lc.device)[0]
            for r in base
        ], dtype=np.float32)
        t_single = time.perf_counter() - t0

        t0 = time.perf_counter()
        for r in rows:
            lc.preprocess(_decode(r["image"]))
        t_host = time.perf_counter() - t0

    max_diff = float(np.abs(batched[:len(base)] - single).max())
    print(f"rows={args.n} batch_size={args.batch_size} threads={args.threads} model={args.model} (random weights) "
          f"device={args.device} precision={args.precision} jpeg height={args.side}")
    print(f"baseline one-at-a-time: {len(base) / t_single:8.1f} images/s  ({len(base)} rows, {t_single:.2f} s)")
    if t_one_thread is not None:
        print(f"step, batched, 1 prep thread: {args.n / t_one_thread:8.1f} images/s  ({t_one_thread:.2f} s)")
    print(f"step, batched, {threads} prep thread(s): {args.n / t_batched:8.1f} images/s  ({t_batched:.2f} s)"
          + (f"  = {t_one_thread / t_batched:.2f}x one thread" if t_one_thread else ""))
    print(f"host side alone:        {args.n / t_host:8.1f} images/s  (decode + preprocess, one thread, {t_host:.2f} s)")
    print(f"speed-up (batched / one-at-a-time): {(t_single / len(base)) / (t_batched / args.n):.2f}x   "
          f"max |score diff| = {max_diff:.2e}")


if __name__ == "__main__":
    main()
