"""The stage-1 sink's work on rows, in the run's pool processes (or in the driver): scatter parts into
bucket spills, write a bucket's shards.

``datagen.sinks.stages`` plans the samples (polars) and hands this module plain lists, so a pool process
runs it with what the fork server preloaded (Arrow, no polars). Two passes, each spread over the pool:

1. ``scatter_parts``: each process reads its share of the parts and appends every planned copy of a row
   to its bucket, in a spill folder of its own.
2. ``write_bucket``: one task per bucket reads that bucket from every spill folder, orders it and writes
   its shards into a folder of its own; the driver then moves them, bucket by bucket, into the split.

A bucket's samples never share a shard with the next bucket's, so the shards do not depend on how many
processes wrote them: the same recipe and seed give the same bytes with one worker or eight.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from datagen.core.parts import iter_batches
from datagen.sinks.buckets import BucketSpill, read_bucket
from datagen.sinks.shards import SplitWriter, image_ext, json_bytes, shard_json_for

# What the run's report reads from every stage-1 sample (``datagen.report.read_shards``), gathered as the
# samples are written so that the report need not read the shards again.
FACT_FIELDS = ("width", "height", "caption_chars", "clip_score")


@dataclass
class PartPlan:
    """The planned copies of one part's rows, as plain lists: ``keys[i]`` goes to bucket ``buckets[i]`` as
    sample ``out_keys[i]``, placed by ``orders[i]`` (a key repeated by a mixing weight appears once a copy)."""

    path: Path
    keys: list[str]
    out_keys: list[str]
    orders: np.ndarray
    buckets: np.ndarray


def scatter_rows(spill: BucketSpill, plan: PartPlan, columns: list[str] | None) -> None:
    """Append every planned copy of the rows in ``plan.path`` to its bucket, with ``_out_key`` and ``_order``."""
    if not plan.keys:
        return
    pos: dict[str, list[int]] = {}
    for i, k in enumerate(plan.keys):
        pos.setdefault(k, []).append(i)
    # one thread: the sink reads parts one after the other; Arrow's decode threads cost the driver
    # about 30 MB of peak RSS on bench_download's kit
    for batch in iter_batches(plan.path, 256, columns, use_threads=False):
        take, rows = [], []
        for i, k in enumerate(batch.column("key").to_pylist()):
            for j in pos.get(k, ()):
                take.append(i)
                rows.append(j)
        if not take:
            continue
        # every row once, in order (weights 1, nothing dropped: the usual batch): no copy of the images
        t = batch if len(take) == batch.num_rows and take == list(range(len(take))) \
            else batch.take(pa.array(take, type=pa.int64()))
        t = t.append_column("_out_key", pa.array([plan.out_keys[j] for j in rows], pa.string()))
        t = t.append_column("_order", pa.array(plan.orders[rows], pa.float64()))
        spill.add(plan.buckets[rows], t)


def _system_allocator() -> None:
    """In a pool process, Arrow's buffers from the system allocator, as in the driver (``datagen run``): it
    gives freed memory back, where mimalloc kept up to 0.1 GB a process of the scatter's short-lived
    buffers. Run in the driver itself, the tasks leave its allocator as its caller chose."""
    if mp.parent_process() is not None:
        pa.set_memory_pool(pa.system_memory_pool())


def scatter_parts(folder: Path, plan_file: Path, parts: list[tuple[Path, int, int]]) -> None:
    """Pass 1, one task: the rows of ``parts`` into the bucket files of a new spill ``folder``. ``plan_file``
    holds the plan (``key``, ``out_key``, ``order``, ``bucket``), a part's rows together: ``parts`` gives each
    part's file and its rows there (offset, count). Read from a memory-mapped file, not sent whole to every
    process: the plan of 1M rows as Python lists was 0.1 GB more in the driver."""
    _system_allocator()
    spill = BucketSpill(folder)
    with pa.memory_map(str(plan_file)) as source:
        plan = ipc.open_file(source).read_all()
        for path, offset, count in parts:
            rows = plan.slice(offset, count)
            scatter_rows(spill, PartPlan(path, rows.column("key").to_pylist(), rows.column("out_key").to_pylist(),
                                         rows.column("order").to_numpy(), rows.column("bucket").to_numpy()), None)
    spill.flush()


def ordered(table: pa.Table) -> list[dict]:
    """A bucket's rows in their planned order (``_order``, then ``_out_key``: unique, so the order is total)."""
    rows = table.to_pylist()
    rows.sort(key=lambda r: (r["_order"], r["_out_key"]))
    return rows


def write_bucket(spills: list[Path], bucket: int, dest: Path, split: str, max_count: int, max_bytes: int,
                 provenance: dict | None, facts_limit: int) -> dict[str, Any]:
    """Pass 2, one task: bucket ``bucket`` of every spill folder as stage-1 shards in ``dest`` (this bucket's
    own folder). Returns the shards' files and infos (``files``, for ``SplitWriter.adopt``), the samples per
    source, and the report's ``FACT_FIELDS`` of its first ``facts_limit`` samples (``facts``)."""
    _system_allocator()
    tables = [t for folder in spills if (t := read_bucket(folder, bucket)) is not None]
    writer = SplitWriter(dest, split, max_count, max_bytes)
    per_source: Counter = Counter()
    facts: list[tuple] = []
    try:
        if tables:
            table = pa.concat_tables(tables, promote_options="permissive")
            to_json = shard_json_for(table.schema)
            for row in ordered(table):
                key, caption = row["_out_key"], row["caption"] or ""
                writer.write(key, {image_ext(row["image"]): row["image"], "txt": caption.encode(),
                                   "json": json_bytes(to_json(row) | {"key": key}
                                                      | ({"provenance": provenance} if provenance else {}))})
                per_source[row["source"]] += 1
                if len(facts) < facts_limit:
                    facts.append((row.get("width"), row.get("height"), len(caption), row.get("clip_score")))
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"files": files, "per_source": per_source, "facts": facts}
