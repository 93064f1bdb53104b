"""Global duplicate removal over the persisted pair rows.

Duplicates are found with polars lazy scans over the key columns only (never
the image bytes), so memory grows with the number of rows, not their size.
For each configured column in order (url, then image_sha256, then phash) the
first row (in input order) of every group of equal values wins and the others
are rejected as ``duplicate_of:<winner key>``. ``phash`` (a 64-bit perceptual
hash from imagehash) is computed here when the column is missing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator, Literal

import imagehash
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from datagen.records import rejects_table
from datagen.steps import Step, StepOutput


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
    with Image.open(io.BytesIO(image)) as im:
        return str(imagehash.phash(im))


def find_duplicates(frame: pl.LazyFrame, by: list[str], within: str) -> pl.DataFrame:
    """Rows that duplicate an earlier row: columns key, source, url, winner, column."""
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


class DedupStep(Step):
    name = "dedup"
    kind = "global"
    config: DedupConfig

    def process_dataset(self, path: Path) -> Iterator[StepOutput]:
        cols = ["key", "source", "url"] + [c for c in self.config.by if c not in ("key", "source", "url")]
        pf = pq.ParquetFile(path)
        have = set(pf.schema_arrow.names)
        frame = pl.scan_parquet(path).select([c for c in cols if c in have and c != "phash"])
        if "phash" in self.config.by:
            hashes = []
            for b in pf.iter_batches(batch_size=256, columns=["image"]):
                hashes.extend(phash_hex(x) for x in b.column(0).to_pylist())
            frame = frame.with_columns(pl.Series("phash", hashes, dtype=pl.String))
        dups = find_duplicates(frame, self.config.by, self.config.within)
        self.ctx.stat(self.name)["duplicates_by"] = dups.group_by("column").len().to_dicts() if dups.height else []
        rejects = rejects_table(
            {"key": r["key"], "source": r["source"], "url": r["url"], "step": self.name,
             "reason": f"duplicate_of:{r['winner']}", "detail": f"same {r['column']} as {r['winner']}"}
            for r in dups.iter_rows(named=True)
        )
        dup_keys = pa.array(dups["key"].to_list(), type=pa.string())
        first = True
        for b in pf.iter_batches(batch_size=256):
            t = pa.Table.from_batches([b])
            kept = t.filter(pc.invert(pc.is_in(t.column("key"), value_set=dup_keys)))
            yield StepOutput(kept, rejects if first else rejects_table([]))
            first = False
        if first:
            yield StepOutput(pf.schema_arrow.empty_table(), rejects)
