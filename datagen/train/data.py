"""The webdataset input pipeline: shards -> examples -> tokens and pixels -> padded batches.

Per process (DDP rank) and per DataLoader worker the pipeline is::

    shards (resampled with a seeded RNG, or split by node then by worker)
      -> tar samples -> examples (a stage-2 sample expands into ALL its
         conversations, every language) -> shuffle buffer
      [stage 2: mixed with text-only examples at data.text_ratio]
      -> skip (resume) -> decode image + tokenise
      -> batch, or sort windows of N batches by length and batch   (all in the worker)
      .with_epoch(batches per worker)

Why this shape: every random choice is seeded from (seed, epoch, rank, worker), so
the stream is a pure function of those; with in-worker batching the DataLoader
hands out batches round-robin over workers, so "N batches consumed" maps to an
exact number of *raw examples* per worker. Resume skips those before any JPEG is
decoded or text tokenised, which makes exact resume cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from functools import partial
from itertools import count, islice
from pathlib import Path
from typing import Any, Iterator

import torch
import webdataset as wds
from PIL import Image

from datagen.sinks.shards import sample_images
from datagen.train.template import (
    IGNORE,
    TemplateError,
    encode,
    render_caption,
    render_chat,
    render_mplug,
)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork loader workers after tokenising


def shard_urls(data_dir: str | Path, split: str) -> list[str]:
    """The shards of ``split`` (stage1, stage2, stage2_text) listed in sizes.json, else found on disk."""
    root = Path(data_dir)
    sizes_path = root / "sizes.json"
    names: list[str] = []
    if sizes_path.exists():
        sizes = json.loads(sizes_path.read_text())
        names = sorted(k for k, n in sizes.items() if k.startswith(f"{split}/") and n)
    if not names:
        names = sorted(f"{split}/{p.name}" for p in (root / split).glob(f"{split}-*.tar"))
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise FileNotFoundError(f"{sizes_path}: lists shards that do not exist: {missing[:3]}")
    return [str(root / n) for n in names]


def in_holdout(key: str, fraction: float) -> bool:
    """Stable membership by key hash, so train and eval agree without a separate split on disk
    (an image keeps its key across stage1/ and stage2/, so one rule holds it out of both)."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


@dataclass
class DataSpec:
    """Everything the loader workers need (picklable)."""

    data_dir: str
    stage: int
    tokenizer: Any
    template: str  # mplug_owl | chat
    tokens_per_image: int
    image_size: int
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    resize: str = "squash"  # squash | pad (see ImageTransform)
    max_len: int = 512
    batch_size: int = 8
    text_ratio: float = 0.0
    shuffle_buffer: int = 256
    holdout_fraction: float = 0.0
    holdout: str = "exclude"  # exclude (training) | only (evaluation) | all
    resampled: bool = True
    group_by_length: int = 0  # sort windows of this many batches by length (0: off)
    seed: int = 0
    splits: list[str] = field(default_factory=list)  # default: by stage


# ------------------------------------------------------------------- samples -> examples


def _sample_images(sample: dict, row: dict) -> list[bytes]:
    keys = row.get("images") or []
    images = sample_images(sample)
    if len(images) != len(keys):
        raise ValueError(f"{sample.get('__url__')}: sample {sample['__key__']} lists {len(keys)} images"
                         f" but holds {len(images)} (members 0.jpg, 1.jpg, ...)")
    return images


def stage1_examples(sample: dict) -> Iterator[dict]:
    key = sample["__key__"]
    if "jpg" not in sample or "txt" not in sample:
        raise ValueError(f"{sample.get('__url__')}: stage-1 sample {key} needs .jpg and .txt, has {sorted(sample)}")
    yield {"key": key, "url": sample.get("__url__"), "images": [sample["jpg"]], "image_keys": [key],
           "caption": sample["txt"].decode("utf-8")}


