"""Semantic dedup (SemDeDup, Abbas et al. 2023; NeMo Curator's semantic dedup) as a barrier.

The CLIP step stores each row's L2-normalised image embedding as ``_clip_embedding``
(``filters.clip.keep_embedding``, set by the pipeline when this filter is on), so
embeddings are computed once, in the per-row pass, and never again. This barrier
reads only ``key``, ``_clip_embedding`` and ``clip_score``, in bounded memory:

1. stream the rows in chunks; keep a uniform sample (``sample_rows``) for training;
2. spherical k-means on the sample (numpy; cosine similarity, ``iterations`` rounds);
3. stream again, assign every row its nearest centroid and spill (row number,
   cluster, score, embedding) into bucket files on disk, clusters grouped so
   a bucket holds about ``chunk_rows`` rows;
4. per bucket, per cluster: order by ``clip_score`` (best first; ties by input
   order) and drop every row whose cosine similarity to a better-ranked row of
   its cluster is at least ``threshold`` (SemDeDup's rule), computed block-wise;
5. one last pass resolves the row numbers of the dropped rows and their matches to keys.

Memory is one chunk, the sample, the centroids and one bucket, whatever the
number of rows. Reason: ``semantic_duplicate`` with the kept row's key and the
cosine in the detail. Near-duplicates that k-means puts in different clusters
are not compared (the method's known trade-off; more clusters: faster, more misses).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from datagen.core.records import reject, rejects_table
from datagen.core.steps import Step

if TYPE_CHECKING:  # the barrier is handed polars frames; reading the recipe does not import polars
    import polars as pl


class SemDedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.95, gt=0.0, le=1.0, description="Drop a row whose image-embedding cosine "
                             "similarity to a better-scored row of its cluster is at least this (SemDeDup "
                             "eps = 1 - threshold; NeMo Curator's default eps 0.01 is 0.99).")
    cluster_rows: int = Field(1000, ge=1, description="Rows per k-means cluster on average: clusters = "
                              "rows / cluster_rows (at least 1).")
    iterations: int = Field(10, ge=1, description="k-means rounds on the sample.")
    sample_rows: int = Field(50_000, ge=100, description="Rows k-means trains on (a uniform sample).")
    chunk_rows: int = Field(65_536, ge=1024, description="Rows read at once and about the rows per spill "
                            "bucket: what bounds the memory.")


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with cosine distance: each next centroid drawn in proportion to its
    distance to the nearest one so far, so well-separated topics each get a centroid."""
    c = np.empty((k, x.shape[1]), np.float32)
    c[0] = x[rng.integers(len(x))]
    dist = np.maximum(1.0 - x @ c[0], 0.0)
    for j in range(1, k):
        total = dist.sum()
        i = rng.choice(len(x), p=dist / total) if total > 0 else rng.integers(len(x))
        c[j] = x[i]
        dist = np.minimum(dist, np.maximum(1.0 - x @ c[j], 0.0))
    return c


