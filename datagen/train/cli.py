"""``datagen train`` and ``datagen eval``: argument parsing only; the work is in loop.py / eval.py.

Each entry point takes ``argv`` (without the sub-command name) and returns an exit
code, so the top-level CLI can hand over to it. Also runnable as
``python -m datagen.train.cli train|eval ...`` (what torchrun launches).
"""

from __future__ import annotations

import argparse
import json
import sys


def train_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="datagen train", description="Train one mPLUG-Owl stage on datagen shards.")
    p.add_argument("config", help="YAML training config (recipes/train/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML-parsed), e.g. --set optim.lr=3e-4; repeatable")
    p.add_argument("--out", help="run folder (overrides 'out' in the config)")
    p.add_argument("--data", help="shard folder (overrides data.dir)")
    p.add_argument("--no-resume", action="store_true", help="start over even if <out>/latest.txt exists")
    args = p.parse_args(argv)

    from datagen.train.config import load_config
    from datagen.train.loop import train

    try:
        cfg = load_config(args.config, args.overrides, out=args.out, **{"data.dir": args.data})
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.no_resume:
        cfg = cfg.model_copy(update={"resume": False})
    result = train(cfg)
    losses = result["losses"]
    if not losses:
        print(f"[stage {cfg.stage}] nothing to train: {cfg.out} is already at step {result['step']} "
              f"(raise max_steps, or --no-resume to start over)", flush=True)
    else:
        print(f"[stage {cfg.stage}] done: {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
              f"checkpoint {result['checkpoint']}", flush=True)
    return 0


def eval_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="datagen eval",
        description="Held-out loss and a POPE-style yes/no probe for a trained checkpoint.",
    )
    p.add_argument("checkpoint", help="checkpoint folder or run folder (uses its latest.txt)")
    p.add_argument("--data", required=True, help="shard folder with stage1/ (probe) and the split to score")
    p.add_argument("--split", default=None, choices=["stage1", "stage2"],
                   help="split for the held-out loss (default: the checkpoint's stage)")
    p.add_argument("--holdout-fraction", type=float, default=None,
                   help="keys kept out of training (default: the training config's; 0 = all samples)")
    p.add_argument("--max-batches", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--pope-sampling", default="random", choices=["random", "popular", "adversarial"])
    p.add_argument("--pope-per-image", type=int, default=3, help="positive (and as many negative) probes per image")
    p.add_argument("--max-images", type=int, default=100)
    p.add_argument("--lang", action="append", choices=["en", "zh"], default=None,
                   help="probe language(s), repeatable (default: en and zh)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="write the report as JSON here")
    args = p.parse_args(argv)

    from datagen.train.eval import evaluate

    try:
        report = evaluate(
            args.checkpoint, args.data, split=args.split, holdout_fraction=args.holdout_fraction,
            max_batches=args.max_batches, batch_size=args.batch_size, pope_sampling=args.pope_sampling,
            pope_per_image=args.pope_per_image, max_images=args.max_images, device=args.device,
            langs=tuple(args.lang or ("en", "zh")),
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1, ensure_ascii=False)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "eval"):
        print("usage: python -m datagen.train.cli {train,eval} ...", file=sys.stderr)
        return 2
    return (train_main if argv[0] == "train" else eval_main)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
