import io
import json
import re
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen.core.records import conversations_table, pairs_table
from datagen.sinks.export import mplug_owl_text
from datagen.sinks.shards import SplitWriter, image_ext
from datagen.config import OutputConfig, StageConfig
from datagen.core.parts import PartWriter
from datagen.core.pipeline import Shard
from datagen.core.records import PAIR_SCHEMA
from datagen.sinks.stages import write_stage1, write_stage2


def parts_of(tmp_path, rows, per_part=4):
    """Pair parts as the pair pass leaves them: one finished part per input shard."""
    out = []
    for n, i in enumerate(range(0, len(rows), per_part)):
        shard = Shard(f"s-{n:06d}", rows[i]["source"], tmp_path / "in", per_part)
        w = PartWriter(tmp_path / "parts" / shard.id, PAIR_SCHEMA)
        w.write(pairs_table(rows[i:i + per_part]))
        out.append((shard, w.commit({"steps": {}})))
    return out


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
    assert [p.name for p in tmp_path.iterdir()] == ["stage1"], "no temporary folder left"


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
    import polars as pl

    from datagen.sinks.buckets import _copies

    meta = pl.DataFrame({"key": [f"k{i}" for i in range(12000)], "source": ["a", "b", "c"] * 4000})
    copies = _copies(meta, {"a": 0.25, "b": 2.5, "c": 1.0}, 0)
    assert copies[0::3].sum() == pytest.approx(1000, rel=0.08) and set(copies[0::3]) == {0, 1}
    assert copies[1::3].sum() == pytest.approx(10000, rel=0.03) and set(copies[1::3]) == {2, 3}
    assert (copies[2::3] == 1).all()


def test_stage_writers_mix_shuffle_and_join_images(tmp_path):
    rows = [{"key": f"a_{i}", "source": "a", "caption": f"cap {i}", "image": jpeg(), "width": 8, "height": 8}
            for i in range(10)]
    rows += [{"key": f"b_{i}", "source": "b", "caption": f"cap {i}", "image": jpeg("blue"), "width": 8, "height": 8}
             for i in range(10)]
    pairs = parts_of(tmp_path, rows)
    out = tmp_path / "out"
    shards, stats = write_stage1(pairs, None, out, StageConfig(weights={"a": 2.0, "b": 0.0}),
                                 OutputConfig(shard_max_count=7), 0, tmp_path)
    assert [s.count for s in shards] == [7, 7, 6], "every shard but the last is full"
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
    s2, s2t, stats, rejects = write_stage2([(None, cpath)], pairs, None, out, StageConfig(), OutputConfig(), 0, tmp_path)
    members = {n: None for s in s2 for n in tarfile.open(out / s.path).getnames()}
    assert set(members) == {"a_1.0.jpg", "a_1.json", "mm_1.0.jpg", "mm_1.1.jpg", "mm_1.json"}
    body = json.loads(tarfile.open(out / s2[0].path).extractfile("a_1.json").read())
    assert [c["id"] for c in body["conversations"]] == ["c0", "c0-zh"], "conversations of one image merged"
    assert [r["reason"] for r in rejects] == ["image_missing"]
    assert stats["conversations_by_lang"] == {"en": 2, "zh": 1}


def test_stage_writers_apply_barrier_decisions_by_key(tmp_path):
    import polars as pl

    rows = [{"key": f"a_{i}", "source": "a", "caption": f"cap {i}", "image": jpeg(), "width": 8, "height": 8}
            for i in range(6)]
    pairs = parts_of(tmp_path, rows, per_part=3)
    dropped = pl.LazyFrame({"key": ["a_1", "a_4"], "_shard": ["s-000000", "s-000001"]})
    shards, stats = write_stage1(pairs, dropped, tmp_path / "out", StageConfig(), OutputConfig(), 0, tmp_path)
    names = sorted(n for s in shards for n in tarfile.open(tmp_path / "out" / s.path).getnames() if n.endswith(".txt"))
    assert names == ["a_0.txt", "a_2.txt", "a_3.txt", "a_5.txt"] and stats["samples"] == 4


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


def test_fast_tar_headers_are_the_standard_librarys_bytes(tmp_path):
    from datagen.sinks.shards import TarShard, _tarinfo_header, ustar_header

    for name, size in [("a.jpg", 0), ("k_000001.json", 12345), ("x" * 100, 7), ("é" * 10 + ".txt", 99)]:
        assert ustar_header(name, size) == _tarinfo_header(name, size)
    shard = TarShard(tmp_path / "t.tar")
    shard.write("k1", {"txt": b"hello", "json": b"{}"})
    shard.close()
    with tarfile.open(tmp_path / "t.tar") as t:
        assert t.getnames() == ["k1.json", "k1.txt"]
        assert t.extractfile("k1.txt").read() == b"hello"
    assert (tmp_path / "t.tar").stat().st_size % tarfile.RECORDSIZE == 0


