"""Rebuild the bundled demo data set (``datagen/assets/demo/``) from its hand-written source.

Why a builder: the demo must be reproducible and reviewable. The photographs come
from images that ship inside the scikit-image and scikit-learn wheels (no network),
the annotations were written by a person looking at each picture, and everything
else (JPEGs, COCO json, LAION parquet, CC3M tsv, the deliberately broken rows) is
derived here. Edit ``demo/annotations/source.yaml`` or the tables below, run

    python -m datagen.assets.build_demo            # writes into datagen/assets/demo
    python -m datagen.assets.build_demo --out DIR  # writes a copy elsewhere

and commit the result. scikit-image and scikit-learn are build-time (dev) only:
the pipeline never imports them. ``instructions_demo.jsonl``, ``README.md`` and
``LICENSES.md`` are hand-written and not touched by this script.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

DEMO_DIR = Path(__file__).resolve().parent / "demo"
SOURCE_YAML = DEMO_DIR / "annotations" / "source.yaml"
MAX_SIDE = 512  # longer side of every shipped photograph
JPEG_QUALITY = 90

# The 80 COCO 2017 categories with their real ids (1-90 with gaps) and supercategories.
COCO_CATEGORIES: list[tuple[int, str, str]] = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
    (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
    (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]
CATEGORY_ID = {name: cid for cid, name, _ in COCO_CATEGORIES}

# COCO `licenses` table; LICENSES.md gives the per-image evidence.
LICENSES = [
    {"id": 1, "name": "CC0 1.0 Universal", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
    {"id": 2, "name": "Public domain (no known copyright restrictions)",
     "url": "https://creativecommons.org/publicdomain/mark/1.0/"},
    {"id": 3, "name": "CC BY 2.0", "url": "https://creativecommons.org/licenses/by/2.0/"},
    {"id": 4, "name": "No licence stated by the source; redistributed in scikit-image; attribution: "
     "Middlebury 2014 stereo datasets (Scharstein et al., GCPR 2014)",
     "url": "https://vision.middlebury.edu/stereo/data/scenes2014/"},
]
# licence id per package image, from the image's own docstring / README in the wheel
ORIGIN_LICENSE = {
    "skimage:astronaut": 2, "skimage:camera": 1, "skimage:chelsea": 1, "skimage:coffee": 1,
    "skimage:rocket": 2, "skimage:motorcycle_left": 4, "skimage:motorcycle_right": 4,
    "skimage:clock": 2, "skimage:coins": 2, "skimage:horse": 1, "skimage:text": 2,
    "skimage:hubble_deep_field": 2, "skimage:retina": 1,
    "skimage:brick": 1, "sklearn:china.jpg": 3, "sklearn:flower.jpg": 3,
}
LICENSE_URL = {lic["id"]: lic["url"] for lic in LICENSES}

# ---------------------------------------------------------------- LAION-style table
# Hand-chosen stand-ins for LAION's precomputed columns: `similarity` is NOT a real
# CLIP score (the pipeline recomputes clip_score itself); they only have to look
# like the real columns so the reader and filters see realistic types and ranges.
# file -> (similarity, punsafe, pwatermark)
LAION_SCORES: dict[str, tuple[float, float, float]] = {
    "astronaut.jpg": (0.352, 0.002, 0.031), "camera.jpg": (0.318, 0.001, 0.022),
    "chelsea.jpg": (0.341, 0.003, 0.015), "coffee.jpg": (0.337, 0.001, 0.044),
    "rocket.jpg": (0.329, 0.001, 0.067), "motorcycle_left.jpg": (0.334, 0.001, 0.052),
    "motorcycle_right.jpg": (0.301, 0.001, 0.049), "clock.jpg": (0.287, 0.002, 0.018),
    "china.jpg": (0.345, 0.001, 0.083), "flower.jpg": (0.326, 0.004, 0.027),
    "coins.jpg": (0.331, 0.001, 0.121), "horse.jpg": (0.309, 0.002, 0.064),
    "text.jpg": (0.296, 0.001, 0.874), "hubble.jpg": (0.339, 0.001, 0.036),
    "retina.jpg": (0.322, 0.011, 0.019), "astronaut_shuttle.jpg": (0.298, 0.001, 0.024),
    "astronaut_helmet.jpg": (0.291, 0.001, 0.021), "camera_skyline.jpg": (0.283, 0.001, 0.017),
    "camera_tripod.jpg": (0.307, 0.001, 0.019), "coffee_spoon.jpg": (0.289, 0.001, 0.029),
    "motorcycle_shelf.jpg": (0.276, 0.001, 0.058), "motorcycle_bench.jpg": (0.281, 0.001, 0.033),
    "motorcycle_engine.jpg": (0.314, 0.001, 0.071), "china_lake.jpg": (0.303, 0.001, 0.046),
    "china_boats.jpg": (0.294, 0.001, 0.022),
    "china_pagoda.jpg": (0.327, 0.001, 0.039), "rocket_pad.jpg": (0.319, 0.001, 0.028),
}

# The deliberately bad LAION rows. `reject` is the reason the pipeline is expected
# to give (documented in demo/README.md; tests check each row is present).
# (URL, TEXT, WIDTH, HEIGHT, what is wrong)
LAION_BAD_ROWS: list[tuple[str, str, int | None, int | None, str]] = [
    ("images/missing.jpg", "sunset over the harbor canvas print", 640, 480, "missing_file"),
    ("images/corrupt.jpg", "astronaut portrait high resolution", 512, 512, "corrupt_image"),
    ("images/not_an_image.jpg", "free stock photo download", 800, 600, "not_an_image"),
    ("images/brick.jpg", "", 512, 512, "empty_caption"),
    ("images/chelsea.jpg", "tabby kitten wallpaper hd", 451, 300, "duplicate_url"),
    ("images/tiny.jpg", "cat face thumbnail", 40, 30, "too_small"),
    ("images/panorama.jpg", "vintage motorcycle garage wide banner", 741, 200, "extreme_aspect_ratio"),
]

# ----------------------------------------------------------------- CC3M-style tsv
# caption<TAB>url, no header. CC3M captions are lower-case and hypernymised.
CC_ROWS: list[str] = [
    "portrait of an astronaut in her flight suit\timages/astronaut.jpg",
    "a man films with a video camera on a tripod\timages/camera.jpg",
    "close up of a cat with green eyes\timages/chelsea.jpg",
    "a cup of espresso on a wooden table\timages/coffee.jpg",
    "rocket on the launch pad at dusk\timages/rocket.jpg",
    "motorcycle parked in a garage\timages/motorcycle_left.jpg",
    "pagoda above a lake in the summer\timages/china.jpg",
    "orange flower in the garden\timages/flower.jpg",
    # malformed on purpose: a space where the tab should be (one field, not two)
    "wall clock in motion images/clock.jpg",
    "ancient coins on display at the museum\timages/coins.jpg",
    "handwritten equations on paper\timages/text.jpg",
]


# ------------------------------------------------------------------------- images

def load_origin(origin: str) -> np.ndarray:
    """The full-size package image named ``skimage:<function>`` or ``sklearn:<file>``."""
    kind, _, name = origin.partition(":")
    if kind == "skimage":
        import skimage.data as data

        if name in ("motorcycle_left", "motorcycle_right"):
            left, right, _disp = data.stereo_motorcycle()
            arr = left if name == "motorcycle_left" else right
        else:
            arr = getattr(data, name)()
    elif kind == "sklearn":
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(name)
    else:
        raise ValueError(f"unknown origin {origin!r}: expected 'skimage:<name>' or 'sklearn:<file>'")
    if arr.dtype == bool:  # skimage.data.horse() is a boolean silhouette
        arr = np.where(arr, 255, 0).astype(np.uint8)
    return arr


def render(entry: dict) -> Image.Image:
    """Crop, then scale (explicit ``scale`` or shrink-to-512) one source entry."""
    img = Image.fromarray(load_origin(entry["origin"]))
    if entry.get("crop"):
        img = img.crop(tuple(entry["crop"]))
    scale = entry.get("scale")
    if scale is None and max(img.size) > MAX_SIDE:
        scale = MAX_SIDE / max(img.size)
    if scale is not None and scale != 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    if max(img.size) > MAX_SIDE:
        raise ValueError(f"{entry['file']}: {img.size} exceeds {MAX_SIDE} px on the longer side")
    return img


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False)
    return buf.getvalue()


def bad_images() -> dict[str, bytes]:
    """The broken or unusable files that the LAION table points at on purpose."""
    astronaut = jpeg_bytes(Image.fromarray(load_origin("skimage:astronaut")))
    chelsea = Image.fromarray(load_origin("skimage:chelsea"))
    motorcycle = Image.fromarray(load_origin("skimage:motorcycle_left"))
    # full width, 200 rows: shorter side passes a 200 px rule, aspect 3.7 fails "<= 3"
    panorama = motorcycle.crop((0, 200, 741, 400))
    return {
        # a real JPEG cut to a quarter of its bytes: the header parses, decoding fails
        "corrupt.jpg": astronaut[: len(astronaut) // 4],
        "not_an_image.jpg": b"This is a plain text file with a .jpg name.\n"
        b"The demo LAION table points at it so the fetch step rejects it.\n",
        "tiny.jpg": jpeg_bytes(chelsea.resize((40, 30), Image.LANCZOS)),
        "panorama.jpg": jpeg_bytes(panorama),
    }


# ------------------------------------------------------------------- annotations

def load_source(path: Path = SOURCE_YAML) -> list[dict]:
    """Read and check the hand-written source; errors name the file, entry and field."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))["images"]
    seen: set[str] = set()
    for i, e in enumerate(entries):
        where = f"{path}: images[{i}] ({e.get('file')!r})"
        for k in ("file", "origin", "alt_text", "captions", "objects"):
            if k not in e:
                raise ValueError(f"{where}: missing key {k!r}")
        if e["file"] in seen:
            raise ValueError(f"{where}: duplicate file name")
        seen.add(e["file"])
        if e["origin"] not in ORIGIN_LICENSE:
            raise ValueError(f"{where}: origin {e['origin']!r} has no licence entry in ORIGIN_LICENSE")
        if len(e["captions"]) != 5 or len(set(e["captions"])) != 5:
            raise ValueError(f"{where}: expected five distinct captions, got {len(set(e['captions']))}")
        zh = e.get("captions_zh") or []
        if zh and (len(set(zh)) != len(zh) or not all(any("\u4e00" <= ch <= "\u9fff" for ch in c) for c in zh)):
            raise ValueError(f"{where}: captions_zh must be distinct Chinese sentences")
        for j, o in enumerate(e["objects"]):
            if o["label"] not in CATEGORY_ID:
                raise ValueError(f"{where}: objects[{j}] label {o['label']!r} is not a COCO category")
    return entries


