"""Build the demo's Visual Genome-style files and Wukong-style table from ``demo/annotations/vg_source.yaml``.

    python -m datagen.assets.build_vg_demo            # writes into datagen/assets/demo
    python -m datagen.assets.build_vg_demo --out DIR  # writes a copy elsewhere

The VG files follow the published v1.2/1.4 layouts (each a JSON list with one entry
per image, keyed by ``image_id``), so the demo exercises the same reader as the real
set. Image sizes come from the JPEGs; synsets from ``datagen.synth.vocab``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from datagen.synth.vocab import CONCEPTS, PREDICATES

DEMO_DIR = Path(__file__).resolve().parent / "demo"
SOURCE = DEMO_DIR / "annotations" / "vg_source.yaml"
FIRST_ID = 1001  # VG-style image ids of the demo


def _obj(o: dict) -> dict:
    x, y, w, h = o["bbox"]
    return {"object_id": o["id"], "x": x, "y": y, "w": w, "h": h, "names": [o["name"]],
            "synsets": [CONCEPTS[o["name"]].synset]}


def build(out: Path, source: Path = SOURCE, images_dir: Path = DEMO_DIR / "images") -> None:
    spec = yaml.safe_load(source.read_text())
    image_data, objects, attributes, relationships, regions = [], [], [], [], []
    rel_id, reg_id = 1, 1
    for n, img in enumerate(spec["images"]):
        iid = FIRST_ID + n
        with Image.open(images_dir / img["file"]) as im:
            width, height = im.size
        for o in img["objects"]:
            if o["name"] not in CONCEPTS:
                raise ValueError(f"{source}: {img['file']} object {o['id']}: {o['name']!r} is not in the vocabulary")
            x, y, w, h = o["bbox"]
            if x < 0 or y < 0 or x + w > width or y + h > height:
                raise ValueError(f"{source}: {img['file']} object {o['id']}: bbox {o['bbox']} leaves the {width}x{height} image")
        by_id = {o["id"]: o for o in img["objects"]}
        image_data.append({"image_id": iid, "url": f"images/{img['file']}", "width": width, "height": height,
                           "coco_id": None, "flickr_id": None})
        objects.append({"image_id": iid, "objects": [_obj(o) for o in img["objects"]]})
        attributes.append({"image_id": iid, "attributes": [{**_obj(o), "attributes": o.get("attributes") or []}
                                                           for o in img["objects"]]})
        rels = []
        for s, p, o in img.get("relationships") or []:
            if p not in PREDICATES:
                raise ValueError(f"{source}: {img['file']}: predicate {p!r} is not in vocab.PREDICATES")
            rels.append({"relationship_id": rel_id, "predicate": p, "synsets": [],
                         "subject": {**_obj(by_id[s]), "name": by_id[s]["name"]},
                         "object": {**_obj(by_id[o]), "name": by_id[o]["name"]}})
            rel_id += 1
        relationships.append({"image_id": iid, "relationships": rels})
        regs = []
        for r in img.get("regions") or []:
            x, y, w, h = r["bbox"]
            regs.append({"region_id": reg_id, "image_id": iid, "phrase": r["phrase"], "x": x, "y": y, "width": w, "height": h})
            reg_id += 1
        regions.append({"id": iid, "regions": regs})
    vg = out / "vg"
    vg.mkdir(parents=True, exist_ok=True)
    for name, data in (("image_data", image_data), ("objects", objects), ("attributes", attributes),
                       ("relationships", relationships), ("region_descriptions", regions)):
        (vg / f"{name}.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    rows = spec["wukong"]
    pq.write_table(pa.table({"url": [f"images/{r['file']}" for r in rows], "caption": [r["caption"] for r in rows]}),
                   out / "wukong_demo.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_DIR)
    args = ap.parse_args()
    build(args.out)


if __name__ == "__main__":
    main()
