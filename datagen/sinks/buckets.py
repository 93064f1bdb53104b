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


# Keys turned into Python strings at a time by ``_units``: the plan's memory stays the frames' columns (Arrow)
# and a few numpy arrays, where per-row Python lists cost about 0.4 GB of peak per million rows.
_CHUNK = 1 << 16


def _units(keys: pl.Series, seed: int, salt: str) -> np.ndarray:
    """A hash of seed, salt and key for every key, uniform in [0, 1): the first 8 bytes of the SHA-256 digest
    of ``<seed>\\x1f<salt>\\x1f<key>`` as a big-endian integer over 2**64, a chunk of keys at a time."""
    out = np.empty(len(keys), np.float64)
    prefix = f"{seed}\x1f{salt}\x1f"
    for start in range(0, len(keys), _CHUNK):
        chunk = keys.slice(start, _CHUNK).to_list()
        heads = b"".join(hashlib.sha256(f"{prefix}{k}".encode()).digest()[:8] for k in chunk)
        out[start:start + len(chunk)] = np.frombuffer(heads, ">u8").astype(np.float64) / 2.0**64
    return out


def _copies(meta: pl.DataFrame, weights: dict[str, float], seed: int) -> np.ndarray:
    """How many copies of each row of ``meta`` its source's mixing weight asks for (expected value = weight;
    weights are at least 0, ``StageConfig``): the whole part, and one more when the row's hash of seed and key
    falls below the fraction; a hash only for rows whose weight has one (weight 1, the default: none)."""
    import polars as pl

    if not weights:
        return np.ones(meta.height, np.int64)
    w = meta.select(pl.col("source").replace_strict(weights, default=1.0, return_dtype=pl.Float64))
    w = w.to_series().fill_null(1.0).to_numpy()
    whole = np.trunc(w)
    copies = whole.astype(np.int64)
    frac = np.flatnonzero(w != whole)
    if len(frac):
        draw = _units(meta["key"].gather(frac), seed, "mix")
        copies[frac] += draw < (w[frac] - whole[frac])
    return copies


def plan_samples(meta: pl.DataFrame, weights: dict[str, float], seed: int, shuffle: bool, per_bucket: int,
                 group: str | None = None) -> pl.DataFrame:
    """One row per output sample: ``key``, ``_shard``, ``out_key``, ``order``, ``bucket`` (and ``group``).

    ``meta`` holds ``key``, ``source``, ``_shard`` (and ``group``) in input order. With ``group``,
    buckets are numbered separately within each group value (e.g. image vs text-only samples).
    Columnar: the copies of each row are numbered with numpy, ``out_key`` built by polars, and the only
    per-row Python work is the shuffle's hash (``_units``, a chunk at a time)."""
    import polars as pl

    cols = ["key", "_shard"] + ([group] if group else [])
    copies = _copies(meta, weights, seed)
    if (copies == 1).all():  # every row once (no weights, or weight 1): no gather, no suffixes
        plan = meta.select(cols)
        copy = np.zeros(meta.height, np.int64)
    else:
        idx = np.repeat(np.arange(meta.height), copies)
        plan = meta.select(pl.col(cols).gather(idx))
        copy = np.arange(len(idx)) - np.repeat(np.cumsum(copies) - copies, copies)  # 0, 1, ... within a row
    r = pl.Series("_copy", copy)
    plan = plan.with_columns(pl.when(r == 0).then(pl.col("key"))
                             .otherwise(pl.concat_str(pl.col("key"), pl.lit("-r"), r.cast(pl.String)))
                             .alias("out_key"))
    order = _units(plan["out_key"], seed, "order") if shuffle else np.arange(plan.height, dtype=np.float64)
    plan = plan.with_columns(pl.Series("order", order, dtype=pl.Float64))
    rank = pl.col("order").rank("ordinal")
    if group:
        rank = rank.over(group)
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
