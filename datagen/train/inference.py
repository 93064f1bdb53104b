"""Using a trained model: load it (checkpoint or exported folder), build prompts, generate.

``load_model`` accepts a checkpoint folder, a run folder (its latest checkpoint) or
a folder written by ``datagen export-model`` and returns the same ``Loaded`` for
each, so ``datagen chat`` and ``datagen eval`` work on all three. Prompts go
through the training code (``render_*`` with a generation prompt, ``encode``,
``ImageTransform``), so what the model sees at inference is what it saw in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from datagen.train.checkpoint import load_weights, resolve_checkpoint
from datagen.train.config import LoraSpec, ModelConfig
from datagen.train.data import ImageTransform
from datagen.train.model import MplugOwl, add_lora, build_model
from datagen.train.template import PLACEHOLDER, encode, render_chat, render_mplug

EXPORT_CONFIG = "mplug_owl.json"  # what marks an exported folder


@dataclass
class Loaded:
    model: MplugOwl
    tokenizer: object
    pre: dict  # image_size, mean, std, resize
    model_cfg: ModelConfig
    template: str  # mplug_owl | chat
    meta: dict  # checkpoint meta.json, or the export config
    source: str

    @property
    def tokens_per_image(self) -> int:
        return self.model_cfg.abstractor.tokens_per_image

    def transform(self) -> ImageTransform:
        return ImageTransform(self.pre["image_size"], self.pre["mean"], self.pre["std"], self.pre["resize"])


def load_model(path: str | Path, device: torch.device | str = "cpu") -> Loaded:
    """A checkpoint, run folder or exported folder -> model in eval mode on ``device``."""
    p = Path(path)
    loaded = _load_export(p) if (p / EXPORT_CONFIG).exists() else _load_checkpoint(p)
    loaded.model.to(device).eval()
    return loaded


def _load_checkpoint(path: Path) -> Loaded:
    from transformers import AutoTokenizer

    ckpt = resolve_checkpoint(path)
    meta = json.loads((ckpt / "meta.json").read_text())
    mc = ModelConfig.model_validate(meta["model"])
    tokenizer = AutoTokenizer.from_pretrained(ckpt / "tokenizer")
    model, pre = build_model(mc.vision, mc.abstractor, mc.llm, vocab_size=len(tokenizer))
    if meta.get("lora"):
        add_lora(model, LoraSpec.model_validate(meta["lora"]))
    parts = set(meta["full_parts"])
    required = [k for k in model.state_dict() if k.split(".", 1)[0] in parts or "lora_" in k]
    load_weights(model, ckpt, required=required)  # nothing the run trained may stay random
    return Loaded(model, tokenizer, pre, mc, meta.get("template", "mplug_owl"), meta, str(ckpt))


def _load_export(folder: Path) -> Loaded:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    cfg = json.loads((folder / EXPORT_CONFIG).read_text())
    model_spec = json.loads(json.dumps(cfg["model"]))
    llm_name = model_spec["llm"]["name"]
    if not Path(llm_name).is_absolute() and (folder / llm_name).exists():
        model_spec["llm"]["name"] = str(folder / llm_name)
    mc = ModelConfig.model_validate(model_spec)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    model, pre = build_model(mc.vision, mc.abstractor, mc.llm, vocab_size=len(tokenizer))
    if cfg.get("adapter"):
        from peft import PeftModel

        model.llm = PeftModel.from_pretrained(model.llm, folder / cfg["adapter"])
    weights = load_file(folder / "vision_abstractor.safetensors")
    own = {k for k in model.state_dict() if k.startswith(("vision.", "abstractor."))}
    if set(weights) != own:
        missing, extra = sorted(own - set(weights)), sorted(set(weights) - own)
        raise ValueError(f"{folder}/vision_abstractor.safetensors does not fit the model in {EXPORT_CONFIG}: "
                         f"missing {missing[:3]}, unexpected {extra[:3]}")
    model.load_state_dict(weights, strict=False)
    return Loaded(model, tokenizer, pre, mc, cfg.get("template", "mplug_owl"), cfg, str(folder))


def with_images(question: str, n_images: int) -> str:
    """The first user turn: image placeholders first (one line each), unless the question
    already places them."""
    if n_images == 0 or PLACEHOLDER.search(question):
        return question
    marks = ["<image>"] if n_images == 1 else [f"<image_{i}>" for i in range(n_images)]
    return "\n".join(marks + [question])


def prompt_inputs(loaded: Loaded, turns: Sequence[dict], images: Sequence[Image.Image]) -> dict:
    """Turns ending with a user turn -> model inputs for generating the assistant's reply."""
    tok = loaded.tokenizer
    if loaded.template == "chat":
        rendered = render_chat(turns, tok, add_generation_prompt=True)
    else:
        rendered = render_mplug(turns, tok.eos_token, add_generation_prompt=True)
    max_len = getattr(loaded.model.llm.config, "max_position_embeddings", None) or 1_000_000
    enc = encode(rendered, tok, num_images=len(images), tokens_per_image=loaded.tokens_per_image,
                 max_len=max_len, add_bos=loaded.template != "chat")
    if len(enc.image_order) != len(PLACEHOLDER.findall(rendered.text)):
        raise ValueError(f"the prompt is longer than the LLM's {max_len} positions")
    transform = loaded.transform()
    size = loaded.pre["image_size"]
    pixels = [transform(images[i]) for i in enc.image_order]
    ids = torch.tensor([enc.input_ids])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.stack(pixels) if pixels else torch.zeros(0, 3, size, size)}


def stop_ids(tokenizer) -> list[int]:
    """End-of-reply tokens: eos, and ChatML's end of turn when the vocabulary has it."""
    ids = [tokenizer.eos_token_id]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.append(im_end)
    return [i for i in ids if i is not None]


@torch.no_grad()
def generate_ids(loaded: Loaded, inputs: dict, *, max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[int]:
    """New token ids (the stop token excluded): greedy when ``temperature`` is 0."""
    model = loaded.model
    device = next(model.parameters()).device
    embeds = model.embed(inputs["input_ids"].to(device), inputs["pixel_values"].to(device))
    if seed is not None:
        torch.manual_seed(seed)
    tok = loaded.tokenizer
    stops = stop_ids(tok)
    sample = temperature > 0
    out = model.llm.generate(
        inputs_embeds=embeds, attention_mask=inputs["attention_mask"].to(device), max_new_tokens=max_new_tokens,
        do_sample=sample, temperature=temperature if sample else None, top_p=top_p if sample else None,
        top_k=None, eos_token_id=stops, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stops[0],
    )[0].tolist()
    for i, t in enumerate(out):
        if t in stops:
            return out[:i]
    return out


def reply(loaded: Loaded, turns: Sequence[dict], images: Sequence[Image.Image], **gen) -> str:
    """The assistant's next reply to ``turns`` (which end with a user turn)."""
    ids = generate_ids(loaded, prompt_inputs(loaded, turns, images), **gen)
    return loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()
