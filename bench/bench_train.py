"""Training throughput of the bundled trainer's real step: tokens/s, MFU and padding, per stage.

    python bench/bench_train.py                       # CUDA: ViT-L/14 + abstractor + ~0.85B LLaMA (bf16)
    python bench/bench_train.py --preset tiny         # CPU-sized model (what a laptop or CI can run)
    python bench/bench_train.py --data out/demo       # batches from these shards (default: synthetic ones)

What is timed, per stage: the step of datagen.train.loop on batches made by the
real pipeline (shards -> expansion -> tokenised conversations with image spans ->
padded batches), at the recipe's batch size and sequence limit, with the recipe's
gradient checkpointing (recipes/train/stage{1,2}_mplug_owl.yaml: on in stage 2,
off in stage 1), bf16 autocast and a bf16 frozen LLM on CUDA, fused AdamW, and the
LM head applied only at labelled positions. Stage 1: LLM frozen, ViT + abstractor
train. Stage 2: ViT frozen, abstractor + LoRA train.

Baseline measured in the same run: plain batching (what the trainer did before)
against length-grouped batching (data.group_by_length); the ratio of useful
tokens/s shows what grouping buys, and the padding share of both is printed.
A third figure is the data pipeline rate in examples/s.

Model FLOPs per step (useful tokens only; padding and recomputation are not
counted, so they lower MFU as they should). Per image, P patch tokens + class token,
width w, ViT depth Lv: forward 2*N_vit*P + 2*Lv*P^2*w (QK^T and AV); training it
(stage 1) triples that. Abstractor (Q queries, width h, depth La, SwiGLU width m):
in_proj 2*P*w*h; per layer q/o on Q rows 4*Q*h^2, k/v on Q+P rows 4*(Q+P)*h^2,
attention 4*Q*(Q+P)*h, MLP 6*Q*h*m; out_proj 2*Q*h*d; trained in both stages: x3.
LLM, per sequence of S real tokens: linear layers 2*N_llm*S forward + 2*N_llm*S for
activation gradients (frozen weights: no weight gradients; LoRA ignored), causal
attention 2*L*S^2*d forward, x3 with backward; LM head 4*V*d per labelled token.
Peak: bf16 dense of the detected GPU (H100/H200 989 TFLOP/s, A100 312), or --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datagen.train.config import AbstractorConfig, LLMConfig, LoraSpec, VisionConfig, load_config  # noqa: E402
from datagen.train.data import DataSpec, build_dataset  # noqa: E402
from datagen.train.model import add_lora, build_model, param_groups, set_trainable  # noqa: E402
from datagen.train.synthetic import write_synthetic_shards  # noqa: E402
from datagen.train.template import IGNORE  # noqa: E402
from datagen.train.tokenizer import shard_texts, train_bpe_tokenizer  # noqa: E402

TINY_LLM = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2}
PRESETS = {
    "tiny": {
        "vision": VisionConfig(config={"embed_dim": 32, "image_size": 32, "patch_size": 8, "width": 64, "layers": 2,
                                       "head_width": 32, "mlp_ratio": 2.0}),
        "abstractor": AbstractorConfig(num_queries=8, layers=2, hidden=64, heads=4, mlp_hidden=128),
        "llm": LLMConfig(config=TINY_LLM),
        "batch": {1: 8, 2: 8}, "seq": {1: 128, 2: 256},
    },
    # ViT-L/14 at 224 (open_clip's own config, random weights), mPLUG-Owl's abstractor, and a
    # LLaMA of ~0.85B parameters (TinyLlama-like widths, 16 layers), frozen in bf16.
    "1b": {
        "vision": VisionConfig(name="ViT-L-14", pretrained=None),
        "abstractor": AbstractorConfig(),
        "llm": LLMConfig(config={"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
                                 "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
                                 "max_position_embeddings": 4096}, dtype="bfloat16"),
        "batch": None, "seq": None,  # the recipes' (stage 1: 32 x 256, stage 2: 16 x 2048)
    },
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def recipe(stage: int):
    return load_config(ROOT / "recipes" / "train" / f"stage{stage}_mplug_owl.yaml")


def build(preset: dict, stage: int, device: torch.device, vocab: int):
    model, pre = build_model(preset["vision"], preset["abstractor"], preset["llm"], vocab_size=vocab)
    if stage == 2:
        add_lora(model, LoraSpec())
    set_trainable(model, stage)
    return model.to(device), pre


def real_batches(data_dir: str, stage: int, tok, pre: dict, preset: dict, batch: int, seq: int, n: int,
                 group: int) -> list[dict]:
    spec = DataSpec(data_dir=data_dir, stage=stage, tokenizer=tok, template="mplug_owl",
                    tokens_per_image=preset["abstractor"].tokens_per_image, image_size=pre["image_size"],
                    mean=tuple(pre["mean"]), std=tuple(pre["std"]), resize=pre["resize"], max_len=seq,
                    batch_size=batch, text_ratio=0.5 if stage == 2 else 0.0, shuffle_buffer=64,
                    group_by_length=group)
    return list(islice(build_dataset(spec), n))


def padding(batches) -> float:
    cells = sum(b["attention_mask"].numel() for b in batches)
    return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / cells


def flops(model, preset: dict, pre: dict, stage: int, b: dict) -> float:
    """Model FLOPs of one training step on batch ``b`` (see the module docstring)."""
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    c = llm.config
    d, L, V = c.hidden_size, c.num_hidden_layers, c.vocab_size
    n_llm = sum(p.numel() for n, p in llm.model.layers.named_parameters() if "lora_" not in n)
    lengths = b["attention_mask"].sum(1).double()
    labelled = int((b["labels"][:, 1:] != IGNORE).sum())
    total = float(4 * n_llm * lengths.sum() + 3 * 2 * L * d * (lengths ** 2).sum() + 4 * V * d * labelled)
    n_img = int(b["pixel_values"].shape[0])
    if n_img:
        v = model.vision
        w, Lv = pre["width"], len(v.transformer.resblocks)
        P = (pre["image_size"] // v.patch_size[0]) ** 2 + 1
        n_vit = sum(p.numel() for p in v.transformer.parameters()) + sum(p.numel() for p in v.conv1.parameters())
        vit = 2 * n_vit * P + 4 * Lv * P * P * w  # conv1 counted per patch token: a slight overcount
        a = preset["abstractor"]
        Q, h, m = a.num_queries, a.hidden, a.mlp_hidden
        ab = 2 * P * w * h + a.layers * (4 * Q * h * h + 4 * (Q + P) * h * h + 4 * Q * (Q + P) * h + 6 * Q * h * m)
        ab += 2 * Q * h * d
        total += n_img * ((3 if stage == 1 else 1) * vit + 3 * ab)
    return total


def time_steps(model, batches: list[dict], device, bf16: bool, warmup: int) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-5, fused=device.type == "cuda")
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)

    def step(b):
        with ctx:
            loss, n = model(*(b[k].to(device, non_blocking=True)
                              for k in ("input_ids", "attention_mask", "pixel_values", "labels")))
        (loss / max(n, 1)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[:warmup]:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def loader_rate(data_dir, stage, tok, pre, preset, batch, seq, workers: int, n_batches: int) -> float:
    spec = DataSpec(data_dir=data_dir, stage=stage, tokenizer=tok, template="mplug_owl",
                    tokens_per_image=preset["abstractor"].tokens_per_image, image_size=pre["image_size"],
                    batch_size=batch, text_ratio=0.2 if stage == 2 else 0.0, max_len=seq, group_by_length=4)
    loader = torch.utils.data.DataLoader(build_dataset(spec, num_workers=workers), batch_size=None,
                                         num_workers=workers)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    n = sum(len(b["keys"]) for b in islice(it, n_batches))
    return n / (time.perf_counter() - t)


def padding_at_recipe_shapes(stage: int, data_dir: str, group: int, n: int = 20) -> dict:
    """The padding share of the real recipe's batches (batch size, max_seq_len, 65 positions per
    image) with plain and with length-grouped batching; no model needed."""
    cfg = recipe(stage)
    tok = train_bpe_tokenizer(list(shard_texts(data_dir)), 4000)
    pre = {"image_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3, "resize": "squash"}
    preset = {"abstractor": cfg.model.abstractor if cfg.model else AbstractorConfig()}
    out = {"batch": cfg.data.batch_size, "max_seq_len": cfg.data.max_seq_len, "group_by_length": group}
    for label, g in (("plain", 0), ("grouped", group)):
        out[label] = padding(real_batches(data_dir, stage, tok, pre, preset, cfg.data.batch_size,
                                          cfg.data.max_seq_len, n, g))
    return out


def bench_stage(stage: int, args, preset: dict, device, data_dir: str, peak: float | None) -> dict:
    cfg = recipe(stage)
    batch = args.batch or (preset["batch"] or {}).get(stage) or cfg.data.batch_size
    seq = args.seq or (preset["seq"] or {}).get(stage) or cfg.data.max_seq_len
    ckpt = cfg.grad_checkpointing if args.grad_checkpointing is None else args.grad_checkpointing
    vocab = preset["llm"].config["vocab_size"]
    tok = train_bpe_tokenizer(list(shard_texts(data_dir)), min(vocab, 4000))
    torch.manual_seed(0)
    model, pre = build(preset, stage, device, len(tok))
    if ckpt:
        if stage == 1:
            model.vision.set_grad_checkpointing(True)
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    bf16 = device.type == "cuda"
    n = args.warmup + args.steps
    out = {"batch": batch, "seq": seq, "grad_checkpointing": ckpt,
           "params": {"llm": sum(p.numel() for p in model.llm.parameters()),
                      "vision": sum(p.numel() for p in model.vision.parameters()),
                      "abstractor": sum(p.numel() for p in model.abstractor.parameters()),
                      "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}}
    for label, group in (("plain", 0), ("grouped", args.group)):
        batches = real_batches(data_dir, stage, tok, pre, preset, batch, seq, n, group)
        dt = time_steps(model, batches, device, bf16, args.warmup)
        timed = batches[args.warmup:]
        useful = sum(int(b["attention_mask"].sum()) for b in timed)
        fl = sum(flops(model, preset, pre, stage, b) for b in timed)
        out[label] = {"padding": padding(batches), "tokens_per_s": useful / dt, "step_s": dt / len(timed),
                      "tflops": fl / dt / 1e12, "mfu": fl / dt / peak if peak else None}
        if device.type == "cuda":
            out[label]["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out["ratio_grouped_vs_plain_tokens_per_s"] = out["grouped"]["tokens_per_s"] / out["plain"]["tokens_per_s"]
    out["loader_examples_per_s"] = loader_rate(data_dir, stage, tok, pre, preset, batch, seq, args.workers, 5)
    out["loader_examples_needed_per_s"] = batch / out["grouped"]["step_s"]
    del model
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: 1b on CUDA, tiny otherwise")
    p.add_argument("--stage", type=int, choices=[1, 2], action="append", help="default: both")
    p.add_argument("--data", help="shard folder (stage1/, stage2/, stage2_text/); default: synthetic shards")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="default: the recipe's (tiny: 8)")
    p.add_argument("--seq", type=int, default=None, help="max_seq_len; default: the recipe's")
    p.add_argument("--group", type=int, default=16, help="data.group_by_length of the grouped run")
    p.add_argument("--grad-checkpointing", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                   help="default: the recipe's")
    p.add_argument("--workers", type=int, default=2, help="loader workers for the data-pipeline figure")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--padding-only", action="store_true",
                   help="only the padding share of the real recipes' batches (no model, any machine)")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.preset or ("1b" if device.type == "cuda" else "tiny")
    preset = PRESETS[name]
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) - 1)))  # a core for everything else
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in dev_name), None)
    results = {"device": dev_name, "preset": name}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or str(write_synthetic_shards(tmp, n_images=96, n_multi=16, n_text=48, image_size=96))
        results["data"] = args.data or "synthetic"
        if args.padding_only:
            for stage in args.stage or [1, 2]:
                r = results[f"stage{stage}_padding"] = padding_at_recipe_shapes(stage, data_dir, args.group)
                print(f"stage {stage} recipe batches {r['batch']} x <= {r['max_seq_len']}: padding "
                      f"{100 * r['plain']:.1f}% plain, {100 * r['grouped']:.1f}% grouped (group_by_length {args.group})")
            print(json.dumps(results))
            return 0
        for stage in args.stage or [1, 2]:
            r = results[f"stage{stage}"] = bench_stage(stage, args, preset, device, data_dir, peak)
            for label in ("plain", "grouped"):
                x = r[label]
                mfu = f"{100 * x['mfu']:.1f}%" if x["mfu"] is not None else "n/a (no peak for this device)"
                print(f"stage {stage} {label:8s} batch {r['batch']} x <= {r['seq']}  padding {100 * x['padding']:5.1f}%  "
                      f"{x['tokens_per_s']:10.0f} useful tok/s  {x['tflops']:7.3f} TFLOP/s  MFU {mfu}")
            print(f"stage {stage} ratio grouped / plain useful tokens/s: {r['ratio_grouped_vs_plain_tokens_per_s']:.3f}; "
                  f"data pipeline {r['loader_examples_per_s']:.0f} examples/s with {args.workers} workers "
                  f"(the step consumes {r['loader_examples_needed_per_s']:.0f}/s)")
    print(json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
