"""Stage-1 and stage-2 sinks: kept rows -> mixed, shuffled webdataset shards, in bounded memory.

The sample plan (weights, order, output shard) is computed from metadata only
(``datagen.sinks.buckets``); rows are then scattered into per-shard buckets
while the parts are read sequentially, and each bucket is ordered and written
on its own; for stage 1 each bucket into shards of its own, in the run's
pool processes when it has a pool (``datagen.sinks.bucket_work``). Stage-2
samples are one per image set: all conversations of that set, both languages,
in one ``<key>.json``, and the image bytes once, joined from the pair parts
within the bucket. Same recipe and seed, same bytes.
"""

from __future__ import annotations

import shutil
from collections import Counter, OrderedDict
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from datagen.core.parts import tmp_name
from datagen.progress import progress
from datagen.sinks.bucket_work import FACT_FIELDS, PartPlan, scatter_parts, scatter_rows, write_bucket
from datagen.sinks.buckets import BucketSpill, plan_samples
from datagen.sinks.shards import ShardInfo, SplitWriter, json_bytes, shard_json_for, stage2_images

STAGE1, STAGE2, STAGE2_TEXT = "stage1", "stage2", "stage2_text"
# From this many stage-1 samples on, all the run's pool processes share the sink. Below, one pool process
# does each of its two passes, not the driver: the same time (one core either way), but the driver stays
# small (on bench_download's 20,000 samples its peak RSS was 450 MB with the sink and 216 MB without;
# the tree's PSS is the same, 0.51 GB). More processes save about 20 us a sample but cost about 0.2 GB
# of peak PSS (each holds its own read and spill buffers, and glibc keeps what they free): 1.71 s and
# 757 MB for those 20,000 samples in two, against 2.10 s and 538-572 MB in one; bench_scale's 100,000,
# 2.1 s in two against 3.7 s in one. From 50,000 samples, where they save a second or more.
POOL_MIN_SAMPLES = 50_000


def _scan(path: Path, cols: list[str], shard: str) -> pl.LazyFrame:
    have = pq.ParquetFile(path).schema_arrow.names
    return pl.scan_parquet(path).select([c for c in cols if c in have]).with_columns(pl.lit(shard).alias("_shard"))


def kept_pairs(pair_parts, dropped: pl.LazyFrame | None, sources: list[str] | None,
               cols: tuple[str, ...] = ("key", "source")) -> pl.DataFrame:
    """Metadata of the pairs that every barrier kept, in input order (``_shard`` added)."""
    frames = [_scan(part.kept, list(cols), shard.id) for shard, part in pair_parts
              if sources is None or shard.source in sources]
    if not frames:
        return pl.DataFrame(schema={c: pl.String for c in (*cols, "_shard")})
    lf = pl.concat(frames, how="diagonal_relaxed")
    if dropped is not None:
        lf = lf.join(dropped.select("key"), on="key", how="anti", maintain_order="left")
    return lf.collect()


def part_plan(path: Path, plan: pl.DataFrame) -> PartPlan:
    """One part's rows of the plan as plain lists, for ``bucket_work.scatter_rows``."""
    return PartPlan(path, plan["key"].to_list(), plan["out_key"].to_list(), plan["order"].to_numpy(),
                    plan["bucket"].to_numpy())


def _scatter(spill: BucketSpill, path: Path, plan: pl.DataFrame, columns: list[str] | None) -> None:
    """Append every planned copy of the rows in ``path`` to its bucket, with ``_out_key`` and ``_order``."""
    if plan.height:
        scatter_rows(spill, part_plan(path, plan), columns)


def _buckets(plan: pl.DataFrame) -> int:
    return int(plan["bucket"].max()) + 1 if plan.height else 0


