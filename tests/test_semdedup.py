"""Semantic dedup: a barrier over the stored CLIP image embeddings (SemDeDup)."""

import io
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from datagen.filters.semdedup import SemDedupConfig, SemDedupStep, duplicates_in_cluster, spherical_kmeans


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _frame(tmp_path, emb, scores):
    n = len(emb)
    t = pa.table({"key": [f"k{i:05d}" for i in range(n)], "source": ["s"] * n, "url": [None] * n,
                  "_clip_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]),
                  "clip_score": pa.array(scores, pa.float32())})
    pq.write_table(t, tmp_path / "m.parquet")
    return pl.scan_parquet(tmp_path / "m.parquet")


def test_groups_keep_their_best_row_and_distinct_rows_survive_across_chunks_and_buckets(tmp_path, ctx):
    rng = np.random.default_rng(0)
    d, n_groups, per, topics = 64, 300, 4, 15
    # like real embeddings: topics (what k-means finds), pictures within topics, near-duplicates of pictures
    centers = _unit(rng.normal(size=(topics, d)))
    bases = _unit(centers[np.arange(n_groups) % topics] + 0.06 * rng.normal(size=(n_groups, d)))
    noisy = _unit(np.repeat(bases, per, axis=0) + 0.01 * rng.normal(size=(n_groups * per, d)))
    singles = _unit(centers[np.arange(1800) % topics] + 0.06 * rng.normal(size=(1800, d)))
    emb = np.concatenate([noisy, singles])
    perm = rng.permutation(len(emb))  # groups scattered over the input (and so over chunks)
    emb = emb[perm]
    group = np.concatenate([np.repeat(np.arange(n_groups), per), -1 - np.arange(len(singles))])[perm]
    scores = rng.random(len(emb)).astype(np.float32)
    step = SemDedupStep(SemDedupConfig(threshold=0.95, cluster_rows=200, chunk_rows=1024, sample_rows=1000), ctx)
    rej = step.decide(_frame(tmp_path, emb, scores))
    dropped = {int(k[1:]) for k in rej.column("key").to_pylist()}
    kept = [i for i in range(len(emb)) if i not in dropped]
    assert all(group[i] >= 0 for i in dropped), "a distinct row was merged"
    kept_groups = [group[i] for i in kept if group[i] >= 0]
    assert sorted(kept_groups) == list(range(n_groups)), "every group keeps exactly one"
    for g in range(n_groups):
        members = np.flatnonzero(group == g)
        assert scores[[i for i in members if i not in dropped][0]] == scores[members].max(), "the best-scored stays"
    assert set(rej.column("reason").to_pylist()) == {"semantic_duplicate"}
    first = rej.to_pylist()[0]
    assert first["detail"].startswith("duplicate of k") and ">= 0.95" in first["detail"]
    st = ctx.stats["semantic_dedup"]
    assert st["rows"] == 3000 and st["dropped"] == 900 and st["clusters"] == 15


def test_duplicates_in_cluster_is_semdedups_rule_blockwise():
    e = _unit(np.array([[1, 0, 0], [0.999, 0.04, 0], [0, 1, 0], [0.02, 0.999, 0], [0, 0, 1]], np.float32))
    for block in (1, 2, 2048):
        drop, match, sim = duplicates_in_cluster(e, 0.99, block=block)
        assert drop.tolist() == [1, 3] and match.tolist() == [0, 2] and (sim >= 0.99).all()


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(1)
    centers = _unit(rng.normal(size=(3, 16)))
    x = _unit(np.repeat(centers, 50, axis=0) + 0.05 * rng.normal(size=(150, 16)))
    c = spherical_kmeans(x, 3, 10, rng)
    labels = np.argmax(x @ c.T, axis=1)
    assert all(len(set(labels[i * 50:(i + 1) * 50])) == 1 for i in range(3))
    assert len(set(labels)) == 3


def test_untrained_fallback_embeddings_never_drop_rows(tmp_path, ctx):
    ctx.stat("clip")["untrained_fallback"] = True
    emb = _unit(np.ones((5, 8), np.float32))
    assert SemDedupStep(SemDedupConfig(), ctx).decide(_frame(tmp_path, emb, [0.1] * 5)).num_rows == 0
    assert ctx.stats["semantic_dedup"]["applied"] is False


def test_semantic_dedup_needs_clip():
    from pydantic import ValidationError

    from datagen.config import FiltersConfig

    with pytest.raises(ValidationError, match="set filters.clip too"):
        FiltersConfig(semantic_dedup={})


