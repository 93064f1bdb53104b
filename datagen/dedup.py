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


def find_duplicates(frame: pl.LazyFrame, by: list[str], within: str) -> pl.DataFrame:
    """Rows that duplicate an earlier row: columns key, source, url, winner, column."""
    import polars as pl

    remaining = frame.with_row_index("_i")
    found = []
    for col in by:
        group = [col, "source"] if within == "source" else [col]
        valid = pl.col(col).is_not_null() & (pl.col(col).cast(pl.String) != "")
        winners = remaining.filter(valid).group_by(group).agg(pl.col("key").sort_by("_i").first().alias("_winner"))
        joined = remaining.join(winners, on=group, how="left")
        is_dup = pl.col("_winner").is_not_null() & (pl.col("_winner") != pl.col("key"))
        found.append(joined.filter(is_dup).select("key", "source", "url", pl.col("_winner").alias("winner"),
                                                  pl.lit(col).alias("column")))
        remaining = joined.filter(~is_dup).drop("_winner")
    if not found:
        return pl.DataFrame(schema={"key": pl.String, "source": pl.String, "url": pl.String, "winner": pl.String,
                                    "column": pl.String})
    return pl.concat([f.collect() for f in found])


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