def write_stage1(pair_parts, dropped, out_dir: Path, stage, output, seed: int, work: Path,
                 provenance: dict | None = None, workers: int = 1, ctx=None, facts_limit: int = 0,
                 pool_min: int = POOL_MIN_SAMPLES) -> tuple[list[ShardInfo], dict]:
    """The stage-1 shards: a scatter pass, then one task per bucket (``datagen.sinks.bucket_work``). With a
    pool (``workers`` > 1; ``ctx``: the run's context, which a pool needs), in ``workers`` pool processes
    when there are ``pool_min`` samples or more, else in one; without, here. Returns the shards and the
    counts (``samples``, ``per_source``) and, for the report, the ``FACT_FIELDS`` of the first
    ``facts_limit`` samples (``report_facts``)."""
    from datagen.core.executor import pool_map

    meta = kept_pairs(pair_parts, dropped, stage.sources)
    plan = plan_samples(meta, stage.weights, seed, output.shuffle, output.shard_max_count)
    n_buckets = _buckets(plan)
    # the plan in a file, a part's rows together, for the scatter tasks to read (bucket_work.scatter_parts)
    plan = plan.sort("_shard", maintain_order=True)
    kept = {shard.id: part.kept for shard, part in pair_parts}
    parts, offset = [], 0
    for shard_id, n in plan.group_by("_shard", maintain_order=True).len().iter_rows():
        parts.append((kept[shard_id], offset, n))
        offset += n
    if workers > 1 and ctx is not None and plan.height:  # pool processes (POOL_MIN_SAMPLES says how many)
        processes = workers if n_buckets > 1 and plan.height >= pool_min else 1
    else:
        processes = 0  # here
    mappers = max(1, min(processes, len(parts)))
    root = tmp_name(work / "sink-stage1")
    spills = [root / f"spill-{j}" for j in range(mappers)]
    writer = SplitWriter(out_dir, STAGE1, output.shard_max_count, output.shard_max_bytes)
    per_source: Counter = Counter()
    facts: list[tuple] = []
    try:
        root.mkdir(parents=True)
        plan.select("key", "out_key", "order", "bucket").write_ipc(root / "plan.arrow")
        pool_map(scatter_parts, [(spills[j], root / "plan.arrow", parts[j::mappers]) for j in range(mappers)],
                 ctx, min(processes, mappers))
        per_bucket = output.shard_max_count  # every bucket but the last is full (plan_samples)
        tasks = [(spills, b, root / f"bucket-{b}", STAGE1, output.shard_max_count, output.shard_max_bytes,
                  provenance, max(0, facts_limit - b * per_bucket)) for b in range(n_buckets)]
        with progress(plan.height, "stage1 shards", "sample") as bar:
            done = pool_map(write_bucket, tasks, ctx, processes,
                            on_done=lambda _i, r: bar.update(sum(r["per_source"].values())))
        for r in done:  # bucket by bucket: the split's shard numbers follow the plan's order
            for path, info in r["files"]:
                writer.adopt(path, info)
            per_source.update(r["per_source"])
            facts.extend(r["facts"])
        shards = writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    samples = sum(per_source.values())
    report_facts = {"limit": facts_limit, "cut": samples > facts_limit,
                    **{name: [f[i] for f in facts] for i, name in enumerate(FACT_FIELDS)}}
    return shards, {"samples": samples, "per_source": dict(per_source), "report_facts": report_facts}


def _conversation_meta(conversation_inputs, sources: list[str] | None) -> pl.DataFrame:
    """One row per (input, key): ``key``, ``source``, ``images``, ``_input``, in input order."""
    frames = []
    for i, (_shard, path) in enumerate(conversation_inputs):
        if not pq.ParquetFile(path).metadata.num_rows:
            continue
        lf = pl.scan_parquet(path).select("key", "source", "images").with_columns(pl.lit(i).alias("_input"))
        frames.append(lf.filter(pl.col("source").is_in(sources)) if sources is not None else lf)
    if not frames:
        return pl.DataFrame(schema={"key": pl.String, "source": pl.String, "images": pl.List(pl.String),
                                    "_input": pl.Int32})
    return pl.concat(frames, how="diagonal_relaxed").collect()


