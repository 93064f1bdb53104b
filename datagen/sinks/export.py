"""Exports of a run's stage-2 shards to the files other trainers read unchanged.

Every file-based format writes its images once under ``<dest>/images/`` and refers to them by a
path RELATIVE TO ``<dest>`` (``images/<key>.<n>.jpg``): point the trainer's image folder at
``<dest>``, or start it in ``<dest>``, as the README's compatibility table says per trainer.

- ``llava`` writes two files (LLaVA's layout, ``{"id", "image", "conversations": [{"from", "value"}]}``):

  - ``llava.json``: single-image and text-only conversations, for LLaVA-1.5's
    ``LazySupervisedDataset`` (``llava/train/train.py``), which opens ONE image per item::

        image_file = self.list_data_dict[i]['image']
        image = Image.open(os.path.join(image_folder, image_file)).convert('RGB')

    and whose ``preprocess_multimodal`` moves every ``<image>`` of a turn to its front::

        if DEFAULT_IMAGE_TOKEN in sentence['value']:
            sentence['value'] = sentence['value'].replace(DEFAULT_IMAGE_TOKEN, '').strip()
            sentence['value'] = DEFAULT_IMAGE_TOKEN + '\\n' + sentence['value']

    So ``image`` is a string, and the first human turn starts with the one ``<image>\\n``;
    text-only items have no ``image`` key and no ``<image>``.
  - ``llava_interleave.json``: multi-image and in-context conversations in the interleaved
    layout of LLaVA-NeXT-Interleave / LLaVA-OneVision (LLaVA-NeXT's ``llava/train/train.py``):
    ``image`` is a list (``if type(image_file) is list: image = [self.process_image(f) for f in
    image_file]``), one ``<image>`` stands where each image is referred to, in the list's order,
    and its ``preprocess_multimodal`` leaves a turn with several ``<image>`` as it is
    (``if num_im == 1 and ... not sentence["value"].startswith(DEFAULT_IMAGE_TOKEN)``).

- ``mplug_owl``: JSONL ``{"image": [paths], "text": ..., "task_type": ...}`` for mPLUG-Owl (v1)'s
  ``MultiModalDataset`` (``pipeline/data_utils/xgpt3_dataset.py``), which picks its processor with
  ``data['task_type'].split('_')[-1]``; the official ``configs/v0.yaml`` defines one processor,
  ``sft``. So ``task_type`` is ``datagen_<family>_<lang>_sft``. ``text`` is mPLUG-Owl's
  "Human:"/"AI:" template; its loader fills ``<image>`` tokens with the listed images in order.
  mPLUG-Owl opens each path as written: run it with ``<dest>`` as the working directory, or pass
  ``image_root`` to write ``<image_root>/images/...`` instead.
- ``sharegpt``: ``{"id", "images", "lang", "conversations": [{"from", "value"}]}``, all rows in one
  file, ``<image>`` placed as in the two LLaVA files (one ``<image>`` per listed image, the layout
  LLaMA-Factory's sharegpt format expects).
- ``hf``: a Hugging Face dataset folder ``<dest>/hf``: parquet files under ``data/`` whose
  ``images`` column is ``datasets.List(datasets.Image())`` with the pixels embedded, and a
  ``README.md`` dataset card whose YAML declares the config and features. ``load_dataset(DIR)``
  reads it; ``push_to_hub`` carries the images.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from datagen.sinks.shards import IMAGE_EXTS, image_ext, sample_images, tar_members

MPLUG_SYSTEM = ("The following is a conversation between a curious human and AI assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_PLACEHOLDER = re.compile(r"<image(?:_(\d+))?>")
FORMATS = ("llava", "mplug_owl", "sharegpt", "hf")
HF_ROWS_PER_FILE = 1000
SUMS = "SHA256SUMS"  # the images' sha256 (``sha256sum -c SHA256SUMS`` in the export folder; ``datagen check``)


def iter_samples(out: Path, split: str) -> Iterator[dict]:
    """Samples of one split, read back with webdataset (the loader trainers use; ``datagen check`` reads
    through it on purpose); ``json`` decoded, ``txt`` as str. Imported here: webdataset imports torch when
    torch is installed (webdataset.pytorch), 1.3 s and ~600 MB that a run's exports and report do not need,
    so they read the tars with ``index_samples``."""
    import webdataset as wds

    shards = sorted((out / split).glob(f"{split}-*.tar"))
    if not shards:
        return
    for sample in wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False):
        if "json" in sample:
            sample["json"] = json.loads(sample["json"])
        if "txt" in sample:
            sample["txt"] = sample["txt"].decode("utf-8")
        yield sample


@dataclass
class IndexedSample:
    """One sample of a shard as its tar lays it out: where each member's bytes are, the json decoded,
    the txt read; image bytes stay in the tar until ``read``."""

    split: str
    key: str
    shard: Path
    members: dict[str, tuple[int, int]] = field(default_factory=dict)  # "0.jpg" -> (offset, size) in the tar
    json: dict = field(default_factory=dict)
    txt: str | None = None

    @property
    def images(self) -> list[str]:
        return sorted(m for m in self.members if m.rsplit(".", 1)[-1] in IMAGE_EXTS)

    def read(self, member: str) -> bytes:
        offset, size = self.members[member]
        with open(self.shard, "rb") as f:
            f.seek(offset)
            return f.read(size)


def index_samples(out: Path, split: str) -> Iterator[IndexedSample]:
    """Samples of one split without their image bytes (tar headers are read, image data skipped):
    what a report or viewer needs to count and filter, at the cost of the json alone."""
    for shard in sorted((out / split).glob(f"{split}-*.tar")):
        cur: IndexedSample | None = None
        with open(shard, "rb") as f:
            for name, offset, size in tar_members(shard):
                key, _, ext = name.rsplit("/", 1)[-1].partition(".")  # webdataset: the key ends at the first dot
                if cur is None or key != cur.key:
                    if cur is not None:
                        yield cur
                    cur = IndexedSample(split, key, shard)
                cur.members[ext] = (offset, size)
                if ext in ("json", "txt"):
                    f.seek(offset)
                    data = f.read(size)
                    if ext == "json":
                        cur.json = json.loads(data)
                    else:
                        cur.txt = data.decode("utf-8")
        if cur is not None:
            yield cur


def _strip_placeholders(text: str) -> str:
    return re.sub(r"[ \t]*<image(?:_\d+)?>[ \t]*\n?", " ", text).strip()


def inline_images(turns: list[dict], n_images: int, where: str) -> tuple[list[str], list[int]]:
    """Turn texts with one ``<image>`` standing where each image is referred to, and the image
    indices in the order those ``<image>`` appear (the order trainers fill them in).

    Multi-image rows name images inline (MMICL style, "Image 0 is <image_0>."); each index must
    appear exactly once. A row without inline names gets ``<image>`` lines at the front of its
    first user turn, in index order."""
    texts = [t["content"] for t in turns]
    seen = [int(m.group(1)) for text in texts for m in _PLACEHOLDER.finditer(text) if m.group(1) is not None]
    if not seen:
        first = next((i for i, t in enumerate(turns) if t["role"] == "user"), 0)
        texts = [_strip_placeholders(t) for t in texts]
        texts[first] = "<image>\n" * n_images + texts[first]
        return texts, list(range(n_images))
    if sorted(seen) != list(range(n_images)):
        raise ValueError(f"{where}: placeholders name images {seen}, expected each of 0..{n_images - 1} once")
    return [re.sub(r"<image_\d+>", "<image>", t) for t in texts], seen


def llava_single(turns: list[dict], has_image: bool) -> list[dict]:
    """LLaVA-1.5 turns: every placeholder removed, ``<image>\\n`` at the start of the first human turn."""
    out = []
    for t in turns:
        text = _strip_placeholders(t["content"])
        if has_image and not out:
            text = "<image>\n" + text
        out.append({"from": "human" if t["role"] == "user" else "gpt", "value": text})
    return out


def llava_layout(conv: dict, paths: list[str], where: str) -> tuple[list[str], list[dict]]:
    """(image paths, LLaVA turns): one image or none in LLaVA-1.5's layout (``llava_single``);
    several with one ``<image>`` where each is named and the paths in that order."""
    if len(paths) <= 1:
        return paths, llava_single(conv["turns"], bool(paths))
    texts, order = inline_images(conv["turns"], len(paths), where)
    turns = [{"from": "human" if t["role"] == "user" else "gpt", "value": v} for t, v in zip(conv["turns"], texts)]
    return [paths[i] for i in order], turns


def _names_images(turns: list[dict]) -> bool:
    return any(m.group(1) is not None for t in turns for m in _PLACEHOLDER.finditer(t["content"]))


def mplug_owl_text(turns: list[dict], n_images: int, where: str = "conversation") -> tuple[str, list[int]]:
    """mPLUG-Owl's template and the image order it needs. Images named inline (MMICL style,
    "Image 0 is <image_0>."): each becomes ``<image>`` where it stands. Otherwise one
    "Human: <image>" line per image before the dialogue."""
    if n_images > 1 and _names_images(turns):
        texts, order = inline_images(turns, n_images, where)
        lines = [MPLUG_SYSTEM]
    else:
        texts, order = [_strip_placeholders(t["content"]) for t in turns], list(range(n_images))
        lines = [MPLUG_SYSTEM] + ["Human: <image>"] * n_images
    lines += [f"{'Human' if t['role'] == 'user' else 'AI'}: {text.strip()}" for t, text in zip(turns, texts)]
    return "\n".join(lines), order


def mplug_task_type(conv: dict) -> str:
    """``datagen_<family>_<lang>_sft``: mPLUG-Owl takes the part after the last ``_`` as its processor."""
    task = conv["turns"][-1]["task"] if conv["turns"] else "unknown"
    return f"datagen_{task}_{conv['lang']}_sft"


def _records(out: Path, images_dir: Path | None, sums: dict[str, str] | None = None,
             ) -> Iterator[tuple[dict, dict, list[str], list[bytes]]]:
    """(row, conversation, image paths relative to the export folder, image bytes) for every
    conversation of stage2 and stage2_text; images are written under ``images_dir`` when given,
    and their sha256 recorded in ``sums`` (path -> hex)."""
    for split in ("stage2", "stage2_text"):
        for indexed in index_samples(out, split):  # our own tar reader: webdataset would import torch
            sample = {"__key__": indexed.key, "__url__": str(indexed.shard), "json": indexed.json,
                      **{m: indexed.read(m) for m in indexed.images}}
            images = sample_images(sample)
            paths = [f"images/{sample['__key__']}.{n}.{image_ext(d)}" for n, d in enumerate(images)]
            if images_dir is not None:
                for path, data in zip(paths, images):
                    (images_dir.parent / path).write_bytes(data)
                    if sums is not None:
                        sums[path] = hashlib.sha256(data).hexdigest()
            for conv in sample["json"]["conversations"]:
                yield sample["json"], conv, paths, images


def read_sums(folder: Path) -> dict[str, str] | None:
    """``SHA256SUMS`` (``sha256sum``'s format: ``<hex>  <path relative to folder>``), or None."""
    path = folder / SUMS
    if not path.exists():
        return None
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            hexdigest, _, name = line.partition("  ")
            sums[name.lstrip("*")] = hexdigest
    return sums


def write_sums(folder: Path, sums: dict[str, str]) -> Path:
    """Merge ``sums`` (path relative to ``folder`` -> sha256) into ``folder/SHA256SUMS``."""
    merged = (read_sums(folder) or {}) | sums
    path = folder / SUMS
    path.write_text("".join(f"{h}  {name}\n" for name, h in sorted(merged.items())))
    return path


def _write_json(path: Path, items: list) -> Path:
    path.write_text(json.dumps(items, ensure_ascii=False, indent=1))
    return path


def export(out: Path, dest: Path, fmt: str, image_root: str | None = None) -> list[Path]:
    """Write ``fmt`` for the run in ``out`` under ``dest``; returns the data files written (the images
    go under ``dest/images/``, their sha256 into ``dest/SHA256SUMS``, which ``datagen check`` verifies).
    ``image_root`` (mplug_owl): write image paths as ``<image_root>/images/...``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not (out / "manifest.json").exists():
        raise FileNotFoundError(f"{out}: not a finished datagen run (no manifest.json)")
    dest.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        return [export_hf(out, dest / "hf")]
    (dest / "images").mkdir(exist_ok=True)
    sums: dict[str, str] = {}
    run = run_provenance(out)
    records = ((row, conv, paths, images, provenance(row, conv, run))
               for row, conv, paths, images in _records(out, dest / "images", sums))
    written = _export_files(out, dest, fmt, image_root, records)
    write_sums(dest, sums)
    return written


def run_provenance(out: Path) -> dict[str, str]:
    """What every exported sample carries about its run: the recipe's sha256 and the datagen version."""
    manifest = json.loads((out / "manifest.json").read_text())
    return {"recipe_sha256": manifest.get("recipe_sha256"), "datagen": manifest.get("tools", {}).get("datagen")}


def provenance(row: dict, conv: dict, run: dict[str, str]) -> dict:
    """A sample's origin: its source, the source rows of its images (their keys: ``coco_<image id>``,
    ``laion_<row>``...; stage-1 shards give each key's URL) or, for text-only rows, the row's key,
    the generators of its turns (template, ``llm:<model>``, ``translate:<backend>``, ``source``),
    and the run's recipe hash and datagen version."""
    return {"source": row["source"], "source_ids": list(row.get("images") or []) or [row["key"]],
            "generator": sorted({t.get("generator") or "unknown" for t in conv["turns"]})} | run


def _export_files(out: Path, dest: Path, fmt: str, image_root: str | None, records) -> list[Path]:
    if fmt == "llava":
        single, interleaved = [], []
        for row, conv, paths, _, prov in records:
            images, turns = llava_layout(conv, paths, f"{out}: conversation {conv['id']}")
            if len(images) <= 1:
                single.append({"id": conv["id"], **({"image": images[0]} if images else {}), "conversations": turns,
                               "provenance": prov})
            else:
                interleaved.append({"id": conv["id"], "image": images, "conversations": turns, "provenance": prov})
        return [_write_json(dest / "llava.json", single), _write_json(dest / "llava_interleave.json", interleaved)]
    if fmt == "mplug_owl":
        path = dest / "mplug_owl.jsonl"
        prefix = f"{image_root.rstrip('/')}/" if image_root else ""
        with open(path, "w", encoding="utf-8") as f:
            for row, conv, paths, _, prov in records:
                text, order = mplug_owl_text(conv["turns"], len(paths), f"{out}: conversation {conv['id']}")
                f.write(json.dumps({"image": [prefix + paths[i] for i in order], "text": text,
                                    "task_type": mplug_task_type(conv), "provenance": prov},
                                   ensure_ascii=False) + "\n")
        return [path]
    items = []
    for row, conv, paths, _, prov in records:
        images, turns = llava_layout(conv, paths, f"{out}: conversation {conv['id']}")
        items.append({"id": conv["id"], "images": images, "lang": conv["lang"], "conversations": turns,
                      "provenance": prov})
    return [_write_json(dest / "sharegpt.json", items)]


def hf_features():
    """Features of the ``hf`` export: one row per conversation, its images with pixels embedded."""
    import datasets

    s = datasets.Value("string")
    return datasets.Features({
        "id": s, "key": s, "source": s, "lang": s, "parent_id": s,
        "provenance": {"source": s, "source_ids": datasets.List(s), "generator": datasets.List(s),
                       "recipe_sha256": s, "datagen": s},
        "images": datasets.List(datasets.Image()),
        "conversations": datasets.List({"role": s, "content": s, "task": s, "polarity": s, "generator": s}),
    })


def export_hf(out: Path, dest: Path) -> Path:
    """Parquet files of ``HF_ROWS_PER_FILE`` conversations under ``dest/data`` and a dataset card
    declaring their features; memory holds one file's rows at a time."""
    import datasets

    from datagen.progress import bars
    from datagen.sinks.hf import card_header

    if not bars():  # its "Creating parquet" bar would write \r frames into a captured log
        datasets.disable_progress_bars()
    features = hf_features()
    data = dest / "data"
    data.mkdir(parents=True, exist_ok=True)
    for old in data.glob("*.parquet"):
        old.unlink()
    n, rows = 0, []

    def flush() -> None:
        nonlocal n, rows
        if rows:
            datasets.Dataset.from_list(rows, features=features).to_parquet(str(data / f"train-{n:05d}.parquet"))
            n, rows = n + 1, []

    total, run = 0, run_provenance(out)
    for row, conv, paths, images in _records(out, None):
        rows.append({"id": conv["id"], "key": row["key"], "source": row["source"], "lang": conv["lang"],
                     "parent_id": conv.get("parent_id"), "provenance": provenance(row, conv, run),
                     "images": [{"bytes": b, "path": Path(p).name} for p, b in zip(paths, images)],
                     "conversations": [{k: t.get(k) for k in ("role", "content", "task", "polarity", "generator")}
                                       for t in conv["turns"]]})
        total += 1
        if len(rows) >= HF_ROWS_PER_FILE:
            flush()
    flush()
    name = json.loads((out / "manifest.json").read_text())["name"]
    (dest / "README.md").write_text(
        card_header({"default": (["data/*.parquet"], features._to_yaml_list())}, default="default")
        + f"\n# {name} (datagen export)\n\n{total} conversations, one per row: `images` holds the pixels"
        " (`datasets.Image()`), `conversations` the turns with their task family and polarity, and"
        " `parent_id` links a translation to its original.\n\n"
        "```python\nimport datasets\nds = datasets.load_dataset(\"PATH/TO/THIS/FOLDER\", split=\"train\")\n```\n")
    return dest
