"""filters.aesthetic: the LAION predictor's loading code and layout; a small random MLP for the plumbing."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.filters.aesthetic import (AestheticConfig, AestheticStep, AestheticWeightsUnavailable, build_mlp,
                                       load_predictor)
from datagen.core.records import pairs_table


def _rows(emb):
    t = pairs_table([{"key": f"k{i}", "source": "s"} for i in range(len(emb))])
    return t.append_column("_clip_embedding", pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()),
                                                                                emb.shape[1]))


def test_a_predictor_state_dict_in_the_laion_layout_loads_and_scores(tmp_path, ctx):
    import torch

    # The published file is a state dict of layers.{0,2,4,6,7}.{weight,bias}: Linear 768-1024-128-64-16-1.
    ref = build_mlp(768, [1024, 128, 64, 16])
    assert sorted(ref.state_dict()) == sorted(f"layers.{i}.{w}" for i in (0, 2, 4, 6, 7) for w in ("weight", "bias"))
    torch.save(ref.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    emb = np.random.default_rng(0).normal(size=(6, 768)).astype(np.float32)
    with torch.no_grad():
        want = ref.eval()(torch.from_numpy(emb)).squeeze(-1).numpy()
    cut = float(np.median(want))
    step = AestheticStep(AestheticConfig(weights="sac+logos+ava1-l14-linearMSE.pth", min_score=cut), ctx)
    out = step.process(_rows(emb))
    got = dict(zip(out.kept.column("key").to_pylist(), out.kept.column("aesthetic_score").to_pylist()))
    assert sorted(got) == sorted(f"k{i}" for i, w in enumerate(want) if w >= cut)
    for k, v in got.items():
        assert v == pytest.approx(want[int(k[1:])], abs=1e-5)
    assert out.rejects.num_rows == 3
    assert set(out.rejects.column("reason").to_pylist()) == {"aesthetic_below_threshold"}
    st = ctx.stats["aesthetic"]
    assert st["weights"] == "sac+logos+ava1-l14-linearMSE.pth" and len(st["sha256"]) == 64 and st["scored"] == 6


def test_an_embedding_of_another_size_names_the_fix(ctx):
    step = AestheticStep(AestheticConfig(mlp={"input_dim": 768, "hidden": [16]}), ctx)
    with pytest.raises(ValueError, match="ViT-L-14, pretrained: openai"):
        step.process(_rows(np.ones((2, 64), np.float32)))


def test_offline_without_weights_fails_before_any_work_unless_skipping_is_allowed(tmp_path, monkeypatch, ctx):
    from datagen.core.pipeline import preflight
    from datagen.recipe import load_recipe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    base = {"name": "a", "sources": [{"name": "t", "kind": "laion", "path": "t.parquet"}]}
    clip = {"model_config": {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                             "patch_size": 16},
                             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1,
                                          "layers": 1}}, "pretrained": None}
    (tmp_path / "r.yaml").write_text(json.dumps(base | {"filters": {"clip": clip, "aesthetic": {}}}))
    r, _ = load_recipe(tmp_path / "r.yaml")
    with pytest.raises(AestheticWeightsUnavailable, match="trl-lib/ddpo-aesthetic-predictor.*allow_skip"):
        preflight(r, ctx)
    with pytest.raises(AestheticWeightsUnavailable, match="HF_HUB_OFFLINE"):
        load_predictor(AestheticConfig(), ctx.resolve)
    step = AestheticStep(AestheticConfig(allow_skip=True), ctx)
    out = step.process(_rows(np.ones((2, 64), np.float32)))
    assert out.kept.num_rows == 2 and out.kept.column("aesthetic_score").null_count == 2
    assert any("aesthetic step skipped" in w for w in ctx.warnings)


def test_in_the_pipeline_after_clip_with_a_small_random_mlp(tmp_path):
    from PIL import Image

    from datagen.filters.clip import TINY_UNTRAINED_CONFIG
    from datagen.core.pipeline import run
    from datagen.recipe import load_recipe

    (tmp_path / "imgs").mkdir()
    for i, c in enumerate(["red", "green", "blue", "white"]):
        Image.new("RGB", (80, 80), c).save(tmp_path / "imgs" / f"{i}.png")
    pq.write_table(pa.table({"URL": [f"imgs/{i}.png" for i in range(4)],
                             "TEXT": [f"a plain picture {i}" for i in range(4)]}), tmp_path / "t.parquet")
    (tmp_path / "r.yaml").write_text(json.dumps({
        "name": "a", "sources": [{"name": "t", "kind": "laion", "path": "t.parquet"}],
        "fetch": {"allow_local_files": True},
        "filters": {"quality": {"min_side": 10},
                    "clip": {"model_config": TINY_UNTRAINED_CONFIG, "pretrained": None, "min_score": None},
                    "aesthetic": {"mlp": {"input_dim": 64, "hidden": [32, 16]}}}}))
    recipe, _ = load_recipe(tmp_path / "r.yaml")
    state = run(recipe, tmp_path, tmp_path / "out")
    names = [s.name for s in state.steps]
    assert names.index("aesthetic") == names.index("clip") + 1
    t = pq.read_table(state.pair_parts[0][1].kept, columns=["aesthetic_score", "_clip_embedding"])
    assert t.num_rows == 4 and t.column("aesthetic_score").null_count == 0
    assert state.ctx.stats["aesthetic"]["scores_meaningful"] is False
