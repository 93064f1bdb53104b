"""The engine: shard parts, fused passes, barriers, resume by shard, reuse when a later step changes."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen.core.executor import merge_stats
from datagen.core.parts import PartWriter
from datagen.fetch.step import FetchStep
from datagen.filters.quality import QualityFilterStep
from datagen.core.pipeline import run
from datagen.recipe import load_recipe
from datagen.core.records import PAIR_SCHEMA, pairs_table


def rows(n):
    return [{"key": f"s_{i}", "source": "s", "caption": "a red square" if i % 3 else "x", "width": 300,
             "height": 300} for i in range(n)]


def test_merge_stats_adds_numbers_concatenates_lists_and_recurses():
    dst = {"n": 1, "by": {"a": 1}, "model": "x", "ex": [1]}
    merge_stats(dst, {"n": 2, "by": {"a": 1, "b": 3}, "model": "y", "flag": True, "ex": [2]})
    assert dst == {"n": 3, "by": {"a": 2, "b": 3}, "model": "y", "flag": True, "ex": [1, 2]}


def test_part_writer_is_atomic(tmp_path):
    w = PartWriter(tmp_path / "s-000000", PAIR_SCHEMA)
    w.write(pairs_table(rows(3)))
    assert not (tmp_path / "s-000000").exists(), "nothing under the final name before commit"
    w.abort()
    assert list(tmp_path.iterdir()) == []
    w = PartWriter(tmp_path / "s-000000", PAIR_SCHEMA)
    w.write(pairs_table(rows(3)))
    part = w.commit({"steps": {}})
    assert part.done and part.rows() == 3 and part.load_info()["kept"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["s-000000"]


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
        "executor": {"shard_rows": 2},
    }))
    return tmp_path / "r.yaml"


def test_input_shards_and_per_step_counts(small_recipe, tmp_path):
    recipe, _ = load_recipe(small_recipe)
    state = run(recipe, small_recipe.parent, tmp_path / "out")
    assert [s.name for s in state.steps] == ["source-t", "fetch", "quality", "dedup"]
    assert [sh.id for sh, _ in state.pair_parts] == ["t-000000", "t-000001", "t-000002"]
    fetch = state.steps[1]
    assert (fetch.rows_in, fetch.kept, fetch.rejected) == (5, 4, 1)
    assert all(p.done for _, p in state.pair_parts)


def test_editing_a_later_step_reuses_earlier_passes(small_recipe, tmp_path):
    recipe, _ = load_recipe(small_recipe)
    first = run(recipe, small_recipe.parent, tmp_path / "out")
    assert not any(s.reused for s in first.steps)
    # A barrier edit (dedup) reuses the sources and the fused pair pass.
    recipe2, _ = load_recipe(small_recipe, ["dedup.by=[url]"])
    second = run(recipe2, small_recipe.parent, tmp_path / "out")
    assert [s.reused for s in second.steps] == [True, True, True, False]
    # A per-row edit inside the fused pass redoes that pass only.
    recipe3, _ = load_recipe(small_recipe, ["filters.quality.min_caption_words=4"])
    third = run(recipe3, small_recipe.parent, tmp_path / "out")
    assert [s.reused for s in third.steps] == [True, False, False, False]
    assert third.steps[2].rejected == 4, "every 3-word caption now fails; 'gone' was rejected by fetch already"
    reasons = pq.read_table(third.pair_parts[0][1].rejects).column("reason").to_pylist()
    assert set(reasons) == {"caption_too_short"}


def test_a_failing_shard_leaves_no_part_and_the_rerun_redoes_only_it(small_recipe, tmp_path, monkeypatch):
    recipe, _ = load_recipe(small_recipe)
    fetched = []
    original_fetch, original_quality = FetchStep.process, QualityFilterStep.process

    def counting(self, table):
        fetched.extend(table.column("key").to_pylist())
        return original_fetch(self, table)

    def boom(self, table):
        if "t_000000003" in table.column("key").to_pylist():
            raise RuntimeError("killed")
        return original_quality(self, table)

    monkeypatch.setattr(FetchStep, "process", counting)
    monkeypatch.setattr(QualityFilterStep, "process", boom)
    with pytest.raises(RuntimeError, match="killed"):
        run(recipe, small_recipe.parent, tmp_path / "out")
    pair_dir = next((tmp_path / "out" / "_run" / "pairs").iterdir())
    assert sorted(p.name for p in pair_dir.iterdir()) == ["t-000000"], "only the finished shard has a part"
    assert len(fetched) == 4
    fetched.clear()
    monkeypatch.setattr(QualityFilterStep, "process", original_quality)
    state = run(recipe, small_recipe.parent, tmp_path / "out")
    assert sorted(fetched) == ["t_000000002", "t_000000003", "t_000000004"], "shard 0 is never fetched again"
    assert state.steps[1].rows_in == 5 and not state.steps[1].reused


def test_keep_intermediate_false_drops_the_images_after_the_run(small_recipe, tmp_path):
    from datagen.sinks.manifest import finish

    recipe, raw = load_recipe(small_recipe)
    state = run(recipe, small_recipe.parent, tmp_path / "out")
    finish(state, raw, small_recipe)
    with_images = [p for p in (tmp_path / "out" / "_run").rglob("*.parquet")
                   if "image" in pq.ParquetFile(p).schema_arrow.names
                   and pq.read_table(p, columns=["image"]).column(0).null_count < pq.ParquetFile(p).metadata.num_rows]
    assert with_images and all("pairs" in p.parts for p in with_images), "images live in the pair parts only"
    recipe2, raw2 = load_recipe(small_recipe, ["output.keep_intermediate=false"])
    state2 = run(recipe2, small_recipe.parent, tmp_path / "out")
    manifest = finish(state2, raw2, small_recipe)
    assert manifest["counts"]["stage1_samples"] == 4
    assert not (tmp_path / "out" / "_run" / "pairs").exists()


def test_derived_stats_are_recomputed_after_merging_parts(tmp_path):
    """Synthesis over many shards in two processes gives the same shares as one shard in one."""
    from datagen.core.executor import ShardTask, StepFactory, execute, merge_parts
    from datagen.core.steps import RunContext
    from datagen.synth.config import SynthConfig
    from datagen.synth.fakecoco import fake_coco_pairs
    from datagen.synth.step import SynthesizeStep
    from datagen.core.records import CONVERSATION_SCHEMA

    table = fake_coco_pairs(60, seed=1)
    results = []
    for workers, shard_rows in ((1, 60), (2, 15)):
        ctx = RunContext(run_dir=tmp_path / f"w{workers}", recipe_dir=tmp_path)
        ctx.run_dir.mkdir()
        factory = StepFactory(SynthesizeStep, SynthConfig(multi_image={"enabled": False}))
        tasks = []
        for i in range(0, 60, shard_rows):
            path = ctx.run_dir / f"in-{i}.parquet"
            pq.write_table(table.slice(i, shard_rows), path)
            tasks.append(ShardTask(f"f-{i}", "fakecoco", path, ctx.run_dir / f"part-{i}", [factory],
                                   CONVERSATION_SCHEMA, shard_rows, batch_size=15))
        infos = execute(tasks, ctx, workers, "synth")
        st = merge_parts(infos, [factory], ctx)["synthesize"]
        assert st["in"] == 60 and st["kept"] == sum(i["kept"] for i in infos)
        results.append((st["stats"]["negative_share"], st["stats"]["negative_share_target"],
                        st["stats"]["checker_disagreements"], st["stats"]["polarity"]))
    assert results[0] == results[1] and results[0][1] == 0.5 and results[0][2] == 0
