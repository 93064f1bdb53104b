"""Visual Genome reader (v1.2 / v1.4 layouts): image_data + objects + attributes +
relationships + region descriptions + image folder -> pair rows.

Every VG file is one JSON list with an entry per image (``objects.json`` of
v1.4 is about 400 MB, ``relationships.json`` 700 MB), so none is ever loaded
whole: ``ijson`` streams one image's entry at a time, flattens it into rows of
small parquet files under the run directory, split by image-id range
(``IMAGES_PER_PART`` images each), and polars joins one range at a time, so
memory follows the range and not the files (``bench/bench_vg.py``).

What a pair row gets:
- ``objects``: one per VG object (``object_id``), its first name as ``label``,
  all synsets, ``[x, y, w, h]`` box and the attribute words of ``attributes.json``
  (merged by ``object_id``). Objects that only appear as a relationship's
  subject or object are added from the relationship's own copy.
- ``meta.relationships``: ``{subject, predicate, object}`` with subject/object as
  indexes into ``objects`` (so boxes moved by the fetch step stay attached).
- ``meta.regions``: region descriptions ``{phrase, bbox}`` in pixels of the
  ORIGINAL image, with ``meta.vg_width``/``vg_height`` to scale them to the
  stored image.
- ``caption`` (and ``captions``): the phrase of the largest region. VG has no
  whole-image captions and stage 1 needs one; the other phrases describe parts
  and stay in ``meta.regions`` (a part is not a description of the image).
"""

from __future__ import annotations

import bisect
import tempfile
from pathlib import Path
from typing import Any, Iterator

import ijson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from datagen.core.records import PAIR_SCHEMA, make_key, to_json
from datagen.sources.config import VisualGenomeSource
from datagen.sources.tables import portable_path
from datagen.core.steps import RunContext, StepOutput

_CHUNK = 5_000  # rows buffered per part file before a write
IMAGES_PER_PART = 5_000  # the per-image join runs one id range of about this many images at a time
_BOX = [("x", pa.float64()), ("y", pa.float64()), ("w", pa.float64()), ("h", pa.float64())]
_TABLES: dict[str, list[tuple[str, pa.DataType]]] = {
    "images": [("image_id", pa.int64()), ("url", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
               ("coco_id", pa.int64()), ("flickr_id", pa.int64())],
    "objects": [("image_id", pa.int64()), ("object_id", pa.int64()), ("name", pa.string()),
                ("synsets", pa.list_(pa.string())), *_BOX, ("rank", pa.int64())],
    "attributes": [("image_id", pa.int64()), ("object_id", pa.int64()), ("attributes", pa.list_(pa.string()))],
    "relationships": [("image_id", pa.int64()), ("relationship_id", pa.int64()), ("predicate", pa.string()),
                      ("subject_id", pa.int64()), ("object_id", pa.int64())],
    "regions": [("image_id", pa.int64()), ("region_id", pa.int64()), ("phrase", pa.string()), *_BOX],
}


def vg_files(cfg: VisualGenomeSource, ctx: RunContext) -> list[Path]:
    """The annotation files this source reads (for fingerprints), each checked to exist."""
    files = []
    for field in ("image_data", "objects", "attributes", "relationships", "region_descriptions"):
        p = getattr(cfg, field)
        if p is None:
            continue
        path = ctx.resolve(p)
        if not path.is_file():
            raise FileNotFoundError(f"source {cfg.name!r}: Visual Genome {field} file not found: {path}")
        files.append(path)
    return files


class _Writer:
    """Rows of one flattened table, written to parquet in chunks."""

    def __init__(self, path: Path, fields: list[tuple[str, pa.DataType]]):
        self.schema = pa.schema(fields)
        self.writer = pq.ParquetWriter(path, self.schema)
        self.buf: list[dict] = []

    def add(self, row: dict) -> None:
        self.buf.append(row)
        if len(self.buf) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.writer.write_table(pa.Table.from_pylist(self.buf, schema=self.schema))
            self.buf = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


class _Parts:
    """One flattened table split by image-id range: part ``b`` holds ids in ``[bounds[b], bounds[b+1])``.

    The join then holds one range at a time, so its memory follows IMAGES_PER_PART,
    not the size of the files (a whole-set polars join needs about three times it)."""

    def __init__(self, tmp: Path, table: str, bounds: list[int]):
        self.bounds = bounds
        self.parts = [_Writer(tmp / f"{table}-{b:05d}.parquet", _TABLES[table]) for b in range(len(bounds))]

    def add(self, row: dict) -> None:
        self.parts[max(0, bisect.bisect_right(self.bounds, row["image_id"]) - 1)].add(row)

    def close(self) -> None:
        for p in self.parts:
            p.close()


def _entries(path: Path, what: str) -> Iterator[tuple[int, dict]]:
    """(position, entry) of a VG per-image list, streamed; a clear error for anything else."""
    with open(path, "rb") as f:
        for i, entry in enumerate(ijson.items(f, "item", use_float=True)):
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: entry {i} of the {what} list is a {type(entry).__name__}, expected an object")
            yield i, entry


def _image_id(entry: dict, path: Path, i: int) -> int:
    # image_data/objects/attributes/relationships use image_id; region_descriptions v1.2 uses id
    iid = entry.get("image_id", entry.get("id"))
    if iid is None:
        raise ValueError(f"{path}: entry {i} has no image_id (or id); VG files are lists keyed by image_id")
    return int(iid)


def _box(d: dict, path: Path, where: str) -> dict:
    try:
        box = {k: float(d[k]) for k in ("x", "y", "w", "h")} if "w" in d else \
              {"x": float(d["x"]), "y": float(d["y"]), "w": float(d["width"]), "h": float(d["height"])}
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: {where}: expected numeric x, y, w, h (or width, height), got "
                         f"{ {k: d.get(k) for k in ('x', 'y', 'w', 'h', 'width', 'height') if k in d} }") from None
    return box


