"""Stage-1 and stage-2 sinks: final rows -> mixed, shuffled webdataset shards.

Mixing weights act per source: a weight below 1 keeps that share of the rows
(chosen by a hash of key and seed), above 1 repeats rows (repeats get the key
suffix ``-r<N>``). The shuffle is a sort by a hash of (seed, key), so the same
recipe and seed give byte-identical shards. Stage-2 samples are one per image
set: all conversations of that set, both languages, in one ``<key>.json``, and
the image bytes once, looked up by key in the final pair rows.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from datagen.sinks.shards import ShardInfo, SplitWriter, image_ext, json_bytes, shard_json, stage2_images

STAGE1, STAGE2, STAGE2_TEXT = "stage1", "stage2", "stage2_text"


def _unit(seed: int, key: str, salt: str) -> float:
    h = hashlib.sha256(f"{seed}\x1f{salt}\x1f{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def repeats(weight: float, seed: int, key: str) -> int:
    """How many copies of a row a mixing weight asks for (expected value = weight)."""
    whole = int(weight)
    return whole + (1 if _unit(seed, key, "mix") < weight - whole else 0)


def mix_and_order(table: pa.Table, weights: dict[str, float], seed: int, shuffle: bool, offset: int) -> pa.Table:
    """Repeat or drop rows by their source's weight and add ``_order`` (a hash of seed and key) and ``_rep``."""
    keys, sources = table.column("key").to_pylist(), table.column("source").to_pylist()
    idx, reps, order = [], [], []
    for i, (k, s) in enumerate(zip(keys, sources)):
        for r in range(repeats(weights.get(s, 1.0), seed, k)):
            idx.append(i)
            reps.append(r)
            order.append(_unit(seed, f"{k}-{r}", "order") if shuffle else float(offset + i))
    out = table.take(pa.array(idx, type=pa.int64()))
    return out.append_column("_rep", pa.array(reps, type=pa.int32())).append_column("_order", pa.array(order, pa.float64()))


def sorted_mix(frame: pl.LazyFrame, weights: dict[str, float], seed: int, shuffle: bool, tmp: Path) -> Path:
    """Persist the mixed rows sorted by ``_order`` (polars sorts out of core), for sequential shard writing."""
    staged = tmp.with_suffix(".mixed.parquet")
    frame.sink_parquet(staged)
    pf = pq.ParquetFile(staged)
    mixed = tmp.with_suffix(".unsorted.parquet")
    writer = None
    offset = 0
    for b in pf.iter_batches(batch_size=512):
        t = mix_and_order(pa.Table.from_batches([b]), weights, seed, shuffle, offset)
        offset += b.num_rows
        writer = writer or pq.ParquetWriter(mixed, t.schema)
        writer.write_table(t)
    if writer is None:
        return staged
    writer.close()
    pl.scan_parquet(mixed).sort("_order").sink_parquet(tmp)
    staged.unlink()
    mixed.unlink()
    return tmp


def _select(paths: list[Path], sources: list[str] | None) -> pl.LazyFrame | None:
    paths = [p for p in paths if p.exists() and pq.ParquetFile(p).metadata.num_rows]
    if not paths:
        return None
    lf = pl.concat([pl.scan_parquet(p) for p in paths], how="diagonal_relaxed")
    return lf.filter(pl.col("source").is_in(sources)) if sources is not None else lf


def write_stage1(pairs: Path, out_dir: Path, stage, output, seed: int, work: Path) -> tuple[list[ShardInfo], dict]:
    lf = _select([pairs], stage.sources)
    writer = SplitWriter(out_dir, STAGE1, output.shard_max_count, output.shard_max_bytes)
    per_source: Counter = Counter()
    try:
        if lf is not None:
            ordered = sorted_mix(lf, stage.weights, seed, output.shuffle, work / "stage1.parquet")
            pf = pq.ParquetFile(ordered)
            with tqdm(total=pf.metadata.num_rows, desc="stage1 shards", unit="sample", leave=False) as bar:
                for b in pf.iter_batches(batch_size=256):
                    for row in b.to_pylist():
                        key = row["key"] if row["_rep"] == 0 else f"{row['key']}-r{row['_rep']}"
                        writer.write(key, {image_ext(row["image"]): row["image"], "txt": (row["caption"] or "").encode(),
                                           "json": json_bytes(shard_json(row, b.schema) | {"key": key})})
                        per_source[row["source"]] += 1
                    bar.update(b.num_rows)
        shards = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return shards, {"samples": sum(per_source.values()), "per_source": dict(per_source)}


