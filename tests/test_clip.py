"""CLIP score filter: arithmetic against a direct open_clip computation, threshold
bookkeeping, fast offline detection, checkpoint loading, rejects.

Random-weight tiny models only: these tests check plumbing and math, never quality."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import torch  # noqa: E402
import open_clip  # noqa: E402
from PIL import Image  # noqa: E402

from datagen.filters.clip import (  # noqa: E402
    ClipConfig,
    ClipScoreStep,
    ClipWeightsUnavailable,
    clip_scores,
    resolve_weights,
)
from datagen.core.records import pairs_table  # noqa: E402
from datagen.core.steps import RunContext  # noqa: E402

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CAPTIONS = ["a red square", "two dogs on grass", "a city at night", "一只猫", "blue sky", "noise", "a tree", "x y z"]


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _img_bytes(seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    size = (20 + 7 * seed, 30 + 3 * seed)  # different sizes and aspect ratios exercise the resize/crop
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _rows(n: int = 8) -> list[dict]:
    return [
        {"key": f"k{i}", "source": "test", "url": f"http://x/{i}.jpg", "caption": CAPTIONS[i % len(CAPTIONS)],
         "image": _img_bytes(i, "JPEG" if i % 2 else "PNG")}
        for i in range(n)
    ]


def _ctx(tmp_path: Path, seed: int = 0) -> RunContext:
    return RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path, seed=seed)


def _tiny(**kw) -> ClipConfig:
    base = dict(model="tiny-test", model_config=TINY, pretrained=None, min_score=None, device="cpu", batch_size=3)
    base.update(kw)
    return ClipConfig(**base)


def _direct_scores(model, images: list[Image.Image], texts: list[str]) -> np.ndarray:
    """The textbook computation, written out independently of datagen: eval transform, encode,
    divide by the norm, dot product."""
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    tokens = open_clip.tokenize(texts, context_length=TINY["text_cfg"]["context_length"])
    with torch.no_grad():
        fi = model.encode_image(torch.stack([preprocess(im) for im in images]))
        ft = model.encode_text(tokens)
    fi = fi / fi.norm(dim=-1, keepdim=True)
    ft = ft / ft.norm(dim=-1, keepdim=True)
    return (fi * ft).sum(-1).numpy()


# ---------------------------------------------------------------------------------- (a)


def test_step_scores_equal_direct_open_clip_computation(tmp_path):
    rows = _rows(8)
    step = ClipScoreStep(_tiny(), _ctx(tmp_path))
    out = step.process(pairs_table(rows))
    assert out.kept.num_rows == 8 and out.rejects.num_rows == 0
    assert out.kept.schema.field("clip_score").type == "float"  # float32
    got = np.array(out.kept.column("clip_score").to_pylist(), dtype=np.float32)

    loaded = step.load()
    images = [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in rows]
    want = _direct_scores(loaded.model, images, [r["caption"] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.std(want) > 1e-4, "scores should differ between pairs, or the comparison proves little"

    # the public helper gives the same numbers in one batch as the step in batches of 3
    direct = clip_scores(loaded.model, loaded.preprocess, loaded.tokenizer, images, [r["caption"] for r in rows], "cpu")
    np.testing.assert_allclose(direct, want, atol=1e-5)

    st = step.ctx.stat("clip")
    assert st["scored"] == 8 and st["kept"] == 8
    assert st["mean_score"] == pytest.approx(float(want.mean()), abs=1e-5)
    assert st["scores_meaningful"] is False and st["untrained_fallback"] is False


def test_same_seed_same_scores_and_one_model_per_process(tmp_path):
    a = ClipScoreStep(_tiny(), _ctx(tmp_path, seed=3))
    b = ClipScoreStep(_tiny(batch_size=64), _ctx(tmp_path, seed=3))
    assert a.load() is b.load()  # module-level cache: batch size does not change the model
    c = ClipScoreStep(_tiny(), _ctx(tmp_path, seed=4))
    t = pairs_table(_rows(4))
    sa = a.process(t).kept.column("clip_score").to_pylist()
    sc = c.process(t).kept.column("clip_score").to_pylist()
    assert not np.allclose(sa, sc), "another seed should give other random weights"


def test_low_precision_model_scores_close_to_fp32(tmp_path):
    """precision bf16 (found on an H200: the step fed fp32 pixels to bf16 conv weights, because open_clip
    keeps the class/position embeddings in fp32 and the step followed the first parameter's dtype)."""
    rows = _rows(6)
    fp32 = ClipScoreStep(_tiny(), _ctx(tmp_path)).process(pairs_table(rows))
    bf16 = ClipScoreStep(_tiny(precision="bf16"), _ctx(tmp_path)).process(pairs_table(rows))
    assert bf16.kept.num_rows == 6 and bf16.rejects.num_rows == 0
    bf16_model = ClipScoreStep(_tiny(precision="bf16"), _ctx(tmp_path)).load().model
    assert bf16_model.visual.conv1.weight.dtype == torch.bfloat16 and bf16_model.visual.class_embedding.dtype == torch.float32
    np.testing.assert_allclose(bf16.kept.column("clip_score").to_pylist(), fp32.kept.column("clip_score").to_pylist(),
                               atol=0.05)


def test_threaded_preparation_gives_the_inline_results(tmp_path):
    """preprocess_threads > 1 decodes the next batch while this one is encoded: same scores, same order,
    same rejects (a corrupt image among them) as preparing inline."""
    rows = _rows(11)
    rows[4]["image"] = b"\xff\xd8 not really a jpeg"
    inline = ClipScoreStep(_tiny(batch_size=3), _ctx(tmp_path)).process(pairs_table(rows))
    step = ClipScoreStep(_tiny(batch_size=3, preprocess_threads=3), _ctx(tmp_path))
    threaded = step.process(pairs_table(rows))
    assert threaded.kept.column("key").to_pylist() == inline.kept.column("key").to_pylist()
    assert "k4" not in threaded.kept.column("key").to_pylist()
    np.testing.assert_array_equal(threaded.kept.column("clip_score").to_numpy(), inline.kept.column("clip_score").to_numpy())
    assert threaded.rejects.column("key").to_pylist() == ["k4"]
    assert threaded.rejects.column("reason").to_pylist() == inline.rejects.column("reason").to_pylist() == [
        "image_decode_error"]


# ---------------------------------------------------------------------------------- (b)


def test_threshold_rejects_exactly_rows_below(tmp_path):
    rows = _rows(8)
    table = pairs_table(rows)
    scores = dict(zip(
        [r["key"] for r in rows],
        ClipScoreStep(_tiny(), _ctx(tmp_path)).process(table).kept.column("clip_score").to_pylist(),
    ))
    thr = float(np.median(list(scores.values())))
    ctx = _ctx(tmp_path)
    out = ClipScoreStep(_tiny(min_score=thr), ctx).process(table)

    below = {k for k, s in scores.items() if s < thr}
    assert 0 < len(below) < len(rows)
    assert set(out.rejects.column("key").to_pylist()) == below
    assert set(out.rejects.column("reason").to_pylist()) == {"clip_below_threshold"}
    assert set(out.rejects.column("step").to_pylist()) == {"clip"}
    for rec in out.rejects.to_pylist():
        assert f"{scores[rec['key']]:.4f}" in rec["detail"]
        assert rec["url"] == f"http://x/{rec['key'][1:]}.jpg"  # rejects keep the url for retries
    assert out.kept.num_rows + out.rejects.num_rows == len(rows)
    assert all(s >= thr for s in out.kept.column("clip_score").to_pylist())
    assert set(out.kept.column("key").to_pylist()) == set(scores) - below
    st = ctx.stat("clip")
    assert st["rejected"] == {"clip_below_threshold": len(below)} and st["threshold_applied"] is True


def test_rescoring_replaces_an_existing_clip_score_column(tmp_path):
    step = ClipScoreStep(_tiny(), _ctx(tmp_path))
    first = step.process(pairs_table(_rows(3))).kept
    again = step.process(first).kept
    assert again.column_names.count("clip_score") == 1
    np.testing.assert_allclose(again.column("clip_score").to_pylist(), first.column("clip_score").to_pylist())


# ---------------------------------------------------------------------------------- (c)


def test_offline_fallback_is_fast_loud_and_keeps_all_rows(tmp_path, offline_empty_cache):
    ctx = _ctx(tmp_path)
    step = ClipScoreStep(ClipConfig(allow_untrained_fallback=True, device="cpu", min_score=0.99), ctx)
    t0 = time.monotonic()
    loaded = step.load()
    assert time.monotonic() - t0 < 5, "offline detection must not wait for open_clip's download retries"
    assert loaded.untrained_fallback
    assert any("ViT-B-32/laion2b_s34b_b79k" in w and "UNTRAINED" in w for w in ctx.warnings)
    st = ctx.stat("clip")
    assert st["untrained_fallback"] is True and st["scores_meaningful"] is False
    assert st["model"] == "ViT-B-32" and st["pretrained"] == "laion2b_s34b_b79k"
    assert st["threshold_applied"] is False

    out = step.process(pairs_table(_rows(4)))
    assert out.kept.num_rows == 4 and out.rejects.num_rows == 0  # min_score 0.99 not applied
    assert all(-1 <= s <= 1 for s in out.kept.column("clip_score").to_pylist())


def test_offline_without_fallback_raises_a_clear_error_fast(tmp_path, offline_empty_cache):
    t0 = time.monotonic()
    with pytest.raises(ClipWeightsUnavailable) as err:
        ClipScoreStep(ClipConfig(device="cpu"), _ctx(tmp_path)).load()
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "ViT-B-32/laion2b_s34b_b79k" in msg
    assert str(offline_empty_cache / "hub") in msg  # names the cache it looked in
    assert "HF_HUB_OFFLINE" in msg
    assert "allow_untrained_fallback" in msg and "local checkpoint path" in msg and "pre-download" in msg


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_host_is_detected_without_offline_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    plan = resolve_weights(ClipConfig(), _ctx(tmp_path).resolve)
    assert time.monotonic() - t0 < 5
    assert plan.kind == "unavailable"
    assert any("not reachable" in c for c in plan.checked)


def test_reachable_host_means_download_is_attempted(tmp_path, monkeypatch):
    from servers import LocalServer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with LocalServer() as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url(""))
        plan = resolve_weights(ClipConfig(), _ctx(tmp_path).resolve)
    assert plan.kind == "download" and plan.pretrained == "laion2b_s34b_b79k"
    assert plan.cache_dir == str(tmp_path / "hf" / "hub")