def _name(obj: dict) -> str | None:
    names = obj.get("names") or ([obj["name"]] if obj.get("name") else [])
    return " ".join(str(names[0]).lower().split()) if names else None


def _add_object(w: _Writer, iid: int, obj: dict, path: Path, where: str, rank: int) -> int:
    oid = obj.get("object_id", obj.get("id"))
    if oid is None:
        raise ValueError(f"{path}: {where} has no object_id")
    w.add({"image_id": iid, "object_id": int(oid), "name": _name(obj), "synsets": list(obj.get("synsets") or []),
           **_box(obj, path, where), "rank": rank})
    return int(oid)


def _flatten(cfg: VisualGenomeSource, ctx: RunContext, tmp: Path) -> int:
    """Stream every configured file into flat parquet tables under ``tmp``, split by id range; return the part count."""
    w = _Writer(tmp / "image_data.parquet", _TABLES["images"])
    path = ctx.resolve(cfg.image_data)
    for i, e in _entries(path, "image_data"):
        iid = _image_id(e, path, i)
        w.add({"image_id": iid, "url": e.get("url"), "width": e.get("width"), "height": e.get("height"),
               "coco_id": e.get("coco_id"), "flickr_id": e.get("flickr_id")})
    w.close()
    ids = sorted(pq.read_table(tmp / "image_data.parquet", columns=["image_id"]).column(0).to_pylist())
    bounds = ids[::IMAGES_PER_PART] or [0]
    images = _Parts(tmp, "images", bounds)
    for batch in pq.ParquetFile(tmp / "image_data.parquet").iter_batches(batch_size=_CHUNK):
        for row in batch.to_pylist():
            images.add(row)
    images.close()

    def items(field: str, key: str) -> Iterator[tuple[Path, int, str, dict]]:
        """(file, image id, where, item) for each item of each image's ``key`` list in ``cfg.<field>``."""
        if not getattr(cfg, field):
            return
        path = ctx.resolve(getattr(cfg, field))
        for i, e in _entries(path, field):
            iid = _image_id(e, path, i)
            for j, item in enumerate(e.get(key) or []):
                yield path, iid, f"image {iid} {key}[{j}]", item

    objs = _Parts(tmp, "objects", bounds)
    for path, iid, where, o in items("objects", "objects"):
        _add_object(objs, iid, o, path, where, 0)
    attrs = _Parts(tmp, "attributes", bounds)
    for path, iid, where, o in items("attributes", "attributes"):
        oid = _add_object(objs, iid, o, path, where, 1)
        words = [" ".join(str(a).lower().split()) for a in (o.get("attributes") or []) if str(a).strip()]
        attrs.add({"image_id": iid, "object_id": oid, "attributes": words})
    rels = _Parts(tmp, "relationships", bounds)
    for path, iid, where, r in items("relationships", "relationships"):
        if not isinstance(r.get("subject"), dict) or not isinstance(r.get("object"), dict):
            raise ValueError(f"{path}: {where}: expected subject and object objects")
        sid = _add_object(objs, iid, r["subject"], path, where + ".subject", 2)
        oid = _add_object(objs, iid, r["object"], path, where + ".object", 2)
        rels.add({"image_id": iid, "relationship_id": r.get("relationship_id", r.get("id")),
                  "predicate": " ".join(str(r.get("predicate") or "").lower().split()),
                  "subject_id": sid, "object_id": oid})
    regs = _Parts(tmp, "regions", bounds)
    for path, iid, where, r in items("region_descriptions", "regions"):
        phrase = " ".join(str(r.get("phrase") or "").split())
        if phrase:
            regs.add({"image_id": int(r.get("image_id", iid)), "region_id": r.get("region_id", r.get("id")),
                      "phrase": phrase, **_box(r, path, where)})
    for x in (objs, attrs, rels, regs):
        x.close()
    return len(bounds)


