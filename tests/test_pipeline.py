import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen import checkpoint as ckpt
from datagen.filters.quality import QualityConfig, QualityFilterStep
from datagen.pipeline import StepFactory, map_batches, merge_stats, run
from datagen.recipe import load_recipe
from datagen.records import pairs_table


def rows(n):
    return [{"key": f"s_{i}", "source": "s", "caption": "a red square" if i % 3 else "x", "width": 300,
             "height": 300} for i in range(n)]


def test_process_pool_gives_the_same_output_and_merged_stats(ctx):
    batches = [pairs_table(rows(50)[i:i + 10]) for i in range(0, 50, 10)]
    factory = StepFactory(QualityFilterStep, QualityConfig())
    one = list(map_batches(factory, iter(batches), ctx, workers=1))
    two = list(map_batches(factory, iter(batches), ctx, workers=2))
    assert [o.kept.column("key").to_pylist() for o in one] == [o.kept.column("key").to_pylist() for o in two]
    assert sum(o.rejects.num_rows for o in two) == 17


def test_merge_stats_adds_numbers_and_recurses():
    dst = {"n": 1, "by": {"a": 1}, "model": "x"}
    merge_stats(dst, {"n": 2, "by": {"a": 1, "b": 3}, "model": "y", "flag": True})
    assert dst == {"n": 3, "by": {"a": 2, "b": 3}, "model": "y", "flag": True}


def test_checkpoint_writer_is_atomic(tmp_path):
    w = ckpt.CheckpointWriter(tmp_path / "01-x", "fp1")
    w.write(pairs_table(rows(3)))
    w.abort()
    assert not (tmp_path / "01-x").exists() and not (tmp_path / "01-x.partial").exists()
    w = ckpt.CheckpointWriter(tmp_path / "01-x", "fp1")
    w.write(pairs_table(rows(3)))
    c = w.commit({"in": 3}, {}, 0.1, pairs_table([]).schema, ["careful"])
    assert c.num_rows() == 3
    assert ckpt.load(tmp_path / "01-x", "fp1").warnings == ["careful"]
    assert ckpt.load(tmp_path / "01-x", "other") is None


def _jpeg(color):
    buf = io.BytesIO()
    Image.new("RGB", (120, 100), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def small_recipe(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    for i, c in enumerate(["red", "green", "blue", "white"]):
        (img / f"{i}.jpg").write_bytes(_jpeg(c))
    pq.write_table(pa.table({"URL": [f"imgs/{i}.jpg" for i in range(4)] + ["imgs/missing.jpg"],
                             "TEXT": ["a red square", "a green square", "a blue square", "a white square", "gone"]}),
                   tmp_path / "t.parquet")
    (tmp_path / "r.yaml").write_text(json.dumps({
        "name": "small", "sources": [{"name": "t", "kind": "laion", "path": "t.parquet"}],
        "fetch": {"allow_local_files": True},
        "filters": {"quality": {"min_side": 10}}, "stage2": {"sources": []},
    }))
    return tmp_path / "r.yaml"


def test_editing_a_later_step_reuses_earlier_checkpoints(small_recipe, tmp_path):
    recipe, _ = load_recipe(small_recipe)
    state = run(recipe, small_recipe.parent, tmp_path / "out")
    assert [s.reused for s in state.steps] == [False, False, False, False]
    assert [s.name for s in state.steps] == ["source-t", "fetch", "quality", "dedup"]
    recipe2, _ = load_recipe(small_recipe, ["filters.quality.min_caption_words=4"])
    state2 = run(recipe2, small_recipe.parent, tmp_path / "out")
    assert [s.reused for s in state2.steps] == [True, True, False, False]
    assert state2.steps[2].rejected == 4, "every 3-word caption now fails; 'gone' was rejected by fetch already"
    reasons = pq.read_table(tmp_path / "out" / "_run" / "steps" / "02-quality" / "rejects.parquet").column("reason")
    assert set(reasons.to_pylist()) == {"caption_too_short"}


def test_a_failing_step_leaves_no_checkpoint_and_the_rerun_resumes(small_recipe, tmp_path, monkeypatch):
    recipe, _ = load_recipe(small_recipe)
    calls = {"n": 0}
    original = QualityFilterStep.process

    def boom(self, table):
        calls["n"] += 1
        raise RuntimeError("killed")

    monkeypatch.setattr(QualityFilterStep, "process", boom)
    with pytest.raises(RuntimeError, match="killed"):
        run(recipe, small_recipe.parent, tmp_path / "out")
    steps_dir = tmp_path / "out" / "_run" / "steps"
    assert sorted(p.name for p in steps_dir.iterdir()) == ["00-source-t", "01-fetch"]
    monkeypatch.setattr(QualityFilterStep, "process", original)
    state = run(recipe, small_recipe.parent, tmp_path / "out")
    assert [s.reused for s in state.steps] == [True, True, False, False]


def test_derived_stats_are_recomputed_after_merging_workers(tmp_path):
    from datagen.steps import RunContext
    from datagen.synth.config import SynthConfig
    from datagen.synth.fakecoco import fake_coco_pairs
    from datagen.synth.step import SynthesizeStep

    table = fake_coco_pairs(60, seed=1)
    batches = [table.slice(i, 15) for i in range(0, 60, 15)]
    shares = []
    for workers in (1, 2):
        ctx = RunContext(run_dir=tmp_path / f"w{workers}", recipe_dir=tmp_path)
        ctx.run_dir.mkdir()
        outs = list(map_batches(StepFactory(SynthesizeStep, SynthConfig()), iter(batches), ctx, workers))
        st = ctx.stats["synthesize"]
        assert st["rows_in"] == 60 and sum(o.kept.num_rows for o in outs) == st["rows_out"]
        shares.append((st["negative_share"], st["negative_share_target"]))
    assert shares[0] == shares[1] and shares[0][1] == 0.5
