import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen.records import conversations_table, pairs_table
from datagen.sinks.export import mplug_owl_text
from datagen.sinks.shards import SplitWriter, image_ext
from datagen.sinks.stages import ImageStore, repeats, write_stage1, write_stage2
from datagen.config import OutputConfig, StageConfig


def jpeg(color="red"):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "JPEG")
    return buf.getvalue()


def test_split_writer_caps_shards_keeps_sample_files_adjacent_and_is_atomic(tmp_path):
    w = SplitWriter(tmp_path, "stage1", max_count=3, max_bytes=10**9)
    for i in range(7):
        w.write(f"k{i}", {"jpg": jpeg(), "txt": b"cap", "json": b"{}"})
    assert not (tmp_path / "stage1").exists(), "nothing visible before commit"
    shards = w.commit()
    assert [s.count for s in shards] == [3, 3, 1]
    assert [s.path for s in shards] == [f"stage1/stage1-00000{i}.tar" for i in range(3)]
    names = tarfile.open(tmp_path / shards[0].path).getnames()
    assert [n.split(".")[0] for n in names] == ["k0"] * 3 + ["k1"] * 3 + ["k2"] * 3, "a sample's files are adjacent"
    assert sorted(names[:3]) == ["k0.jpg", "k0.json", "k0.txt"]
    assert not list(tmp_path.rglob("*.partial"))
    with pytest.raises(ValueError, match="contains '.'"):
        SplitWriter(tmp_path, "x", 3, 10**9).write("a.b", {"json": b"{}"})


def test_split_writer_abort_leaves_previous_output_untouched(tmp_path):
    w = SplitWriter(tmp_path, "stage1", 10, 10**9)
    w.write("old", {"json": b"{}"})
    w.commit()
    w = SplitWriter(tmp_path, "stage1", 10, 10**9)
    w.write("new", {"json": b"{}"})
    w.abort()
    assert tarfile.open(tmp_path / "stage1" / "stage1-000000.tar").getnames() == ["old.json"]
    assert not (tmp_path / ".stage1.partial").exists()


def test_byte_cap_starts_a_new_shard(tmp_path):
    w = SplitWriter(tmp_path, "s", max_count=100, max_bytes=2500)
    for i in range(4):
        w.write(f"k{i}", {"bin": b"x" * 1000})
    assert [s.count for s in w.commit()] == [2, 2]


def test_image_ext_detects_formats():
    assert image_ext(jpeg()) == "jpg"
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, "PNG")
    assert image_ext(buf.getvalue()) == "png"
    with pytest.raises(ValueError):
        image_ext(b"hello")


def test_mixing_weights_expected_counts():
    keys = [f"k{i}" for i in range(4000)]
    assert sum(repeats(0.25, 0, k) for k in keys) == pytest.approx(1000, rel=0.08)
    assert sum(repeats(2.5, 0, k) for k in keys) == pytest.approx(10000, rel=0.03)
    assert all(repeats(1.0, 0, k) == 1 for k in keys)


