"""Chinese image-text sources: the wukong preset and the `lang` setting of table sources."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from datagen.sources.config import ParquetSource, TsvSource
from datagen.sources.tables import read_parquet, read_tsv


def rows_of(outputs):
    return pa.concat_tables([o.kept for o in outputs]).to_pylist()


def test_wukong_preset_reads_url_caption_and_marks_chinese(tmp_path, ctx):
    pq.write_table(pa.table({"url": ["http://img.example/1.jpg", "images/2.jpg"],
                             "caption": ["一只橘猫趴在窗台上晒太阳", "西湖边的雷峰塔"]}), tmp_path / "wukong_100m_0.parquet")
    rows = rows_of(read_parquet(ParquetSource(name="wk", kind="wukong", path="wukong_100m_*.parquet"), ctx))
    assert [r["caption"] for r in rows] == ["一只橘猫趴在窗台上晒太阳", "西湖边的雷峰塔"]
    assert rows[1]["url"] == "images/2.jpg", "relative to the recipe folder (portable)"
    assert [json.loads(r["meta"])["lang"] for r in rows] == ["zh", "zh"]


def test_lang_is_a_setting_of_every_table_source(tmp_path, ctx):
    pq.write_table(pa.table({"url": ["http://a/1.jpg"], "caption": ["海边的日落"], "score": [0.4]}), tmp_path / "p.parquet")
    rows = rows_of(read_parquet(ParquetSource(name="p", kind="parquet", path="p.parquet", lang="zh"), ctx))
    assert json.loads(rows[0]["meta"]) == {"score": 0.4, "lang": "zh"}
    rows = rows_of(read_parquet(ParquetSource(name="p", kind="parquet", path="p.parquet"), ctx))
    assert "lang" not in json.loads(rows[0]["meta"]), "no language claimed unless told"
    (tmp_path / "c.tsv").write_text("海边的日落\thttp://a/1.jpg\n")
    rows = rows_of(read_tsv(TsvSource(name="c", kind="cc3m", path="c.tsv", lang="zh"), ctx))
    assert json.loads(rows[0]["meta"])["lang"] == "zh"
    # the wukong preset's zh can be overridden (a translated English set in the same layout)
    pq.write_table(pa.table({"url": ["http://a/1.jpg"], "caption": ["a sunset"]}), tmp_path / "w.parquet")
    rows = rows_of(read_parquet(ParquetSource(name="w", kind="wukong", path="w.parquet", lang="en"), ctx))
    assert json.loads(rows[0]["meta"])["lang"] == "en"


def test_coco_cn_captions_join_coco_rows_by_image_id(tmp_path, ctx):
    import pytest

    from datagen.sources.coco import read_coco
    from test_sources import coco_files

    cfg = coco_files(tmp_path, 2014)
    (tmp_path / "coco-cn.txt").write_text(
        "COCO_val2014_000000000009#0\t一只狗站在草地上\n"
        "COCO_val2014_000000000009#1 草地上有一只小狗\n"      # a space may stand for the tab
        "000000000030.jpg#zhc#0\t桌上放着一个花瓶\n"          # Flickr8k-CN style reference
        "COCO_val2014_000000000009#2\t一只狗站在草地上\n"      # duplicates are dropped
        "\n"
        "COCO_val2014_000000999999#0\t没有这张图\n",           # an image the captions file does not have
        encoding="utf-8")
    rows = {r["key"]: r for r in pa.concat_tables(
        [o.kept for o in read_coco(cfg.model_copy(update={"zh_captions": "coco-cn.txt"}), ctx)]).to_pylist()}
    assert rows["coco_9"]["captions"] == ["caption 0 of 9", "caption 1 of 9", "caption 3 of 9", "一只狗站在草地上", "草地上有一只小狗"]
    assert rows["coco_9"]["caption"] == "caption 0 of 9", "the English caption stays first"
    assert rows["coco_30"]["captions"] == ["桌上放着一个花瓶"] and rows["coco_30"]["caption"] == "桌上放着一个花瓶"
    assert rows["coco_25"]["captions"] == ["caption 2 of 25", "caption 4 of 25"]
    (tmp_path / "bad.txt").write_text("COCO_val2014_000000000009#0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:1: expected"):
        list(read_coco(cfg.model_copy(update={"zh_captions": "bad.txt"}), ctx))


def test_chinese_captions_give_native_chinese_descriptions_the_checker_accepts(tmp_path):
    from datagen.core.records import pairs_table
    from datagen.core.steps import RunContext
    from datagen.synth.checker import Checker
    from datagen.synth.config import DEFAULT_FAMILY_WEIGHTS, SynthConfig
    from datagen.synth.step import SynthesizeStep

    row = {"key": "coco_9", "source": "coco", "width": 640, "height": 480, "caption": "A dog on the grass.",
           "captions": ["A dog on the grass.", "一只狗站在草地上。"],
           "objects": [{"label": "dog", "bbox": [10, 10, 200, 150], "score": None, "attributes": [], "iscrowd": False}]}
    weights = {**{f: 0.0 for f in DEFAULT_FAMILY_WEIGHTS}, "existence": 1.0, "brief_description": 1.0}
    cfg = SynthConfig(family_weights=weights, neutral_items_per_image=1, items_per_image=1)
    table = pairs_table([row])
    step = SynthesizeStep(cfg, RunContext(run_dir=tmp_path, recipe_dir=tmp_path))
    step.prepare([table])
    out = step.process(table).kept
    zh = [t["content"] for r in out.to_pylist() for c in r["conversations"] if c["lang"] == "zh" for t in c["turns"]
          if t["task"] == "brief_description" and t["role"] == "assistant"]
    assert zh == ["一只狗站在草地上。"]
    assert Checker.from_config(cfg).check_tables(table, out) == []
