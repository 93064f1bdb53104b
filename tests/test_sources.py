import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.core.records import CONVERSATION_SCHEMA, PAIR_SCHEMA
from datagen.sources.coco import read_coco
from datagen.sources.config import CocoSource, InstructionSource, ParquetSource, TsvSource
from datagen.sources.instructions import read_instructions
from datagen.sources.tables import read_parquet, read_tsv


def collect(outputs):
    outs = list(outputs)
    kept = pa.concat_tables([o.kept for o in outs]) if outs else None
    rejects = pa.concat_tables([o.rejects for o in outs]) if outs else None
    return kept, rejects, len(outs)


def coco_files(tmp_path, year):
    prefix = "COCO_val2014_" if year == 2014 else ""
    images = [{"id": i, "file_name": f"{prefix}{i:012d}.jpg", "width": 640, "height": 480} for i in (9, 25, 30)]
    caps = [{"id": 100 + n, "image_id": img, "caption": f" caption {n} of {img} "} for n, img in
            enumerate([9, 9, 25, 9, 25])]
    cats = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"}]
    anns = [
        {"id": 1, "image_id": 9, "category_id": 18, "bbox": [1, 2, 30, 40], "iscrowd": 0, "area": 1200},
        {"id": 2, "image_id": 9, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 1, "area": 100},
        {"id": 3, "image_id": 25, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0, "attributes": ["red"]},
    ]
    (tmp_path / f"captions_val{year}.json").write_text(json.dumps({"info": {}, "images": images, "annotations": caps}))
    (tmp_path / f"instances_val{year}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (tmp_path / f"val{year}").mkdir()
    return CocoSource(name="coco", kind="coco", captions=f"captions_val{year}.json",
                      instances=f"instances_val{year}.json", images=f"val{year}", batch_size=2)


@pytest.mark.parametrize("year", [2014, 2017])
def test_coco_layouts_group_captions_and_objects_per_image(tmp_path, ctx, year):
    cfg = coco_files(tmp_path, year)
    kept, rejects, n_batches = collect(read_coco(cfg, ctx))
    assert n_batches == 2, "streams in batches of batch_size"
    assert kept.schema == PAIR_SCHEMA and rejects.num_rows == 0
    rows = {r["key"]: r for r in kept.to_pylist()}
    assert set(rows) == {"coco_9", "coco_25", "coco_30"}
    r9 = rows["coco_9"]
    assert r9["captions"] == ["caption 0 of 9", "caption 1 of 9", "caption 3 of 9"]
    assert r9["caption"] == "caption 0 of 9"
    assert r9["url"] == f"val{year}/" + ("COCO_val2014_" if year == 2014 else "") + "000000000009.jpg", \
        "relative to the recipe folder"
    assert [(o["label"], o["iscrowd"]) for o in r9["objects"]] == [("dog", False), ("person", True)]
    assert r9["objects"][0]["bbox"] == [1, 2, 30, 40]
    assert rows["coco_25"]["objects"][0]["attributes"] == ["red"]
    assert rows["coco_30"]["objects"] == [] and rows["coco_30"]["captions"] == []
    assert json.loads(r9["meta"])["image_id"] == 9


def test_coco_urls_keep_an_absolute_image_folder_absolute(tmp_path, ctx):
    cfg = coco_files(tmp_path, 2017).model_copy(update={"images": str(tmp_path / "val2017")})
    kept, _, _ = collect(read_coco(cfg, ctx))
    assert kept.column("url").to_pylist()[0] == str(tmp_path / "val2017" / "000000000009.jpg")


def test_coco_unknown_category_is_a_clear_error(tmp_path, ctx):
    cfg = coco_files(tmp_path, 2017)
    data = json.loads((tmp_path / "instances_val2017.json").read_text())
    data["annotations"][0]["category_id"] = 99
    (tmp_path / "instances_val2017.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category_id 99"):
        collect(read_coco(cfg, ctx))


def test_laion_parquet_streams_maps_columns_and_keeps_meta(tmp_path, ctx):
    n = 1100
    pq.write_table(pa.table({
        "URL": [f"img/{i}.jpg" if i % 2 else f"http://h/{i}.jpg" for i in range(n)],
        "TEXT": [f"text {i}" for i in range(n)],
        "WIDTH": [100] * n, "HEIGHT": [50] * n,
        "similarity": [0.3] * n, "punsafe": [0.01] * n,
    }), tmp_path / "part.parquet", row_group_size=300)
    cfg = ParquetSource(name="laion", kind="laion", path="part.parquet", batch_size=256)
    kept, rejects, n_batches = collect(read_parquet(cfg, ctx))
    assert kept.num_rows == n and n_batches >= 5
    rows = kept.to_pylist()
    assert rows[0]["url"] == "http://h/0.jpg"
    assert rows[1]["url"] == "img/1.jpg", "relative paths resolve against the file, stored relative to the recipe"
    assert ctx.resolve(rows[1]["url"]) == (tmp_path / "img/1.jpg").resolve(), "fetch finds the file again"
    assert rows[5]["key"] == "laion_000000005" and len({r["key"] for r in rows}) == n
    assert json.loads(rows[3]["meta"]) == {"similarity": 0.3, "punsafe": 0.01}
    assert rows[3]["width"] == 100
    limited, _, _ = collect(read_parquet(cfg.model_copy(update={"limit": 300}), ctx))
    assert limited.num_rows == 300


def test_parquet_missing_column_names_file_and_fix(tmp_path, ctx):
    pq.write_table(pa.table({"url": ["a"], "caption": ["b"]}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"p\.parquet.*expects column 'URL' for url.*columns\.url"):
        collect(read_parquet(ParquetSource(name="l", kind="laion", path="p.parquet"), ctx))
    kept, _, _ = collect(read_parquet(ParquetSource(name="l", kind="laion", path="p.parquet",
                                                    columns={"url": "url", "caption": "caption"}), ctx))
    assert kept.column("caption").to_pylist() == ["b"]


def test_coyo_preset_uses_id_as_key(tmp_path, ctx):
    pq.write_table(pa.table({"id": [7, 8], "url": ["http://a", "http://b"], "text": ["x y", "z w"],
                             "width": [1, 2], "height": [3, 4], "clip_similarity_vitb32": [0.3, 0.2]}),
                   tmp_path / "c.parquet")
    kept, _, _ = collect(read_parquet(ParquetSource(name="coyo", kind="coyo", path="c.parquet"), ctx))
    assert kept.column("key").to_pylist() == ["coyo_7", "coyo_8"]


@pytest.mark.parametrize("kind,line", [("cc3m", "a dog\thttp://x/1.jpg"), ("cc12m", "http://x/1.jpg\ta dog")])
def test_cc_tsv_layouts_and_malformed_lines_become_rejects(tmp_path, ctx, kind, line):
    lines = [line, "only-one-field", line.replace("1.jpg", "2.jpg"), "x\ty\tz", line.replace("1.jpg", "3.jpg")]
    (tmp_path / "cc.tsv").write_text("\n".join(lines) + "\n")
    kept, rejects, _ = collect(read_tsv(TsvSource(name="cc", kind=kind, path="cc.tsv"), ctx))
    assert kept.column("url").to_pylist() == ["http://x/1.jpg", "http://x/2.jpg", "http://x/3.jpg"]
    assert set(kept.column("caption").to_pylist()) == {"a dog"}
    assert kept.column("key").to_pylist() == ["cc_000000001", "cc_000000003", "cc_000000005"]
    assert rejects.column("reason").to_pylist() == ["malformed_row", "malformed_row"]
    assert rejects.column("key").to_pylist() == ["cc_000000002", "cc_000000004"]
    assert "cc.tsv:2" in rejects.column("detail")[0].as_py()


def test_instructions_alpaca_and_sharegpt(tmp_path, ctx):
    (tmp_path / "a.jsonl").write_text("\n".join([
        json.dumps({"instruction": "Name a colour.", "input": "", "output": "Blue."}),
        "{not json",
        json.dumps({"instruction": "翻译这句话。", "input": "Good morning", "output": "早上好。"}),
        json.dumps({"instruction": "No answer"}),
    ]) + "\n")
    kept, rejects, _ = collect(read_instructions(InstructionSource(name="alp", kind="instructions", path="a.jsonl"), ctx))
    assert kept.schema == CONVERSATION_SCHEMA
    rows = kept.to_pylist()
    assert [r["conversations"][0]["lang"] for r in rows] == ["en", "zh"]
    assert rows[1]["conversations"][0]["turns"][0]["content"] == "翻译这句话。\n\nGood morning"
    assert rows[0]["images"] == []
    assert sorted(rejects.column("reason").to_pylist()) == ["malformed_row", "missing_field:output"]

    (tmp_path / "s.json").write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                           {"from": "human", "value": "dangling"}]},
        {"conversations": [{"from": "gpt", "value": "alone"}]},
    ]))
    kept, rejects, _ = collect(read_instructions(
        InstructionSource(name="sg", kind="instructions", path="s.json", format="sharegpt"), ctx))
    turns = kept.to_pylist()[0]["conversations"][0]["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert rejects.column("reason").to_pylist() == ["too_few_turns"]


def test_instruction_files_that_break_off_name_the_file_and_item(tmp_path, ctx):
    from datagen.sources.errors import InputFileError

    items = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(30)]
    text = json.dumps(items)
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(InputFileError, match=r"cut\.json: invalid JSON after item 1[0-9] .*download it again"):
        list(read_instructions(InstructionSource(name="t", kind="instructions", path="cut.json"), ctx))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9"}\n')
    with pytest.raises(InputFileError, match=r"latin1\.jsonl:2: not UTF-8 .*Convert the file to UTF-8"):
        list(read_instructions(InstructionSource(name="t", kind="instructions", path="latin1.jsonl"), ctx))


def test_every_source_kind_has_a_reader_imported_only_when_used():
    """The pipeline names each kind's reader by module and function, so a run imports only the readers its
    recipe uses (COCO's and Visual Genome's import polars); every kind a recipe may name resolves."""
    import inspect

    from datagen.core.pipeline import _READERS, _source_reader
    from datagen.sources.config import SOURCE_KINDS

    assert set(_READERS) == set(SOURCE_KINDS)
    for kind in SOURCE_KINDS:
        fn = _source_reader(type("Cfg", (), {"kind": kind})())
        assert callable(fn) and list(inspect.signature(fn).parameters)[:2] == ["cfg", "ctx"], kind
    code = ("import sys\nfrom datagen.core.pipeline import _source_reader\n"
            "_source_reader(type('C', (), {'kind': 'laion'})())\n"
            "print(sorted(m for m in ('datagen.sources.coco', 'datagen.sources.visual_genome', 'polars') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
