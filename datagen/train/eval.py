"""``datagen eval``: held-out loss and a POPE-style object-hallucination probe.

The probe asks "Is there a {object} in the image?" about held-out images, half
about annotated objects (answer yes) and half about absent ones (answer no),
with POPE's three ways to pick absent objects: random, popular (most frequent
overall) and adversarial (co-occurring most with what is present), in English
and (for COCO labels, through the project's lexicon) in Chinese. The model's
answer is whichever of "Yes"/"No" (有/没有) it makes more likely at the first reply
token where the two differ: a closed-form choice that needs no generation and no
answer parsing.
Reported: accuracy, precision, recall, F1 (yes = positive) and the yes-ratio
(a model that says yes to everything has yes-ratio 1 and F1 0.67 on balanced data).
``pope_generate`` asks the same questions by generation and parses yes/no from the
reply (POPE's rule), counting the replies that say neither.
"""

from __future__ import annotations

import io
import json
import random
import re
from collections import Counter
from itertools import combinations, islice
from pathlib import Path
from typing import Sequence

import torch

from datagen.train.data import DataSpec, Encoder, build_dataset, collate, in_holdout, shard_urls
from datagen.train.inference import Loaded, load_model, reply
from datagen.train.model import MplugOwl, per_example_logprob
from datagen.train.template import IGNORE

# Plural-only nouns outside the COCO lexicon: "Are there any jeans in the image?".
_PLURAL = {"jeans", "pants", "shorts", "trousers", "glasses", "sunglasses", "people", "headphones",
           "binoculars", "tongs", "pliers"}
ANSWERS = {"en": ("Yes", "No"), "zh": ("有", "没有")}


def existence_question(label: str, lang: str = "en") -> str | None:
    """POPE's question with the right article and number (POPE's own code got both wrong).

    COCO labels go through the project's checked lexicon (datagen.synth.lexicon), so the
    probe words things exactly as the synthesized training data does ("a pair of scissors",
    "an orange", 橙子 not 橙色). Other labels: English only (None for Chinese)."""
    from datagen.synth.lexicon import LEXICON, en_with_article, indefinite_article

    if label in LEXICON:
        t = LEXICON[label]
        return f"Is there {en_with_article(label)} in the image?" if lang == "en" else f"图中有{t.zh}吗？"
    if lang != "en":
        return None
    word = label.strip()
    if word.lower().split()[-1] in _PLURAL:
        return f"Are there any {word} in the image?"
    return f"Is there {indefinite_article(word)} {word} in the image?"


def pope_questions(images: list[dict], *, sampling: str, per_image: int, seed: int = 0,
                   stats: list[set] | None = None) -> list[dict]:
    """``images``: [{key, image (bytes), labels: set}] -> balanced yes/no probes.

    ``stats``: label sets of all annotated images (default: ``images``), for the category
    vocabulary, frequencies and co-occurrences. Negatives never name an object present."""
    if sampling not in ("random", "popular", "adversarial"):
        raise ValueError(f"pope sampling must be random, popular or adversarial, got {sampling!r}")
    label_sets = stats if stats is not None else [im["labels"] for im in images]
    freq = Counter(lbl for labels in label_sets for lbl in labels)
    cooc: Counter = Counter()
    for labels in label_sets:
        for a, b in combinations(sorted(labels), 2):
            cooc[(a, b)] += 1
            cooc[(b, a)] += 1
    vocab = sorted(freq)
    rng = random.Random(seed)
    out = []
    for im in images:
        present = sorted(im["labels"])
        absent = [c for c in vocab if c not in im["labels"]]
        k = min(per_image, len(present), len(absent))
        if k == 0:
            continue
        if sampling == "random":
            negatives = rng.sample(absent, k)
        elif sampling == "popular":
            negatives = sorted(absent, key=lambda c: (-freq[c], c))[:k]
        else:
            negatives = sorted(absent, key=lambda c: (-sum(cooc[(p, c)] for p in present), -freq[c], c))[:k]
        for label in rng.sample(present, k):
            out.append({"key": im["key"], "image": im["image"], "label": label, "answer": True})
        for label in negatives:
            out.append({"key": im["key"], "image": im["image"], "label": label, "answer": False})
    return out


def pope_metrics(truth: list[bool], pred: list[bool]) -> dict:
    tp = sum(t and p for t, p in zip(truth, pred))
    tn = sum((not t) and (not p) for t, p in zip(truth, pred))
    fp = sum((not t) and p for t, p in zip(truth, pred))
    fn = sum(t and (not p) for t, p in zip(truth, pred))
    n = len(truth)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": n, "accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": (tp + fp) / n if n else 0.0}