def stage2_examples(sample: dict) -> Iterator[dict]:
    """One example per conversation, in every language, sharing the sample's image bytes."""
    key = sample["__key__"]
    if "json" not in sample:
        raise ValueError(f"{sample.get('__url__')}: stage-2 sample {key} has no .json")
    row = json.loads(sample["json"])
    images = _sample_images(sample, row)
    for conv in row.get("conversations") or []:
        yield {"key": key, "url": sample.get("__url__"), "images": images, "image_keys": list(row.get("images") or []),
               "conv_id": conv.get("id"), "lang": conv.get("lang"), "turns": conv.get("turns") or []}


def _examples(urls: list[str], stage: int, spec: DataSpec, seed: int, worker: int, num_workers: int) -> Iterator[dict]:
    """Examples from one set of shards, seeded per (seed, rank, worker)."""
    rank = wds.utils.pytorch_worker_info()[0]
    if not urls:
        raise FileNotFoundError(f"{spec.data_dir}: no shards for this split (looked in sizes.json and the folder)")
    if spec.resampled:
        shards: list = [wds.ResampledShards(urls, seed=seed, deterministic=True,
                                            worker_seed=lambda: rank * 1000 + worker)]
    else:
        def by_worker(src):  # wds.split_by_worker, but by our (virtual) worker id
            yield from islice(src, worker, None, max(num_workers, 1))

        shards = [wds.SimpleShardList(urls), wds.split_by_node, by_worker]
    expand = stage1_examples if stage == 1 else stage2_examples

    def expanded(src):
        dry = 0  # samples in a row that gave no example: an endless resampled stream must not spin
        for sample in src:
            dry += 1
            for ex in expand(sample):
                # held out if the sample or any of its images is: a multi-image sample must not
                # leak a held-out picture into training
                held = any(in_holdout(k, spec.holdout_fraction) for k in [ex["key"], *ex["image_keys"]])
                if spec.holdout == "all" or (held if spec.holdout == "only" else not held):
                    dry = 0
                    yield ex
            if spec.resampled and dry > max(1000, 3 * len(urls)):  # a finite pass simply ends
                raise ValueError(
                    f"{spec.data_dir}: {dry} samples in a row gave no example (holdout={spec.holdout}, "
                    f"holdout_fraction={spec.holdout_fraction}); shards: {urls[:2]}...")

    stages = [*shards, wds.tarfile_to_samples(), expanded]
    if spec.shuffle_buffer > 1:
        rng = random.Random(wds.utils.make_seed(seed, rank, worker, 17))
        stages.append(wds.shuffle(spec.shuffle_buffer, initial=min(spec.shuffle_buffer, 64), rng=rng))
    return iter(wds.DataPipeline(*stages))


def _mixed(main: Iterator[dict], text: Iterator[dict] | None, ratio: float, rng: random.Random) -> Iterator[dict]:
    """Each example comes from ``text`` with probability ``ratio``, else from ``main``.

    Our own seeded RNG: wds.RandomMix draws from the global one, which breaks exact resume."""
    while True:
        src = text if text is not None and rng.random() < ratio else main
        ex = next(src, None)
        if ex is None:
            return
        yield ex


def _worker_position(skip_batches: int, num_workers: int) -> tuple[int, int]:
    """(the worker this DataLoader worker plays, batches it made before) after ``skip_batches``.

    Batches leave the DataLoader round-robin over workers, so of ``skip_batches``
    consumed batches worker w made ``skip // W + (w < skip % W)``. A fresh DataLoader
    asks its worker 0 first, so worker i plays the part of worker (i + skip) % W: the
    first batch after a resume comes from the worker that owned it before."""
    _, _, real_worker, _ = wds.utils.pytorch_worker_info()
    w = max(num_workers, 1)
    worker = (real_worker + skip_batches) % w
    return worker, skip_batches // w + (1 if worker < skip_batches % w else 0)


