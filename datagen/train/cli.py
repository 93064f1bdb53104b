"""``datagen train``, ``eval``, ``chat`` and ``export-model``: argument parsing only; the work is in
loop.py, eval.py, inference.py and export.py.

Each entry point takes ``argv`` (without the sub-command name) and returns an exit
code, so the top-level CLI can hand over to it. Also runnable as
``python -m datagen.train.cli train|eval|chat|export-model ...`` (torchrun launches ``train``).
"""

from __future__ import annotations

import argparse
import json
import sys


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datagen train", description="Train one mPLUG-Owl stage on datagen shards.")
    p.add_argument("config", help="YAML training config (recipes/train/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML-parsed), e.g. --set optim.lr=3e-4; repeatable")
    p.add_argument("--out", help="run folder (overrides 'out' in the config)")
    p.add_argument("--data", help="shard folder (overrides data.dir)")
    p.add_argument("--no-resume", action="store_true", help="start over even if <out>/latest.txt exists")
    return p


def train_main(argv: list[str]) -> int:
    args = train_parser().parse_args(argv)

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
        print(f"[stage {cfg.stage}] done: {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f} "
              f"(uniform guess {result['uniform_loss']:.4f}); checkpoint {result['checkpoint']}", flush=True)
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="datagen eval",
        description="Held-out loss and a POPE-style yes/no probe for a trained checkpoint.",
    )
    p.add_argument("checkpoint", help="checkpoint folder, run folder (uses its latest.txt) or export-model folder")
    p.add_argument("--data", required=True, help="shard folder with stage1/ (probe) and the split to score")
    p.add_argument("--split", default=None, choices=["stage1", "stage2"],
                   help="split for the held-out loss (default: the checkpoint's stage)")
    p.add_argument("--holdout-fraction", type=float, default=None,
                   help="keys kept out of training (default: the training config's; 0 = all samples)")
    p.add_argument("--max-batches", type=int, default=50, help="held-out batches to score at most (default: 50)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per batch (default: 8)")
    p.add_argument("--pope-sampling", default="random", choices=["random", "popular", "adversarial"],
                   help="how POPE picks absent objects for the negative probes (default: random)")
    p.add_argument("--pope-per-image", type=int, default=3, help="positive (and as many negative) probes per image")
    p.add_argument("--max-images", type=int, default=100, help="images probed at most (default: 100)")
    p.add_argument("--lang", action="append", choices=["en", "zh"], default=None,
                   help="probe language(s), repeatable (default: en and zh)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run the model (default: auto, a GPU when there is one)")
    p.add_argument("--no-generate", action="store_true",
                   help="skip the generation-based POPE (parse yes/no from generated replies)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="reply length for the generation-based POPE")
    p.add_argument("--out", help="write the report as JSON here")
    return p


def eval_main(argv: list[str]) -> int:
    args = eval_parser().parse_args(argv)

    from datagen.train.eval import evaluate

    try:
        report = evaluate(
            args.checkpoint, args.data, split=args.split, holdout_fraction=args.holdout_fraction,
            max_batches=args.max_batches, batch_size=args.batch_size, pope_sampling=args.pope_sampling,
            pope_per_image=args.pope_per_image, max_images=args.max_images, device=args.device,
            langs=tuple(args.lang or ("en", "zh")), generate=not args.no_generate,
            max_new_tokens=args.max_new_tokens,
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


def _device(name: str):
    import torch

    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def chat_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="datagen chat",
        description="Ask a trained model about images. With a question: print one reply. Without: a "
                    "multi-turn session reading questions from stdin (an empty line or EOF ends it).")
    p.add_argument("model", help="checkpoint folder, run folder or export-model folder")
    p.add_argument("question", nargs="?", help="the question; omit for a multi-turn session")
    p.add_argument("--image", action="append", default=[], help="image file; repeat for several (<image_0>, ...)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="reply length in tokens at most (default: 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0, off)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: not seeded)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run the model (default: auto, a GPU when there is one)")
    return p


def chat_main(argv: list[str], stdin=None, stdout=None) -> int:
    args = chat_parser().parse_intermixed_args(argv)  # the question may come after the options
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    from PIL import Image, UnidentifiedImageError

    from datagen.train.inference import load_model, reply, with_images

    images = []
    for path in args.image:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            print(f"error: --image {path}: not a readable image ({e})", file=sys.stderr)
            return 2
    try:
        loaded = load_model(args.model, _device(args.device))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
           "seed": args.seed}
    turns: list[dict] = []

    def ask(question: str) -> str:
        content = with_images(question, len(images)) if not turns else question
        turns.append({"role": "user", "content": content})
        answer = reply(loaded, turns, images, **gen)
        turns.append({"role": "assistant", "content": answer})
        return answer

    try:
        if args.question is not None:
            print(ask(args.question), file=stdout, flush=True)
            return 0
        interactive = hasattr(stdin, "isatty") and stdin.isatty()
        while True:
            if interactive:
                print("you> ", end="", file=stdout, flush=True)
            line = stdin.readline()
            if not line or not line.strip():
                return 0
            print(("model> " if interactive else "") + ask(line.strip()), file=stdout, flush=True)
    except ValueError as e:  # a prompt the template cannot take (placeholders vs images, length)
        print(f"error: {e}", file=sys.stderr)
        return 2


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="datagen export-model",
        description="Write a trained model as a folder: a Hugging Face causal LM (LoRA merged), the ViT and "
                    "abstractor as safetensors, the tokenizer and a config. `datagen chat` and `eval` load it.")
    p.add_argument("checkpoint", help="checkpoint folder or run folder")
    p.add_argument("dest", help="folder to write")
    p.add_argument("--adapter", action="store_true", help="keep LoRA as a peft adapter beside the LLM, unmerged")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="LLM weights dtype (default: the training config's)")
    p.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    return p


def export_main(argv: list[str]) -> int:
    args = export_parser().parse_args(argv)

    from datagen.train.export import export_model

    try:
        dest = export_model(args.checkpoint, args.dest, adapter=args.adapter, dtype=args.dtype,
                            overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {dest}")
    return 0


COMMANDS = {"train": train_main, "eval": eval_main, "chat": chat_main, "export-model": export_main}
PARSERS = {"train": train_parser, "eval": eval_parser, "chat": chat_parser, "export-model": export_parser}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m datagen.train.cli {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
