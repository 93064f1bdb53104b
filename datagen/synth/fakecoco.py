"""A deterministic, COCO-shaped annotation set without pixels, for tests and benchmarks.

Real COCO cannot be downloaded here, and the synthesis step never looks at
pixels, so a generator that reproduces COCO's structure is enough: the 80
categories with real ids, scene clusters that make categories co-occur the way
they do in COCO (zebras with giraffes, forks with dining tables), several
instances per category, crowd regions for people and some animals, colour
attributes on some objects, five captions per image written from the
annotations, and OCR lines on images with signs. ``fake_coco_json`` gives the
COCO instances/captions layout; ``fake_coco_pairs`` the pair rows the step reads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa

from datagen.records import PAIR_SCHEMA, make_key, to_json
from datagen.synth.lexicon import BY_ID, LEXICON, en_count_phrase, en_with_article, term, zh_count_phrase

SCENES: dict[str, list[str]] = {
    "street": ["person", "car", "bus", "truck", "traffic light", "stop sign", "bicycle", "motorcycle", "fire hydrant", "parking meter", "bench", "handbag", "umbrella"],
    "savanna": ["zebra", "giraffe", "elephant", "bird"],
    "farm": ["cow", "sheep", "horse", "person", "dog", "truck"],
    "living_room": ["couch", "tv", "remote", "chair", "potted plant", "book", "clock", "vase", "cat", "dog"],
    "dining": ["dining table", "pizza", "cup", "fork", "knife", "spoon", "bowl", "wine glass", "bottle", "sandwich", "cake", "chair", "person"],
    "sports": ["person", "sports ball", "baseball bat", "baseball glove", "tennis racket", "frisbee", "kite"],
    "board": ["person", "skateboard", "surfboard", "skis", "snowboard", "backpack"],
    "office": ["laptop", "mouse", "keyboard", "cell phone", "book", "cup", "chair"],
    "bathroom": ["toilet", "sink", "toothbrush", "hair drier", "scissors"],
    "kitchen": ["refrigerator", "oven", "microwave", "toaster", "sink", "bottle", "bowl"],
    "market": ["banana", "apple", "orange", "broccoli", "carrot", "hot dog", "donut", "person"],
    "travel": ["suitcase", "backpack", "handbag", "umbrella", "person", "tie", "train", "bench"],
    "bedroom": ["bed", "teddy bear", "cat", "book", "clock"],
    "water": ["boat", "person", "bird", "surfboard"],
    "airport": ["airplane", "truck", "person"],
    "wild": ["bear", "bird"],
}
assert set().union(*SCENES.values()) == set(LEXICON), "every category must occur in some scene"

CROWD_LABELS = ("person", "sheep", "bird", "cow", "zebra", "car", "book")
COLOUR_ATTRS = ("red", "white", "black", "blue", "green", "yellow", "brown", "gray", "orange", "pink", "silver")
SIGN_TEXTS = {"stop sign": ["STOP"], "bus": ["EXPRESS", "42 DOWNTOWN"], "train": ["NORTHBOUND"], "parking meter": ["PAY HERE"], "laptop": ["LOGIN"]}


def _image(rng: random.Random, idx: int, image_id: int) -> tuple[dict, list[dict], list[str], list[dict]]:
    width, height = rng.choice([(640, 480), (480, 640), (640, 427), (500, 375), (612, 612)])
    scenes = rng.sample(sorted(SCENES), 1 if rng.random() < 0.7 else 2)
    pool = sorted(set().union(*(SCENES[s] for s in scenes)))
    labels = rng.sample(pool, min(len(pool), rng.randint(1, 4)))
    anns = []
    for lab in labels:
        n = rng.choice([1, 1, 1, 2, 2, 3, 4, 6]) if lab != "person" else rng.choice([1, 2, 3, 5, 8])
        for _ in range(n):
            w = rng.uniform(0.05, 0.5) * width
            h = rng.uniform(0.05, 0.5) * height
            x = rng.uniform(0, width - w)
            y = rng.uniform(0, height - h)
            attrs = [rng.choice(COLOUR_ATTRS)] if rng.random() < 0.3 else []
            if attrs and rng.random() < 0.2:
                attrs.append(rng.choice([c for c in COLOUR_ATTRS if c != attrs[0]]))
            anns.append({"label": lab, "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "attributes": attrs, "iscrowd": False})
        if lab in CROWD_LABELS and rng.random() < 0.08:
            anns.append({"label": lab, "bbox": [0.0, round(height * 0.5, 2), float(width), round(height * 0.5, 2)], "attributes": [], "iscrowd": True})
    captions = _captions(rng, anns)
    ocr = []
    for lab in labels:
        if lab in SIGN_TEXTS and rng.random() < 0.7:
            box = next(a["bbox"] for a in anns if a["label"] == lab)
            ocr.append({"text": rng.choice(SIGN_TEXTS[lab]), "bbox": box, "score": round(rng.uniform(0.3, 0.99), 3)})
    # A separate stream, so the annotations above stay what they were before these were added.
    side = random.Random(f"fakecoco-side:{image_id}")
    if ocr and side.random() < 0.8:  # people describing a sign usually say what it reads
        captions[-1] = f"{captions[0].rstrip('.')} with a sign that reads {ocr[0]['text'].lower()}"
    if side.random() < 0.5:  # COCO-CN style: Chinese captions for half of the images
        captions += _zh_captions(side, anns)
    info = {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height}
    return info, anns, captions, ocr


def _zh_captions(rng: random.Random, anns: list[dict]) -> list[str]:
    counts: dict[str, int] = {}
    for a in anns:
        if not a["iscrowd"]:
            counts[a["label"]] = counts.get(a["label"], 0) + 1
    labs = sorted(counts, key=lambda lab: -counts[lab]) or [anns[0]["label"]]
    main = zh_count_phrase(labs[0], counts.get(labs[0], 2)) if counts else f"许多{term(labs[0]).zh}"
    other = term(labs[1]).zh if len(labs) > 1 else None
    templates = [
        f"画面中有{main}" + (f"，旁边还有{other}。" if other else "。"),
        f"这是一张拍摄{main}的照片" + (f"，背景里能看到{other}。" if other else "，画面很清楚。"),
        f"照片里可以看到{main}" + (f"和{other}。" if other else "。"),
        f"一张关于{main}的照片，构图简单，主体位于画面中央。",
    ]
    rng.shuffle(templates)
    return templates[:2]


def _captions(rng: random.Random, anns: list[dict]) -> list[str]:
    counts: dict[str, int] = {}
    for a in anns:
        if not a["iscrowd"]:
            counts[a["label"]] = counts.get(a["label"], 0) + 1
    labs = sorted(counts, key=lambda lab: -counts[lab])
    if not labs:  # crowd only
        labs, counts = [anns[0]["label"]], {anns[0]["label"]: 2}
    main = labs[0]
    main_phrase = en_with_article(main) if counts[main] == 1 else en_count_phrase(main, counts[main])
    other = labs[1] if len(labs) > 1 else None
    other_phrase = (en_with_article(other) if counts[other] == 1 else f"some {term(other).en_plural}") if other else None
    templates = [
        f"{main_phrase} in a photo",
        f"a picture showing {main_phrase}" + (f" and {other_phrase}" if other else ""),
        f"{main_phrase} can be seen here" if other is None else f"{main_phrase} next to {other_phrase}",
        f"a view of {main_phrase}",
        f"a scene with {main_phrase}" + (f" with {other_phrase}" if other else ""),
        f"{main_phrase} photographed up close",
    ]
    rng.shuffle(templates)
    return [t[0].upper() + t[1:] if rng.random() < 0.5 else t for t in templates[:5]]


def fake_coco_json(n: int, seed: int = 0) -> dict[str, Any]:
    """COCO layout: images, annotations (category_id, bbox, iscrowd, area), categories, captions,
    plus non-standard ``attributes`` on annotations and ``ocr`` per image id."""
    rng = random.Random(f"fakecoco:{seed}")
    images, annotations, captions, ocr = [], [], [], {}
    ann_id = 1
    for i in range(n):
        image_id = 100000 + i
        info, anns, caps, lines = _image(rng, i, image_id)
        images.append(info)
        for a in anns:
            x, y, w, h = a["bbox"]
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": term(a["label"]).id, "bbox": a["bbox"],
                                "area": round(w * h, 2), "iscrowd": int(a["iscrowd"]), "attributes": a["attributes"]})
            ann_id += 1
        for c in caps:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": c})
        if lines:
            ocr[image_id] = lines
    categories = [{"id": t.id, "name": name, "supercategory": t.supercategory} for name, t in sorted(LEXICON.items(), key=lambda kv: kv[1].id)]
    return {"images": images, "annotations": annotations, "categories": categories, "captions": captions, "ocr": ocr}


def pairs_from_coco_json(coco: dict[str, Any], source: str = "fakecoco") -> pa.Table:
    """Pair rows (PAIR_SCHEMA plus an ``ocr`` column) from the layout above, or from a real
    COCO instances dict merged with its captions (``coco["captions"]`` = the captions file's
    annotations). Category names come from the file's own ``categories``."""
    names = {c["id"]: c["name"] for c in coco.get("categories", [])} or BY_ID
    by_img: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    caps: dict[int, list[str]] = {}
    for c in coco["captions"]:
        caps.setdefault(c["image_id"], []).append(c["caption"])
    rows = []
    for im in coco["images"]:
        objs = [{"label": names[a["category_id"]], "bbox": [float(v) for v in a["bbox"]], "score": None,
                 "attributes": a.get("attributes") or [], "iscrowd": bool(a["iscrowd"])} for a in by_img.get(im["id"], [])]
        c = caps.get(im["id"], [])
        rows.append({
            "key": make_key(source, im["id"]), "source": source, "url": None, "caption": c[0] if c else None,
            "image": None, "image_sha256": None, "width": im["width"], "height": im["height"],
            "objects": objs, "captions": c, "meta": to_json({"image_id": im["id"]}),
            "ocr": coco.get("ocr", {}).get(im["id"], []),
        })
    ocr_type = pa.list_(pa.struct([("text", pa.string()), ("bbox", pa.list_(pa.float64())), ("score", pa.float64())]))
    schema = PAIR_SCHEMA.append(pa.field("ocr", ocr_type))
    return pa.Table.from_pylist(rows, schema=schema)


def pairs_from_coco_files(instances: str | Path, captions: str | Path | None = None, source: str = "coco") -> pa.Table:
    """Pair rows from COCO ``instances_*.json`` (+ ``captions_*.json``), for checking real annotation files."""
    coco = json.loads(Path(instances).read_text())
    coco["captions"] = json.loads(Path(captions).read_text())["annotations"] if captions else []
    coco.setdefault("ocr", {})
    return pairs_from_coco_json(coco, source)


def fake_coco_pairs(n: int, seed: int = 0) -> pa.Table:
    return pairs_from_coco_json(fake_coco_json(n, seed))