def crowd_rle(x: int, y: int, w: int, h: int, width: int, height: int) -> dict:
    """Uncompressed COCO RLE of a box mask (column-major, runs start with zeros)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [height, width]}


def coco_files(entries: list[dict], sizes: dict[str, tuple[int, int]]) -> tuple[dict, dict]:
    """(captions_demo2017, instances_demo2017) as dicts in the COCO 2017 layout."""
    info = {
        "description": "datagen demo set: package-bundled photographs annotated by hand",
        "version": "1.0",
        "year": 2026,
        "contributor": "datagen",
        "date_created": "2026-11-22",
    }
    images, captions, instances = [], [], []
    for image_id, e in enumerate(entries, start=1):
        width, height = sizes[e["file"]]
        images.append({"id": image_id, "file_name": e["file"], "width": width, "height": height,
                       "license": ORIGIN_LICENSE[e["origin"]], "coco_url": None})
        for text in e["captions"] + list(e.get("captions_zh") or []):  # English first: a row's caption is its first
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
        for j, o in enumerate(e["objects"]):
            x, y, w, h = (int(v) for v in o["bbox"])
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
                raise ValueError(f"{e['file']}: objects[{j}] bbox {o['bbox']} outside {width}x{height}")
            crowd = bool(o.get("iscrowd", False))
            seg: Any = crowd_rle(x, y, w, h, width, height) if crowd else [[x, y, x + w, y, x + w, y + h, x, y + h]]
            instances.append({"id": len(instances) + 1, "image_id": image_id,
                              "category_id": CATEGORY_ID[o["label"]], "bbox": [x, y, w, h],
                              "area": w * h, "iscrowd": int(crowd), "segmentation": seg,
                              "attributes": list(o.get("attributes", []))})
    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in COCO_CATEGORIES]
    common = {"info": info, "licenses": LICENSES, "images": images}
    return {**common, "annotations": captions}, {**common, "annotations": instances, "categories": categories}


# ------------------------------------------------------------------ LAION and CC

def laion_hash(url: str, text: str) -> int:
    """A stable signed 64-bit id like LAION's `hash` column (theirs is murmur of url+text)."""
    return int.from_bytes(hashlib.sha1(f"{url}\x1f{text}".encode()).digest()[:8], "big", signed=True)