def raw_examples(spec: DataSpec, epoch: int, skip_batches: int, num_workers: int) -> Iterator[dict]:
    """The undecoded example stream of this worker, minus the examples of already consumed batches
    (with length grouping: of already consumed whole windows; see ``length_grouped``)."""
    rank = wds.utils.pytorch_worker_info()[0]
    worker, mine = _worker_position(skip_batches, num_workers)
    seed = wds.utils.make_seed(spec.seed, epoch)
    if spec.stage == 1:
        stream = _examples(shard_urls(spec.data_dir, "stage1"), 1, spec, seed, worker, num_workers)
    else:
        main = _examples(shard_urls(spec.data_dir, "stage2"), 2, spec, seed, worker, num_workers)
        text = None
        if spec.text_ratio > 0:
            text_urls = shard_urls(spec.data_dir, "stage2_text")
            if not text_urls:
                raise FileNotFoundError(f"{spec.data_dir}/stage2_text: no shards, but data.text_ratio > 0")
            text = _examples(text_urls, 2, spec, wds.utils.make_seed(seed, 1), worker, num_workers)
        rng = random.Random(wds.utils.make_seed(seed, rank, worker, 23))
        stream = _mixed(main, text, spec.text_ratio, rng)
    if spec.group_by_length:
        mine -= mine % spec.group_by_length
    return islice(stream, mine * spec.batch_size, None)


def length_grouped(spec: DataSpec, epoch: int, skip_batches: int, num_workers: int, collate_fn, src):
    """Batches of similar length, so little of each batch is padding: windows of
    ``group_by_length`` batches' worth of examples are sorted by length, cut into batches, and
    the batches of a window handed out in a seeded random order (so long and short steps mix).

    Exact resume: the window a resume lands in is re-encoded and its first batches dropped."""
    k, bs = spec.group_by_length, spec.batch_size
    rank = wds.utils.pytorch_worker_info()[0]
    worker, mine = _worker_position(skip_batches, num_workers)
    window, drop = divmod(mine, k)
    src = iter(src)
    while True:
        chunk = list(islice(src, k * bs))
        if not chunk:
            return
        chunk.sort(key=lambda e: len(e["input_ids"]))
        batches = [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
        random.Random(wds.utils.make_seed(spec.seed, epoch, rank, worker, window, 31)).shuffle(batches)
        for b in batches[drop:]:
            if len(b) == bs or not spec.resampled:
                yield collate_fn(b)
        window, drop = window + 1, 0


# ----------------------------------------------------------------- examples -> tensors


class ImageTransform:
    """Image -> normalised [3, size, size] tensor, as mPLUG-Owl preprocesses: the whole picture,
    never a crop (a centre crop can remove the very object a conversation asks about).

    ``squash`` resizes to size x size (bicubic), changing the aspect ratio, like mPLUG-Owl's
    ``Resize((224, 224))``. ``pad`` first pads the shorter side with the mean colour (LLaVA's
    expand-to-square), keeping the aspect ratio. One class for training, eval and chat."""

    def __init__(self, size: int, mean, std, resize: str = "squash"):
        if resize not in ("squash", "pad"):
            raise ValueError(f"image resize must be 'squash' or 'pad', got {resize!r}")
        self.size, self.resize = int(size), resize
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        import numpy as np

        img = img.convert("RGB")
        if self.resize == "pad" and img.width != img.height:
            side = max(img.width, img.height)
            fill = tuple(int(round(255 * m)) for m in self.mean.flatten().tolist())
            square = Image.new("RGB", (side, side), fill)
            square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
            img = square
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (x - self.mean) / self.std


class Encoder:
    """Decode images and tokenise text for one example (runs in the loader worker)."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        self.transform = ImageTransform(spec.image_size, spec.mean, spec.std, spec.resize)

    def render(self, ex: dict):
        tok = self.spec.tokenizer
        if "caption" in ex:
            return render_caption(ex["caption"], tok.eos_token)
        if self.spec.template == "chat":
            return render_chat(ex["turns"], tok)
        return render_mplug(ex["turns"], tok.eos_token)

    def __call__(self, ex: dict) -> dict:
        try:
            enc = encode(
                self.render(ex), self.spec.tokenizer, num_images=len(ex["images"]),
                tokens_per_image=self.spec.tokens_per_image, max_len=self.spec.max_len,
                add_bos=self.spec.template != "chat" or "caption" in ex,
            )
        except TemplateError as e:
            where = f"{ex.get('url')}: sample {ex['key']}" + (f" conversation {ex['conv_id']}" if ex.get("conv_id") else "")
            raise ValueError(f"{where}: {e}") from None
        pixels = [self.transform(Image.open(_bytes_io(ex["images"][i])).convert("RGB")) for i in enc.image_order]
        size = self.spec.image_size
        return {
            "key": ex["key"],
            "input_ids": torch.tensor(enc.input_ids, dtype=torch.long),
            "labels": torch.tensor(enc.labels, dtype=torch.long),
            "pixel_values": torch.stack(pixels) if pixels else torch.zeros(0, 3, size, size),
        }


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-pad to the longest example; images of all examples concatenated in token order."""
    n = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k] = e["input_ids"]
        labels[i, :k] = e["labels"]
        mask[i, :k] = 1
    return {
        "keys": [e["key"] for e in examples],
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "pixel_values": torch.cat([e["pixel_values"] for e in examples]),
    }