def _members_by_tarfile(path):
    with tarfile.open(path) as t:
        return [(m.name, m.offset_data, m.size) for m in t if m.isfile()]


def test_tar_members_reads_ustar_headers_as_tarfile_does(tmp_path, monkeypatch):
    from datagen.sinks import shards
    from datagen.sinks.shards import TarShard, tar_members

    path = tmp_path / "s.tar"
    shard = TarShard(path)
    shard.write("k1", {"jpg": b"\xff" * 1000, "txt": "é caption".encode(), "json": b'{"a": 1}'})
    shard.write("d" * 60 + "/" + "k" * 80, {"txt": b"a name split into USTAR's prefix and name"})
    shard.write("k3", {"txt": b""})
    shard.close()
    with tarfile.open(path, "a", format=tarfile.USTAR_FORMAT) as t:  # folder entries, skipped as tarfile skips them
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        t.addfile(folder)
        old_style = tarfile.TarInfo("old-folder/")
        old_style.type = tarfile.AREGTYPE  # a NUL type with a trailing slash: a folder, to tarfile
        t.addfile(old_style)
    expected = _members_by_tarfile(path)
    assert [m[0] for m in expected] == ["k1.jpg", "k1.json", "k1.txt", "d" * 60 + "/" + "k" * 80 + ".txt", "k3.txt"]
    monkeypatch.setattr(shards, "_tarfile_members", lambda p: pytest.fail(f"{p} fell back to tarfile"))
    assert tar_members(path) == expected
    with open(path, "rb") as f:
        name, offset, size = tar_members(path)[2]
        f.seek(offset)
        assert f.read(size) == "é caption".encode()


