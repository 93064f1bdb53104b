"""How close LLMGenerateStep gets to the ideal request rate of an OpenAI-compatible server.

A local server (tests/servers.py) answers every chat completion after a fixed
latency. With ``concurrency`` requests in flight, the best possible rate is
``concurrency / latency``; this prints the step's achieved rate as a ratio to
that ideal, plus the rate of a sequential client (concurrency 1) measured in the
same run, and the rate of a rerun served from the request cache.

    python bench/bench_llm.py [--requests 400] [--latency 0.1] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from servers import LocalServer, Reply  # noqa: E402

from datagen.llm.config import LLMGenerateConfig  # noqa: E402
from datagen.llm.prompts import BUNDLED_RECIPES_DIR  # noqa: E402
from datagen.llm.step import LLMGenerateStep  # noqa: E402
from datagen.core.records import pairs_table  # noqa: E402
from datagen.core.steps import RunContext  # noqa: E402

REPLY = json.dumps({"question": "Why is the kite flying?", "answer": "It is windy on the beach, so it stays up."})


def completion(req) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": req.json()["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940}}


def rows(n: int):
    return pairs_table([{"key": f"bench_{i}", "source": "bench", "captions": [f"Image {i}: a man flies a kite."],
                         "width": 640, "height": 480,
                         "objects": [{"label": "person", "bbox": [10.0, 20.0, 100.0, 200.0]}]} for i in range(n)])


def run_step(url: str, run_dir: Path, n: int, concurrency: int) -> tuple[float, dict]:
    cfg = LLMGenerateConfig(base_url=url, model="bench", tasks=["complex_reasoning"], concurrency=concurrency)
    step = LLMGenerateStep(cfg, RunContext(run_dir=run_dir, recipe_dir=BUNDLED_RECIPES_DIR))
    table = rows(n)
    t0 = time.perf_counter()
    out = step.process(table)
    dt = time.perf_counter() - t0
    assert out.kept.num_rows == n, (out.kept.num_rows, out.rejects.to_pylist()[:3])
    stats = step.ctx.stats["llm_generate"]["client"]
    step.close()
    return dt, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sequential-requests", type=int, default=20)
    a = ap.parse_args()

    with LocalServer() as srv, tempfile.TemporaryDirectory() as tmp:
        srv.route("/v1/chat/completions", lambda req: Reply(200, completion(req), delay_s=a.latency))
        url = srv.url("/v1")

        seq_dt, _ = run_step(url, Path(tmp) / "seq", a.sequential_requests, 1)
        seq_rate = a.sequential_requests / seq_dt

        dt, stats = run_step(url, Path(tmp) / "conc", a.requests, a.concurrency)
        rate = a.requests / dt
        peak = srv.max_in_flight
        sent, retries = stats["requests"], stats["retries"]

        cached_dt, cached = run_step(url, Path(tmp) / "conc", a.requests, a.concurrency)
        assert cached["requests"] == 0

    ideal = a.concurrency / a.latency
    print(f"server latency {a.latency * 1000:.0f} ms, concurrency {a.concurrency}, {a.requests} requests "
          f"({sent} sent, {retries} retries, peak {peak} in flight)")
    print(f"ideal rate (concurrency / latency): {ideal:8.1f} req/s")
    print(f"achieved by LLMGenerateStep:        {rate:8.1f} req/s  ratio to ideal {rate / ideal:.2f}")
    print(f"sequential baseline (concurrency 1): {seq_rate:7.1f} req/s  speed-up {rate / seq_rate:.1f}x")
    print(f"rerun from the request cache:       {a.requests / cached_dt:8.1f} rows/s  (0 requests sent)")


if __name__ == "__main__":
    main()
