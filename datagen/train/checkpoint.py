"""Checkpoints: what is saved, and how a run resumes exactly.

A checkpoint folder holds ``meta.json`` (model spec, LoRA spec, template, step,
stream position), ``model.pt``, ``optim.pt`` (optimizer + scheduler),
``rng-<rank>.pt`` and ``tokenizer/``. ``model.pt`` keeps every trainable tensor
plus every component whose weights cannot be rebuilt from a name: parts built
from a config (random init) and parts trained in an earlier stage (the stage-1
ViT). A frozen 7B LLM loaded by name is never copied into a checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder whose ``latest.txt`` names one."""
    p = Path(path)
    if (p / "meta.json").exists():
        return p
    latest = p / "latest.txt"
    if latest.exists():
        return p / latest.read_text().strip()
    raise FileNotFoundError(f"{p}: neither a checkpoint (no meta.json) nor a run folder (no latest.txt)")


def saved_keys(model: nn.Module, full_parts: list[str]) -> list[str]:
    sd_keys = model.state_dict().keys()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return [k for k in sd_keys if k in trainable or k.split(".", 1)[0] in full_parts]


def save_checkpoint(out: Path, step: int, model: nn.Module, meta: dict, tokenizer, optimizer, scheduler,
                    rank: int, world: int, barrier) -> Path:
    """Rank 0 writes the shared files into a temporary folder; every rank writes its RNG state;
    the folder is renamed into place and ``latest.txt`` updated only when all are done."""
    name = f"checkpoints/step-{step:06d}"
    final = out / name
    tmp = out / f"{name}.tmp"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / f"rng-{rank}.pt")
    if rank == 0:
        sd = model.state_dict()
        keep = saved_keys(model, meta["full_parts"])
        torch.save({k: sd[k].detach().cpu() for k in keep}, tmp / "model.pt")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step, "world_size": world}, indent=1))
    barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        (out / "latest.txt").write_text(name + "\n")
    barrier()
    return final


def load_weights(model: nn.Module, ckpt: Path, required: list[str] | None = None) -> list[str]:
    """Load ``model.pt`` into ``model``; every checkpoint tensor must find a home with the same shape,
    and every key in ``required`` must be present. Returns the loaded keys."""
    sd = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    own = model.state_dict()
    unknown = [k for k in sd if k not in own]
    if unknown:
        raise ValueError(f"{ckpt}/model.pt: {len(unknown)} tensors fit no parameter of this model, e.g. {unknown[:3]}")
    bad = [k for k in sd if sd[k].shape != own[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(f"{ckpt}/model.pt: {k} has shape {tuple(sd[k].shape)}, model expects {tuple(own[k].shape)}")
    missing = [k for k in (required or []) if k not in sd]
    if missing:
        raise ValueError(f"{ckpt}/model.pt lacks {len(missing)} tensors this run needs, e.g. {missing[:3]}")
    model.load_state_dict(sd, strict=False)
    return list(sd)


def load_training_state(ckpt: Path, optimizer, scheduler, rank: int) -> dict[str, Any]:
    state = torch.load(ckpt / "optim.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_path = ckpt / f"rng-{rank}.pt"
    if not rng_path.exists():
        raise FileNotFoundError(f"{rng_path}: resuming needs the same number of processes as the saved run")
    rng = torch.load(rng_path, map_location="cpu", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "meta.json").read_text())
