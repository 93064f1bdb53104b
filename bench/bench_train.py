"""Stage-2 training throughput: tokens/s and MFU of the bundled trainer's step.

    python bench/bench_train.py                  # CUDA: ViT-L/14 + abstractor + ~0.85B LLaMA, bf16
    python bench/bench_train.py --preset tiny    # CPU-sized model (what a laptop or CI can run)

What is timed: the stage-2 step of datagen.train.loop (ViT frozen, abstractor +
LoRA trained): forward, loss, backward, clip, AdamW, on fixed-shape batches with
one image span per example (random weights: throughput does not depend on them).
Baseline measured in the same run: the same LLM + LoRA on the same number of text
tokens with no image (text-only stage-2 examples); the ratio shows what the
vision path costs. A third figure is the data pipeline (shards -> tokenised,
decoded batches) in examples/s, to show whether loading keeps up.

MFU = model FLOPs per step / step time / peak. Model FLOPs (an estimate, stated
so it can be checked): frozen LLM linear layers 4*N per token (forward 2N,
activation gradients 2N; weight gradients only for LoRA, ignored), attention
12*L*S*d per token, ViT forward 2*N_vit per patch token, abstractor 6*N_abs per
query+patch token. Peak: bf16 dense of the detected GPU (H100/H200 989 TFLOP/s,
A100 312), or --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datagen.train.config import AbstractorConfig, LLMConfig, LoraSpec, VisionConfig  # noqa: E402
from datagen.train.data import DataSpec, build_dataset  # noqa: E402
from datagen.train.model import add_lora, build_model, set_trainable, token_loss_sum  # noqa: E402
from datagen.train.synthetic import write_synthetic_shards  # noqa: E402
from datagen.train.template import IGNORE, IMAGE_TOKEN_ID  # noqa: E402
from datagen.train.tokenizer import shard_texts, train_bpe_tokenizer  # noqa: E402

PRESETS = {
    "tiny": {
        "vision": VisionConfig(config={"embed_dim": 32, "image_size": 32, "patch_size": 8, "width": 64, "layers": 2,
                                       "head_width": 32, "mlp_ratio": 2.0}),
        "abstractor": AbstractorConfig(num_queries=8, layers=2, hidden=64, heads=4, mlp_hidden=128),
        "llm": LLMConfig(config={"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}),
        "batch": 8, "seq": 128,
    },
    # ViT-L/14 at 224 (open_clip's own config, random weights), mPLUG-Owl's abstractor, and a
    # LLaMA of ~0.85B parameters (TinyLlama-like widths, 16 layers).
    "1b": {
        "vision": None,  # open_clip ViT-L-14 built from its config with pretrained=None
        "abstractor": AbstractorConfig(),
        "llm": LLMConfig(config={"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
                                 "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
                                 "max_position_embeddings": 4096}),
        "batch": 16, "seq": 1024,
    },
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def build(preset: dict, device: torch.device):
    vision_cfg = preset["vision"] or VisionConfig(name="ViT-L-14", pretrained=None)
    model, pre = build_model(vision_cfg, preset["abstractor"], preset["llm"])
    add_lora(model, LoraSpec())
    set_trainable(model, 2)
    return model.to(device), pre


def batch(preset: dict, pre: dict, device, with_image: bool) -> dict:
    """Fixed shapes: every example = [bos, image span?, text...]; loss on the second half."""
    b, s, tpi = preset["batch"], preset["seq"], preset["abstractor"].tokens_per_image
    vocab = preset["llm"].config["vocab_size"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (b, s), generator=g)
    if with_image:
        ids[:, 1:1 + tpi] = IMAGE_TOKEN_ID
    labels = ids.clone()
    labels[:, : s // 2] = IGNORE
    size = pre["image_size"]
    pixels = torch.randn(b if with_image else 0, 3, size, size, generator=g)
    return {"input_ids": ids.to(device), "labels": labels.to(device),
            "attention_mask": torch.ones_like(ids).to(device), "pixel_values": pixels.to(device)}


def time_steps(model, data, steps: int, warmup: int, device, bf16: bool) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)

    def step():
        with ctx:
            logits = model(data["input_ids"], data["attention_mask"], data["pixel_values"])
        loss, n = token_loss_sum(logits, data["labels"])
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def flops_per_step(model, preset: dict, pre: dict, with_image: bool) -> float:
    llm_cfg = model.llm.get_base_model().config
    n_llm = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" not in n and "embed_tokens" not in n)
    b, s = preset["batch"], preset["seq"]
    tokens = b * s
    total = tokens * (4 * n_llm + 12 * llm_cfg.num_hidden_layers * s * llm_cfg.hidden_size)
    if with_image:
        patches = (pre["image_size"] // model.vision.patch_size[0]) ** 2 + 1
        n_vit = sum(p.numel() for p in model.vision.parameters())
        n_abs = sum(p.numel() for p in model.abstractor.parameters())
        total += b * (2 * n_vit * patches + 6 * n_abs * (preset["abstractor"].num_queries + patches))
    return float(total)


def loader_rate(pre: dict, preset: dict, workers: int, n_batches: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        write_synthetic_shards(d, n_images=64, n_multi=8, n_text=16, image_size=max(64, pre["image_size"]))
        tok = train_bpe_tokenizer(list(shard_texts(d)), 1000)
        spec = DataSpec(data_dir=d, stage=2, tokenizer=tok, template="mplug_owl",
                        tokens_per_image=preset["abstractor"].tokens_per_image, image_size=pre["image_size"],
                        batch_size=preset["batch"], text_ratio=0.2, max_len=preset["seq"])
        loader = torch.utils.data.DataLoader(build_dataset(spec, num_workers=workers), batch_size=None,
                                             num_workers=workers)
        it = iter(loader)
        next(it)
        t = time.perf_counter()
        n = sum(len(b["keys"]) for b in islice(it, n_batches))
        return n / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: 1b on CUDA, tiny otherwise")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--workers", type=int, default=2, help="loader workers for the data-pipeline figure")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = dict(PRESETS[args.preset or ("1b" if device.type == "cuda" else "tiny")])
    preset["batch"] = args.batch or preset["batch"]
    preset["seq"] = args.seq or preset["seq"]
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    model, pre = build(preset, device)
    if args.grad_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    bf16 = device.type == "cuda"
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in name), None)

    results = {"device": name, "preset": args.preset or ("1b" if device.type == "cuda" else "tiny"),
               "batch": preset["batch"], "seq": preset["seq"], "bf16": bf16,
               "params": {"llm": sum(p.numel() for p in model.llm.parameters()),
                          "vision": sum(p.numel() for p in model.vision.parameters()),
                          "abstractor": sum(p.numel() for p in model.abstractor.parameters()),
                          "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}}
    for label, with_image in (("multimodal", True), ("text_only_baseline", False)):
        data = batch(preset, pre, device, with_image)
        dt = time_steps(model, data, args.steps, args.warmup, device, bf16)
        fl = flops_per_step(model, preset, pre, with_image)
        results[label] = {"step_s": dt, "tokens_per_s": preset["batch"] * preset["seq"] / dt,
                          "tflops": fl / dt / 1e12, "mfu": (fl / dt / peak) if peak else None}
        if device.type == "cuda":
            results[label]["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    results["ratio_multimodal_vs_text_tokens_per_s"] = (
        results["multimodal"]["tokens_per_s"] / results["text_only_baseline"]["tokens_per_s"])
    results["loader_examples_per_s"] = loader_rate(pre, preset, args.workers, n_batches=5)
    results["loader_examples_needed_per_s"] = preset["batch"] / results["multimodal"]["step_s"]

    for label in ("multimodal", "text_only_baseline"):
        r = results[label]
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no peak for this device)"
        print(f"{label:20s} step {r['step_s'] * 1000:8.1f} ms  {r['tokens_per_s']:10.0f} tok/s  "
              f"{r['tflops']:7.2f} TFLOP/s  MFU {mfu}")
    print(f"ratio multimodal / text-only tokens/s: {results['ratio_multimodal_vs_text_tokens_per_s']:.3f}")
    print(f"data pipeline: {results['loader_examples_per_s']:.0f} examples/s with {args.workers} workers "
          f"(the step consumes {results['loader_examples_needed_per_s']:.0f}/s)")
    print(json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
