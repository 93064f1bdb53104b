"""``datagen export-model``: a trained checkpoint -> a folder other tools can load.

Layout of DEST::

    mplug_owl.json                  model spec (vision, abstractor, llm -> "llm" or the base id),
                                    template, preprocessing, stage and training config
    vision_abstractor.safetensors   the ViT and visual abstractor weights
    llm/                            a Hugging Face causal LM (LoRA merged in), with its tokenizer:
                                    AutoModelForCausalLM.from_pretrained(DEST / "llm") loads it
    adapter/                        with --adapter: the LoRA adapter (peft), instead of merging it;
                                    the base LLM is then the named one, or llm/ when it was built here
    tokenizer/                      the tokenizer the model was trained with

``datagen chat DEST`` and ``datagen eval DEST`` load it back (datagen.train.inference).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from datagen.train.inference import EXPORT_CONFIG, load_model


def export_model(checkpoint: str | Path, dest: str | Path, *, adapter: bool = False,
                 dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write the export folder; returns it. ``dtype`` (float32, bfloat16, float16) casts the LLM."""
    from safetensors.torch import save_file

    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{dest}: exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(dest)
    loaded = load_model(checkpoint, "cpu")
    model, mc = loaded.model, loaded.model_cfg
    has_lora = hasattr(model.llm, "peft_config")
    if adapter and not has_lora:
        raise ValueError(f"{checkpoint}: the model has no LoRA adapter to export apart (drop --adapter)")
    dest.mkdir(parents=True, exist_ok=True)
    spec = mc.model_dump(mode="json")
    # the ViT is rebuilt from its architecture; its weights come from the safetensors file
    if mc.vision.config is None:
        spec["vision"].update(pretrained=None, quick_gelu=loaded.pre["quick_gelu"])
    spec["llm"].update(config=None, dtype=dtype or mc.llm.dtype)
    cfg: dict = {"format": "datagen-mplug-owl", "version": 1, "template": loaded.template,
                 "stage": loaded.meta.get("stage"), "config": loaded.meta.get("config"),
                 "source": loaded.source, "preprocess": {k: loaded.pre[k] for k in ("image_size", "mean", "std",
                                                                                      "resize")}}
    llm_dtype = getattr(torch, dtype or mc.llm.dtype)
    named_base = mc.llm.name is not None and mc.llm.config is None and "llm" not in loaded.meta.get("full_parts", [])
    if adapter:
        model.llm.save_pretrained(dest / "adapter")  # the adapter only
        cfg["adapter"] = "adapter"
        base = model.llm.get_base_model()
        if named_base:
            spec["llm"]["name"] = mc.llm.name
        else:
            _strip_lora(base).to(llm_dtype).save_pretrained(dest / "llm", safe_serialization=True)
            spec["llm"]["name"] = "llm"
    else:
        llm = model.llm.merge_and_unload() if has_lora else model.llm
        llm.to(llm_dtype).save_pretrained(dest / "llm", safe_serialization=True)
        loaded.tokenizer.save_pretrained(dest / "llm")
        spec["llm"]["name"] = "llm"
    cfg["model"] = spec
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()
               if k.startswith(("vision.", "abstractor."))}
    save_file(weights, str(dest / "vision_abstractor.safetensors"))
    loaded.tokenizer.save_pretrained(dest / "tokenizer")
    (dest / EXPORT_CONFIG).write_text(json.dumps(cfg, indent=1, ensure_ascii=False) + "\n")
    return dest


def _strip_lora(base: torch.nn.Module) -> torch.nn.Module:
    """A copy of the LoRA-wrapped base model with the adapter layers removed (not merged)."""
    import copy

    from peft.tuners.lora import LoraLayer

    base = copy.deepcopy(base)
    for name, module in list(base.named_modules()):
        if isinstance(module, LoraLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent_name) if parent_name else base, child, module.get_base_layer())
    return base
