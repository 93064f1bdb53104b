"""The demo's Visual Genome-style files and Wukong table: rebuilt from their source, they match what is committed."""

import json

import pyarrow.parquet as pq

from datagen.assets.build_vg_demo import DEMO_DIR, build

FILES = ["image_data", "objects", "attributes", "relationships", "region_descriptions"]


def test_committed_vg_demo_is_what_the_builder_writes(tmp_path):
    build(tmp_path)
    for name in FILES:
        assert (tmp_path / "vg" / f"{name}.json").read_text() == (DEMO_DIR / "vg" / f"{name}.json").read_text(), name
    assert pq.read_table(tmp_path / "wukong_demo.parquet").equals(pq.read_table(DEMO_DIR / "wukong_demo.parquet"))


def test_vg_demo_covers_ten_photographs_with_relations_attributes_and_regions():
    data = {n: json.loads((DEMO_DIR / "vg" / f"{n}.json").read_text()) for n in FILES}
    assert len(data["image_data"]) >= 10
    for img in data["image_data"]:
        assert (DEMO_DIR / img["url"]).is_file()
    annotated = {e["image_id"] for e in data["attributes"] if any(o["attributes"] for o in e["attributes"])}
    regions = {e["id"] for e in data["region_descriptions"] if e["regions"]}
    related = {e["image_id"] for e in data["relationships"] if e["relationships"]}
    assert len(annotated) >= 10 and len(regions) >= 10 and len(related) >= 7
    wukong = pq.read_table(DEMO_DIR / "wukong_demo.parquet").to_pylist()
    assert len(wukong) >= 10 and all((DEMO_DIR / r["url"]).is_file() for r in wukong)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in r["caption"]) for r in wukong)
