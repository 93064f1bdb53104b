"""``datagen report OUT``: a Markdown report with plots of a finished run.

Reads only the run's outputs (manifest, rejects, shards), so it works on any
finished run, also one copied from a cluster.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from datagen.sinks.export import iter_samples  # noqa: E402
from datagen.sinks.manifest import summary  # noqa: E402


def _bar(counter: Counter, title: str, path: Path) -> None:
    items = counter.most_common(20)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(items) + 1.2))
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(out: Path) -> Path:
    manifest_path = out / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{out}: not a finished datagen run (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    rdir = out / "report"
    rdir.mkdir(exist_ok=True)
    sections = ["# Run report", "", "```", summary(manifest), "```", ""]

    reasons = Counter(manifest["rejects"]["by_reason"])
    if reasons:
        _bar(reasons, "rejects by reason", rdir / "rejects.png")
        sections += ["## Rejects", "", "![rejects](report/rejects.png)", ""]

    scores = [s["json"].get("clip_score") for s in iter_samples(out, "stage1")]
    scores = [x for x in scores if x is not None]
    if scores:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(scores, bins=30)
        ax.set_title("CLIP score of kept pairs")
        fig.tight_layout()
        fig.savefig(rdir / "clip_scores.png", dpi=80)
        plt.close(fig)
        sections += ["## CLIP scores", "", "![clip](report/clip_scores.png)", ""]

    tasks, polarity = Counter(), Counter()
    for split in ("stage2", "stage2_text"):
        for s in iter_samples(out, split):
            for conv in s["json"]["conversations"]:
                for t in conv["turns"]:
                    if t["role"] == "assistant":
                        tasks[f"{t['task']} ({conv['lang']})"] += 1
                        polarity[t["polarity"]] += 1
    if tasks:
        _bar(tasks, "assistant turns by task and language", rdir / "tasks.png")
        sections += ["## Instructions", "", "Polarity of answers: " +
                     ", ".join(f"{k} {v}" for k, v in polarity.most_common()), "", "![tasks](report/tasks.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path
