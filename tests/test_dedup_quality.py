import io
import random

import pytest

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

import polars as pl
import pyarrow.compute as pc

from datagen.dedup import DedupConfig, DedupStep, PhashStep, find_duplicates
from datagen.filters.quality import QualityConfig, QualityFilterStep
from datagen.core.records import pairs_table


def jpeg(color, size=(32, 32)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def decide(step, table):
    """A barrier over a table: its decisions, and the rows that survive them."""
    rejects = step.decide(pl.from_arrow(table.drop_columns(["image"])).lazy())
    kept = table.filter(pc.invert(pc.is_in(table.column("key"), value_set=rejects.column("key"))))
    return kept, rejects


def test_dedup_by_url_then_sha_first_row_wins(tmp_path, ctx):
    rows = [
        {"key": "a_1", "source": "a", "url": "u1", "image_sha256": "s1"},
        {"key": "a_2", "source": "a", "url": "u1", "image_sha256": "s2"},  # same url as a_1
        {"key": "a_3", "source": "a", "url": "u3", "image_sha256": "s1"},  # same image as a_1
        {"key": "b_1", "source": "b", "url": "u1", "image_sha256": "s9"},  # same url, other source
        {"key": "b_2", "source": "b", "url": None, "image_sha256": None},  # nulls never match
        {"key": "b_3", "source": "b", "url": None, "image_sha256": None},
    ]
    kept, rejects = decide(DedupStep(DedupConfig(by=["url", "image_sha256"], within="all"), ctx), pairs_table(rows))
    kept, rejects = kept.column("key").to_pylist(), rejects.to_pylist()
    assert kept == ["a_1", "b_2", "b_3"]
    assert {r["key"]: r["reason"] for r in rejects} == {"a_2": "duplicate_of:a_1", "a_3": "duplicate_of:a_1",
                                                       "b_1": "duplicate_of:a_1"}
    assert len(kept) + len(rejects) == len(rows)
    kept, _ = decide(DedupStep(DedupConfig(by=["url"], within="source"), ctx), pairs_table(rows))
    assert sorted(kept.column("key").to_pylist()) == ["a_1", "a_3", "b_1", "b_2", "b_3"]


def test_dedup_phash_finds_reencoded_copy(tmp_path, ctx):
    img = Image.new("RGB", (256, 256), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([20, 30, 120, 200], fill="blue")
    draw.ellipse([140, 40, 240, 140], fill="red")
    draw.polygon([(130, 250), (250, 160), (200, 250)], fill="green")
    a, b = io.BytesIO(), io.BytesIO()
    img.save(a, "JPEG", quality=95)
    img.resize((128, 128)).save(b, "JPEG", quality=60)
    rows = [{"key": "x_1", "source": "x", "url": "1", "image": a.getvalue()},
            {"key": "x_2", "source": "x", "url": "2", "image": b.getvalue()},
            {"key": "x_3", "source": "x", "url": "3", "image": jpeg("red")}]
    hashed = PhashStep(None, ctx).process(pairs_table(rows)).kept  # in the fused pass, beside the bytes
    kept, _ = decide(DedupStep(DedupConfig(by=["phash"]), ctx), hashed)
    assert kept.column("key").to_pylist() == ["x_1", "x_3"]


def test_find_duplicates_on_empty_by_list():
    import polars as pl

    assert find_duplicates(pl.LazyFrame({"key": ["a"], "source": ["s"], "url": ["u"]}), [], "all").height == 0


def _duplicates_row_by_row(rows, by, within):
    """The rule, one row at a time: per column in order, among rows not yet rejected, a row whose value (and
    source, within a source) an earlier row had is a duplicate of the first such row; no value never matches."""
    rejected = {}
    for col in by:
        first = {}
        for r in rows:
            if r["key"] in rejected or r[col] in (None, ""):
                continue
            group = (r[col], r["source"]) if within == "source" else r[col]
            if group in first:
                rejected[r["key"]] = (first[group], col)
            else:
                first[group] = r["key"]
    return rejected


@pytest.mark.parametrize("within", ["all", "source"])
@pytest.mark.parametrize("collide", [False, True])
def test_find_duplicates_is_the_row_by_row_rule(within, collide, monkeypatch):
    """Many duplicates, nulls and empty values, over three columns; with ``collide`` the hash that narrows the
    comparison keeps 3 values, so nearly every row shares a hash with others and only the values decide."""
    import datagen.dedup as dedup

    if collide:
        monkeypatch.setattr(dedup, "_value_hash", lambda value: value.hash() % 3)
    rng = random.Random(4)
    pick = lambda n: rng.choice([None, ""] + [f"v{i}" for i in range(n)])  # noqa: E731
    rows = [{"key": f"k{i}", "source": rng.choice("ab"), "url": pick(400), "image_sha256": pick(300),
             "phash": pick(200)} for i in range(2000)]
    by = ["url", "image_sha256", "phash"]
    expect = _duplicates_row_by_row(rows, by, within)
    got = find_duplicates(pl.DataFrame(rows).lazy(), by, within)
    assert {r["key"]: (r["winner"], r["column"]) for r in got.iter_rows(named=True)} == expect
    assert got.height == len(expect) > 500
    url = {r["key"]: r["url"] for r in rows}
    assert got["url"].to_list() == [url[k] for k in got["key"]], "each reject carries its own url"


def test_quality_rules_each_have_their_reason(ctx):
    rows = [
        {"key": "k0", "source": "s", "caption": "a dog on a sofa", "width": 300, "height": 250, "image": jpeg("red")},
        {"key": "k1", "source": "s", "caption": "", "width": 300, "height": 250},
        {"key": "k2", "source": "s", "caption": "dog", "width": 300, "height": 250},
        {"key": "k3", "source": "s", "caption": "a dog here", "width": 100, "height": 250},
        {"key": "k4", "source": "s", "caption": "a dog here", "width": 1000, "height": 250},
        {"key": "k5", "source": "s", "caption": "沙发上的一只狗", "width": 300, "height": 250, "image": jpeg("red")},
        {"key": "k6", "source": "s", "caption": "a dog here", "width": None, "height": None},
    ]
    out = QualityFilterStep(QualityConfig(), ctx).process(pairs_table(rows))
    assert out.kept.column("key").to_pylist() == ["k0", "k5"]
    assert {r["key"]: r["reason"] for r in out.rejects.to_pylist()} == {
        "k1": "caption_empty", "k2": "caption_too_short", "k3": "image_too_small", "k4": "aspect_ratio",
        "k6": "no_image"}
    out = QualityFilterStep(QualityConfig(min_image_bytes=10**6), ctx).process(pairs_table(rows[:1]))
    assert out.rejects.column("reason").to_pylist() == ["image_file_too_small"]


def test_quality_judges_the_original_size_not_the_stored_thumbnail(ctx):
    """Fetch stored 1200x450, 900x300 and 2000x700 at max_side 512; the rules see the originals."""
    stored = [(512, 192, 1200, 450), (512, 171, 900, 300), (512, 179, 2000, 700), (512, 150, 2000, 585),
              (512, 60, 512, 60)]
    table = pairs_table([{"key": f"k{i}", "source": "s", "caption": "a dog on a sofa", "width": w, "height": h}
                         for i, (w, h, _, _) in enumerate(stored)])
    table = table.append_column("original_width", pa.array([ow for *_, ow, _ in stored], pa.int32()))
    table = table.append_column("original_height", pa.array([oh for *_, oh in stored], pa.int32()))
    out = QualityFilterStep(QualityConfig(min_side=200, max_aspect=3.0), ctx).process(table)
    assert out.kept.column("key").to_pylist() == ["k0", "k1", "k2"]
    assert {r["key"]: r["reason"] for r in out.rejects.to_pylist()} == {"k3": "aspect_ratio", "k4": "image_too_small"}
    assert "2000x585" in out.rejects.column("detail")[0].as_py()
    # without the original size (rows from before this column existed) the stored size is judged
    legacy = QualityFilterStep(QualityConfig(min_side=200), ctx).process(table.drop_columns(["original_width",
                                                                                             "original_height"]))
    assert legacy.kept.num_rows == 0
