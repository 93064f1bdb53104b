"""Mixing and sharding in bounded memory: a sample plan from metadata, then a bucket spill.

1. ``plan_samples`` works on metadata only (key, source, shard): it applies the
   mixing weights (a weight below 1 keeps that share of rows, chosen by a hash
   of seed and key; above 1 repeats rows, repeats get the key suffix ``-r<N>``),
   gives each copy its order (a hash of seed and key when shuffling, else its
   input position) and the output shard it goes to: copies ranked by that
   order, ``shard_max_count`` per bucket. Every bucket but the last is full,
   and the result depends only on the recipe and seed.
2. ``BucketSpill`` scatters rows (image bytes included) into one spill file per
   bucket while reading the parts sequentially, buffering at most ``budget``
   bytes in memory.
3. The sink then reads one bucket at a time, orders it and joins it with its
   images in memory: no global sort of image data, no random lookups.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

if TYPE_CHECKING:  # the plan is the driver's; pool processes that write buckets never import polars
    import polars as pl


def _unit(seed: int, key: str, salt: str) -> float:
    h = hashlib.sha256(f"{seed}\x1f{salt}\x1f{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def repeats(weight: float, seed: int, key: str) -> int:
    """How many copies of a row a mixing weight asks for (expected value = weight)."""
    whole = int(weight)
    if weight == whole:  # no fraction to draw (weight 1, the default): no hash to compute
        return whole
    return whole + (1 if _unit(seed, key, "mix") < weight - whole else 0)


def plan_samples(meta: pl.DataFrame, weights: dict[str, float], seed: int, shuffle: bool, per_bucket: int,
                 group: str | None = None) -> pl.DataFrame:
    """One row per output sample: ``key``, ``_shard``, ``out_key``, ``order``, ``bucket`` (and ``group``).

    ``meta`` holds ``key``, ``source``, ``_shard`` (and ``group``) in input order. With ``group``,
    buckets are numbered separately within each group value (e.g. image vs text-only samples)."""
    import polars as pl

    keys, sources = meta["key"].to_list(), meta["source"].to_list()
    idx, out_keys, order = [], [], []
    for i, (k, s) in enumerate(zip(keys, sources)):
        for r in range(repeats(weights.get(s, 1.0), seed, k)):
            idx.append(i)
            out = k if r == 0 else f"{k}-r{r}"
            out_keys.append(out)
            order.append(_unit(seed, out, "order") if shuffle else float(len(order)))
    cols = ["key", "_shard"] + ([group] if group else [])
    plan = meta.select(cols)[idx].with_columns(pl.Series("out_key", out_keys, dtype=pl.String),
                                                pl.Series("order", order, dtype=pl.Float64))
    over = [group] if group else None
    rank = pl.col("order").rank("ordinal")
    if over:
        rank = rank.over(over)
    return plan.with_columns(((rank - 1) // per_bucket).cast(pl.Int64).alias("bucket"))


class BucketSpill:
    """Rows scattered into one length-prefixed Arrow IPC file per bucket (``<folder>/<bucket>.arrows``).

    ``add`` only buffers (the batch and its bucket ids); ``flush`` sorts everything buffered by
    bucket once, and appends each bucket's slice to its file as one IPC stream: one sort and one
    write per bucket per flush, however small the batches."""

    def __init__(self, folder: Path, budget: int = 16 << 20):
        self.folder = folder
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.budget = budget
        self._buffers: list[tuple[np.ndarray, pa.Table]] = []
        self._size = 0

    def add(self, buckets: np.ndarray, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self._buffers.append((np.asarray(buckets), table))
        self._size += table.nbytes
        if self._size > self.budget:
            self.flush()

    def flush(self) -> None:
        """Append each bucket's rows to its file. The buffered batches are put in bucket order with one
        ``take`` (one copy of the buffer, at most ``budget`` bytes), and each bucket's slice is
        serialised straight into its file (its size measured first for the length prefix), so no
        in-memory IPC stream exists. One take per bucket instead would re-resolve every chunk of the
        buffer each time: buckets x buffer, quadratic in the data (the 1M-row run's slowdown)."""
        buffers, self._buffers, self._size = self._buffers, [], 0
        i = 0
        while i < len(buffers):  # one pass per run of batches with the same schema
            schema = buffers[i][1].schema
            j = i
            while j < len(buffers) and buffers[j][1].schema == schema:
                j += 1
            buckets = np.concatenate([b for b, _ in buffers[i:j]])
            table = pa.concat_tables([t for _, t in buffers[i:j]])  # the batches' chunks, not copied
            order = np.argsort(buckets, kind="stable")
            table, ordered = table.take(pa.array(order)), buckets[order]
            cuts = np.flatnonzero(np.diff(ordered)) + 1
            for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(ordered)]):
                self._append(int(ordered[start]), table.slice(start, stop - start), schema)
            i = j

    def _append(self, bucket: int, table: pa.Table, schema: pa.Schema) -> None:
        size = pa.MockOutputStream()
        with ipc.new_stream(size, schema) as w:
            w.write_table(table)
        with pa.OSFile(str(self.folder / f"{bucket:08d}.arrows"), "a") as f:
            f.write(size.size().to_bytes(8, "little"))
            with ipc.new_stream(f, schema) as w:
                w.write_table(table)

    def read(self, bucket: int) -> pa.Table | None:
        return read_bucket(self.folder, bucket)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def read_bucket(folder: Path, bucket: int) -> pa.Table | None:
    """A bucket's rows from a ``BucketSpill`` folder (any process's; None when it holds none); the file is
    removed once read."""
    path = folder / f"{bucket:08d}.arrows"
    if not path.exists():
        return None
    tables = []
    with open(path, "rb") as f:
        while head := f.read(8):
            data = f.read(int.from_bytes(head, "little"))
            tables.append(ipc.open_stream(pa.py_buffer(data)).read_all())
    path.unlink()
    return pa.concat_tables(tables, promote_options="permissive")
