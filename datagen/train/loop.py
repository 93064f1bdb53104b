"""The training loop: one stage, one function (nanoGPT style), DDP-ready via torchrun.

Per optimizer step: ``grad_accum`` micro-batches; the loss of each is a token
*sum* divided by the token count of the whole step across all processes, so
accumulation and DDP give the same update as one big batch. bf16 autocast on
CUDA, gradient clipping, cosine schedule with linear warmup, optional gradient
checkpointing. Checkpoints hold optimizer, scheduler, RNG and stream position,
so N steps == N/2 steps + resume + N/2 steps, bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from datagen.train.checkpoint import (
    load_training_state,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
    saved_keys,
)
from datagen.train.config import ModelConfig, LoraSpec, TrainConfig
from datagen.train.data import DataSpec, StreamPosition, training_batches
from datagen.train.model import MplugOwl, add_lora, build_model, count_params, param_groups, set_trainable
from datagen.train.template import IGNORE, MPLUG_SYSTEM
from datagen.train.tokenizer import load_tokenizer, shard_texts, train_bpe_tokenizer


@dataclass
class Built:
    """A model ready for a stage, with what checkpoints must remember about it."""

    model: MplugOwl
    tokenizer: Any
    pre: dict
    model_cfg: ModelConfig
    lora: LoraSpec | None
    full_parts: list[str]  # components saved in full (random init or trained in some stage)
    init_keys: list[str] = field(default_factory=list)


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def build_tokenizer(model_cfg: ModelConfig, data_dir: str, out: Path, rank: int):
    """Stage-1 tokenizer: by name, or a BPE trained by rank 0 and read back by the others."""
    tcfg = model_cfg.tokenizer
    if tcfg.bpe_vocab_size is None:
        return load_tokenizer(tcfg.name or model_cfg.llm.name)
    from transformers import AutoTokenizer

    folder = out / "tokenizer"
    if rank == 0:
        texts = list(shard_texts(data_dir))
        if not texts:
            raise FileNotFoundError(f"{data_dir}: no shard texts to train a tokenizer on")
        texts += [MPLUG_SYSTEM] * 50  # in every mPLUG-Owl example: worth a few merges
        train_bpe_tokenizer(texts, tcfg.bpe_vocab_size).save_pretrained(folder)
    _barrier()
    return AutoTokenizer.from_pretrained(folder)


def build_for_stage(cfg: TrainConfig, rank: int = 0) -> Built:
    """Model + tokenizer for ``cfg``: from ``init_from`` (spec and weights of that checkpoint) or
    from ``cfg.model``; then LoRA (stage 2) and the stage's frozen/trainable split."""
    from transformers import AutoTokenizer

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    init_keys: list[str] = []
    if cfg.init_from:
        ckpt = resolve_checkpoint(cfg.init_from)
        meta = json.loads((ckpt / "meta.json").read_text())
        model_cfg = ModelConfig.model_validate(meta["model"])
        if cfg.model is not None and cfg.model != model_cfg:
            raise ValueError(f"model in the config differs from the model of init_from {ckpt}; drop 'model'")
        tokenizer = AutoTokenizer.from_pretrained(ckpt / "tokenizer")
        model, pre = build_model(model_cfg.vision, model_cfg.abstractor, model_cfg.llm, vocab_size=len(tokenizer))
        lora = LoraSpec.model_validate(meta["lora"]) if meta.get("lora") else None
        if lora is not None:
            add_lora(model, lora)
        init_keys = load_weights(model, ckpt, required=None)
        full_parts = list(meta["full_parts"])
        if lora is not None and cfg.lora is not None and cfg.lora != lora:
            raise ValueError(f"lora {cfg.lora} differs from the LoRA of init_from {ckpt} ({lora})")
    else:
        model_cfg = cfg.model
        if cfg.resume and (out / "latest.txt").exists():  # the vocabulary the saved weights were trained with
            tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(out) / "tokenizer")
        else:
            tokenizer = build_tokenizer(model_cfg, cfg.data.dir, out, rank)
        model, pre = build_model(model_cfg.vision, model_cfg.abstractor, model_cfg.llm, vocab_size=len(tokenizer))
        lora = None
        full_parts = [p for p, built_from_config in (("vision", model_cfg.vision.config), ("llm", model_cfg.llm.config))
                      if built_from_config is not None]
    full_parts = sorted(set(full_parts) | {"abstractor"} | ({"vision"} if cfg.stage == 1 else set())
                        | ({"llm"} if cfg.train_llm else set()))
    if cfg.stage == 2 and cfg.lora is not None and lora is None:
        lora = cfg.lora
        add_lora(model, lora)
    set_trainable(model, cfg.stage, cfg.train_llm)
    return Built(model, tokenizer, pre, model_cfg, lora, full_parts, init_keys)