def test_stage_writers_mix_shuffle_and_join_images(tmp_path):
    rows = [{"key": f"a_{i}", "source": "a", "caption": f"cap {i}", "image": jpeg(), "width": 8, "height": 8}
            for i in range(10)]
    rows += [{"key": f"b_{i}", "source": "b", "caption": f"cap {i}", "image": jpeg("blue"), "width": 8, "height": 8}
             for i in range(10)]
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pairs_table(rows), pairs, row_group_size=4)
    out = tmp_path / "out"
    shards, stats = write_stage1(pairs, out, StageConfig(weights={"a": 2.0, "b": 0.0}), OutputConfig(shard_max_count=7),
                                 0, tmp_path)
    assert stats["per_source"] == {"a": 20}
    names = [n for s in shards for n in tarfile.open(out / s.path).getnames() if n.endswith(".txt")]
    assert sorted(names) == sorted([f"a_{i}.txt" for i in range(10)] + [f"a_{i}-r1.txt" for i in range(10)])
    assert names != sorted(names), "shuffled"

    convs = conversations_table([
        {"key": "a_1", "source": "a", "images": ["a_1"], "conversations": [
            {"id": "c0", "lang": "en", "parent_id": None, "turns": [
                {"role": "user", "content": "<image>\nq", "task": "t", "polarity": "positive", "generator": "g"},
                {"role": "assistant", "content": "a", "task": "t", "polarity": "positive", "generator": "g"}]}]},
        {"key": "a_1", "source": "a", "images": ["a_1"], "conversations": [
            {"id": "c0-zh", "lang": "zh", "parent_id": "c0", "turns": [
                {"role": "user", "content": "<image>\n问", "task": "t", "polarity": "positive", "generator": "g"},
                {"role": "assistant", "content": "答", "task": "t", "polarity": "positive", "generator": "g"}]}]},
        {"key": "mm_1", "source": "a", "images": ["a_2", "b_3"], "conversations": [
            {"id": "m0", "lang": "en", "parent_id": None, "turns": [
                {"role": "user", "content": "Image 0 is <image_0>. Image 1 is <image_1>. Which?", "task": "t",
                 "polarity": "positive", "generator": "g"},
                {"role": "assistant", "content": "0", "task": "t", "polarity": "positive", "generator": "g"}]}]},
        {"key": "gone", "source": "a", "images": ["a_99"], "conversations": [
            {"id": "x", "lang": "en", "parent_id": None, "turns": [
                {"role": "user", "content": "<image>\nq", "task": "t", "polarity": "positive", "generator": "g"},
                {"role": "assistant", "content": "a", "task": "t", "polarity": "positive", "generator": "g"}]}]},
    ])
    cpath = tmp_path / "convs.parquet"
    pq.write_table(convs, cpath)
    s2, s2t, stats, rejects = write_stage2([cpath], pairs, out, StageConfig(), OutputConfig(), 0, tmp_path)
    members = {n: None for s in s2 for n in tarfile.open(out / s.path).getnames()}
    assert set(members) == {"a_1.0.jpg", "a_1.json", "mm_1.0.jpg", "mm_1.1.jpg", "mm_1.json"}
    body = json.loads(tarfile.open(out / s2[0].path).extractfile("a_1.json").read())
    assert [c["id"] for c in body["conversations"]] == ["c0", "c0-zh"], "conversations of one image merged"
    assert [r["reason"] for r in rejects] == ["image_missing"]
    assert stats["conversations_by_lang"] == {"en": 2, "zh": 1}


def test_image_store_reads_by_key_across_row_groups(tmp_path):
    rows = [{"key": f"k{i}", "source": "s", "image": bytes([i])} for i in range(10)]
    pq.write_table(pairs_table(rows), tmp_path / "p.parquet", row_group_size=3)
    store = ImageStore(tmp_path / "p.parquet", cache_groups=1)
    assert [store.get(f"k{i}") for i in (9, 0, 5, 5)] == [b"\x09", b"\x00", b"\x05", b"\x05"]
    assert "k3" in store and "nope" not in store


def test_mplug_owl_template_one_image_line_or_inline_images():
    single, order = mplug_owl_text([{"role": "user", "content": "<image>\nWhat is it?"},
                                    {"role": "assistant", "content": "A cat."}], 1)
    assert order == [0]
    assert single.splitlines()[1:] == ["Human: <image>", "Human: What is it?", "AI: A cat."]
    turns = [{"role": "user", "content": "Image 0 is <image_0>. Image 1 is <image_1>. Same?"},
             {"role": "assistant", "content": "No."}]
    text, order = mplug_owl_text(turns, 2)
    assert order == [0, 1]
    assert text.splitlines()[1:] == ["Human: Image 0 is <image>. Image 1 is <image>. Same?", "AI: No."]
    assert text.count("<image>") == 2
