"""Translate step: what batching and the request cache save, against local fake servers.

Runs the llm backend over N distinct texts with a fixed per-request latency
(a stand-in for a real server's round trip), once with one text per request
(the baseline) and once with the configured batch size, then reruns the batched
run on the same cache. Prints requests, tokens and wall time, and ratios
against the baseline measured in this same run.

    .venv/bin/python bench/bench_translate.py [--texts 200] [--batch 8] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from servers import LocalServer  # noqa: E402
from test_translate_support import FakeOpenAI  # noqa: E402

from datagen.core.records import conversations_table  # noqa: E402
from datagen.core.steps import RunContext  # noqa: E402
from datagen.translate.config import TranslateConfig  # noqa: E402
from datagen.translate.step import TranslateStep  # noqa: E402

WORDS = "red blue small large wooden old shiny striped dog cat car bench kite bowl clock vase".split()


def table(n: int):
    rnd = random.Random(0)
    rows = []
    for i in range(n):
        q = "Is there a " + " ".join(rnd.choice(WORDS) for _ in range(4)) + " here?"
        rows.append({"key": f"k{i}", "source": "bench", "images": [f"k{i}"], "conversations": [
            {"id": f"c{i}", "lang": "en", "parent_id": None, "turns": [
                {"role": "user", "content": q, "task": "qa", "polarity": "positive", "generator": "llm:x"}]}]})
    return conversations_table(rows)


def run(run_dir: Path, n: int, batch: int, latency: float, concurrency: int) -> dict:
    with LocalServer() as srv:
        FakeOpenAI(srv, delay_s=latency)
        cfg = TranslateConfig(backend="llm", share=1.0, llm={
            "base_url": srv.url("/v1"), "model": "bench", "batch_size": batch, "concurrency": concurrency,
            "max_retries": 0})
        ctx = RunContext(run_dir=run_dir, recipe_dir=run_dir)
        step = TranslateStep(cfg, ctx)
        t0 = time.perf_counter()
        step.process(table(n))
        wall = time.perf_counter() - t0
        step.close()
        st = ctx.stats["translate"]
        return {"wall_s": wall, "requests": srv.count("/v1/"), "tokens": st.get("llm_prompt_tokens", 0)
                + st.get("llm_completion_tokens", 0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=4)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        base = run(Path(d) / "single", a.texts, 1, a.latency, a.concurrency)
        batched = run(Path(d) / "batched", a.texts, a.batch, a.latency, a.concurrency)
        rerun = run(Path(d) / "batched", a.texts, a.batch, a.latency, a.concurrency)
    for name, r in (("batch=1 (baseline)", base), (f"batch={a.batch}", batched), ("rerun, cached", rerun)):
        print(f"{name:20s} requests={r['requests']:5d} tokens={r['tokens']:7d} wall={r['wall_s']:.2f}s")
    print(f"batching: {base['requests'] / max(batched['requests'], 1):.1f}x fewer requests, "
          f"{base['tokens'] / max(batched['tokens'], 1):.2f}x fewer tokens, "
          f"{base['wall_s'] / batched['wall_s']:.1f}x faster")
    print(f"rerun: {rerun['requests']} requests, {batched['wall_s'] / rerun['wall_s']:.1f}x faster than the first run")


if __name__ == "__main__":
    main()