def _stage1_annotations(data_dir: str, holdout_fraction: float, max_images: int) -> tuple[list[dict], list[set]]:
    """Held-out annotated images (at most ``max_images``) and the label sets of all images."""
    import webdataset as wds

    urls = shard_urls(data_dir, "stage1")
    if not urls:
        raise FileNotFoundError(f"{data_dir}/stage1: no shards to build the POPE probe from")
    held, stats = [], []
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        key = sample["__key__"]
        if "json" not in sample:
            raise ValueError(f"{sample.get('__url__')}: stage-1 sample {key} has no .json")
        row = json.loads(sample["json"])
        labels = {o["label"] for o in row.get("objects") or [] if o.get("label") and not o.get("iscrowd")}
        if not labels:
            continue
        stats.append(labels)
        if len(held) < max_images and "jpg" in sample and (holdout_fraction <= 0 or in_holdout(key, holdout_fraction)):
            held.append({"key": key, "image": sample["jpg"], "labels": labels})
    return held, stats


@torch.no_grad()
def heldout_loss(model: MplugOwl, spec: DataSpec, max_batches: int, device) -> dict:
    total, tokens, batches = 0.0, 0, 0
    for batch in islice(build_dataset(spec), max_batches):
        s, n = model(*(batch[k].to(device) for k in ("input_ids", "attention_mask", "pixel_values", "labels")))
        total, tokens, batches = total + float(s), tokens + n, batches + 1
    return {"loss": total / tokens if tokens else None, "tokens": tokens, "batches": batches}


@torch.no_grad()
def score_yes_no(model: MplugOwl, encoder: Encoder, questions: list[dict], batch_size: int, device,
                 lang: str = "en") -> list[bool]:
    """For each question: does the model make the "Yes" reply more likely than the "No" reply,
    judged at the first reply token where the two differ?

    One token only: summed log-probabilities would favour whichever answer tokenises
    shorter (有 vs 没有), which is not what the model believes. Tokens the two replies share
    (a leading space token, say) have the same probability under both and decide nothing."""
    examples = []
    for q in questions:
        pair = [encoder({"key": q["key"], "images": [q["image"]],
                         "turns": [{"role": "user", "content": "<image>\n" + q["question"]},
                                   {"role": "assistant", "content": answer}]})
                for answer in ANSWERS[lang]]
        (yes, no) = pair
        n = min(len(yes["input_ids"]), len(no["input_ids"]))
        differ = (yes["input_ids"][:n] != no["input_ids"][:n]).nonzero().flatten()
        if not len(differ) or yes["labels"][differ[0]] == IGNORE:
            raise ValueError(f"{ANSWERS[lang]}: the two replies do not differ in a trained token; cannot score")
        k = int(differ[0])
        for ex in pair:
            keep = ex["labels"][k].clone()
            ex["labels"].fill_(IGNORE)
            ex["labels"][k] = keep
            examples.append(ex)
    pad = encoder.spec.tokenizer.pad_token_id
    scores = []
    for i in range(0, len(examples), batch_size):
        b = collate(examples[i:i + batch_size], pad)
        logits = model(b["input_ids"].to(device), b["attention_mask"].to(device), b["pixel_values"].to(device))
        scores.extend(per_example_logprob(logits, b["labels"].to(device)).tolist())
    return [scores[2 * j] > scores[2 * j + 1] for j in range(len(questions))]


_NO_EN = re.compile(r"\b(no|not|none|nope|never)\b|n't\b")
_YES_EN = re.compile(r"\b(yes|yeah|yep|there (is|are))\b")


def parse_yes_no(text: str, lang: str = "en") -> bool | None:
    """A generated reply -> yes (True), no (False) or None when it says neither.

    POPE's rule on the first sentence: a negation word means no; English 'yes'/'there is',
    Chinese 有/是/对 at the start mean yes."""
    first = re.split(r"[.!?\n。！？]", text.strip(), maxsplit=1)[0].strip().lower()
    if lang == "zh":
        if first.startswith(("没有", "没", "不", "否", "无")):
            return False
        if first.startswith(("有", "是", "对")):
            return True
        return None
    if _NO_EN.search(first):
        return False
    return True if _YES_EN.search(first) else None