def _fake_hf_snapshot(hub: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """The on-disk layout huggingface_hub writes: refs/main names a snapshot folder holding the files."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


def test_cached_tag_weights_are_found_in_the_hf_cache(tmp_path, offline_empty_cache):
    snap = _fake_hf_snapshot(offline_empty_cache / "hub", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
                             {"open_clip_model.safetensors": b"x"})
    plan = resolve_weights(ClipConfig(), _ctx(tmp_path).resolve)
    assert plan.kind == "file" and plan.pretrained == str(snap / "open_clip_model.safetensors")
    assert plan.preprocess["image_interpolation"] == "bicubic"  # the tag's preprocessing travels along


def test_cached_hf_hub_model_loads_offline_through_local_dir(tmp_path, offline_empty_cache):
    ref = ClipScoreStep(_tiny(), _ctx(tmp_path, seed=7))
    buf = io.BytesIO()
    torch.save(ref.load().model.state_dict(), buf)
    _fake_hf_snapshot(offline_empty_cache / "hub", "someorg/tiny-clip", {
        "open_clip_config.json": json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}).encode(),
        "open_clip_pytorch_model.bin": buf.getvalue(),
    })
    t0 = time.monotonic()
    step = ClipScoreStep(ClipConfig(model="hf-hub:someorg/tiny-clip", min_score=None, device="cpu"), _ctx(tmp_path))
    table = pairs_table(_rows(4))
    got = step.process(table).kept.column("clip_score").to_pylist()
    assert time.monotonic() - t0 < 5
    assert step.load().plan.kind == "local_dir" and step.ctx.stat("clip")["scores_meaningful"] is True
    np.testing.assert_allclose(got, ref.process(table).kept.column("clip_score").to_pylist(), atol=1e-6)


# ---------------------------------------------------------------------------------- (d)


def test_local_checkpoint_path_loads_through_open_clip(tmp_path):
    table = pairs_table(_rows(5))
    ref = ClipScoreStep(_tiny(), _ctx(tmp_path, seed=0))
    want = ref.process(table).kept.column("clip_score").to_pylist()
    (tmp_path / "ckpt").mkdir()
    torch.save(ref.load().model.state_dict(), tmp_path / "ckpt" / "tiny.pt")

    # another seed: if the checkpoint were ignored, the random init would give other scores
    ctx = _ctx(tmp_path, seed=1)
    step = ClipScoreStep(_tiny(pretrained="ckpt/tiny.pt"), ctx)  # relative to the recipe dir
    got = step.process(table).kept.column("clip_score").to_pylist()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert step.load().plan.kind == "file" and ctx.stat("clip")["scores_meaningful"] is True
    assert not ctx.warnings
    unseeded = ClipScoreStep(_tiny(), _ctx(tmp_path, seed=1)).process(table).kept.column("clip_score").to_pylist()
    assert not np.allclose(unseeded, want)
    assert step.fingerprint() != ref.fingerprint()


def test_local_dir_model_folder(tmp_path):
    table = pairs_table(_rows(3))
    ref = ClipScoreStep(_tiny(), _ctx(tmp_path, seed=5))
    want = ref.process(table).kept.column("clip_score").to_pylist()
    folder = tmp_path / "mymodel"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    torch.save(ref.load().model.state_dict(), folder / "open_clip_pytorch_model.bin")
    step = ClipScoreStep(ClipConfig(model="local-dir:mymodel", min_score=None, device="cpu"), _ctx(tmp_path))
    np.testing.assert_allclose(step.process(table).kept.column("clip_score").to_pylist(), want, atol=1e-6)
    with pytest.raises(ValueError, match="open_clip_config.json does not exist"):
        resolve_weights(ClipConfig(model="local-dir:elsewhere"), _ctx(tmp_path).resolve)


def test_missing_checkpoint_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.pt.*checkpoint file \(looked at .*nope\.pt\)"):
        ClipScoreStep(_tiny(pretrained="nope.pt"), _ctx(tmp_path)).load()
    with pytest.raises(ValueError, match=r"neither a known open_clip tag.*nope\.pt"):
        resolve_weights(ClipConfig(pretrained="nope.pt"), _ctx(tmp_path).resolve)
    with pytest.raises(ValueError, match="known: .*laion2b_s34b_b79k"):
        resolve_weights(ClipConfig(pretrained="no_such_tag"), _ctx(tmp_path).resolve)


# ---------------------------------------------------------------------------------- (e)


def test_missing_caption_or_image_become_rejects(tmp_path):
    rows = _rows(6)
    rows[0]["caption"] = None
    rows[1]["caption"] = "   "
    rows[2]["image"] = None
    rows[3]["image"] = b""
    rows[4]["image"] = rows[4]["image"][:40]  # truncated file
    ctx = _ctx(tmp_path)
    out = ClipScoreStep(_tiny(), ctx).process(pairs_table(rows))
    reasons = dict(zip(out.rejects.column("key").to_pylist(), out.rejects.column("reason").to_pylist()))
    assert reasons == {"k0": "no_caption", "k1": "no_caption", "k2": "no_image", "k3": "no_image",
                       "k4": "image_decode_error"}
    assert out.kept.column("key").to_pylist() == ["k5"]
    assert out.kept.num_rows + out.rejects.num_rows == len(rows)
    assert ctx.stat("clip")["rejected"] == {"no_caption": 2, "no_image": 2, "image_decode_error": 1}


def test_all_rows_rejected_still_gives_a_clip_score_column(tmp_path):
    rows = _rows(2)
    for r in rows:
        r["image"] = None
    out = ClipScoreStep(_tiny(), _ctx(tmp_path)).process(pairs_table(rows))
    assert out.kept.num_rows == 0 and "clip_score" in out.kept.column_names and out.rejects.num_rows == 2


def test_missing_column_names_it(tmp_path):
    t = pairs_table(_rows(1)).drop_columns(["caption"])
    with pytest.raises(ValueError, match=r"\['caption'\]"):
        ClipScoreStep(_tiny(), _ctx(tmp_path)).process(t)


# ------------------------------------------------------------------------- config, import


def test_config_validation():
    with pytest.raises(ValueError, match="extra"):
        ClipConfig(modle="ViT-B-32")
    with pytest.raises(ValueError, match="vision_cfg"):
        ClipConfig(model_config={"embed_dim": 8})
    with pytest.raises(ValueError, match="device"):
        ClipConfig(device="gpu")
    cfg = ClipConfig(model_config=TINY)
    assert cfg.model_dump(mode="json")["model_config"] == TINY  # recipes spell it model_config
    assert ClipConfig().min_score == 0.28 and ClipConfig().model == "ViT-B-32"


def test_importing_the_config_does_not_import_torch():
    code = "import sys, datagen.filters.clip, datagen.weights, datagen.config; assert 'torch' not in sys.modules and 'open_clip' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                   env={**os.environ, "PYTHONPATH": str(root)})


def test_non_finite_scores_become_rejects_not_lost_rows(tmp_path):
    step = ClipScoreStep(_tiny(), _ctx(tmp_path, seed=99))  # own seed: its own cached model to break
    with torch.no_grad():
        step.load().model.visual.proj.fill_(float("nan"))
    rows = _rows(3)
    out = step.process(pairs_table(rows))
    assert out.kept.num_rows == 0
    assert out.rejects.column("reason").to_pylist() == ["clip_score_invalid"] * 3


def test_a_download_that_fails_after_all_falls_back_or_raises(tmp_path):
    from datagen.filters.clip import WeightsPlan, load_clip

    # a plan that looked downloadable, but open_clip's own loading then fails
    plan = WeightsPlan("download", "ViT-B-32", "missing-file-after-all.pt", checked=["host reachable"])
    with pytest.raises(ClipWeightsUnavailable, match="the download failed"):
        load_clip(ClipConfig(device="cpu"), 0, plan)
    loaded = load_clip(ClipConfig(device="cpu", allow_untrained_fallback=True), 0, plan)
    assert loaded.untrained_fallback and loaded.plan.kind == "unavailable"
    assert any("download: " in c for c in loaded.plan.checked)