def spherical_kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Unit centroids [k, d] of unit rows ``x`` by cosine similarity; empty clusters are re-seeded."""
    k = max(1, min(k, len(x)))
    c = _kmeans_pp(x, k, rng)
    for _ in range(iterations):
        assign = np.argmax(x @ c.T, axis=1)
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=k)
        empty = counts == 0
        if empty.any():
            sums[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]
        c = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return c.astype(np.float32)


def duplicates_in_cluster(emb: np.ndarray, threshold: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    """Rows (in ranked order, best first) to drop: those with cosine >= ``threshold`` to an earlier row.

    Returns (dropped positions, position of the most similar earlier row, that similarity)."""
    drop, match, sim = [], [], []
    for s in range(1, len(emb), block) if len(emb) > 1 else ():
        e = min(len(emb), s + block)
        sims = emb[s:e] @ emb[:e].T  # [b, e]
        rows = np.arange(s, e)
        sims[np.arange(e) >= rows[:, None]] = -np.inf  # only earlier (better-ranked) rows
        best = np.argmax(sims, axis=1)
        top = sims[np.arange(e - s), best]
        hit = top >= threshold
        drop.append(rows[hit])
        match.append(best[hit])
        sim.append(top[hit])
    if not drop:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, np.float32)
    return np.concatenate(drop), np.concatenate(match), np.concatenate(sim)


def _chunks(frame: pl.LazyFrame, columns: list[str], rows: int):
    for df in frame.select(columns).collect_batches(chunk_size=rows):
        if df.height:
            yield df


def _embeddings(df: pl.DataFrame) -> np.ndarray:
    e = df["_clip_embedding"]
    if e.null_count():
        raise ValueError("semantic dedup: some kept rows have no _clip_embedding; rerun the CLIP step "
                         "(filters.clip.keep_embedding)")
    return np.ascontiguousarray(e.to_numpy(), dtype=np.float32)


class SemDedupStep(Step):
    name = "semantic_dedup"
    kind = "barrier"
    columns = ("_clip_embedding", "clip_score")
    config: SemDedupConfig

    def decide(self, frame: pl.LazyFrame) -> pa.Table:
        cfg, st = self.config, self.ctx.stat(self.name)
        st.update(threshold=cfg.threshold)
        if self.ctx.stats.get("clip", {}).get("untrained_fallback"):
            st.update(applied=False)  # the run already warns that the CLIP model is a stand-in
            return rejects_table([])
        names = frame.collect_schema().names()
        if "_clip_embedding" not in names:
            raise ValueError("semantic dedup needs _clip_embedding in the pair parts; filters.clip must be on")
        has_score = "clip_score" in names
        rng = np.random.default_rng(self.ctx.rng(self.name).getrandbits(64))

        # 1. count rows and keep a uniform sample (the lowest random priorities seen so far)
        n, sample, prio = 0, np.zeros((0, 0), np.float32), np.zeros(0)
        for df in _chunks(frame, ["_clip_embedding"], cfg.chunk_rows):
            e = _embeddings(df)
            p = rng.random(len(e))
            sample = e if not len(sample) else np.concatenate([sample, e])
            prio = np.concatenate([prio, p])
            if len(prio) > cfg.sample_rows:
                keep = np.argpartition(prio, cfg.sample_rows)[:cfg.sample_rows]
                sample, prio = sample[keep], prio[keep]
            n += len(e)
        st.update(rows=n)
        if n < 2:
            st.update(applied=True, clusters=min(n, 1), dropped=0)
            return rejects_table([])

        # 2. clusters
        k = max(1, math.ceil(n / cfg.cluster_rows))
        centroids = spherical_kmeans(sample, k, cfg.iterations, rng)
        k = len(centroids)
        del sample, prio
        n_buckets = max(1, math.ceil(n / cfg.chunk_rows))

        spill = Path(tempfile.mkdtemp(prefix="semdedup-", dir=self.ctx.run_dir))
        try:
            # 3. assign and spill by bucket (cluster % n_buckets)
            offset = 0
            cols = ["_clip_embedding"] + (["clip_score"] if has_score else [])
            for ci, df in enumerate(_chunks(frame, cols, cfg.chunk_rows)):
                e = _embeddings(df)
                assign = np.argmax(e @ centroids.T, axis=1).astype(np.int32)
                score = df["clip_score"].fill_null(-np.inf).to_numpy().astype(np.float32) if has_score \
                    else np.zeros(len(e), np.float32)
                idx = np.arange(offset, offset + len(e), dtype=np.int64)
                bucket = assign % n_buckets
                for b in np.unique(bucket):
                    m = bucket == b
                    np.savez(spill / f"b{b:06d}-c{ci:06d}.npz", idx=idx[m], cluster=assign[m], score=score[m], emb=e[m])
                offset += len(e)

            # 4. within each cluster, best-scored first
            dropped, matched, sims = [], [], []
            for b in range(n_buckets):
                files = sorted(spill.glob(f"b{b:06d}-*.npz"))
                if not files:
                    continue
                parts = [np.load(f) for f in files]
                idx = np.concatenate([p["idx"] for p in parts])
                cluster = np.concatenate([p["cluster"] for p in parts])
                score = np.concatenate([p["score"] for p in parts])
                emb = np.concatenate([p["emb"] for p in parts])
                order = np.lexsort((idx, -score, cluster))  # by cluster, then best score, then input order
                idx, cluster, emb = idx[order], cluster[order], emb[order]
                bounds = np.flatnonzero(np.diff(cluster)) + 1
                for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(idx)]):
                    d, mt, s = duplicates_in_cluster(emb[lo:hi], cfg.threshold)
                    dropped.append(idx[lo:hi][d])
                    matched.append(idx[lo:hi][mt])
                    sims.append(s)
                for f in files:
                    f.unlink()
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        dropped_a = np.concatenate(dropped) if dropped else np.zeros(0, np.int64)
        matched_a = np.concatenate(matched) if matched else np.zeros(0, np.int64)
        sims_a = np.concatenate(sims) if sims else np.zeros(0, np.float32)
        st.update(applied=True, clusters=k, dropped=int(len(dropped_a)))
        if not len(dropped_a):
            return rejects_table([])

        # 5. row numbers -> keys
        need = np.unique(np.concatenate([dropped_a, matched_a]))
        rows: dict[int, dict] = {}
        offset = 0
        for df in _chunks(frame, [c for c in ("key", "source", "url") if c in names], cfg.chunk_rows):
            lo, hi = np.searchsorted(need, [offset, offset + df.height])
            for i in need[lo:hi]:
                rows[int(i)] = df.row(int(i - offset), named=True)
            offset += df.height
        order = np.argsort(dropped_a, kind="stable")  # rejects in input order
        return rejects_table(
            reject(rows[int(dropped_a[j])], self.name, "semantic_duplicate",
                   f"duplicate of {rows[int(matched_a[j])]['key']} (image cosine {sims_a[j]:.4f} >= {cfg.threshold})")
            for j in order)
