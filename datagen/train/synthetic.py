"""Small synthetic shards in the exact shard layout the trainer consumes.

Why it exists: tests and ``bench/bench_train.py`` must run where no demo output
exists (a fresh GPU machine, CI). The images are flat backgrounds with one
coloured box per object, so labels are learnable and POPE probes are meaningful
in principle; nothing here is meant to look like real data.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import webdataset as wds
from PIL import Image, ImageDraw

from datagen.sinks.shards import stage2_images

CATEGORIES = {  # label -> (colour, Chinese name)
    "dog": ((200, 40, 40), "狗"),
    "cat": ((40, 200, 40), "猫"),
    "apple": ((40, 40, 200), "苹果"),
    "umbrella": ((200, 200, 40), "雨伞"),
    "car": ((40, 200, 200), "汽车"),
    "scissors": ((200, 40, 200), "剪刀"),
}


def _image(rng: random.Random, labels: list[str], size: int) -> tuple[bytes, list[dict]]:
    img = Image.new("RGB", (size, size), tuple(rng.randrange(0, 60) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    objects = []
    for label in labels:
        w, h = rng.randrange(size // 4, size // 2), rng.randrange(size // 4, size // 2)
        x, y = rng.randrange(0, size - w), rng.randrange(0, size - h)
        draw.rectangle([x, y, x + w, y + h], fill=CATEGORIES[label][0])
        objects.append({"label": label, "bbox": [x, y, w, h], "score": None, "attributes": [], "iscrowd": False})
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), objects


def _turn(role: str, content: str, polarity: str = "neutral", task: str = "existence") -> dict:
    return {"role": role, "content": content, "task": task, "polarity": polarity, "generator": "template"}


def _existence_conversations(key: str, present: list[str], absent: str) -> list[dict]:
    label = present[0]
    en = {
        "id": f"{key}-en",
        "lang": "en",
        "parent_id": None,
        "turns": [
            _turn("user", f"<image>\nIs there a {label} in the image?"),
            _turn("assistant", f"Yes, there is a {label}.", "positive"),
            _turn("user", f"Is there a {absent} in the image?"),
            _turn("assistant", f"No, there is no {absent} in the image.", "negative"),
        ],
    }
    zh_l, zh_a = CATEGORIES[label][1], CATEGORIES[absent][1]
    zh = {
        "id": f"{key}-zh",
        "lang": "zh",
        "parent_id": f"{key}-en",
        "turns": [
            _turn("user", f"<image>\n图中有{zh_l}吗？"),
            _turn("assistant", f"有，图中有{zh_l}。", "positive"),
            _turn("user", f"图中有{zh_a}吗？"),
            _turn("assistant", f"没有，图中没有{zh_a}。", "negative"),
        ],
    }
    return [en, zh]


def write_synthetic_shards(
    out_dir: str | Path,
    *,
    n_images: int = 16,
    n_multi: int = 4,
    n_text: int = 8,
    image_size: int = 48,
    per_shard: int = 8,
    seed: int = 0,
) -> Path:
    """Write stage1/, stage2/, stage2_text/ shards plus sizes.json and manifest.json; return out_dir."""
    out = Path(out_dir)
    rng = random.Random(seed)
    labels = sorted(CATEGORIES)
    sizes: dict[str, int] = {}
    images: list[tuple[str, bytes, list[str]]] = []

    def writer(split: str):
        (out / split).mkdir(parents=True, exist_ok=True)
        return wds.ShardWriter(str(out / split / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0)

    with writer("stage1") as sink:
        for i in range(n_images):
            key = f"synth_{i:05d}"
            present = rng.sample(labels, rng.randint(1, 2))
            jpg, objects = _image(rng, present, image_size)
            images.append((key, jpg, present))
            caption = "a picture of " + " and ".join(f"a {p}" for p in present)
            row = {
                "key": key, "source": "synthetic", "url": None, "caption": caption,
                "image_sha256": None, "width": image_size, "height": image_size,
                "objects": objects, "captions": [caption], "meta": "{}", "clip_score": None,
            }
            sink.write({"__key__": key, "jpg": jpg, "txt": caption, "json": json.dumps(row).encode()})

    with writer("stage2") as sink:
        for key, jpg, present in images:
            absent = rng.choice([c for c in labels if c not in present])
            row = {"key": key, "source": "synthetic", "images": [key],
                   "conversations": _existence_conversations(key, present, absent), "meta": {}}
            sink.write({"__key__": key, **stage2_images([jpg]), "json": json.dumps(row, ensure_ascii=False).encode()})
        for j in range(n_multi):
            (ka, ja, _), (kb, jb, pb) = rng.sample(images, 2)
            key = f"synthmulti_{j:05d}"
            conv = {
                "id": f"{key}-en", "lang": "en", "parent_id": None,
                "turns": [
                    _turn("user", "Image 0 is <image_0>. Image 1 is <image_1>. What is in image 1?", task="multi"),
                    _turn("assistant", f"Image 1 shows a {pb[0]}.", "positive", task="multi"),
                ],
            }
            row = {"key": key, "source": "synthetic", "images": [ka, kb], "conversations": [conv], "meta": {}}
            sink.write({"__key__": key, **stage2_images([ja, jb]), "json": json.dumps(row).encode()})

    with writer("stage2_text") as sink:
        for j in range(n_text):
            key = f"synthtext_{j:05d}"
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            conv = {
                "id": f"{key}-en", "lang": "en", "parent_id": None,
                "turns": [_turn("user", f"What is {a} plus {b}?", task="text"),
                          _turn("assistant", f"{a} plus {b} is {a + b}.", task="text")],
            }
            row = {"key": key, "source": "synthetic_text", "images": [], "conversations": [conv], "meta": {}}
            sink.write({"__key__": key, "json": json.dumps(row).encode()})

    for split in ("stage1", "stage2", "stage2_text"):
        for tar in sorted((out / split).glob("*.tar")):
            with tarfile.open(tar) as tf:
                n = len({m.name.split(".", 1)[0] for m in tf.getmembers()})
            if n:
                sizes[f"{split}/{tar.name}"] = n
            else:
                tar.unlink()
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1))
    (out / "manifest.json").write_text(json.dumps({"recipe": "synthetic", "seed": seed, "sizes": sizes}, indent=1))
    return out
