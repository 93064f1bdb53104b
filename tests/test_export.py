"""Exports and sample layout rules on a small hand-made run (fast); the demo's real outputs are
read by the real loaders in test_outputs_compat.py."""

import io
import json
import os

import pyarrow as pa
import pytest
from PIL import Image

from datagen.core.records import CONVERSATION_SCHEMA, PAIR_SCHEMA
from datagen.sinks import export as export_mod
from datagen.sinks.export import export, inline_images, llava_single, mplug_task_type
from datagen.sinks.shards import SplitWriter, json_bytes, sample_images, shard_json, stage2_images
from datagen.sources.tables import portable_path, resolve_url


def jpeg(color):
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buf, "JPEG")
    return buf.getvalue()


def turn(role, content, task="existence"):
    return {"role": role, "content": content, "task": task, "polarity": "positive", "generator": "template"}


def conv(cid, lang, turns, parent=None):
    return {"id": cid, "lang": lang, "parent_id": parent, "turns": turns}


@pytest.fixture
def run(tmp_path):
    """A finished run: one single-image sample (two turns naming the image), one multi-image
    sample whose text names image 1 before image 0, one text-only sample."""
    out = tmp_path / "run"
    w = SplitWriter(out, "stage2", 10, 10**9)
    rows = [
        ({"key": "a", "source": "coco", "images": ["a"], "meta": "{}", "conversations": [
            conv("a-en", "en", [turn("user", "<image>\nIs there a dog?"), turn("assistant", "No."),
                                turn("user", "And a <image> cat?"), turn("assistant", "Yes.")]),
            conv("a-zh", "zh", [turn("user", "<image>\n有狗吗？"), turn("assistant", "没有。")], parent="a-en")]},
         [jpeg("red")]),
        ({"key": "m", "source": "coco", "images": ["b", "c"], "meta": "{}", "conversations": [
            conv("m-en", "en", [turn("user", "Image 1 is <image_1>. Image 0 is <image_0>. Same?", "in_context"),
                                turn("assistant", "No.", "in_context")])]},
         [jpeg("green"), jpeg("blue")]),
    ]
    for row, images in rows:
        w.write(row["key"], {**stage2_images(images), "json": json_bytes(shard_json(row, CONVERSATION_SCHEMA))})
    w.commit()
    t = SplitWriter(out, "stage2_text", 10, 10**9)
    row = {"key": "t", "source": "text", "images": None, "meta": None,
           "conversations": [conv("t-en", "en", [turn("user", "Say hi.", "alpaca"), turn("assistant", "Hi.", "alpaca")])]}
    t.write("t", {"json": json_bytes(shard_json(row, CONVERSATION_SCHEMA))})
    t.commit()
    (out / "manifest.json").write_text(json.dumps({"name": "tiny"}))
    return out


def test_stage2_images_are_always_numbered_and_read_back_in_order():
    one = stage2_images([jpeg("red")])
    assert list(one) == ["0.jpg"]
    two = stage2_images([jpeg("red"), jpeg("blue")])
    assert list(two) == ["0.jpg", "1.jpg"]
    assert sample_images({"__key__": "k", "1.jpg": b"b", "0.jpg": b"a", "json": b"{}"}) == [b"a", b"b"]
    assert sample_images({"__key__": "k", "jpg": b"a"}) == [b"a"], "shards written before the rule still read"
    assert sample_images({"__key__": "k", "json": b"{}"}) == []
    with pytest.raises(ValueError, match=r"x.tar: sample k has image members \[0, 2\], expected 0..1"):
        sample_images({"__key__": "k", "__url__": "x.tar", "0.jpg": b"a", "2.jpg": b"c"})


def test_shard_json_drops_bytes_and_working_columns_and_never_writes_null_lists():
    schema = PAIR_SCHEMA.append(pa.field("_rep", pa.int32()))
    row = {"key": "k", "source": "laion", "url": "x.jpg", "caption": "c", "image": b"\xff", "_rep": 0,
           "objects": None, "captions": None, "meta": '{"similarity": 0.3}', "width": 4, "height": 3}
    body = shard_json(row, schema)
    assert "image" not in body and "_rep" not in body
    assert body["objects"] == [] and body["captions"] == [] and body["meta"] == '{"similarity": 0.3}'
    row["objects"] = [{"label": "dog", "bbox": [0, 0, 1, 1], "score": None, "attributes": None, "iscrowd": False}]
    assert shard_json(row, schema)["objects"][0]["attributes"] == [], "nested lists too"


def test_every_split_folder_has_sizes_json_keyed_by_file_name(run):
    for split, expected in (("stage2", {"stage2-000000.tar": 2}), ("stage2_text", {"stage2_text-000000.tar": 1})):
        assert json.loads((run / split / "sizes.json").read_text()) == expected


def test_inline_images_orders_by_appearance_and_rejects_bad_names():
    turns = [turn("user", "Image 1 is <image_1>. Image 0 is <image_0>."), turn("assistant", "ok")]
    texts, order = inline_images(turns, 2, "here")
    assert texts[0] == "Image 1 is <image>. Image 0 is <image>." and order == [1, 0]
    with pytest.raises(ValueError, match=r"here: placeholders name images \[0, 0\]"):
        inline_images([turn("user", "<image_0> and <image_0>"), turn("assistant", "x")], 2, "here")
    texts, order = inline_images([turn("user", "Compare them."), turn("assistant", "x")], 2, "here")
    assert texts[0] == "<image>\n<image>\nCompare them." and order == [0, 1]