def laion_table(entries: list[dict], sizes: dict[str, tuple[int, int]]) -> pa.Table:
    rows = []
    for e in entries:
        if e["file"] not in LAION_SCORES:
            continue
        sim, punsafe, pwm = LAION_SCORES[e["file"]]
        url = f"images/{e['file']}"
        w, h = sizes[e["file"]]
        rows.append((url, e["alt_text"], w, h, sim, LICENSE_URL[ORIGIN_LICENSE[e["origin"]]], punsafe, pwm))
    for url, text, w, h, _why in LAION_BAD_ROWS:
        rows.append((url, text, w, h, 0.300, "?", 0.001, 0.030))
    cols = list(zip(*rows))
    return pa.table(
        {
            "URL": pa.array(cols[0], pa.string()),
            "TEXT": pa.array(cols[1], pa.string()),
            "WIDTH": pa.array(cols[2], pa.int64()),
            "HEIGHT": pa.array(cols[3], pa.int64()),
            "similarity": pa.array(cols[4], pa.float64()),
            "NSFW": pa.array(["UNLIKELY"] * len(rows), pa.string()),
            "LICENSE": pa.array(cols[5], pa.string()),
            "punsafe": pa.array(cols[6], pa.float32()),
            "pwatermark": pa.array(cols[7], pa.float32()),
            "hash": pa.array([laion_hash(r[0], r[1]) for r in rows], pa.int64()),
        }
    )


