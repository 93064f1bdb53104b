import json

import pyarrow as pa
import pytest

from datagen.core.records import PAIR_SCHEMA
from datagen.sources.config import VisualGenomeSource
from datagen.sources.visual_genome import read_visual_genome
from vg_fixture import write_vg


def vg_cfg(**kw):
    files = {k: f"vg/{k}.json" for k in ("image_data", "objects", "attributes", "relationships", "region_descriptions")}
    return VisualGenomeSource(name="vg", kind="visual_genome", images="vg", batch_size=2, **{**files, **kw})


def read(cfg, ctx):
    outs = list(read_visual_genome(cfg, ctx))
    return outs, pa.concat_tables([o.kept for o in outs])


def test_vg_layout_becomes_pair_rows_with_objects_relations_and_regions(tmp_path, ctx):
    write_vg(tmp_path / "vg", with_images=True)
    outs, kept = read(vg_cfg(), ctx)
    assert len(outs) == 2, "streams in batches of batch_size"
    assert kept.schema == PAIR_SCHEMA
    rows = {r["key"]: r for r in kept.to_pylist()}
    assert list(rows) == ["vg_1", "vg_2", "vg_3"]
    r1 = rows["vg_1"]
    assert r1["url"].endswith("vg/VG_100K_2/1.jpg") and (r1["width"], r1["height"]) == (800, 600)
    objs = {o["label"]: o for o in r1["objects"]}
    # the zero-width 'sliver' is dropped; 'grass' comes from relationships.json only
    assert sorted(objs) == ["grass", "hat", "horse", "man"]
    assert objs["man"]["synsets"] == ["man.n.01"] and objs["man"]["bbox"] == [100, 50, 200, 400]
    assert objs["man"]["attributes"] == ["smiling", "tall"] and objs["hat"]["attributes"] == ["black"]
    meta = json.loads(r1["meta"])
    labels = [o["label"] for o in r1["objects"]]
    triples = [(labels[t["subject"]], t["predicate"], labels[t["object"]]) for t in meta["relationships"]]
    assert triples == [("man", "riding", "horse"), ("man", "wearing", "hat"), ("horse", "on", "grass")]
    assert meta["regions"] == [{"phrase": "man riding a brown horse", "bbox": [90, 45, 300, 450]},
                               {"phrase": "black hat on his head", "bbox": [150, 40, 60, 40]}]
    assert (meta["vg_width"], meta["vg_height"]) == (800, 600)
    assert r1["caption"] == "man riding a brown horse", "the largest region's phrase"
    r2 = rows["vg_2"]
    assert [o["label"] for o in r2["objects"]] == ["umbrella", "umbrella"], "names are lower-cased"
    assert [o["attributes"] for o in r2["objects"]] == [["red"], ["blue", "open"]]
    assert r2["url"].endswith("vg/VG_100K/2.jpg") and json.loads(r2["meta"])["coco_id"] == 139
    assert rows["vg_3"]["objects"] == [] and rows["vg_3"]["caption"] is None


def test_vg_needs_only_image_data_and_honours_limit(tmp_path, ctx):
    write_vg(tmp_path / "vg")
    cfg = VisualGenomeSource(name="vg", kind="visual_genome", images="vg", image_data="vg/image_data.json", limit=2)
    _, kept = read(cfg, ctx)
    assert kept.column("key").to_pylist() == ["vg_1", "vg_2"]
    assert kept.column("objects").to_pylist() == [[], []]
    assert kept.column("url").to_pylist()[0].endswith("vg/1.jpg"), "no subfolder on disk: <images>/<file>"


def test_vg_streams_without_loading_whole_files(tmp_path, ctx, monkeypatch):
    """json.load / Path.read_text on an annotation file would hold it whole; only ijson may read them."""
    write_vg(tmp_path / "vg")
    import json as json_mod

    def boom(*a, **k):
        raise AssertionError("whole-file JSON load")

    monkeypatch.setattr(json_mod, "load", boom)
    monkeypatch.setattr(json_mod, "loads", boom)
    _, kept = read(vg_cfg(), ctx)
    assert kept.num_rows == 3


@pytest.mark.parametrize("bad, match", [
    ([{"url": "x", "width": 1, "height": 1}], "no image_id"),
    ([1, 2], "entry 0 of the image_data list is a int"),
])
def test_vg_bad_files_name_file_and_entry(tmp_path, ctx, bad, match):
    write_vg(tmp_path / "vg")
    (tmp_path / "vg" / "image_data.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=match):
        read(vg_cfg(), ctx)


def test_vg_missing_file_is_clear(tmp_path, ctx):
    write_vg(tmp_path / "vg")
    with pytest.raises(FileNotFoundError, match="relationships file not found"):
        read(vg_cfg(relationships="vg/nope.json"), ctx)


def test_vg_join_by_id_range_gives_the_same_rows(tmp_path, ctx, monkeypatch):
    """Splitting the join into id ranges (one image each here) changes nothing in the output, limit included."""
    import datagen.sources.visual_genome as vg

    write_vg(tmp_path / "vg", with_images=True)
    _, whole = read(vg_cfg(), ctx)
    monkeypatch.setattr(vg, "IMAGES_PER_PART", 1)
    outs, parted = read(vg_cfg(), ctx)
    assert parted.to_pylist() == whole.to_pylist() and len(outs) == 3
    _, limited = read(vg_cfg(limit=2), ctx)
    assert limited.column("key").to_pylist() == ["vg_1", "vg_2"]