def test_llava_single_moves_the_one_image_to_the_front_of_the_first_human_turn():
    out = llava_single([turn("user", "Look: <image>\nIs there a dog?"), turn("assistant", "No."),
                        turn("user", "And a <image> cat?"), turn("assistant", "Yes.")], True)
    assert [t["value"] for t in out] == ["<image>\nLook: Is there a dog?", "No.", "And a cat?", "Yes."]
    assert [t["from"] for t in out] == ["human", "gpt", "human", "gpt"]
    assert llava_single([turn("user", "Say hi."), turn("assistant", "Hi.")], False)[0]["value"] == "Say hi."


def test_llava_export_splits_single_and_interleaved(run):
    single_path, inter_path = export(run, run / "export", "llava")
    single = {i["id"]: i for i in json.loads(single_path.read_text())}
    inter = json.loads(inter_path.read_text())
    assert set(single) == {"a-en", "a-zh", "t-en"}
    assert single["a-en"]["image"] == "images/a.0.jpg" and "image" not in single["t-en"]
    assert sum(t["value"].count("<image>") for t in single["a-en"]["conversations"]) == 1
    (m,) = inter
    assert m["image"] == ["images/m.1.jpg", "images/m.0.jpg"], "listed in the order the text names them"
    assert Image.open(run / "export" / m["image"][0]).getpixel((2, 2))[2] > 200, "image 1 is the blue one"


def test_mplug_owl_export_task_type_and_image_root(run):
    (path,) = export(run, run / "export", "mplug_owl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["task_type"] for x in lines] == ["datagen_existence_en_sft", "datagen_existence_zh_sft",
                                               "datagen_in_context_en_sft", "datagen_alpaca_en_sft"]
    assert all(x["task_type"].split("_")[-1] == "sft" for x in lines)
    assert [len(x["image"]) for x in lines] == [x["text"].count("<image>") for x in lines] == [1, 1, 2, 0]
    assert all(os.path.isfile(run / "export" / p) for x in lines for p in x["image"])
    (path,) = export(run, run / "export2", "mplug_owl", image_root="/data/tiny")
    assert json.loads(path.read_text().splitlines()[2])["image"] == ["/data/tiny/images/m.1.jpg",
                                                                     "/data/tiny/images/m.0.jpg"]
    assert mplug_task_type(conv("x", "zh", [turn("user", "q", "false_premise")])) == "datagen_false_premise_zh_sft"


def test_hf_export_writes_parquet_files_and_a_card_that_load_dataset_reads(run, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(export_mod, "HF_ROWS_PER_FILE", 2)
    (folder,) = export(run, run / "export", "hf")
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["train-00000.parquet", "train-00001.parquet"]
    assert (folder / "README.md").read_text().startswith("---\nconfigs:")
    ds = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds["id"] == ["a-en", "a-zh", "m-en", "t-en"] and ds[1]["parent_id"] == "a-en"
    assert [len(r["images"]) for r in ds] == [1, 1, 2, 0]
    assert ds[2]["images"][1].getpixel((2, 2))[2] > 200, "pixels embedded, in the row's image order"


def test_export_rejects_unknown_format_and_unfinished_runs(run, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'x'"):
        export(run, tmp_path / "e", "x")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        export(tmp_path, tmp_path / "e", "llava")


def test_local_paths_are_stored_relative_to_the_recipe_folder(tmp_path):
    root = tmp_path / "recipes"
    root.mkdir()
    assert portable_path(tmp_path / "data" / "x.jpg", root) == "../data/x.jpg"
    assert resolve_url("img/1.jpg", tmp_path / "tables", root) == "../tables/img/1.jpg"
    assert resolve_url("/abs/1.jpg", tmp_path, root) == "/abs/1.jpg", "an absolute path is kept as written"
    assert resolve_url("https://h/1.jpg", tmp_path, root) == "https://h/1.jpg"


def test_portable_paths_are_what_relpath_of_the_real_paths_gives(tmp_path):
    """portable_path works out each folder's relative path once; the result is still
    ``os.path.relpath(realpath(file), realpath(root))`` for files in the root itself, beside it, below it,
    through a linked folder, and for a linked file."""
    import os

    root = tmp_path / "recipes"
    for d in ("recipes/img", "recipes/img/a", "data", "real"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "real" / "target.jpg").write_bytes(b"x")
    (tmp_path / "recipes" / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "data" / "link.jpg").symlink_to(tmp_path / "real" / "target.jpg")
    files = [root / "x.jpg", root / "img" / "x.jpg", root / "img" / "a" / "y.jpg", tmp_path / "data" / "x.jpg",
             root / "linked" / "target.jpg", tmp_path / "data" / "link.jpg", root / "img" / ".." / "z.jpg"]
    got = [portable_path(f, root) for f in files] + [portable_path(f, root) for f in files]  # cached the 2nd time
    want = [os.path.relpath(os.path.realpath(f), os.path.realpath(root)) for f in files] * 2
    assert got == want
    assert got[:7] == ["x.jpg", "img/x.jpg", "img/a/y.jpg", "../data/x.jpg", "../real/target.jpg",
                       "../real/target.jpg", "z.jpg"]


def test_sharegpt_export_has_one_image_token_per_listed_image(run):
    (path,) = export(run, run / "export", "sharegpt")
    items = {i["id"]: i for i in json.loads(path.read_text())}
    assert {k: len(v["images"]) for k, v in items.items()} == {"a-en": 1, "a-zh": 1, "m-en": 2, "t-en": 0}
    for item in items.values():
        assert sum(t["value"].count("<image>") for t in item["conversations"]) == len(item["images"])
    assert items["m-en"]["images"] == ["images/m.1.jpg", "images/m.0.jpg"] and items["a-zh"]["lang"] == "zh"