def read_visual_genome(cfg: VisualGenomeSource, ctx: RunContext) -> Iterator[StepOutput]:
    vg_files(cfg, ctx)
    image_dir = ctx.resolve(cfg.images)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"source {cfg.name!r}: image folder not found: {image_dir}")
    with tempfile.TemporaryDirectory(dir=ctx.run_dir, prefix=f"vg-{cfg.name}-") as tmp:
        tmp = Path(tmp)
        emitted = 0
        for b in range(_flatten(cfg, ctx, tmp)):
            joined = _join_part(tmp, b)
            if cfg.limit:
                joined = joined.head(cfg.limit - emitted)
            joined.sink_parquet(tmp / "joined.parquet")
            for batch in pq.ParquetFile(tmp / "joined.parquet").iter_batches(batch_size=cfg.batch_size):
                emitted += batch.num_rows
                rows = [_pair(r, cfg, image_dir, ctx) for r in batch.to_pylist()]
                yield StepOutput(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA))
            if cfg.limit and emitted >= cfg.limit:
                return


def _join_part(tmp: Path, b: int) -> pl.LazyFrame:
    """Images of id range ``b`` with their objects (attributes merged), relationships and regions."""
    part = lambda table: pl.scan_parquet(tmp / f"{table}-{b:05d}.parquet")  # noqa: E731
    box = ["x", "y", "w", "h"]
    # One row per object id: objects.json's copy first (rank 0), then attributes', then relationships'.
    objects = (part("objects").sort(["image_id", "object_id", "rank"])
               .unique(["image_id", "object_id"], keep="first", maintain_order=True))
    attrs = (part("attributes").explode("attributes").drop_nulls("attributes")
             .group_by(["image_id", "object_id"]).agg(pl.col("attributes").unique(maintain_order=True)))
    objects = (objects.join(attrs, on=["image_id", "object_id"], how="left")
               .sort(["image_id", "object_id"])  # a join keeps no order; objects come in object_id order
               .group_by("image_id", maintain_order=True)
               .agg(pl.struct(["object_id", "name", "synsets", *box, "attributes"]).alias("objects")))
    rels = (part("relationships").sort(["image_id", "relationship_id"])
            .group_by("image_id", maintain_order=True)
            .agg(pl.struct(["predicate", "subject_id", "object_id"]).alias("relationships")))
    regions = (part("regions").sort(["image_id", "region_id"])
               .group_by("image_id", maintain_order=True)
               .agg(pl.struct(["phrase", *box]).alias("regions")))
    return (part("images")
            .join(objects, on="image_id", how="left")
            .join(rels, on="image_id", how="left")
            .join(regions, on="image_id", how="left")
            .sort("image_id"))


def _image_path(image_dir: Path, iid: int, url: str | None) -> Path:
    """<images>/<sub>/<id>.jpg when the URL names a VG_100K-style subfolder that exists, else <images>/<file>."""
    name = url.rstrip("/").rsplit("/", 1)[-1] if url else f"{iid}.jpg"
    if url and "/" in url:
        sub = url.rstrip("/").rsplit("/", 2)[-2]
        if (image_dir / sub / name).is_file():
            return image_dir / sub / name
    return image_dir / name


def _pair(r: dict[str, Any], cfg: VisualGenomeSource, image_dir: Path, ctx: RunContext) -> dict[str, Any]:
    iid = r["image_id"]
    path = _image_path(image_dir, iid, r.get("url"))
    objects, index = [], {}
    for o in r.get("objects") or []:
        if not o["name"] or o["w"] <= 0 or o["h"] <= 0:
            continue  # VG has unnamed and zero-size objects; nothing can be said about them
        index[o["object_id"]] = len(objects)
        objects.append({"label": o["name"], "bbox": [o["x"], o["y"], o["w"], o["h"]], "score": None,
                        "attributes": o.get("attributes") or [], "iscrowd": False, "synsets": o.get("synsets") or []})
    relationships = [
        {"subject": index[x["subject_id"]], "predicate": x["predicate"], "object": index[x["object_id"]]}
        for x in r.get("relationships") or []
        if x["predicate"] and x["subject_id"] in index and x["object_id"] in index and x["subject_id"] != x["object_id"]
    ]
    regions = [{"phrase": x["phrase"], "bbox": [x["x"], x["y"], x["w"], x["h"]]} for x in r.get("regions") or []]
    by_area = sorted(regions, key=lambda x: -x["bbox"][2] * x["bbox"][3])
    captions = list(dict.fromkeys(x["phrase"] for x in by_area))
    return {
        "key": make_key(cfg.name, iid),
        "source": cfg.name,
        # like COCO: relative to the recipe's folder unless the recipe named an absolute folder
        "url": str(path) if Path(cfg.images).expanduser().is_absolute() else portable_path(path, ctx.recipe_dir),
        "caption": captions[0] if captions else None,
        "image": None,
        "image_sha256": None,
        "width": r.get("width"),
        "height": r.get("height"),
        "objects": objects,
        "captions": captions[:1],
        "meta": to_json({"image_id": iid, "vg_url": r.get("url"), "coco_id": r.get("coco_id"),
                         "flickr_id": r.get("flickr_id"), "vg_width": r.get("width"), "vg_height": r.get("height"),
                         "relationships": relationships, "regions": regions}),
    }