def data_spec(cfg: TrainConfig, built: Built, **overrides) -> DataSpec:
    d = cfg.data
    fields = dict(
        data_dir=d.dir, stage=cfg.stage, tokenizer=built.tokenizer, template=cfg.template,
        tokens_per_image=built.model_cfg.abstractor.tokens_per_image, image_size=built.pre["image_size"],
        mean=tuple(built.pre["mean"]), std=tuple(built.pre["std"]), resize=built.pre["resize"], max_len=d.max_seq_len,
        batch_size=d.batch_size, text_ratio=d.text_ratio, shuffle_buffer=d.shuffle_buffer,
        holdout_fraction=d.holdout_fraction, holdout="exclude", resampled=d.resampled, seed=cfg.seed,
        group_by_length=d.group_by_length,
    )
    fields.update(overrides)
    return DataSpec(**fields)


def cosine_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, int, torch.device, bool]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    started = False
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        started = True
    return rank, world, local, device, started


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _all_sum(x: float, device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def train(cfg: TrainConfig, *, quiet: bool = False) -> dict:
    """Run one stage; returns a summary: per-step losses, the last checkpoint, the trained model."""
    rank, world, _, device, started = _setup_distributed(cfg)
    try:
        return _train(cfg, rank, world, device, quiet or rank != 0)
    finally:
        if started:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device, quiet: bool) -> dict:
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # the loader workers have cores of their own; oversubscribed OpenMP threads spin (10x slower)
        torch.set_num_threads(max(1, ((os.cpu_count() or 1) - cfg.data.num_workers) // world))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(cfg.out)
    built = build_for_stage(cfg, rank)
    model = built.model.to(device)
    if cfg.grad_checkpointing:
        model.vision.set_grad_checkpointing(True)
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:
        model.llm.compile()  # in place: parameter names (and so checkpoints) stay the same
    params = [p for p in model.parameters() if p.requires_grad]
    oc = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, oc.weight_decay), lr=oc.lr, betas=oc.betas,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(oc.warmup_steps, cfg.max_steps, oc.min_lr_ratio))

    step, position = 0, StreamPosition()
    if cfg.resume and (out / "latest.txt").exists():
        ckpt = resolve_checkpoint(out)
        load_weights(model, ckpt, required=saved_keys(model, built.full_parts))
        meta = load_training_state(ckpt, optimizer, scheduler, rank)
        if meta.get("world_size", 1) != world:
            raise ValueError(f"{ckpt} was written by {meta.get('world_size')} processes; this run has {world}")
        step = int(meta["step"])
        position = StreamPosition(**meta["position"][str(rank)])
        if not quiet:
            print(f"[stage {cfg.stage}] resumed from {ckpt} at step {step}", flush=True)

    runner: torch.nn.Module = model
    if world > 1:
        # Stage-2 text-only batches leave the abstractor without gradients on some ranks.
        unused = cfg.stage == 2 and cfg.data.text_ratio > 0
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused
        )
    spec = data_spec(cfg, built)
    batches = training_batches(spec, position, num_workers=cfg.data.num_workers, epoch_batches=cfg.data.epoch_batches,
                               pin_memory=device.type == "cuda")

    counts = count_params(model)
    stop = min(cfg.stop_at_step or cfg.max_steps, cfg.max_steps)
    if not quiet:
        print(f"[stage {cfg.stage}] params {counts['total']:,} (trainable {counts['trainable']:,}); "
              f"steps {step}->{stop} of {cfg.max_steps}; world {world}; device {device}; "
              f"uniform-guess loss ln(vocab) = {uniform_loss(built.tokenizer):.3f}", flush=True)
    log_path = out / "log.jsonl"
    if rank == 0 and log_path.exists():  # keep the log in step with the weights: drop steps past the resume point
        kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        log_path.write_text("".join(line + "\n" for line in kept))
    losses: list[float] = []
    meta = {"stage": cfg.stage, "model": built.model_cfg.model_dump(mode="json"),
            "lora": built.lora.model_dump(mode="json") if built.lora else None, "template": cfg.template,
            "full_parts": built.full_parts, "config": cfg.model_dump(mode="json")}
    last_ckpt = None
    t0, tokens_seen, empty_examples, warned = time.perf_counter(), 0, 0, False
    writer = None
    if rank == 0 and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1)  # a resume drops later events
    runner.train()
    while step < stop:
        micro = [next(batches) for _ in range(oc.grad_accum)]
        local_tokens = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro)
        empty_examples += sum(int(((b["labels"] != IGNORE).sum(1) == 0).sum()) for b in micro)
        if empty_examples and not warned and not quiet:
            warned = True
            print(f"[stage {cfg.stage}] warning: examples with no reply tokens left after truncation to "
                  f"data.max_seq_len={cfg.data.max_seq_len}; raise it (counted in the summary)", flush=True)
        step_tokens = _all_sum(local_tokens, device)
        loss_sum_local = 0.0
        for i, b in enumerate(micro):
            sync = i == len(micro) - 1 or world == 1
            ctx = runner.no_sync() if not sync else nullcontext()
            with ctx:
                with _autocast(cfg, device):
                    loss_sum, _ = runner(*(b[k].to(device, non_blocking=True)
                                           for k in ("input_ids", "attention_mask", "pixel_values", "labels")))
                # DDP averages gradients over processes; the loss is already normalised by the
                # global token count, so undo the average: the update of one big batch
                (loss_sum * world / max(step_tokens, 1.0)).backward()
            loss_sum_local += float(loss_sum.detach())
            tokens_seen += int(b["attention_mask"].sum())
        if oc.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, oc.grad_clip))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss = _all_sum(loss_sum_local, device) / max(step_tokens, 1.0)
        losses.append(loss)
        if rank == 0:
            rec = {"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                   "tokens": step_tokens}
            with log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if writer is not None:
                for k in ("loss", "lr", "grad_norm", "tokens"):
                    writer.add_scalar(f"train/{k}", rec[k], step)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == stop):
            if rank == 0:
                report = evaluate_during_training(cfg, built, model, device)
                with log_path.open("a") as f:
                    f.write(json.dumps({"step": step, "eval": report}) + "\n")
                if writer is not None:
                    for k, v in flat_metrics(report).items():
                        writer.add_scalar(f"eval/{k}", v, step)
                if not quiet:
                    print(f"[stage {cfg.stage}] eval  {step:5d}  " + "  ".join(
                        f"{k} {v:.4f}" for k, v in flat_metrics(report).items()), flush=True)
            _barrier()
            runner.train()
        if not quiet and (step % cfg.log_every == 0 or step == stop or step == 1):
            dt = time.perf_counter() - t0
            print(f"[stage {cfg.stage}] step {step:5d}/{cfg.max_steps}  loss {loss:.4f}  "
                  f"lr {scheduler.get_last_lr()[0]:.2e}  grad {grad_norm:.3f}  "
                  f"tok/s {tokens_seen * world / max(dt, 1e-9):.0f}", flush=True)
        if step == stop or (cfg.save_every and step % cfg.save_every == 0):
            positions = _gather_positions(position, world)
            last_ckpt = save_checkpoint(out, step, model, {**meta, "position": positions}, built.tokenizer,
                                        optimizer, scheduler, rank, world, _barrier)
    if writer is not None:
        writer.close()
    if last_ckpt is None and (out / "latest.txt").exists():
        last_ckpt = resolve_checkpoint(out)
    return {"losses": losses, "step": step, "uniform_loss": uniform_loss(built.tokenizer), "checkpoint": str(last_ckpt) if last_ckpt else None, "model": model,
            "params": counts, "seconds": time.perf_counter() - t0,
            "examples_without_targets": empty_examples}


