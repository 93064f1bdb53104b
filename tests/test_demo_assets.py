"""Checks on the bundled demo data set (datagen/assets/demo).

The demo is what a new user runs first and what the end-to-end test runs, so a
wrong box, a missing caption or a stale file would show up as a confusing
pipeline failure far away. These tests pin the contracts of the files
themselves: COCO structure, boxes inside images, real COCO category ids, the
LAION/CC layouts, the documented bad rows, the size budget, and that the
shipped files are exactly what ``build_demo.py`` regenerates.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, UnidentifiedImageError

DEMO = Path(__file__).resolve().parents[1] / "datagen" / "assets" / "demo"
ANN = DEMO / "annotations"

# 12 COCO supercategories and how many of the 80 categories each holds.
SUPERCATEGORY_SIZES = {
    "person": 1, "vehicle": 8, "outdoor": 5, "animal": 10, "accessory": 5, "sports": 10,
    "kitchen": 7, "food": 10, "furniture": 6, "electronic": 6, "appliance": 5, "indoor": 7,
}
LAION_2B_COLUMNS = ["URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "NSFW", "LICENSE", "punsafe", "pwatermark", "hash"]
BAD_URLS = {"images/missing.jpg", "images/corrupt.jpg", "images/not_an_image.jpg", "images/tiny.jpg", "images/panorama.jpg"}


@pytest.fixture(scope="module")
def captions() -> dict:
    return json.loads((ANN / "captions_demo2017.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def instances() -> dict:
    return json.loads((ANN / "instances_demo2017.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def laion() -> pa.Table:
    return pq.read_table(DEMO / "laion_demo.parquet")


# ------------------------------------------------------------------------ COCO


def test_coco_files_share_the_same_images(captions, instances):
    assert 24 <= len(instances["images"]) <= 36
    assert captions["images"] == instances["images"]
    ids = [im["id"] for im in instances["images"]]
    assert len(set(ids)) == len(ids)
    for im in instances["images"]:
        assert set(im) == {"id", "file_name", "width", "height", "license", "coco_url"}, im
        assert im["coco_url"] is None
        assert im["license"] in {lic["id"] for lic in instances["licenses"]}


def test_images_decode_at_recorded_size(instances):
    for im in instances["images"]:
        path = DEMO / "images" / im["file_name"]
        with Image.open(path) as img:
            assert img.format == "JPEG", path
            img.load()  # full decode, not just the header
            assert img.size == (im["width"], im["height"]), path
            assert max(img.size) <= 512, path
            assert img.mode in ("RGB", "L"), (path, img.mode)


def test_categories_are_the_real_80_coco_ones(instances):
    # torchvision ships COCO's 91-slot id -> name table ("N/A" in the gaps); read it
    # from its source so the test does not pay for importing torch (~10 s here)
    spec = importlib.util.find_spec("torchvision")
    meta = Path(spec.origin).parent / "models" / "_meta.py"
    tree = ast.parse(meta.read_text(encoding="utf-8"))
    (_COCO_CATEGORIES,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_COCO_CATEGORIES"
    ]
    assert len(_COCO_CATEGORIES) == 91
    real = {i: name for i, name in enumerate(_COCO_CATEGORIES) if name not in ("N/A", "__background__")}
    cats = instances["categories"]
    assert len(cats) == 80
    assert {c["id"]: c["name"] for c in cats} == real
    assert Counter(c["supercategory"] for c in cats) == SUPERCATEGORY_SIZES
    assert {c["name"]: c["supercategory"] for c in cats}["dining table"] == "furniture"


def test_every_image_has_five_distinct_sentence_captions(captions, instances):
    per_image: dict[int, list[str]] = {im["id"]: [] for im in instances["images"]}
    ann_ids = [a["id"] for a in captions["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for a in captions["annotations"]:
        assert a["image_id"] in per_image, a
        per_image[a["image_id"]].append(a["caption"])
    all_caps = [c for caps in per_image.values() for c in caps]
    assert len(set(all_caps)) == len(all_caps), "a caption is reused"
    for image_id, caps in per_image.items():
        zh = [c for c in caps if any("\u4e00" <= ch <= "\u9fff" for ch in c)]
        caps = [c for c in caps if c not in zh]
        assert len(caps) == 5, (image_id, caps)
        # every image also has Chinese captions (COCO-CN style), so Chinese descriptions have a source
        assert len(zh) == 2 and all(c.endswith("。") and len(c) >= 10 for c in zh), (image_id, zh)
        for c in caps:
            assert c[0].isupper() and c.endswith("."), c
            assert c.count(". ") == 0, f"more than one sentence: {c!r}"
            assert 4 <= len(c.split()) <= 25, c


def test_instances_boxes_inside_images(instances):
    images = {im["id"]: im for im in instances["images"]}
    cat_ids = {c["id"] for c in instances["categories"]}
    ids = [a["id"] for a in instances["annotations"]]
    assert len(set(ids)) == len(ids)
    for a in instances["annotations"]:
        im = images[a["image_id"]]
        assert a["category_id"] in cat_ids, a
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0, a
        assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"], (im["file_name"], a["bbox"])
        assert a["area"] == pytest.approx(w * h)
        assert a["iscrowd"] in (0, 1)
        assert isinstance(a["attributes"], list) and a["attributes"], a
        assert all(isinstance(t, str) and t.strip() and t == t.lower() for t in a["attributes"]), a


def test_polygon_and_crowd_rle_cover_the_box(instances):
    images = {im["id"]: im for im in instances["images"]}
    for a in instances["annotations"]:
        x, y, w, h = a["bbox"]
        if a["iscrowd"]:
            rle = a["segmentation"]
            im = images[a["image_id"]]
            assert rle["size"] == [im["height"], im["width"]]
            counts = rle["counts"]
            assert sum(counts) == im["width"] * im["height"]
            assert sum(counts[1::2]) == w * h  # odd runs are the ones
            # column-major: the first run of ones starts at pixel (x, y)
            assert counts[0] == x * im["height"] + y
        else:
            assert a["segmentation"] == [[x, y, x + w, y, x + w, y + h, x, y + h]]


def test_counting_crowd_and_empty_images_are_present(instances):
    names = {c["id"]: c["name"] for c in instances["categories"]}
    per_image = Counter((a["image_id"], names[a["category_id"]]) for a in instances["annotations"] if not a["iscrowd"])
    assert max(per_image.values()) >= 3, "no image has several instances of one category"
    assert any(a["iscrowd"] == 1 for a in instances["annotations"])
    with_objects = {a["image_id"] for a in instances["annotations"]}
    assert len(instances["images"]) - len(with_objects) >= 3, "want some images with no COCO object"
    assert len({names[a["category_id"]] for a in instances["annotations"]}) >= 8


# ----------------------------------------------------------------------- LAION


def test_laion_parquet_has_the_laion_2b_columns(laion):
    assert laion.column_names == LAION_2B_COLUMNS
    assert pa.types.is_string(laion.schema.field("URL").type)
    assert pa.types.is_string(laion.schema.field("TEXT").type)
    for name in ("WIDTH", "HEIGHT", "hash"):
        assert pa.types.is_integer(laion.schema.field(name).type), name
    for name in ("similarity", "punsafe", "pwatermark"):
        assert pa.types.is_floating(laion.schema.field(name).type), name
    assert laion.column("hash").null_count == 0
    assert len(set(laion.column("hash").to_pylist())) == laion.num_rows


def test_laion_good_rows_point_at_real_images(laion, instances):
    coco_files = {im["file_name"] for im in instances["images"]}
    rows = laion.to_pylist()
    seen: set[str] = set()
    good = 0
    for r in rows:
        if r["URL"] in BAD_URLS or r["URL"] in seen or not r["TEXT"]:
            seen.add(r["URL"])
            continue
        seen.add(r["URL"])
        assert not r["URL"].startswith("/") and r["URL"].startswith("images/"), r["URL"]
        assert r["URL"].removeprefix("images/") in coco_files
        with Image.open(DEMO / r["URL"]) as img:
            img.load()
            assert img.size == (r["WIDTH"], r["HEIGHT"]), r["URL"]
        good += 1
    assert good >= 20


def test_laion_documented_bad_rows(laion):
    rows = laion.to_pylist()
    by_url: dict[str, list[dict]] = {}
    for r in rows:
        by_url.setdefault(r["URL"], []).append(r)
    # a URL to a missing file
    assert "images/missing.jpg" in by_url and not (DEMO / "images/missing.jpg").exists()
    # a real JPEG that is truncated: the header opens, the decode fails
    assert "images/corrupt.jpg" in by_url
    with Image.open(DEMO / "images/corrupt.jpg") as img:
        assert img.format == "JPEG"
        with pytest.raises(OSError):
            img.load()
    # not an image at all
    assert "images/not_an_image.jpg" in by_url
    with pytest.raises(UnidentifiedImageError):
        Image.open(DEMO / "images/not_an_image.jpg")
    # an empty caption on an image that exists
    empty = [r for r in rows if r["TEXT"] == ""]
    assert len(empty) == 1 and (DEMO / empty[0]["URL"]).exists()
    # a duplicate URL with a different text, after its first occurrence
    dups = {u: rs for u, rs in by_url.items() if len(rs) > 1}
    assert len(dups) == 1
    (dup_rows,) = dups.values()
    assert len({r["TEXT"] for r in dup_rows}) == len(dup_rows)
    # too small and extreme aspect ratio: real photos that decode fine
    with Image.open(DEMO / "images/tiny.jpg") as img:
        img.load()
        assert img.size == (40, 30)
    with Image.open(DEMO / "images/panorama.jpg") as img:
        img.load()
        w, h = img.size
        assert min(w, h) >= 200 and max(w, h) / min(w, h) > 3
    # every bad row is documented
    readme = (DEMO / "README.md").read_text(encoding="utf-8")
    for url in BAD_URLS | set(dups) | {empty[0]["URL"]}:
        assert f"`{url}`" in readme, url


# -------------------------------------------------------------------- CC, text


def test_cc_tsv_has_one_malformed_line():
    lines = (DEMO / "cc_demo.tsv").read_text(encoding="utf-8").splitlines()
    assert 8 <= len(lines) <= 14
    malformed = [i for i, line in enumerate(lines) if len(line.split("\t")) != 2]
    assert len(malformed) == 1
    for i, line in enumerate(lines):
        if i in malformed:
            continue
        caption, url = line.split("\t")
        assert caption.strip() and caption == caption.lower(), line
        assert (DEMO / url).is_file(), url


def test_instructions_are_alpaca_lines_half_chinese():
    lines = (DEMO / "instructions_demo.jsonl").read_text(encoding="utf-8").splitlines()
    assert 20 <= len(lines) <= 30
    cjk = re.compile(r"[\u4e00-\u9fff]")
    zh = 0
    for n, line in enumerate(lines, 1):
        item = json.loads(line)
        assert set(item) == {"instruction", "input", "output"}, n
        assert item["instruction"].strip() and item["output"].strip(), n
        zh += bool(cjk.search(item["instruction"]))
    assert zh == len(lines) // 2
    assert len({json.loads(line)["instruction"] for line in lines}) == len(lines)


# -------------------------------------------------------------------- budget


def test_demo_folder_under_4_mb():
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total < 4 * 1024 * 1024, total


def test_licenses_name_every_image(instances):
    text = (DEMO / "LICENSES.md").read_text(encoding="utf-8")
    for im in instances["images"]:
        assert im["file_name"] in text, im["file_name"]
    for name in ("corrupt.jpg", "tiny.jpg", "panorama.jpg", "not_an_image.jpg"):
        assert name in text


# ----------------------------------------------------------------- the builder


def test_builder_reproduces_the_shipped_files(tmp_path):
    """The shipped files are current: a rebuild from source gives the same files
    (JSON, parquet and TSV exactly; JPEGs byte-equal or, under another libjpeg, equal pixels)."""
    # scikit-image and scikit-learn come with the `assets` extra, which `make test` installs.
    from datagen.assets.build_demo import build

    summary = build(tmp_path)
    assert summary["images"] == len(list((tmp_path / "images").glob("*.jpg"))) - 4
    for p in sorted((tmp_path / "images").iterdir()):
        if p.read_bytes() == (DEMO / "images" / p.name).read_bytes():
            continue
        # another libjpeg may encode a little differently; the pixels must still agree
        assert p.name != "not_an_image.jpg"
        if p.name == "corrupt.jpg":  # truncated bytes of a re-encoded JPEG: same role, similar length
            assert abs(p.stat().st_size - (DEMO / "images" / p.name).stat().st_size) < 0.1 * p.stat().st_size
            continue
        with Image.open(p) as new, Image.open(DEMO / "images" / p.name) as old:
            assert new.size == old.size and new.mode == old.mode, p.name
            diff = np.abs(np.asarray(new, dtype=np.int16) - np.asarray(old, dtype=np.int16))
            assert diff.mean() < 1.0, (p.name, float(diff.mean()))
    shipped = {p.name for p in (DEMO / "images").iterdir()}
    assert shipped == {p.name for p in (tmp_path / "images").iterdir()}, "stray or missing image files"
    for name in ("captions_demo2017.json", "instances_demo2017.json"):
        assert (tmp_path / "annotations" / name).read_text() == (ANN / name).read_text(), name
    assert pq.read_table(tmp_path / "laion_demo.parquet").equals(pq.read_table(DEMO / "laion_demo.parquet"))
    assert (tmp_path / "cc_demo.tsv").read_text() == (DEMO / "cc_demo.tsv").read_text()


def test_builder_rejects_bad_source_with_a_clear_error(tmp_path):
    import yaml

    from datagen.assets.build_demo import SOURCE_YAML, load_source

    data = yaml.safe_load(SOURCE_YAML.read_text(encoding="utf-8"))
    data["images"][2]["objects"][0]["label"] = "tabby"
    bad = tmp_path / "source.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"source\.yaml: images\[2\] \('chelsea\.jpg'\): objects\[0\] label 'tabby'"):
        load_source(bad)

    data = yaml.safe_load(SOURCE_YAML.read_text(encoding="utf-8"))
    data["images"][0]["captions"] = data["images"][0]["captions"][:4]
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"images\[0\] \('astronaut\.jpg'\): expected five distinct captions"):
        load_source(bad)