@torch.no_grad()
def generate_yes_no(loaded: Loaded, questions: list[dict], lang: str = "en",
                    max_new_tokens: int = 16) -> tuple[list[bool], list[str], int]:
    """POPE by generation: the greedy reply to each question, parsed. Unparsed replies count
    as yes (POPE's convention: anything that does not deny) and are counted apart."""
    from PIL import Image

    preds, replies, unparsed = [], [], 0
    for q in questions:
        turns = [{"role": "user", "content": "<image>\n" + q["question"]}]
        text = reply(loaded, turns, [Image.open(io.BytesIO(q["image"]))], max_new_tokens=max_new_tokens)
        said = parse_yes_no(text, lang)
        unparsed += said is None
        preds.append(said is not False)
        replies.append(text)
    return preds, replies, unparsed


def evaluate(checkpoint: str | Path, data_dir: str, *, split: str | None = None,
             holdout_fraction: float | None = None, max_batches: int = 50, batch_size: int = 8,
             pope_sampling: str = "random", pope_per_image: int = 3, max_images: int = 100,
             device: str = "auto", seed: int = 0, langs: tuple[str, ...] = ("en", "zh"),
             generate: bool = True, max_new_tokens: int = 16) -> dict:
    """Held-out loss on ``split`` and POPE metrics per language ("zh" asks COCO labels in Chinese):
    ``pope`` by first differing reply token, ``pope_generate`` by parsing generated replies.
    ``checkpoint``: a checkpoint, run folder or ``datagen export-model`` folder."""
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    loaded = load_model(checkpoint, dev)
    meta = loaded.meta
    cfg = meta.get("config") or {}
    if holdout_fraction is None:
        holdout_fraction = float((cfg.get("data") or {}).get("holdout_fraction", 0.0))
    split = split or f"stage{meta.get('stage', 2)}"
    spec = eval_spec(loaded, data_dir, split, holdout_fraction, batch_size, seed,
                     max_len=int((cfg.get("data") or {}).get("max_seq_len", 512)))
    report = {"checkpoint": loaded.source, "data": str(data_dir), "split": split,
              "holdout_fraction": holdout_fraction, "heldout": heldout_loss(loaded.model, spec, max_batches, dev)}
    report.update(pope_report(loaded, spec, data_dir, holdout_fraction, sampling=pope_sampling,
                              per_image=pope_per_image, max_images=max_images, seed=seed, langs=langs,
                              batch_size=batch_size, device=dev, generate=generate,
                              max_new_tokens=max_new_tokens))
    return report


def eval_spec(loaded: Loaded, data_dir, split: str, holdout_fraction: float, batch_size: int, seed: int,
              max_len: int) -> DataSpec:
    pre = loaded.pre
    return DataSpec(
        data_dir=str(data_dir), stage=1 if split == "stage1" else 2, tokenizer=loaded.tokenizer,
        template=loaded.template, tokens_per_image=loaded.tokens_per_image,
        image_size=pre["image_size"], mean=tuple(pre["mean"]), std=tuple(pre["std"]), resize=pre["resize"],
        max_len=max_len, batch_size=batch_size, shuffle_buffer=0, holdout_fraction=holdout_fraction,
        holdout="only" if holdout_fraction > 0 else "all", resampled=False, seed=seed,
    )


def pope_report(loaded: Loaded, spec: DataSpec, data_dir, holdout_fraction: float, *, sampling: str,
                per_image: int, max_images: int, seed: int, langs: Sequence[str], batch_size: int, device,
                generate: bool, max_new_tokens: int = 16) -> dict:
    images, stats = _stage1_annotations(str(data_dir), holdout_fraction, max_images)
    questions = pope_questions(images, sampling=sampling, per_image=per_image, seed=seed, stats=stats)
    encoder = Encoder(spec)
    out: dict = {"pope": {}, **({"pope_generate": {}} if generate else {})}
    for lang in langs:
        asked = [{**q, "question": existence_question(q["label"], lang)} for q in questions]
        asked = [q for q in asked if q["question"]]
        truth = [q["answer"] for q in asked]
        head = {"sampling": sampling, "images": len(images), "skipped_no_translation": len(questions) - len(asked)}
        pred = score_yes_no(loaded.model, encoder, asked, batch_size, device, lang) if asked else []
        out["pope"][lang] = {**head, **pope_metrics(truth, pred)}
        if generate:
            gpred, replies, unparsed = generate_yes_no(loaded, asked, lang, max_new_tokens) if asked else ([], [], 0)
            out["pope_generate"][lang] = {**head, **pope_metrics(truth, gpred), "unparsed": unparsed,
                                          "examples": [{"question": q["question"], "reply": r}
                                                       for q, r in list(zip(asked, replies))[:3]]}
    return out
