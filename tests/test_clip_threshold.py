import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.filters.clip import ClipConfig
from datagen.filters.threshold import ClipThresholdStep, cutoff
from datagen.core.records import pairs_table


def scored(tmp_path, scores):
    t = pairs_table([{"key": f"k{i}", "source": "s"} for i in range(len(scores))])
    t = t.append_column("clip_score", pa.array(scores, type=pa.float32()))
    pq.write_table(t, tmp_path / "in.parquet")
    return tmp_path / "in.parquet"


def run(step, path):
    """The barrier's decisions over the scores at ``path``, and the rows that survive them."""
    import polars as pl
    import pyarrow.compute as pc

    rejects = step.decide(pl.scan_parquet(path).select("key", "source", "url", "clip_score"))
    t = pq.read_table(path)
    return t.filter(pc.invert(pc.is_in(t.column("key"), value_set=rejects.column("key")))), rejects


def test_cutoff_is_the_stricter_bound():
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert cutoff(s, 0.28, None) == 0.28
    assert cutoff(s, None, 0.3) == pytest.approx(0.8)
    assert cutoff(s, 0.85, 0.3) == 0.85
    assert cutoff(s, None, None) is None


def test_min_score_and_top_fraction(tmp_path, ctx):
    path = scored(tmp_path, [0.1 * i for i in range(1, 11)])
    kept, rej = run(ClipThresholdStep(ClipConfig(min_score=0.28), ctx), path)
    assert kept.column("key").to_pylist() == [f"k{i}" for i in range(2, 10)]
    assert set(rej.column("reason").to_pylist()) == {"clip_below_threshold"} and rej.num_rows == 2
    kept, rej = run(ClipThresholdStep(ClipConfig(min_score=None, top_fraction=0.3), ctx), path)
    assert kept.column("key").to_pylist() == ["k7", "k8", "k9"]
    assert "top 30% cutoff" in rej.column("detail")[0].as_py()
    assert "clip_score" in kept.column_names


def test_untrained_fallback_scores_never_drop_rows(tmp_path, ctx):
    ctx.stat("clip")["untrained_fallback"] = True
    kept, rej = run(ClipThresholdStep(ClipConfig(min_score=0.9, top_fraction=0.1), ctx), scored(tmp_path, [0.1, 0.2]))
    assert kept.num_rows == 2 and rej.num_rows == 0
    assert ctx.stats["clip_threshold"]["applied"] is False


def test_changing_the_threshold_reuses_the_scores(tmp_path):
    from PIL import Image

    from datagen.filters.clip import TINY_UNTRAINED_CONFIG
    from datagen.core.pipeline import run as run_recipe
    from datagen.recipe import load_recipe

    (tmp_path / "imgs").mkdir()
    for i, c in enumerate(["red", "green", "blue", "white", "black", "yellow"]):
        Image.new("RGB", (80, 80), c).save(tmp_path / "imgs" / f"{i}.jpg")
    pq.write_table(pa.table({"URL": [f"imgs/{i}.jpg" for i in range(6)],
                             "TEXT": [f"a picture number {i}" for i in range(6)]}), tmp_path / "t.parquet")
    (tmp_path / "r.yaml").write_text(json.dumps({
        "name": "c", "sources": [{"name": "t", "kind": "laion", "path": "t.parquet"}],
        "fetch": {"allow_local_files": True},
        "filters": {"quality": {"min_side": 10},
                    "clip": {"model_config": TINY_UNTRAINED_CONFIG, "pretrained": None, "min_score": None,
                             "top_fraction": 0.5}}}))
    recipe, _ = load_recipe(tmp_path / "r.yaml")
    first = run_recipe(recipe, tmp_path, tmp_path / "out")
    names = [s.name for s in first.steps]
    assert names[:5] == ["source-t", "fetch", "quality", "clip", "clip_threshold"]
    assert first.steps[4].kept == 3 and first.steps[4].rejected == 3
    recipe2, _ = load_recipe(tmp_path / "r.yaml", ["filters.clip.top_fraction=0.34"])
    second = run_recipe(recipe2, tmp_path, tmp_path / "out")
    assert [s.reused for s in second.steps][:5] == [True, True, True, True, False], "the scores are reused"
    assert second.steps[4].kept == 2
