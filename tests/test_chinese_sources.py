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
    assert rows[1]["url"] == str((tmp_path / "images/2.jpg").resolve())
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