def write_stage2(conversation_inputs, pair_parts, dropped, out_dir: Path, stage, output, seed: int, work: Path,
                 provenance: dict | None = None) -> tuple[list[ShardInfo], list[ShardInfo], dict, list[dict]]:
    """Returns (image shards, text-only shards, stats, rejects for samples whose images are missing).
    ``provenance`` (the run's recipe sha256 and datagen version) goes into every sample's json."""
    rows = _conversation_meta(conversation_inputs, stage.sources)
    samples = (rows.group_by("key", maintain_order=True)
               .agg(pl.col("source").first(), pl.col("images").first(), pl.col("_input").first())
               .with_columns(pl.col("images").fill_null([]).list.len().gt(0).alias("_with_images"),
                             pl.col("_input").cast(pl.String).alias("_shard")))
    plan = plan_samples(samples, stage.weights, seed, output.shuffle, output.shard_max_count, group="_with_images")
    n_img, n_txt = (_buckets(plan.filter(pl.col("_with_images"))), _buckets(plan.filter(~pl.col("_with_images"))))
    plan = plan.with_columns(pl.when(pl.col("_with_images")).then(pl.col("bucket"))
                             .otherwise(pl.col("bucket") + n_img).alias("bucket"))
    img_writer = SplitWriter(out_dir, STAGE2, output.shard_max_count, output.shard_max_bytes)
    txt_writer = SplitWriter(out_dir, STAGE2_TEXT, output.shard_max_count, output.shard_max_bytes)
    conv_spill = BucketSpill(tmp_name(work / "sink-stage2"))
    img_spill = BucketSpill(tmp_name(work / "sink-stage2-images"))
    stats: Counter = Counter()
    langs: Counter = Counter()
    rejects: list[dict] = []
    try:
        # Conversation rows: every input row of a planned key, to each of that key's copies' buckets.
        members = rows.select("key", "_input").unique(maintain_order=True)
        by_input = {k[0]: v for k, v in members.join(plan.drop("_shard"), on="key", how="inner", maintain_order="left")
                    .partition_by("_input", as_dict=True).items()} if plan.height else {}
        for i, (_shard, path) in enumerate(conversation_inputs):
            if i in by_input:
                _scatter(conv_spill, path, by_input[i], ["key", "source", "images", "conversations", "meta"])
        conv_spill.flush()
        # Image bytes: each image to the bucket of every sample that shows it, read part by part.
        wanted = (plan.filter(pl.col("_with_images")).join(samples.select("key", "images"), on="key")
                  .select(pl.col("images").alias("image_key"), "bucket").explode("image_key").unique())
        located = wanted.join(kept_pairs(pair_parts, dropped, None), left_on="image_key", right_on="key")
        by_shard = {k[0]: v for k, v in located.partition_by("_shard", as_dict=True).items()} if located.height else {}
        for shard, part in pair_parts:
            if shard.id in by_shard:
                img_plan = by_shard[shard.id].select(pl.col("image_key").alias("key"), "bucket",
                                                     pl.col("image_key").alias("out_key"), pl.lit(0.0).alias("order"))
                _scatter(img_spill, part.kept, img_plan, ["key", "image"])
        img_spill.flush()
        for b in range(n_img + n_txt):
            table = conv_spill.read(b)
            if table is None:
                continue
            images_in = img_spill.read(b) if b < n_img else None
            store = dict(zip(images_in.column("key").to_pylist(), images_in.column("image").to_pylist())) \
                if images_in is not None else {}
            grouped: OrderedDict[str, dict] = OrderedDict()
            for r in table.to_pylist():
                g = grouped.get(r["_out_key"])
                if g is None:
                    grouped[r["_out_key"]] = {**r, "conversations": list(r["conversations"] or [])}
                else:
                    g["conversations"].extend(r["conversations"] or [])
            to_json = shard_json_for(table.schema)
            for row in sorted(grouped.values(), key=lambda r: (r["_order"], r["_out_key"])):
                key = row["_out_key"]
                images = row["images"] or []
                missing = [k for k in images if k not in store]
                if missing:
                    rejects.append({"key": key, "source": row["source"], "step": "stage2_sink",
                                    "reason": "image_missing", "detail": f"images {missing} not among the kept pairs",
                                    "url": None})
                    continue
                files = stage2_images([store[k] for k in images])
                files["json"] = json_bytes(to_json(row) | {"key": key}
                                           | ({"provenance": provenance} if provenance else {}))
                (img_writer if images else txt_writer).write(key, files)
                stats["samples_with_images" if images else "samples_text_only"] += 1
                for c in row["conversations"]:
                    langs[c["lang"]] += 1
        shards, text_shards = img_writer.commit(), txt_writer.commit()
    except BaseException:
        img_writer.abort()
        txt_writer.abort()
        raise
    finally:
        conv_spill.close()
        img_spill.close()
    return shards, text_shards, {**stats, "conversations_by_lang": dict(langs)}, rejects