def build_dataset(spec: DataSpec, *, epoch: int = 0, skip_batches: int = 0, num_workers: int = 0,
                  batches_per_worker: int | None = None) -> wds.DataPipeline:
    """The batched pipeline; ``batches_per_worker`` sets the nominal epoch (``with_epoch``)."""
    collate_fn = partial(collate, pad_id=spec.tokenizer.pad_token_id)
    if spec.group_by_length:
        batcher = partial(length_grouped, spec, epoch, skip_batches, num_workers, collate_fn)
    else:
        batcher = wds.batched(spec.batch_size, collation_fn=collate_fn, partial=not spec.resampled)
    pipe = wds.DataPipeline(
        partial(raw_examples, spec, epoch, skip_batches, num_workers),
        wds.map(Encoder(spec)),
        batcher,
    )
    if batches_per_worker is not None:
        pipe = pipe.with_epoch(batches_per_worker)
    return pipe


def make_loader(spec: DataSpec, *, epoch: int, skip_batches: int, num_workers: int,
                batches_per_worker: int | None, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    ds = build_dataset(spec, epoch=epoch, skip_batches=skip_batches, num_workers=num_workers,
                       batches_per_worker=batches_per_worker)
    # Our own generator: a DataLoader otherwise draws its base seed from the global torch RNG,
    # and a resumed run (which builds its loader later) would then see other dropout masks.
    gen = torch.Generator().manual_seed(spec.seed + epoch)
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, generator=gen,
                                       persistent_workers=False, prefetch_factor=2 if num_workers else None,
                                       pin_memory=pin_memory)


@dataclass
class StreamPosition:
    """Where the training stream stands: the nominal epoch and batches consumed in it."""

    epoch: int = 0
    batch: int = 0


def training_batches(spec: DataSpec, position: StreamPosition, *, num_workers: int,
                     epoch_batches: int, pin_memory: bool = False) -> Iterator[dict]:
    """Endless batches, epoch after epoch; ``position`` is updated as batches are handed out,
    so a checkpoint taken between two batches records exactly where to restart."""
    w = max(num_workers, 1)
    per_worker = max(1, epoch_batches // w)
    epoch_len = per_worker * w
    for _ in count():
        if position.batch >= epoch_len:
            position.epoch, position.batch = position.epoch + 1, 0
        loader = make_loader(spec, epoch=position.epoch, skip_batches=position.batch,
                             num_workers=num_workers, batches_per_worker=per_worker, pin_memory=pin_memory)
        # with_epoch counts per worker; after a resume each worker owes fewer batches
        got = 0
        for batch in islice(loader, epoch_len - position.batch):
            position.batch += 1
            got += 1
            yield batch
        if not got:
            raise ValueError(f"{spec.data_dir}: epoch {position.epoch} gave no batch on this process "
                             f"(fewer shards than processes x workers with data.resampled=false?)")
        position.epoch, position.batch = position.epoch + 1, 0
