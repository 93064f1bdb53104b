"""Scale benchmark of the engine: memory, throughput and disk at two sizes, and stage-2 writing.

1. Generates a LAION-layout parquet of ``--rows`` distinct small local images
   (32x32 JPEGs on disk, no network) and runs ``datagen run`` on it (fetch,
   quality, dedup, stage-1 shards; ``executor.workers`` = the cores), then the
   same at one tenth the size. For each it prints the peak RSS of the whole
   process tree (sampled from /proc), rows/s per core, and ``_run/`` bytes
   against output shard bytes. The issue's bar: 1M rows under 2 GB, rows/s per
   core within 1.3x of the run one tenth its size, ``_run/`` at most 1.5x the
   shards.
2. Stage-2 writing of ``--stage2`` samples in shuffled order: the bucket join
   (``write_stage2``) against the old path, random lookups by key through
   per-row-group reads (``RandomLookup``, a copy of the removed ``ImageStore``),
   timed on a sample of lookups because the full run would take hours.

    python bench/bench_scale.py [--rows 100000] [--stage2 100000] [--stage2-kb 100]
    python bench/bench_scale.py --rows 1000000      # the figures in the README
    python bench/bench_scale.py --rows 100000 --executor ray --stage2 0   # Ray next to local
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import OrderedDict
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from _proc import measure  # noqa: E402 - bench/_proc.py, beside this script

BASE = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)


def _write_images(args: tuple[Path, int, int]) -> None:
    folder, start, stop = args
    for i in range(start, stop):
        arr = BASE.copy()
        for b in range(6):  # the index in base 16, one flat 8x8 block per digit: survives JPEG, distinct sha256
            arr[(b // 4) * 8:(b // 4) * 8 + 8, (b % 4) * 8:(b % 4) * 8 + 8] = (i >> (4 * b)) % 16 * 16
        d = folder / f"{i // 1000:05d}"
        d.mkdir(exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        (d / f"{i % 1000:03d}.jpg").write_bytes(buf.getvalue())


def make_dataset(root: Path, rows: int) -> Path:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    chunks = [(images, s, min(s + 20000, rows)) for s in range(0, rows, 20000)]
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_images, chunks)
    table = pa.table({"URL": [f"images/{i // 1000:05d}/{i % 1000:03d}.jpg" for i in range(rows)],
                      "TEXT": [f"a small generated picture number {i}" for i in range(rows)],
                      "similarity": np.full(rows, 0.31, dtype=np.float32)})
    pq.write_table(table, root / "laion.parquet", row_group_size=50_000)
    return root / "laion.parquet"


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_size(root: Path, rows: int, workers: int, kind: str = "local") -> dict:
    data = root / f"data-{rows}" / "laion.parquet"
    if not data.exists():
        data = make_dataset(root / f"data-{rows}", rows)
    recipe = root / f"scale-{rows}-{kind}.yaml"
    recipe.write_text(json.dumps({
        "name": f"scale-{rows}", "sources": [{"name": "laion", "kind": "laion", "path": str(data)}],
        "fetch": {"allow_local_files": True},
        "filters": {"quality": {"min_side": 16, "min_caption_words": 2}},
        "dedup": {"by": ["url", "image_sha256"]},
        "stage2": {"sources": []},
        "executor": {"workers": workers, "batch_size": 1000, "kind": kind},
    }))
    out = root / f"out-{rows}-{kind}"
    shutil.rmtree(out, ignore_errors=True)  # a kept work folder keeps the data, never a run to resume
    m = measure([sys.executable, "-m", "datagen.cli", "run", str(recipe), "--out", str(out)],
                {**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    wall, peak = m["wall_s"], m["peak_rss"]
    manifest = json.loads((out / "manifest.json").read_text())
    shard_bytes = sum(s["bytes"] for s in manifest["shards"])
    res = {"rows": rows, "executor": kind, "wall_s": round(wall, 1), "peak_rss_gb": round(peak / 1e9, 3),
           "peak_pss_gb": round(m["peak_pss"] / 1e9, 3),  # shared pages counted once (forked workers)
           "rows_per_s_per_core": round(rows / wall / workers, 1), "run_dir_bytes": du(out / "_run"),
           "shard_bytes": shard_bytes, "kept": manifest["counts"]["pairs"]["kept"]}
    res["run_dir_over_shards"] = round(res["run_dir_bytes"] / shard_bytes, 3)
    assert res["kept"] == rows, manifest["counts"]
    return res


class RandomLookup:
    """The removed stage-2 path, kept here as the baseline: image bytes by key through a key index
    and per-row-group reads with a small LRU of row groups."""

    def __init__(self, pairs: Path, cache_groups: int = 4):
        self.pf = pq.ParquetFile(pairs)
        self.where: dict[str, tuple[int, int]] = {}
        for g in range(self.pf.num_row_groups):
            for j, k in enumerate(self.pf.read_row_group(g, columns=["key"]).column(0).to_pylist()):
                self.where[k] = (g, j)
        self._groups: OrderedDict[int, list] = OrderedDict()
        self._cache = cache_groups

    def get(self, key: str) -> bytes:
        g, j = self.where[key]
        if g not in self._groups:
            self._groups[g] = self.pf.read_row_group(g, columns=["image"]).column(0).to_pylist()
            if len(self._groups) > self._cache:
                self._groups.popitem(last=False)
        self._groups.move_to_end(g)
        return self._groups[g][j]


def stage2_bench(root: Path, n: int, baseline_lookups: int, kb: int = 100) -> dict:
    from datagen.config import OutputConfig, StageConfig
    from datagen.core.parts import PartWriter
    from datagen.core.pipeline import Shard
    from datagen.core.records import PAIR_SCHEMA, conversations_table, pairs_table
    from datagen.sinks.stages import write_stage2

    work = root / "stage2"
    jpg = io.BytesIO()  # ``kb`` KB of noise JPEG; the issue measured web images of 116 KB on average
    side = int(200 * (kb / 31) ** 0.5)  # noise JPEG at quality 85: about 31 KB at 200x200
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(jpg, "JPEG", quality=85)
    img = jpg.getvalue()
    parts, shard_rows = [], 10_000
    for s in range(0, n, shard_rows):
        rows = [{"key": f"p_{i:07d}", "source": "p", "caption": "c", "image": img + i.to_bytes(4, "big"),
                 "width": 32, "height": 32} for i in range(s, min(s + shard_rows, n))]
        shard = Shard(f"p-{s // shard_rows:06d}", "p", work / "in", len(rows))
        w = PartWriter(work / "parts" / shard.id, PAIR_SCHEMA)
        w.write(pairs_table(rows))
        parts.append((shard, w.commit({"steps": {}})))
    turn = [{"role": "user", "content": "<image>\nq", "task": "t", "polarity": "positive", "generator": "g"},
            {"role": "assistant", "content": "a", "task": "t", "polarity": "positive", "generator": "g"}]
    convs = conversations_table([{"key": f"p_{i:07d}", "source": "p", "images": [f"p_{i:07d}"],
                                  "conversations": [{"id": f"c{i}", "lang": "en", "parent_id": None, "turns": turn}]}
                                 for i in range(n)])
    cpath = work / "convs.parquet"
    pq.write_table(convs, cpath)
    t0 = time.time()
    shards, _, stats, rejects = write_stage2([(None, cpath)], parts, None, work / "out", StageConfig(),
                                             OutputConfig(shard_max_count=1000), 0, work)
    new_s = time.time() - t0
    assert stats["samples_with_images"] == n and not rejects

    # Baseline: pairs in one parquet as the old engine kept them (one row group per batch of
    # executor.batch_size = 256 rows), looked up in shuffled order. A lookup costs one row-group read
    # whatever the file's length, so the file holds the first parts only (disk) and the cost of the
    # key index is scaled to n.
    single = work / "pairs.parquet"
    base_rows = 0
    with pq.ParquetWriter(single, pq.ParquetFile(parts[0][1].kept).schema_arrow) as w:
        for _, p in parts[:2]:
            t = pq.read_table(p.kept)
            w.write_table(t, row_group_size=256)
            base_rows += t.num_rows
    keys = [f"p_{i:07d}" for i in range(base_rows)]
    random.Random(0).shuffle(keys)
    t0 = time.time()
    store = RandomLookup(single)
    index_s = (time.time() - t0) * n / base_rows
    t0 = time.time()
    for k in keys[:baseline_lookups]:
        store.get(k)
    per_lookup = (time.time() - t0) / baseline_lookups
    old_s = index_s + per_lookup * n
    return {"samples": n, "image_kb": round(len(img) / 1024), "bucket_join_s": round(new_s, 2), "random_lookup_s_estimated": round(old_s, 1),
            "baseline_lookups_timed": baseline_lookups, "speedup": round(old_s / new_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="the larger size; the smaller is one tenth")
    ap.add_argument("--stage2", type=int, default=100_000, help="stage-2 samples written in shuffled order")
    ap.add_argument("--baseline-lookups", type=int, default=300)
    ap.add_argument("--stage2-kb", type=int, default=100, help="stage-2 image size (the issue measured a mean of 116 KB); "
                    "needs about 3 x samples x size of free disk for a moment")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", help="work folder to keep (default: a temporary one): its data is reused, and "
                                   "every run starts from an empty output folder")
    ap.add_argument("--stage2-only", action="store_true", help="only the stage-2 writing comparison")
    ap.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="ray: also run the larger size on a local Ray instance, next to the local executor")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_scale-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if not args.stage2_only:
            small = run_size(root, args.rows // 10, args.workers)
            print(f"scale {small['rows']:>9} rows: {json.dumps(small)}", flush=True)
            large = run_size(root, args.rows, args.workers)
            print(f"scale {large['rows']:>9} rows: {json.dumps(large)}", flush=True)
            ratio = small["rows_per_s_per_core"] / large["rows_per_s_per_core"]
            print(f"rows/s per core, {small['rows']} over {large['rows']}: {ratio:.2f}x (bar: <= 1.3x)")
            print(f"peak RSS at {large['rows']} rows: {large['peak_rss_gb']} GB (bar at 1M: < 2 GB)")
            print(f"_run/ over shard bytes: {large['run_dir_over_shards']} (bar: <= 1.5)")
            if args.executor == "ray":
                on_ray = run_size(root, args.rows, args.workers, "ray")
                print(f"scale {on_ray['rows']:>9} rows: {json.dumps(on_ray)}", flush=True)
                print(f"ray over local at {args.rows} rows: "
                      f"{on_ray['rows_per_s_per_core'] / large['rows_per_s_per_core']:.2f}x rows/s per core, "
                      f"peak RSS {on_ray['peak_rss_gb']} GB vs {large['peak_rss_gb']} GB")
        if args.stage2:
            s2 = stage2_bench(root, args.stage2, args.baseline_lookups, args.stage2_kb)
            print(f"stage-2 writing: {json.dumps(s2)}")
            print(f"stage-2 bucket join vs random lookups: {s2['speedup']}x faster (bar: >= 20x)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
