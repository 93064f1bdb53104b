"""CLIP per language (filters.clip.languages): routing, one model per language, per-language cutoffs.

Two tiny random-weight models stand in for ViT-B-32 (English) and xlm-roberta-base-ViT-B-32 (Chinese):
the tests check which model scored which row and which threshold judged it, never quality."""

from __future__ import annotations

import io
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from datagen.core.records import pairs_table
from datagen.core.steps import RunContext
from datagen.filters.clip import ClipConfig, ClipScoreStep, ClipWeightsUnavailable, clip_scores
from datagen.filters.clip_config import scorer_config
from datagen.filters.threshold import ClipThresholdStep
from datagen.weights import load_clip

TINY_EN = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_ZH = {  # another architecture: other weights, other embedding size
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _img(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(24 + 3 * seed, 30, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _cfg(**kw) -> ClipConfig:
    base = dict(model="tiny-en", model_config=TINY_EN, pretrained=None, min_score=None, device="cpu", batch_size=2,
                languages={"zh": {"model": "tiny-zh", "model_config": TINY_ZH, "pretrained": None}})
    base.update(kw)
    return ClipConfig(**base)


# (meta.lang, caption_lang, expected route): the source's lang wins over the detected one
ROWS = [("zh", None, "zh"), (None, "zh", "zh"), ("en", "zh", None), (None, None, None), (None, "en", None),
        ("zh-CN", None, "zh"), ("zh", "en", "zh"), (None, "fr", None)]
CAPS = ["一只猫在草地上", "红色的汽车", "a dog on grass", "a city at night", "blue sky", "一棵树", "两只狗", "un arbre"]


def _table() -> pa.Table:
    rows = [{"key": f"k{i}", "source": "s", "url": f"http://x/{i}", "caption": CAPS[i], "image": _img(i),
             "meta": json.dumps({"lang": m} if m else {})} for i, (m, _, _) in enumerate(ROWS)]
    t = pairs_table(rows)
    return t.append_column("caption_lang", pa.array([d for _, d, _ in ROWS], type=pa.string()))


def _ctx(tmp_path) -> RunContext:
    return RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path, seed=0)


def test_rows_are_scored_by_their_languages_model(tmp_path):
    cfg = _cfg(keep_embedding=True)
    step = ClipScoreStep(cfg, _ctx(tmp_path))
    out = step.process(_table())
    assert out.kept.num_rows == len(ROWS) and out.rejects.num_rows == 0
    want_route = [r for _, _, r in ROWS]
    assert out.kept.column("clip_lang").to_pylist() == want_route
    assert out.kept.column("clip_model").to_pylist() == ["tiny-zh" if r else "tiny-en" for r in want_route]
    got = np.array(out.kept.column("clip_score").to_pylist(), dtype=np.float32)

    # the same numbers from clip_scores with the model each row should have, loaded independently
    en = load_clip(cfg.for_language(None), 0)
    zh = load_clip(cfg.for_language("zh"), 0)
    assert en.model is not zh.model and en.model.visual.output_dim == 32 and zh.model.visual.output_dim == 24
    pil = [Image.open(io.BytesIO(_img(i))).convert("RGB") for i in range(len(ROWS))]
    want_en = clip_scores(en.model, en.preprocess, en.tokenizer, pil, CAPS, "cpu")
    want_zh = clip_scores(zh.model, zh.preprocess, zh.tokenizer, pil, CAPS, "cpu")
    want = np.where([r == "zh" for r in want_route], want_zh, want_en)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(want_en - want_zh).min() > 1e-4, "the two models must disagree, or the check proves little"

    # the stored embedding is the base model's for every row: one space for semantic dedup and aesthetics
    emb = np.array(out.kept.column("_clip_embedding").to_pylist(), dtype=np.float32)
    assert emb.shape == (len(ROWS), 32)
    import torch.nn.functional as F
    with torch.no_grad():
        ref = F.normalize(en.model.encode_image(torch.stack([en.preprocess(im) for im in pil])), dim=-1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)

    st = step.ctx.stat("clip")
    assert st["model"] == "tiny-en" and st["scored"] == len(ROWS)
    assert st["languages"]["zh"]["model"] == "tiny-zh"
    assert st["languages"]["zh"]["scored"] == want_route.count("zh") == st["languages"]["zh"]["kept"]


def test_without_languages_no_routing_columns(tmp_path):
    out = ClipScoreStep(_cfg(languages=None), _ctx(tmp_path)).process(_table())
    assert "clip_lang" not in out.kept.column_names and "clip_model" not in out.kept.column_names


def test_step_applies_each_languages_min_score(tmp_path):
    ref = ClipScoreStep(_cfg(), _ctx(tmp_path)).process(_table()).kept
    scores = dict(zip(ref.column("key").to_pylist(), ref.column("clip_score").to_pylist()))
    routes = dict(zip(ref.column("key").to_pylist(), ref.column("clip_lang").to_pylist()))
    en_cut = float(np.median([s for k, s in scores.items() if routes[k] is None]))
    zh_cut = float(np.median([s for k, s in scores.items() if routes[k] == "zh"]))
    cfg = _cfg(min_score=en_cut, languages={"zh": {"model": "tiny-zh", "model_config": TINY_ZH, "pretrained": None,
                                                   "min_score": zh_cut}})
    out = ClipScoreStep(cfg, _ctx(tmp_path)).process(_table())
    want_rejected = {k for k, s in scores.items() if s < (zh_cut if routes[k] == "zh" else en_cut)}
    assert set(out.rejects.column("key").to_pylist()) == want_rejected
    assert 0 < len(want_rejected) < len(ROWS)
    details = dict(zip(out.rejects.column("key").to_pylist(), out.rejects.column("detail").to_pylist()))
    assert all(("language zh" in d) == (routes[k] == "zh") for k, d in details.items())


def _frame(tmp_path, scores, langs) -> pl.LazyFrame:
    t = pa.table({"key": [f"k{i}" for i in range(len(scores))], "source": ["s"] * len(scores),
                  "url": [None] * len(scores), "clip_score": pa.array(scores, pa.float32()),
                  "clip_lang": pa.array(langs, pa.string())})
    pq.write_table(t, tmp_path / "m.parquet")
    return pl.scan_parquet(tmp_path / "m.parquet")


def test_barrier_applies_per_language_cutoffs(tmp_path):
    ctx = _ctx(tmp_path)
    scores = [0.20, 0.25, 0.27, 0.30, 0.20, 0.25, 0.27, 0.30, 0.1, 0.9]
    langs = [None] * 4 + ["zh"] * 4 + ["ja", "ja"]
    cfg = ClipConfig(min_score=0.28, languages={"zh": {"min_score": 0.26}, "ja": {"top_fraction": 0.5}})
    rej = ClipThresholdStep(cfg, ctx).decide(_frame(tmp_path, scores, langs))
    assert sorted(rej.column("key").to_pylist()) == ["k0", "k1", "k2", "k4", "k5", "k8"]
    st = ctx.stats["clip_threshold"]
    assert st["languages"]["zh"]["cutoff"] == 0.26 and st["languages"]["zh"]["rejected"] == 2
    assert st["languages"]["base"]["cutoff"] == 0.28 and st["languages"]["base"]["rejected"] == 3
    assert st["languages"]["ja"]["cutoff"] == pytest.approx(0.9) and st["languages"]["ja"]["min_score"] == 0.28
    assert st["cutoff"] == 0.28 and st["scored"] == 10 and st["applied"] is True
    detail = dict(zip(rej.column("key").to_pylist(), rej.column("detail").to_pylist()))
    assert "language zh" in detail["k4"] and "language" not in detail["k0"]


def test_barrier_skips_a_language_whose_model_fell_back(tmp_path):
    ctx = _ctx(tmp_path)
    ctx.stat("clip")["languages"] = {"zh": {"untrained_fallback": True}}
    cfg = ClipConfig(min_score=0.28, languages={"zh": {"min_score": 0.26}})
    rej = ClipThresholdStep(cfg, ctx).decide(_frame(tmp_path, [0.1, 0.1], [None, "zh"]))
    assert rej.column("key").to_pylist() == ["k0"]
    assert ctx.stats["clip_threshold"]["languages"]["zh"]["applied"] is False


def test_config_rules():
    with pytest.raises(ValidationError, match="give its pretrained too"):
        ClipConfig(languages={"zh": {"model": "xlm-roberta-base-ViT-B-32"}})
    with pytest.raises(ValidationError, match="distinct"):
        ClipConfig(languages={"zh": {"min_score": 0.2}, "ZH": {"min_score": 0.3}})
    c = ClipConfig(min_score=0.28, top_fraction=0.5, batch_size=7, languages={
        "zh": {"model": "xlm-roberta-base-ViT-B-32", "pretrained": "laion5b_s13b_b90k", "min_score": 0.26},
        "ja": {"min_score": None}})
    zh = c.for_language("zh")
    assert (zh.model, zh.pretrained, zh.min_score, zh.top_fraction, zh.batch_size) == \
        ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k", 0.26, 0.5, 7)
    assert c.for_language("ja").min_score is None and c.for_language("ja").model == "ViT-B-32"
    assert [c.route(x) for x in ("zh", "zh-CN", "ZH_tw", "en", None, "")] == ["zh", "zh", "zh", None, None, None]
    # a model_config of the base is not inherited by a language that names its own model
    t = ClipConfig(model="a", model_config=TINY_EN, pretrained=None, languages={"zh": {"model": "ViT-B-32",
                                                                                      "pretrained": None}})
    assert t.for_language("zh").model_config_ is None


def test_scorer_fingerprint_ignores_thresholds_but_not_models(tmp_path):
    ctx = _ctx(tmp_path)

    def fp(**kw):
        return ClipScoreStep(scorer_config(_cfg(**kw), keep_embedding=False), ctx).fingerprint()

    zh = {"model": "tiny-zh", "model_config": TINY_ZH, "pretrained": None}
    assert fp(languages={"zh": {**zh, "min_score": 0.1}}) == fp(languages={"zh": {**zh, "min_score": 0.3,
                                                                                  "top_fraction": 0.5}})
    assert fp(languages={"zh": zh}) != fp(languages={"zh": {**zh, "model_config": TINY_EN}})
    assert fp(languages={"zh": zh}) != fp(languages=None)


def test_preflight_names_the_language_whose_weights_are_missing(tmp_path, offline_empty_cache):
    from datagen.core.pipeline import preflight
    from datagen.recipe import load_recipe

    (tmp_path / "t.parquet").write_bytes(b"")
    (tmp_path / "r.yaml").write_text(json.dumps({
        "name": "p", "sources": [{"name": "t", "kind": "laion", "path": "t.parquet"}],
        "filters": {"clip": {"model_config": TINY_EN, "pretrained": None, "device": "cpu",
                             "languages": {"zh": {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}}}}}))
    recipe, _ = load_recipe(tmp_path / "r.yaml")
    with pytest.raises(ClipWeightsUnavailable, match=r"clip\.languages\.zh: .*ViT-B-32/laion2b_s34b_b79k"):
        preflight(recipe, _ctx(tmp_path))
    # with the fallback allowed the run goes on, loudly, and that language's threshold is not applied
    recipe, _ = load_recipe(tmp_path / "r.yaml", ["filters.clip.allow_untrained_fallback=true"])
    ctx = _ctx(tmp_path)
    preflight(recipe, ctx)
    assert any("language zh" in w and "UNTRAINED" in w for w in ctx.warnings)


def test_pipeline_two_languages_and_threshold_edit_reuses_scores(tmp_path):
    from datagen.core.pipeline import run as run_recipe
    from datagen.recipe import load_recipe

    (tmp_path / "imgs").mkdir()
    for i, c in enumerate(["red", "green", "blue", "white", "black", "yellow", "gray", "navy"]):
        Image.new("RGB", (60, 60), c).save(tmp_path / "imgs" / f"{i}.png")
    pq.write_table(pa.table({"url": [f"imgs/{i}.png" for i in range(4)],
                             "caption": [f"图片 {i} 号" for i in range(4)]}), tmp_path / "zh.parquet")
    pq.write_table(pa.table({"URL": [f"imgs/{i}.png" for i in range(4, 8)],
                             "TEXT": [f"a picture number {i}" for i in range(4, 8)]}), tmp_path / "en.parquet")
    zh = {"model": "tiny-zh", "model_config": TINY_ZH, "pretrained": None, "top_fraction": 0.5}
    (tmp_path / "r.yaml").write_text(json.dumps({
        "name": "c", "sources": [{"name": "wk", "kind": "wukong", "path": "zh.parquet"},
                                 {"name": "ln", "kind": "laion", "path": "en.parquet"}],
        "fetch": {"allow_local_files": True},
        "filters": {"quality": {"min_side": 10, "min_caption_words": 1},
                    "clip": {"model": "tiny-en", "model_config": TINY_EN, "pretrained": None, "device": "cpu",
                             "min_score": None, "languages": {"zh": zh}}}}))
    recipe, _ = load_recipe(tmp_path / "r.yaml")
    first = run_recipe(recipe, tmp_path, tmp_path / "out")
    steps = {s.name: s for s in first.steps}
    assert steps["clip"].stats["languages"]["zh"]["scored"] == 4 and steps["clip"].stats["scored"] == 8
    bar = steps["clip_threshold"]
    assert bar.rejected == 2 and bar.stats["languages"]["zh"]["rejected"] == 2
    assert bar.stats["languages"]["base"]["applied"] is False
    kept = pa.concat_tables([pq.read_table(p.kept) for _, p in first.pair_parts])
    by_key = dict(zip(kept.column("key").to_pylist(), kept.column("clip_model").to_pylist()))
    assert {k: v for k, v in by_key.items() if k.startswith("wk")} == {f"wk_{i:09d}": "tiny-zh" for i in range(4)}
    assert set(v for k, v in by_key.items() if k.startswith("ln")) == {"tiny-en"}
    dropped = pq.read_table(first.decisions[0]).column("key").to_pylist()
    assert len(dropped) == 2 and all(k.startswith("wk") for k in dropped)

    recipe2, _ = load_recipe(tmp_path / "r.yaml", ["filters.clip.languages.zh.top_fraction=0.75"])
    second = run_recipe(recipe2, tmp_path, tmp_path / "out")
    s2 = {s.name: s for s in second.steps}
    assert s2["clip"].reused and not s2["clip_threshold"].reused, "a per-language threshold edit reuses the scores"
    assert s2["clip_threshold"].rejected == 1
    wk = pc.starts_with(kept.column("key"), "wk")
    zh_scores = sorted(kept.filter(wk).column("clip_score").to_pylist())
    assert s2["clip_threshold"].stats["languages"]["zh"]["cutoff"] == pytest.approx(zh_scores[1])


def test_a_hugging_face_text_tower_needs_its_files_cached_or_reachable(tmp_path, offline_empty_cache):
    from datagen.weights import resolve_weights

    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"a checkpoint")  # resolution only looks whether it exists
    text = {**TINY_EN["text_cfg"], "hf_tokenizer_name": "xlm-roberta-base"}
    cfg = ClipConfig(model="tiny-xlm", model_config={**TINY_EN, "text_cfg": text}, pretrained=str(ckpt))
    plan = resolve_weights(cfg)
    assert plan.kind == "unavailable" and "xlm-roberta-base" in plan.problem
    assert any("xlm-roberta-base/config.json -> missing" in c for c in plan.checked)
    assert resolve_weights(ClipConfig(model="tiny", model_config=TINY_EN, pretrained=str(ckpt))).kind == "file"
    # the real multilingual tag is judged the same way: offline with an empty cache it is unavailable
    xlm = ClipConfig(model="xlm-roberta-base-ViT-B-32", pretrained="laion5b_s13b_b90k")
    assert resolve_weights(xlm).kind == "unavailable"
