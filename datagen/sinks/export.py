"""Exports of a run's stage-2 shards to the formats other trainers read.

- ``llava``: one JSON list, ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``,
  ``<image>`` in the first human turn (LLaVA's own data layout).
- ``mplug_owl``: JSONL lines ``{"image": [paths], "text": ..., "task_type": ...}`` with mPLUG-Owl's
  "Human:"/"AI:" template and one "Human: <image>" line per image (its trainer's layout).
- ``sharegpt``: ``{"id", "images", "conversations": [{"from", "value"}]}``.
- ``hf``: a Hugging Face ``datasets`` folder (``load_from_disk``).
Images are written once under ``<dest>/images/`` and referenced by relative path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import webdataset as wds

MPLUG_SYSTEM = ("The following is a conversation between a curious human and AI assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_PLACEHOLDER = re.compile(r"<image(?:_\d+)?>\n?")
_IMAGE_EXT = ("jpg", "png", "webp")


def iter_samples(out: Path, split: str) -> Iterator[dict]:
    """Samples of one split, read back with webdataset; ``json`` decoded, ``txt`` as str."""
    shards = sorted((out / split).glob(f"{split}-*.tar"))
    if not shards:
        return
    for sample in wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False):
        if "json" in sample:
            sample["json"] = json.loads(sample["json"])
        if "txt" in sample:
            sample["txt"] = sample["txt"].decode("utf-8")
        yield sample


def _images(sample: dict, dest: Path) -> list[str]:
    """Write the sample's images under dest/images; return their relative paths in index order."""
    names = sorted((k for k in sample if k.rsplit(".", 1)[-1] in _IMAGE_EXT),
                   key=lambda k: int(k.split(".")[0]) if k.count(".") else 0)
    paths = []
    for name in names:
        rel = f"images/{sample['__key__']}.{name}"
        (dest / rel).write_bytes(sample[name])
        paths.append(rel)
    return paths


def _llava_turns(turns: list[dict], n_images: int) -> list[dict]:
    out = []
    for t in turns:
        text = t["content"]
        if n_images > 1:
            text = re.sub(r"<image_\d+>", "<image>", text)
        out.append({"from": "human" if t["role"] == "user" else "gpt", "value": text})
    return out


def mplug_owl_text(turns: list[dict], n_images: int) -> str:
    """mPLUG-Owl's template. One image: a "Human: <image>" line before the dialogue. Several
    images declared inline (MMICL style, "Image 0 is <image_0>."): each ``<image_N>`` becomes
    ``<image>`` where it stands, since the trainer fills ``<image>`` tokens in order."""
    inline = n_images > 1 and all(f"<image_{i}>" in " ".join(t["content"] for t in turns) for i in range(n_images))
    lines = [MPLUG_SYSTEM] + ([] if inline else ["Human: <image>"] * n_images)
    for t in turns:
        content = re.sub(r"<image_\d+>", "<image>", t["content"]) if inline else _PLACEHOLDER.sub("", t["content"])
        lines.append(f"{'Human' if t['role'] == 'user' else 'AI'}: {content.strip()}")
    return "\n".join(lines)


def _records(out: Path, dest: Path) -> Iterator[tuple[dict, dict, list[str]]]:
    for split in ("stage2", "stage2_text"):
        for sample in iter_samples(out, split):
            paths = _images(sample, dest)
            for conv in sample["json"]["conversations"]:
                yield sample["json"], conv, paths


def export(out: Path, dest: Path, fmt: str) -> list[Path]:
    """Write ``fmt`` for the run in ``out`` under ``dest``; returns the files written."""
    if not (out / "manifest.json").exists():
        raise FileNotFoundError(f"{out}: not a finished datagen run (no manifest.json)")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "images").mkdir(exist_ok=True)
    if fmt == "llava":
        items = []
        for row, conv, paths in _records(out, dest):
            item = {"id": conv["id"], "conversations": _llava_turns(conv["turns"], len(paths))}
            if paths:
                item["image"] = paths[0] if len(paths) == 1 else paths
            items.append(item)
        path = dest / "llava.json"
        path.write_text(json.dumps(items, ensure_ascii=False, indent=1))
        return [path]
    if fmt == "mplug_owl":
        path = dest / "mplug_owl.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for row, conv, paths in _records(out, dest):
                task = conv["turns"][-1]["task"] if conv["turns"] else "unknown"
                f.write(json.dumps({"image": paths, "text": mplug_owl_text(conv["turns"], len(paths)),
                                    "task_type": f"{task}_{conv['lang']}"}, ensure_ascii=False) + "\n")
        return [path]
    if fmt == "sharegpt":
        items = [{"id": conv["id"], "images": paths, "lang": conv["lang"],
                  "conversations": _llava_turns(conv["turns"], len(paths))}
                 for row, conv, paths in _records(out, dest)]
        path = dest / "sharegpt.json"
        path.write_text(json.dumps(items, ensure_ascii=False, indent=1))
        return [path]
    if fmt == "hf":
        import datasets

        records = [{"id": conv["id"], "key": row["key"], "lang": conv["lang"], "images": paths,
                    "parent_id": conv.get("parent_id"),
                    "conversations": [{"role": t["role"], "content": t["content"], "task": t["task"],
                                       "polarity": t["polarity"]} for t in conv["turns"]]}
                   for row, conv, paths in _records(out, dest)]
        ds = datasets.Dataset.from_list(records)
        path = dest / "hf"
        ds.save_to_disk(str(path))
        return [path]
    raise ValueError(f"unknown export format {fmt!r}: expected llava, mplug_owl, sharegpt or hf")
