"""Duplicate removal across all sources: a barrier over the finished parts' metadata.

Duplicates are found with polars lazy scans over the key columns only (never
the image bytes), so memory grows with the number of rows, not their size.
For each configured column in order (url, then image_sha256, then phash) the
first row (in input order) of every group of equal values wins and the others
are rejected as ``duplicate_of:<winner key>``. ``phash`` (a 64-bit perceptual
hash from imagehash) is computed by ``PhashStep`` in the fused per-row pass.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from datagen.core.records import rejects_table
from datagen.core.steps import Step, StepOutput

if TYPE_CHECKING:
    import polars as pl

# polars and imagehash (0.18 s) are imported where they are used: the recipe's model imports this
# module for ``DedupConfig``, and a run's driver starts its pool's fork server only once the recipe is read.


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: list[Literal["url", "image_sha256", "phash"]] = Field(
        ["url", "image_sha256"], description="Columns whose equal values make rows duplicates; the first key wins."
    )
    within: Literal["all", "source"] = Field(
        "all", description="'source': duplicates only within one source (keeps one copy per source)."
    )


def phash_hex(image: bytes | None) -> str | None:
    if not image:
        return None
    import imagehash
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        return str(imagehash.phash(im))


def _value_hash(value: pl.Expr) -> pl.Expr:
    """The hash ``find_duplicates`` narrows the comparison with (the tests swap in one that collides)."""
    return value.hash()


def find_duplicates(frame: pl.LazyFrame, by: list[str], within: str) -> pl.DataFrame:
    """Rows that duplicate an earlier row: columns key, source, url, winner, column.

    The columns it needs are collected once. Per column, among the rows still in that have a value, a
    64-bit hash of the value (and source, ``within: source``) says which rows may repeat an earlier one:
    those whose hash is not the first of its kind. Only the rows that share such a hash are compared by
    value, the first of each value winning, so memory beyond the columns is a few bytes a row. Grouping
    and joining every row by value held about 0.8 GB per million rows (bench_scale.py's 1M run: the peak
    of the whole run); the polars hash is never stored, and a collision costs a comparison, not a wrong
    answer."""
    import polars as pl

    out = {"key": pl.String, "source": pl.String, "url": pl.String, "winner": pl.String, "column": pl.String}
    if not by:
        return pl.DataFrame(schema=out)
    df = frame.select(list(dict.fromkeys(["key", "source", "url", *by]))).collect().with_row_index("_i")
    alive = pl.repeat(True, df.height, dtype=pl.Boolean, eager=True)
    found = []
    for col in by:
        group = [col, "source"] if within == "source" else [col]
        value = pl.struct(group) if len(group) > 1 else pl.col(col)
        with_value = alive & df.select(pl.col(col).is_not_null() & (pl.col(col).cast(pl.String) != "")).to_series()
        h = df.select(pl.when(pl.lit(with_value)).then(_value_hash(value))).to_series()
        again = with_value & ~h.is_first_distinct()
        if not again.any():
            continue
        suspects = df.filter(with_value & h.is_in(h.filter(again).unique().implode()))  # in input order
        first = suspects.select(value.is_first_distinct()).to_series()
        dups = suspects.filter(~first)
        if not dups.height:  # only hash collisions
            continue
        winners = suspects.filter(first).select(*group, pl.col("key").alias("winner"))
        found.append(dups.join(winners, on=group, how="left", maintain_order="left")
                     .select("key", "source", "url", "winner", pl.lit(col).alias("column")))
        alive = alive.scatter(dups["_i"], False)
    return pl.concat(found) if found else pl.DataFrame(schema=out)


class PhashStep(Step):
    """Adds the ``phash`` column in the fused per-row pass, where the image bytes are at hand,
    so the dedup barrier reads hashes only."""

    name = "phash"
    kind = "map"

    def process(self, table: pa.Table) -> StepOutput:
        hashes = pa.array([phash_hex(x) for x in table.column("image").to_pylist()], type=pa.string())
        if "phash" in table.column_names:
            return StepOutput(table.set_column(table.column_names.index("phash"), "phash", hashes))
        return StepOutput(table.append_column("phash", hashes))


class DedupStep(Step):
    name = "dedup"
    kind = "barrier"
    config: DedupConfig

    @property
    def columns(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(c for c in self.config.by if c not in ("key", "source", "url"))

    def decide(self, frame: pl.LazyFrame) -> pa.Table:
        dups = find_duplicates(frame, self.config.by, self.config.within)
        self.ctx.stat(self.name)["duplicates_by"] = dups.group_by("column").len().sort("column").to_dicts() if dups.height else []
        return rejects_table(
            {"key": r["key"], "source": r["source"], "url": r["url"], "step": self.name,
             "reason": f"duplicate_of:{r['winner']}", "detail": f"same {r['column']} as {r['winner']}"}
            for r in dups.iter_rows(named=True)
        )