@pytest.mark.parametrize("case", ["pax", "gnu", "symlink", "bad_checksum_first", "bad_checksum_later", "truncated"])
def test_tar_members_leaves_every_other_tar_to_tarfile(tmp_path, case):
    from datagen.sinks.shards import tar_members

    path = tmp_path / "o.tar"
    fmt = tarfile.GNU_FORMAT if case == "gnu" else tarfile.PAX_FORMAT
    with tarfile.open(path, "w", format=fmt) as t:
        for name, data in [("a.txt", b"one"), ("b" * 150 + ".txt", b"a long name"), ("c.json", b"{}" * 400)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        if case == "symlink":
            link = tarfile.TarInfo("d.jpg")
            link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
            t.addfile(link)
    raw = bytearray(path.read_bytes())
    if case in ("bad_checksum_first", "bad_checksum_later"):  # one byte of a name changed, checksum left
        with open(path, "rb") as f:
            offsets = [m.offset for m in tarfile.open(fileobj=f)]
        raw[offsets[0 if case == "bad_checksum_first" else -1] + 1] ^= 0x01
    if case == "truncated":
        raw = raw[: _members_by_tarfile(path)[-1][1] + 100]
    path.write_bytes(bytes(raw))
    try:
        expected = _members_by_tarfile(path)
    except tarfile.ReadError as e:
        with pytest.raises(tarfile.ReadError, match=re.escape(str(e))):
            tar_members(path)
        assert case in ("bad_checksum_first", "truncated")
        return
    assert tar_members(path) == expected
    assert case != "pax" or [m[0] for m in expected] == ["a.txt", "b" * 150 + ".txt", "c.json"]


@pytest.mark.parametrize("limit", [100, 7])
def test_stage1_sink_gathers_what_the_report_reads_from_its_shards(tmp_path, monkeypatch, limit):
    """The run's report takes its stage-1 figures from the sink, gathered as each sample is written, instead
    of reading the shards again: the same figures, cut at the same sample."""
    import pyarrow as pa

    from datagen import report

    rows = [{"key": f"a_{i}", "source": "a", "caption": [f"cap {i}", None, "图片说明"][i % 3], "image": jpeg(),
             "width": 0 if i == 4 else 8 + i, "height": 8 + 2 * i} for i in range(20)]
    pairs = []
    for n in range(4):  # parts as a pass with a CLIP step leaves them: a clip_score column, null where unscored
        shard = Shard(f"s-{n:06d}", "a", tmp_path / "in", 5)
        table = pairs_table(rows[5 * n:5 * n + 5])
        table = table.append_column("clip_score", pa.array([None if i == 2 else 0.2 + 0.01 * (5 * n + i)
                                                             for i in range(5)], pa.float32()))
        w = PartWriter(tmp_path / "parts" / shard.id, table.schema)
        w.write(table)
        pairs.append((shard, w.commit({"steps": {}})))
    out = tmp_path / "out"
    _, stats = write_stage1(pairs, None, out, StageConfig(weights={"a": 1.5}), OutputConfig(shard_max_count=6), 0,
                            tmp_path, facts_limit=limit)
    read, index_samples = [], report.index_samples
    monkeypatch.setattr(report, "index_samples", lambda o, split: read.append(split) or index_samples(o, split))
    from_shards = report.read_shards(out, limit)
    assert "stage1" in read
    read.clear()
    from_sink = report.read_shards(out, limit, stage1=stats["report_facts"])
    assert "stage1" not in read, "the stage-1 shards were read again"
    assert from_shards.read["stage1"] == min(limit, stats["samples"]) > 0
    assert from_shards.cut == ({"stage1"} if limit < stats["samples"] else set())
    for f in ("read", "cut", "clip_kept", "widths", "heights", "caption_chars"):
        assert getattr(from_sink, f) == getattr(from_shards, f), f
    if limit > stats["samples"]:  # every sample: a_4's zero width and the null scores are left out
        assert 0 < len(from_sink.widths) < from_sink.read["stage1"] and 0 < len(from_sink.clip_kept) < len(from_sink.widths)
    # facts gathered for another limit are not used for this one
    assert report.read_shards(out, 3, stage1=stats["report_facts"]).read["stage1"] == 3 and "stage1" in read



def test_stage1_sink_in_pool_processes_writes_the_same_bytes_as_in_the_driver(tmp_path, monkeypatch):
    """With a pool, the stage-1 sink scatters and writes its buckets in pool processes: past ``pool_min``
    samples in all of them, below in one (each pass its own), so that the driver stays small; without a
    pool, in the driver. Each bucket gets shards of its own (a byte cap splits a bucket, the next one
    starts a new shard), so the shards are the same bytes however many processes wrote them."""
    import hashlib

    import pyarrow as pa

    from datagen.core import executor
    from datagen.core.steps import RunContext

    rows = [{"key": f"a_{i}", "source": "a", "caption": f"cap {i}", "image": jpeg(["red", "blue", "green"][i % 3]),
             "width": 8, "height": 8} for i in range(40)]
    pairs = parts_of(tmp_path, rows, per_part=6)
    opened = []
    open_pool = executor.open_pool
    monkeypatch.setattr(executor, "open_pool", lambda n, ctx: opened.append(n) or open_pool(n, ctx))
    ctx = RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path)
    size = len(jpeg()) + 700  # about one sample (image, caption, json, headers)
    written = {}
    allocator = pa.default_memory_pool().backend_name
    pools = {}
    for workers, pool_min in ((1, 10), (2, 10), (2, 1000)):
        out = tmp_path / f"out-{workers}-{pool_min}"
        opened.clear()
        shards, stats = write_stage1(pairs, None, out, StageConfig(weights={"a": 1.5}),
                                     OutputConfig(shard_max_count=9, shard_max_bytes=5 * size), 0, tmp_path / "w",
                                     workers=workers, ctx=ctx, facts_limit=10, pool_min=pool_min)
        written[workers, pool_min] = ([(s.path, s.count, s.sha256) for s in shards], stats)
        pools[workers, pool_min] = list(opened)
        for s in shards:
            assert hashlib.sha256((out / s.path).read_bytes()).hexdigest() == s.sha256
        assert sorted(p.name for p in (out / "stage1").iterdir()) == sorted(
            [p.split("/")[1] for p, _, _ in written[workers, pool_min][0]] + ["sizes.json"])
    # scatter, then buckets: no pool without one; all the pool's processes past pool_min; one below
    assert pools == {(1, 10): [], (2, 10): [2, 2], (2, 1000): [1, 1]}
    assert pa.default_memory_pool().backend_name == allocator, "the driver's allocator is its caller's choice"
    assert written[1, 10] == written[2, 10] == written[2, 1000]
    opened.clear()  # nothing to write: no process started for it
    _, empty = write_stage1(pairs, None, tmp_path / "out-empty", StageConfig(weights={"a": 0.0}),
                            OutputConfig(shard_max_count=9), 0, tmp_path / "w", workers=2, ctx=ctx, pool_min=1000)
    assert empty["samples"] == 0 and opened == []
    shards, stats = written[2, 10]
    counts = [c for _, c, _ in shards]
    assert sum(counts) == stats["samples"] > 45 and max(counts) <= 9
    assert len(shards) > -(-stats["samples"] // 9), "the byte cap split buckets"
    assert not list((tmp_path / "w").iterdir()), "no spill or bucket folder is left behind"
