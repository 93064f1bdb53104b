"""Semantic dedup over stored embeddings: time and peak memory at scale.

Writes ``--rows`` random unit vectors of ``--dim`` (ViT-B/32: 512) as the pair
parts' ``_clip_embedding`` column, with ``--dups`` planted near-duplicates
(a copy of an earlier row plus noise, cosine ~0.995), then runs the barrier
(``SemDedupStep.decide``) in a fresh process and prints wall time, peak RSS
and how many planted duplicates it found. Baseline in the same process, after
the barrier: reading the whole embedding column into memory once (what an
all-in-memory implementation would start with).

    python bench/bench_semdedup.py                 # 1M x 512, the README figures
    python bench/bench_semdedup.py --rows 100000
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def make(path: Path, rows: int, dim: int, dups: int, chunk: int = 100_000) -> None:
    rng = np.random.default_rng(0)
    dup_at = np.sort(rng.choice(np.arange(rows // 2, rows), size=dups, replace=False))
    writer = None
    first = None
    for s in range(0, rows, chunk):
        e = rng.normal(size=(min(chunk, rows - s), dim)).astype(np.float32)
        if first is None:
            first = e[: rows // 2].copy() if rows // 2 <= len(e) else e.copy()
        for i in dup_at[(dup_at >= s) & (dup_at < s + len(e))]:
            src = first[(i * 7919) % len(first)]
            e[i - s] = src + 0.1 * np.linalg.norm(src) / np.sqrt(dim) * rng.normal(size=dim)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        t = pa.table({"key": [f"k{i:09d}" for i in range(s, s + len(e))],
                      "_clip_embedding": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), dim),
                      "clip_score": pa.array(rng.random(len(e)), pa.float32())})
        writer = writer or pq.ParquetWriter(path, t.schema)
        writer.write_table(t, row_group_size=4096)  # pair parts are written in small batches too
    writer.close()


def child(path: str, threshold: float) -> None:
    import polars as pl

    from datagen.filters.semdedup import SemDedupConfig, SemDedupStep
    from datagen.core.steps import RunContext

    run_dir = Path(tempfile.mkdtemp())
    ctx = RunContext(run_dir=run_dir, recipe_dir=run_dir)
    frame = pl.scan_parquet(path).select("key", "_clip_embedding", "clip_score")
    t0 = time.perf_counter()
    rej = SemDedupStep(SemDedupConfig(threshold=threshold), ctx).decide(frame)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    t1 = time.perf_counter()
    all_emb = pl.scan_parquet(path).select("_clip_embedding").collect()["_clip_embedding"].to_numpy()
    dt_read = time.perf_counter() - t1
    peak_read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(dt, 1), "peak_rss_mib": round(peak), "dropped": rej.num_rows,
                      "clusters": ctx.stats["semantic_dedup"]["clusters"],
                      "read_all_seconds": round(dt_read, 1), "read_all_peak_rss_mib": round(peak_read),
                      "embeddings_mib": round(all_emb.nbytes / 2**20)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dups", type=int, default=10_000)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.threshold)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "emb.parquet"
        t0 = time.perf_counter()
        make(path, a.rows, a.dim, a.dups)
        print(f"wrote {a.rows} x {a.dim} embeddings ({path.stat().st_size / 2**20:.0f} MiB parquet) "
              f"in {time.perf_counter() - t0:.0f}s")
        out = subprocess.run([sys.executable, __file__, "--child", str(path), "--threshold", str(a.threshold)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"semantic dedup: {a.rows} rows x {a.dim}, {r['clusters']} clusters: {r['seconds']}s, "
          f"peak RSS {r['peak_rss_mib']} MiB; dropped {r['dropped']} (planted near-duplicates: {a.dups})")
    print(f"baseline, same process: reading the embeddings once into memory: {r['read_all_seconds']}s, "
          f"{r['embeddings_mib']} MiB of vectors, peak RSS then {r['read_all_peak_rss_mib']} MiB")
    print(f"ratio: dedup time / read-all time = {r['seconds'] / max(r['read_all_seconds'], 1e-9):.1f}x; "
          f"dedup peak RSS / embedding bytes = {r['peak_rss_mib'] / max(r['embeddings_mib'], 1):.2f}")


if __name__ == "__main__":
    main()
