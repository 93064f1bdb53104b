"""COCO reader: captions JSON + instances JSON + image folder -> pair rows.

COCO's annotation files are single JSON documents (the 2017 train instances file
is about 450 MB), so they are never loaded whole: ``ijson`` streams the
``images``, ``annotations`` and ``categories`` arrays into small parquet files
under the run directory, polars groups annotations per image lazily, and the
joined rows come back in batches. The 2014 and 2017 layouts differ only in
file names (``COCO_train2014_000000000009.jpg`` vs ``000000000009.jpg``), which
the ``file_name`` field already carries.

Bad files are ``InputFileError``s naming the file and the item: truncated or
invalid JSON, an image without ``id``/``file_name``, an unknown category, a
malformed box. Captions and instances whose ``image_id`` is not in the
images list cannot become rows; each such image id becomes one reject with
reason ``orphan_annotation`` so the summary counts them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

import ijson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from datagen.core.records import PAIR_SCHEMA, make_key, reject, rejects_table, to_json
from datagen.sources.config import CocoSource
from datagen.sources.errors import InputFileError, brief
from datagen.sources.tables import portable_path
from datagen.sources.zh_captions import read_zh_captions
from datagen.core.steps import RunContext, StepOutput

_CHUNK = 50_000


_JSON_FIX = "The file is truncated or not COCO JSON: download it again (check its size against the source)"


def _json_items(path: Path, prefix: str) -> Iterator[dict]:
    """The objects under ``prefix`` of a JSON file; JSON errors become InputFileError naming the file."""
    section = prefix.replace(".item", "")
    n = 0
    try:
        with open(path, "rb") as f:
            for item in ijson.items(f, prefix, use_float=True):
                if not isinstance(item, dict):
                    raise InputFileError(path, f"expected objects in '{section}', got {type(item).__name__}",
                                         "Check that this is a COCO annotation file", where=f"{section}[{n}]")
                yield item
                n += 1
    except ijson.JSONError as e:
        raise InputFileError(path, f"invalid JSON after {n} item(s) of '{section}' ({brief(e)})", _JSON_FIX) from None


def _stream_to_parquet(path: Path, prefix: str, fields: dict[str, pa.DataType], out: Path) -> int:
    """Stream ``prefix`` items of a JSON document into a parquet file with ``fields``; return the count."""
    schema = pa.schema(list(fields.items()))
    n = 0
    section = prefix.replace(".item", "")
    with pq.ParquetWriter(out, schema) as writer:
        buf: list[dict] = []
        for i, item in enumerate(_json_items(path, prefix)):
            if section == "images" and (not isinstance(item.get("id"), int) or not isinstance(item.get("file_name"), str)):
                raise InputFileError(path, f"image entry {str(item)[:120]} needs an integer 'id' and a 'file_name'",
                                     "Fix or remove the entry", where=f"images[{i}]")
            buf.append({k: item.get(k) for k in fields})
            if len(buf) >= _CHUNK:
                writer.write_table(_typed(buf, schema, path, section, n))
                n += len(buf)
                buf = []
        if buf:
            writer.write_table(_typed(buf, schema, path, section, n))
            n += len(buf)
    return n


def _typed(buf: list[dict], schema: pa.Schema, path: Path, section: str, first: int) -> pa.Table:
    try:
        return pa.Table.from_pylist(buf, schema=schema)
    except (pa.ArrowException, TypeError, ValueError):
        for i, item in enumerate(buf):  # find the entry, once, for the message
            try:
                pa.Table.from_pylist([item], schema=schema)
            except (pa.ArrowException, TypeError, ValueError) as e:
                raise InputFileError(path, f"{section} entry has a field of the wrong type ({e})",
                                     "Fix or remove the entry", where=f"{section}[{first + i}]") from None
        raise


def _categories(path: Path) -> dict[int, str]:
    cats = {}
    for i, c in enumerate(_json_items(path, "categories.item")):
        if not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise InputFileError(path, f"category {str(c)[:120]} needs an integer 'id' and a 'name'",
                                 "Fix the categories list", where=f"categories[{i}]")
        cats[c["id"]] = c["name"]
    return cats


def _orphans(images: pl.LazyFrame, annotations: dict[str, pl.LazyFrame]) -> dict[int, dict[str, int]]:
    """image_id -> {kind: count} for annotations whose image is not in the images list."""
    found: dict[int, dict[str, int]] = {}
    for kind, frame in annotations.items():
        counts = (frame.join(images.select("id"), left_on="image_id", right_on="id", how="anti")
                  .group_by("image_id").len().collect())
        for image_id, n in counts.iter_rows():
            found.setdefault(image_id, {})[kind] = n
    return found


def read_coco(cfg: CocoSource, ctx: RunContext) -> Iterator[StepOutput]:
    captions_path = ctx.resolve(cfg.captions)
    instances_path = ctx.resolve(cfg.instances) if cfg.instances else None
    image_dir = ctx.resolve(cfg.images)
    for p in [captions_path, instances_path, ctx.resolve(cfg.zh_captions) if cfg.zh_captions else None]:
        if p is not None and not p.is_file():
            raise FileNotFoundError(f"source {cfg.name!r}: COCO file not found: {p}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"source {cfg.name!r}: image folder not found: {image_dir}")

    # Stored urls: relative to the recipe's folder unless the recipe named an absolute folder.
    url_dir = image_dir if Path(cfg.images).expanduser().is_absolute() else Path(portable_path(image_dir, ctx.recipe_dir))
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
        annotation_frames = {"caption": pl.scan_parquet(tmp / "captions.parquet")}
        if instances_path is not None:
            cats = _categories(instances_path)
            _stream_to_parquet(
                instances_path,
                "annotations.item",
                {"image_id": pa.int64(), "id": pa.int64(), "category_id": pa.int64(), "bbox": pa.list_(pa.float64()),
                 "iscrowd": pa.int64(), "attributes": pa.list_(pa.string()), "score": pa.float64()},
                tmp / "instances.parquet",
            )
            annotation_frames["instance"] = pl.scan_parquet(tmp / "instances.parquet")
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
        orphans = _orphans(images, annotation_frames)
        if orphans:
            yield StepOutput(pa.Table.from_pylist([], schema=PAIR_SCHEMA),
                             _orphan_rejects(orphans, cfg, captions_path, instances_path))
        for batch in pq.ParquetFile(tmp / "joined.parquet").iter_batches(batch_size=cfg.batch_size):
            rows = batch.to_pylist()
            for r in rows:  # COCO-CN: Chinese captions after the English ones
                r["captions"] = (r.get("captions") or []) + zh.get(r["id"], [])
            yield StepOutput(_to_pairs(rows, cfg, url_dir, has_instances=instances_path is not None,
                                       instances_path=instances_path))


def _orphan_rejects(orphans: dict[int, dict[str, int]], cfg: CocoSource, captions_path: Path,
                    instances_path: Path | None) -> pa.Table:
    files = {"caption": captions_path, "instance": instances_path}
    rows = []
    for image_id in sorted(orphans):
        what = ", ".join(f"{n} {kind}(s) in {files[kind].name}" for kind, n in sorted(orphans[image_id].items()))
        rows.append(reject({"key": make_key(cfg.name, f"orphan_{image_id}"), "source": cfg.name}, "source",
                           "orphan_annotation", f"{what} for image_id {image_id}, which is not in the images list"))
    return rejects_table(rows)


def _to_pairs(rows: list[dict], cfg: CocoSource, url_dir: Path, has_instances: bool,
              instances_path: Path | None = None) -> pa.Table:
    out = []
    for r in rows:
        captions = [c for c in (r.get("captions") or []) if c]
        objects = []
        for o in r.get("objects") or []:
            if o["label"] is None:
                raise InputFileError(
                    instances_path or cfg.instances or "", f"annotation {o['id']} of image {r['id']} has category_id"
                    f" {o['category_id']}, which is not in the file's categories",
                    "Add the category or remove the annotation", where=f"annotation id {o['id']}")
            bbox = o.get("bbox") or []
            if len(bbox) != 4:
                raise InputFileError(instances_path or cfg.instances or "",
                                     f"annotation {o['id']} bbox must be [x, y, w, h], got {bbox}",
                                     "Fix or remove the annotation", where=f"annotation id {o['id']}")
            objects.append({"label": o["label"], "bbox": bbox, "score": o.get("score"),
                            "attributes": o.get("attributes") or [], "iscrowd": bool(o.get("iscrowd") or 0)})
        out.append({
            "key": make_key(cfg.name, r["id"]),
            "source": cfg.name,
            "url": (url_dir / r["file_name"]).as_posix(),
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

