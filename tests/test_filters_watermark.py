"""filters.watermark: LAION's detector layout and loading code, with timm's tiny test network for the plumbing."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen.filters.watermark import WatermarkConfig, WatermarkStep, WatermarkWeightsUnavailable, build_model
from datagen.core.records import pairs_table

TINY = "test_efficientnet"  # timm's small network for tests; the real detector is efficientnet_b3a


def _rows(n):
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (60 + 10 * i, 50), (40 * i, 90, 200 - 30 * i)).save(buf, "PNG")
        out.append({"key": f"k{i}", "source": "s", "image": buf.getvalue()})
    out.append({"key": "broken", "source": "s", "image": b"\x89PNG not really"})
    return pairs_table(out)


def test_a_saved_detector_loads_through_the_weights_path_and_scores(tmp_path, ctx):
    import torch

    torch.manual_seed(1)
    ref = build_model(TINY)
    assert [type(m).__name__ for m in ref.classifier] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]
    torch.save(ref.state_dict(), tmp_path / "wm.pt")
    probe = WatermarkStep(WatermarkConfig(weights="wm.pt", arch=TINY, threshold=None), ctx)
    scores = probe.process(_rows(4)).kept.column("watermark_score").to_pylist()
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores) and len(set(scores)) > 1
    cut = sorted(scores)[2]
    step = WatermarkStep(WatermarkConfig(weights="wm.pt", arch=TINY, threshold=cut), ctx)
    out = step.process(_rows(4))
    reasons = dict(zip(out.rejects.column("key").to_pylist(), out.rejects.column("reason").to_pylist()))
    assert reasons.pop("broken") == "image_decode_error"
    assert set(reasons.values()) == {"watermark_detected"} and len(reasons) == 2
    assert out.kept.num_rows == 2 and max(out.kept.column("watermark_score").to_pylist()) < cut
    st = ctx.stats["watermark"]
    assert st["weights"] == "wm.pt" and st["scores_meaningful"] is True and len(st["sha256"]) == 64


def test_a_missing_weights_file_fails_before_any_work_unless_skipping_is_allowed(tmp_path, ctx):
    from datagen.core.pipeline import preflight
    from datagen.recipe import load_recipe

    (tmp_path / "r.yaml").write_text(json.dumps({
        "name": "w", "sources": [{"name": "t", "kind": "laion", "path": "t.parquet"}],
        "filters": {"watermark": {}}}))
    r, _ = load_recipe(tmp_path / "r.yaml")
    with pytest.raises(WatermarkWeightsUnavailable, match="LAION-5B-WatermarkDetection.*allow_skip"):
        preflight(r, ctx)
    out = WatermarkStep(WatermarkConfig(allow_skip=True), ctx).process(_rows(2))
    assert out.kept.num_rows == 3 and out.kept.column("watermark_score").null_count == 3
    assert any("watermark step skipped" in w for w in ctx.warnings)


def test_in_the_pipeline_after_fetch(tmp_path):
    from datagen.core.pipeline import run
    from datagen.recipe import load_recipe

    (tmp_path / "imgs").mkdir()
    for i, c in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (80, 80), c).save(tmp_path / "imgs" / f"{i}.png")
    pq.write_table(pa.table({"URL": [f"imgs/{i}.png" for i in range(3)],
                             "TEXT": [f"a plain picture {i}" for i in range(3)]}), tmp_path / "t.parquet")
    (tmp_path / "r.yaml").write_text(json.dumps({
        "name": "w", "sources": [{"name": "t", "kind": "laion", "path": "t.parquet"}],
        "fetch": {"allow_local_files": True},
        "filters": {"quality": {"min_side": 10}, "watermark": {"weights": None, "arch": TINY, "threshold": None}}}))
    recipe, _ = load_recipe(tmp_path / "r.yaml")
    state = run(recipe, tmp_path, tmp_path / "out")
    assert [s.name for s in state.steps][:4] == ["source-t", "fetch", "quality", "watermark"]
    t = pq.read_table(state.pair_parts[0][1].kept, columns=["watermark_score"])
    assert t.num_rows == 3 and t.column(0).null_count == 0
    assert state.ctx.stats["watermark"]["scores_meaningful"] is False