# ------------------------------------------------------------------ end to end on near-duplicate pictures

def _base(i):
    rng = np.random.default_rng(i)
    im = Image.new("RGB", (256, 224), tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = rng.integers(0, 230, 2)
        w, h = rng.integers(20, 120, 2)
        (d.ellipse if rng.random() < .5 else d.rectangle)([x, y, x + w, y + h],
                                                          fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return im


def _variants(im):
    """The picture, a crop (resized back), a hard recompression and a small colour shift."""
    w, h = im.size
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=35)
    shifted = np.clip(np.asarray(im).astype(int) + [8, -6, 5], 0, 255).astype(np.uint8)
    return [im, im.crop((8, 6, w - 8, h - 6)).resize((w, h)), Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
            Image.fromarray(shifted)]


def test_near_duplicate_pictures_keep_one_each_and_embeddings_are_not_recomputed(tmp_path, monkeypatch):
    from datagen.filters.clip import TINY_UNTRAINED_CONFIG, ClipScoreStep
    from datagen.core.pipeline import run
    from datagen.recipe import load_recipe

    (tmp_path / "imgs").mkdir()
    urls, groups = [], []
    for g in range(5):
        for v, im in enumerate(_variants(_base(g))):
            im.save(tmp_path / "imgs" / f"{g}-{v}.png")  # png: the variants stay exactly as built
            urls.append(f"imgs/{g}-{v}.png")
            groups.append(g)
    order = np.random.default_rng(3).permutation(len(urls))
    urls, groups = [urls[i] for i in order], [groups[i] for i in order]
    pq.write_table(pa.table({"URL": urls, "TEXT": [f"a picture of shapes number {i}" for i in range(len(urls))]}),
                   tmp_path / "t.parquet")
    (tmp_path / "r.yaml").write_text(json.dumps({
        "name": "sem", "sources": [{"name": "t", "kind": "laion", "path": "t.parquet"}],
        "fetch": {"allow_local_files": True, "keep_png": True},
        "filters": {"quality": {"min_side": 10},
                    "clip": {"model_config": TINY_UNTRAINED_CONFIG, "pretrained": None, "min_score": None},
                    "semantic_dedup": {"threshold": 0.9999}},
        "dedup": None, "executor": {"shard_rows": 7}}))
    recipe, _ = load_recipe(tmp_path / "r.yaml")
    first = run(recipe, tmp_path, tmp_path / "out")
    assert [s.name for s in first.steps][-1] == "semantic_dedup"
    meta = pl.concat([pl.read_parquet(p.kept, columns=["key", "url", "clip_score", "_clip_embedding"])
                      for _, p in first.pair_parts])
    assert meta.height == 20
    # Random weights: plumbing only. This model still separates the groups; the threshold is set between
    # the least similar pair of one group and the most similar pair of two groups.
    emb = meta["_clip_embedding"].to_numpy()
    g = np.array([groups[urls.index(u)] for u in meta["url"]])
    sims = emb @ emb.T
    same = sims[(g[:, None] == g[None]) & ~np.eye(len(g), dtype=bool)].min()
    other = sims[g[:, None] != g[None]].max()
    assert same > other + 0.002, f"premise: the model separates the groups ({same} vs {other})"

    calls = []
    monkeypatch.setattr(ClipScoreStep, "process", lambda self, t: calls.append(t) or pytest.fail("recomputed"))
    recipe2, _ = load_recipe(tmp_path / "r.yaml", [f"filters.semantic_dedup.threshold={(same + other) / 2:.6f}"])
    state = run(recipe2, tmp_path, tmp_path / "out")
    assert not calls and [s.reused for s in state.steps if s.name == "clip"] == [True], "embeddings are reused"
    assert [s.reused for s in state.steps if s.name == "semantic_dedup"] == [False]
    dropped = set(pq.read_table(state.decisions[-1]).column("key").to_pylist())
    kept = meta.filter(~pl.col("key").is_in(list(dropped)))
    kept_groups = sorted(groups[urls.index(u)] for u in kept["url"])
    assert kept_groups == [0, 1, 2, 3, 4], "each group keeps exactly one; distinct pictures are never merged"
    best = meta.with_columns(pl.Series("g", g)).group_by("g").agg(pl.col("clip_score").max())
    assert sorted(kept["clip_score"].to_list()) == sorted(best["clip_score"].to_list()), "the best-scored stays"
    assert state.steps[-1].rejected == 15
    reasons = set(pq.read_table(state.decisions[-1]).column("reason").to_pylist())
    assert reasons == {"semantic_duplicate"}
