"""COCO reader: captions JSON + instances JSON + image folder -> pair rows.

COCO's annotation files are single JSON documents (the 2017 train instances file
is about 450 MB), so they are never loaded whole: ``ijson`` streams the
``images``, ``annotations`` and ``categories`` arrays into small parquet files
under the run directory, polars groups annotations per image lazily, and the
joined rows come back in batches. The 2014 and 2017 layouts differ only in
file names (``COCO_train2014_000000000009.jpg`` vs ``000000000009.jpg``), which
the ``file_name`` field already carries.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

import ijson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from datagen.records import PAIR_SCHEMA, make_key, to_json
from datagen.sources.config import CocoSource
from datagen.sources.zh_captions import read_zh_captions
from datagen.steps import RunContext, StepOutput

_CHUNK = 50_000


def _stream_to_parquet(path: Path, prefix: str, fields: dict[str, pa.DataType], out: Path) -> int:
    """Stream ``prefix`` items of a JSON document into a parquet file with ``fields``; return the count."""
    schema = pa.schema(list(fields.items()))
    n = 0
    with open(path, "rb") as f, pq.ParquetWriter(out, schema) as writer:
        buf: list[dict] = []
        for item in ijson.items(f, prefix, use_float=True):
            if not isinstance(item, dict):
                raise ValueError(f"{path}: expected objects in '{prefix.replace('.item', '')}', got {type(item).__name__}")
            buf.append({k: item.get(k) for k in fields})
            if len(buf) >= _CHUNK:
                writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                n += len(buf)
                buf = []
        if buf:
            writer.write_table(pa.Table.from_pylist(buf, schema=schema))
            n += len(buf)
    return n


def _categories(path: Path) -> dict[int, str]:
    with open(path, "rb") as f:
        return {int(c["id"]): str(c["name"]) for c in ijson.items(f, "categories.item")}


def read_coco(cfg: CocoSource, ctx: RunContext) -> Iterator[StepOutput]:
    captions_path = ctx.resolve(cfg.captions)
    instances_path = ctx.resolve(cfg.instances) if cfg.instances else None
    image_dir = ctx.resolve(cfg.images)
    for p in [captions_path, instances_path, ctx.resolve(cfg.zh_captions) if cfg.zh_captions else None]:
        if p is not None and not p.is_file():
            raise FileNotFoundError(f"source {cfg.name!r}: COCO file not found: {p}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"source {cfg.name!r}: image folder not found: {image_dir}")

    with tempfile.TemporaryDirectory(dir=ctx.run_dir, prefix=f"coco-{cfg.name}-") as tmp:
        tmp = Path(tmp)
        _stream_to_parquet(
            captions_path,
            "images.item",
            {"id": pa.int64(), "file_name": pa.string(), "width": pa.int64(), "height": pa.int64(),
             "coco_url": pa.string(), "flickr_url": pa.string(), "license": pa.int64()},
            tmp / "images.parquet",
        )
        _stream_to_parquet(captions_path, "annotations.item", {"image_id": pa.int64(), "id": pa.int64(), "caption": pa.string()},
                           tmp / "captions.parquet")
        images = pl.scan_parquet(tmp / "images.parquet")
        caps = (
            pl.scan_parquet(tmp / "captions.parquet")
            .sort(["image_id", "id"])
            .group_by("image_id", maintain_order=True)
            .agg(pl.col("caption").str.strip_chars().alias("captions"))
        )
        joined = images.join(caps, left_on="id", right_on="image_id", how="left")
        if instances_path is not None:
            cats = _categories(instances_path)
            _stream_to_parquet(
                instances_path,
                "annotations.item",
                {"image_id": pa.int64(), "id": pa.int64(), "category_id": pa.int64(), "bbox": pa.list_(pa.float64()),
                 "iscrowd": pa.int64(), "attributes": pa.list_(pa.string()), "score": pa.float64()},
                tmp / "instances.parquet",
            )
            cat_table = pl.LazyFrame({"category_id": list(cats), "label": list(cats.values())},
                                     schema={"category_id": pl.Int64, "label": pl.String})
            objs = (
                pl.scan_parquet(tmp / "instances.parquet")
                .join(cat_table, on="category_id", how="left")
                .sort(["image_id", "id"])
                .group_by("image_id", maintain_order=True)
                .agg(pl.struct(["label", "bbox", "score", "attributes", "iscrowd", "category_id", "id"]).alias("objects"))
            )
            joined = joined.join(objs, left_on="id", right_on="image_id", how="left")
        joined = joined.sort("id")
        if cfg.limit:
            joined = joined.head(cfg.limit)
        joined.sink_parquet(tmp / "joined.parquet")
        zh = read_zh_captions(ctx.resolve(cfg.zh_captions)) if cfg.zh_captions else {}
        for batch in pq.ParquetFile(tmp / "joined.parquet").iter_batches(batch_size=cfg.batch_size):
            rows = batch.to_pylist()
            for r in rows:  # COCO-CN: Chinese captions after the English ones
                r["captions"] = (r.get("captions") or []) + zh.get(r["id"], [])
            yield StepOutput(_to_pairs(rows, cfg, image_dir, has_instances=instances_path is not None))


def _to_pairs(rows: list[dict], cfg: CocoSource, image_dir: Path, has_instances: bool) -> pa.Table:
    out = []
    for r in rows:
        captions = [c for c in (r.get("captions") or []) if c]
        objects = []
        for o in r.get("objects") or []:
            if o["label"] is None:
                raise ValueError(
                    f"source {cfg.name!r}: annotation {o['id']} of image {r['id']} has category_id {o['category_id']},"
                    " which is not in the instances file's categories"
                )
            bbox = o.get("bbox") or []
            if len(bbox) != 4:
                raise ValueError(f"source {cfg.name!r}: annotation {o['id']} bbox must be [x, y, w, h], got {bbox}")
            objects.append({"label": o["label"], "bbox": bbox, "score": o.get("score"),
                            "attributes": o.get("attributes") or [], "iscrowd": bool(o.get("iscrowd") or 0)})
        out.append({
            "key": make_key(cfg.name, r["id"]),
            "source": cfg.name,
            "url": str(image_dir / r["file_name"]),
            "caption": captions[0] if captions else None,
            "image": None,
            "image_sha256": None,
            "width": r.get("width"),
            "height": r.get("height"),
            "objects": objects if has_instances else None,  # [] = annotated, nothing there
            "captions": captions,
            "meta": to_json({"image_id": r["id"], "file_name": r["file_name"], "coco_url": r.get("coco_url"),
                             "flickr_url": r.get("flickr_url"), "license": r.get("license")}),
        })
    return pa.Table.from_pylist(out, schema=PAIR_SCHEMA)