class ImageStore:
    """Image bytes by key from the final pair rows, reading one parquet row group at a time."""

    def __init__(self, pairs: Path, cache_groups: int = 4):
        self.pf = pq.ParquetFile(pairs)
        self.where: dict[str, tuple[int, int]] = {}
        for g in range(self.pf.num_row_groups):
            for j, k in enumerate(self.pf.read_row_group(g, columns=["key"]).column(0).to_pylist()):
                self.where[k] = (g, j)
        self._groups: OrderedDict[int, list] = OrderedDict()
        self._cache = cache_groups

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def get(self, key: str) -> bytes:
        g, j = self.where[key]
        if g not in self._groups:
            self._groups[g] = self.pf.read_row_group(g, columns=["image"]).column(0).to_pylist()
            if len(self._groups) > self._cache:
                self._groups.popitem(last=False)
        self._groups.move_to_end(g)
        return self._groups[g][j]


def group_conversations(paths: list[Path], sources: list[str] | None) -> pl.LazyFrame | None:
    """All conversation rows of one image set merged into one row (synthesis + LLM + translations)."""
    lf = _select(paths, sources)
    if lf is None:
        return None
    return (
        lf.select("key", "source", "images", "conversations", "meta")
        .group_by("key", maintain_order=True)
        .agg(pl.col("source").first(), pl.col("images").first(), pl.col("conversations").list.explode(),
             pl.col("meta").first())
    )


def write_stage2(conversations: list[Path], pairs: Path, out_dir: Path, stage, output, seed: int, work: Path
                 ) -> tuple[list[ShardInfo], list[ShardInfo], dict, list[dict]]:
    """Returns (image shards, text-only shards, stats, rejects for samples whose images are missing)."""
    grouped = group_conversations(conversations, stage.sources)
    store = ImageStore(pairs) if pairs.exists() else None
    img_writer = SplitWriter(out_dir, STAGE2, output.shard_max_count, output.shard_max_bytes)
    txt_writer = SplitWriter(out_dir, STAGE2_TEXT, output.shard_max_count, output.shard_max_bytes)
    stats: Counter = Counter()
    langs: Counter = Counter()
    rejects: list[dict] = []
    try:
        ordered = sorted_mix(grouped, stage.weights, seed, output.shuffle, work / "stage2.parquet") if grouped is not None else None
        pf = pq.ParquetFile(ordered) if ordered is not None else None
        for b in (pf.iter_batches(batch_size=256) if pf is not None else []):
            for row in b.to_pylist():
                key = row["key"] if row["_rep"] == 0 else f"{row['key']}-r{row['_rep']}"
                images = row["images"] or []
                missing = [k for k in images if store is None or k not in store]
                if missing:
                    rejects.append({"key": key, "source": row["source"], "step": "stage2_sink",
                                    "reason": "image_missing", "detail": f"images {missing} not among the kept pairs",
                                    "url": None})
                    continue
                files = stage2_images([store.get(k) for k in images])
                files["json"] = json_bytes(shard_json(row, b.schema) | {"key": key})
                (img_writer if images else txt_writer).write(key, files)
                stats["samples_with_images" if images else "samples_text_only"] += 1
                for c in row["conversations"]:
                    langs[c["lang"]] += 1
        shards, text_shards = img_writer.commit(), txt_writer.commit()
    except BaseException:
        img_writer.abort()
        txt_writer.abort()
        raise
    return shards, text_shards, {**stats, "conversations_by_lang": dict(langs)}, rejects