def evaluate_during_training(cfg: TrainConfig, built: Built, model: MplugOwl, device: torch.device) -> dict:
    """Loss on the held-out keys (``data.holdout_fraction``) and the POPE first-token probe on
    held-out annotated images. Run by rank 0 on the unwrapped model, under the global RNG's fork:
    training continues exactly as without it."""
    from datagen.train.eval import heldout_loss, pope_report
    from datagen.train.inference import Loaded

    spec = data_spec(cfg, built, holdout="only", resampled=False, shuffle_buffer=0, text_ratio=0.0)
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _autocast(cfg, device):
        report = {"heldout": heldout_loss(model, spec, cfg.eval_batches, device)}
        if cfg.eval_pope_images:
            loaded = Loaded(model, built.tokenizer, built.pre, built.model_cfg, cfg.template, {}, cfg.out)
            report.update(pope_report(loaded, spec, cfg.data.dir, cfg.data.holdout_fraction, sampling="adversarial",
                                      per_image=3, max_images=cfg.eval_pope_images, seed=cfg.seed, langs=("en",),
                                      batch_size=cfg.data.batch_size, device=device, generate=False))
    return report


def flat_metrics(report: dict) -> dict[str, float]:
    """The scalar numbers of an evaluation report, as 'loss', 'pope_en_f1', ..."""
    out = {}
    if report["heldout"]["loss"] is not None:
        out["loss"] = report["heldout"]["loss"]
    for lang, m in (report.get("pope") or {}).items():
        if m.get("n"):
            out.update({f"pope_{lang}_{k}": m[k] for k in ("accuracy", "f1", "yes_ratio")})
    return out


def uniform_loss(tokenizer) -> float:
    """The loss of a model that guesses uniformly over the vocabulary: learning is loss below it."""
    return math.log(len(tokenizer))


def _gather_positions(position: StreamPosition, world: int) -> dict[str, dict]:
    mine = {"epoch": position.epoch, "batch": position.batch}
    if world == 1:
        return {"0": mine}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    return {str(r): p for r, p in enumerate(gathered)}