# ------------------------------------------------------------------------- build

def build(out: Path = DEMO_DIR, source: Path = SOURCE_YAML) -> dict[str, Any]:
    """Write every derived demo file under ``out``; returns a small summary."""
    entries = load_source(source)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    sizes: dict[str, tuple[int, int]] = {}
    for e in entries:
        img = render(e)
        sizes[e["file"]] = img.size
        (out / "images" / e["file"]).write_bytes(jpeg_bytes(img))
    for name, data in bad_images().items():
        (out / "images" / name).write_bytes(data)
    captions, instances = coco_files(entries, sizes)
    for name, obj in (("captions_demo2017.json", captions), ("instances_demo2017.json", instances)):
        (out / "annotations" / name).write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    table = laion_table(entries, sizes)
    pq.write_table(table, out / "laion_demo.parquet", compression="zstd")
    (out / "cc_demo.tsv").write_text("\n".join(CC_ROWS) + "\n", encoding="utf-8")
    return {"images": len(entries), "captions": len(captions["annotations"]),
            "instances": len(instances["annotations"]), "laion_rows": table.num_rows, "cc_rows": len(CC_ROWS)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_DIR, help="output folder (default: the bundled demo folder)")
    ap.add_argument("--source", type=Path, default=SOURCE_YAML, help="hand-written annotation source (YAML)")
    args = ap.parse_args(argv)
    print(json.dumps(build(args.out, args.source)))


if __name__ == "__main__":
    main()
