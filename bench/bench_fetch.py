"""Benchmark of the fetch step against a local image server with artificial latency.

Downloads N small JPEGs through ``FetchStep`` from a server on 127.0.0.1 that
waits ``--latency-ms`` before each answer (a stand-in for a remote host's round
trip), and prints:
- images/s of the fetch step,
- the ratio to a baseline measured in the same run: a sequential loop of
  ``urllib.request.urlopen`` (the obvious first script) over a subset of such
  URLs, and to a fairer sequential loop that keeps one ``http.client``
  connection alive,
- the HTTP client's CPU per request: the fetch step's aiohttp session against
  an ``httpx.AsyncClient`` (the client before issue 10's second round, when
  httpx is installed), both at the same concurrency over the same URLs,
- the ratio to the ideal ``concurrency / latency`` (what perfect overlap of the
  waits would give; the rest is Python/HTTP overhead and the 2-core machine),
- the step keeping its loop and clients across batches (``--session-batch``
  rows each, as the executor sends them) against a fresh loop and clients per
  batch (what the step did before issue 10: the step closed after every batch),
  alternating, ``--session-rounds`` each.

The server (asyncio, keep-alive, one write per response) runs in its own
process so its work does not share our GIL.
All URLs point at one host, so the per-host limit is raised to the global one
(with the default per-host cap of 4 the bench would measure politeness).

    python bench/bench_fetch.py [--n 2000] [--concurrency 64] [--latency-ms 20]
"""
from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import http.client  # noqa: E402
import urllib.parse  # noqa: E402
import urllib.request  # noqa: E402
from PIL import Image  # noqa: E402

from datagen.fetch import FetchConfig, FetchStep  # noqa: E402
from datagen.core.records import pairs_table  # noqa: E402
from datagen.core.steps import RunContext  # noqa: E402


def small_jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), ((i * 37) % 256, (i * 91) % 256, 128)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def _serve_async(latency_s: float, port_queue, stop_event) -> None:
    """A minimal keep-alive HTTP/1.1 image server on asyncio.

    Not tests/servers.py: that one writes headers and body in two sends, which
    with Nagle's algorithm and delayed ACKs adds ~40 ms to every response, and
    it spends a thread per connection; either would make the bench measure the
    server. Here each response is one write, and the latency is an asyncio sleep."""
    import asyncio

    bodies = [small_jpeg(i) for i in range(64)]

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                body = bodies[sum(path) % 64]
                await asyncio.sleep(latency_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:  # the server's end: kept-alive connections still open (asyncio
            pass  # logged a traceback for each cancelled handler)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port_queue.put(server.sockets[0].getsockname()[1])
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, stop_event.wait)
    server.close()


def serve(latency_s: float, port_queue, stop_event) -> None:
    import asyncio

    asyncio.run(_serve_async(latency_s, port_queue, stop_event))


def baseline_rate(urls: list[str], reuse_client: bool) -> float:
    """Sequential downloads: ``urllib.request.urlopen`` per URL (the obvious script), or one kept-alive
    ``http.client`` connection (a fairer one)."""
    t = time.perf_counter()
    if reuse_client:
        parts = urllib.parse.urlsplit(urls[0])
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        for u in urls:
            conn.request("GET", urllib.parse.urlsplit(u).path)
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
        conn.close()
    else:
        for u in urls:
            with urllib.request.urlopen(u, timeout=10) as resp:
                assert resp.status == 200
                resp.read()
    return len(urls) / (time.perf_counter() - t)


def client_cpu(urls: list[str], concurrency: int) -> dict[str, float]:
    """CPU ms per request of the raw clients at ``concurrency``: the step's aiohttp session
    (``make_session``) and, when installed, an ``httpx.AsyncClient`` (the step's client before)."""
    import asyncio
    import resource

    from datagen.fetch.http import make_session

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_THREAD)
        return r.ru_utime + r.ru_stime

    async def with_aiohttp() -> None:
        sem = asyncio.Semaphore(concurrency)
        async with make_session(FetchConfig(allow_loopback=True, concurrency=concurrency), concurrency) as s:
            async def one(u: str) -> None:
                async with sem, s.get(u) as r:
                    await r.read()
            await asyncio.gather(*(one(u) for u in urls))

    async def with_httpx() -> None:
        # as the step used it: 4-connection clients (one big pool costs several ms per request: httpcore
        # 1.0's pool does work quadratic in its size), a free slot taken from a LIFO
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        clients = [httpx.AsyncClient(limits=limits, trust_env=False) for _ in range(0, concurrency, 4)]
        free: asyncio.LifoQueue = asyncio.LifoQueue()
        for i in range(len(clients) * 4):
            free.put_nowait(i)

        async def one(u: str) -> None:
            i = await free.get()
            try:
                (await clients[i // 4].get(u)).read()
            finally:
                free.put_nowait(i)
        await asyncio.gather(*(one(u) for u in urls))
        for c in clients:
            await c.aclose()

    out = {}
    clients = {"aiohttp": with_aiohttp}
    try:
        import httpx
        clients["httpx"] = with_httpx
    except ImportError:
        pass
    for name, fn in clients.items():
        t = cpu()
        asyncio.run(fn())
        out[name] = 1000 * (cpu() - t) / len(urls)
    return out


def bench_resize(reps: int = 10) -> None:
    """The claim in datagen.fetch.image: JPEG draft decoding makes the resize path several times cheaper."""
    from datagen.fetch.image import process_image

    big = Image.merge("RGB", [Image.linear_gradient("L").resize((2048, 1536)), Image.effect_noise((2048, 1536), 40),
                              Image.radial_gradient("L").resize((2048, 1536))])
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    cfg = FetchConfig(max_side=512)

    def naive() -> None:
        img = Image.open(io.BytesIO(data))
        img.load()
        img = img.convert("RGB").resize((512, 384), Image.Resampling.LANCZOS)
        img.save(io.BytesIO(), "JPEG", quality=90)

    timings = {}
    for name, fn in (("naive", naive), ("process_image", lambda: process_image(data, None, cfg))):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        timings[name] = (time.perf_counter() - t) / reps
    print(f"resize 2048x1536 JPEG -> 512: full decode + Lanczos {timings['naive'] * 1000:.1f} ms, "
          f"process_image (draft) {timings['process_image'] * 1000:.1f} ms: "
          f"{timings['naive'] / timings['process_image']:.1f}x faster")


def bench_png_check(reps: int = 5) -> None:
    """The claim in datagen.fetch.image: recounting every PNG's IDAT would cost a large share of its processing,
    so the exact count runs only when the last scanline in stream order is blank."""
    from datagen.fetch.image import _png_complete, process_image

    big = Image.merge("RGB", [Image.linear_gradient("L").resize((2000, 1500)), Image.effect_noise((2000, 1500), 40),
                              Image.radial_gradient("L").resize((2000, 1500))])
    buf = io.BytesIO()
    big.save(buf, "PNG")
    data = buf.getvalue()
    cfg = FetchConfig(max_side=512)
    timings = {}
    for name, fn in (("process_image", lambda: process_image(data, None, cfg)), ("recount", lambda: _png_complete(data))):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        timings[name] = (time.perf_counter() - t) / reps
    print(f"PNG 2000x1500 -> 512: process_image {timings['process_image'] * 1000:.1f} ms; an exact IDAT recount "
          f"on every PNG would add {timings['recount'] * 1000:.1f} ms "
          f"({timings['recount'] / timings['process_image']:.2f} of it); it runs only for a blank last scanline")


def bench_session(urls: list[str], cfg: FetchConfig, batch: int, rounds: int) -> None:
    """Loop and clients kept for the step's life against a fresh set per batch, alternating."""
    def run(kept_alive: bool, tag: str) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            step = FetchStep(cfg, RunContext(run_dir=Path(tmp), recipe_dir=Path(tmp)))
            t = time.perf_counter()
            try:
                for start in range(0, len(urls), batch):
                    rows = [{"key": f"{tag}{i}", "source": "bench", "url": f"{u}?{tag}"}
                            for i, u in enumerate(urls[start:start + batch], start)]
                    assert step.process(pairs_table(rows)).kept.num_rows == len(rows)
                    if not kept_alive:
                        step.close()  # the next batch starts a new loop, new clients, new connections
            finally:
                step.close()
            return len(urls) / (time.perf_counter() - t)

    rates: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for kept_alive in ((True, False) if r % 2 == 0 else (False, True)):
            rates[kept_alive].append(run(kept_alive, f"r{r}{int(kept_alive)}-"))
    best = {k: max(v) for k, v in rates.items()}
    print(f"clients kept across batches of {batch}: {best[True]:.0f} images/s best of {rounds} "
          f"({', '.join(f'{x:.0f}' for x in rates[True])}); a new loop and clients per batch: {best[False]:.0f} "
          f"({', '.join(f'{x:.0f}' for x in rates[False])}); {best[True] / best[False]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images fetched by the step")
    ap.add_argument("--baseline-n", type=int, default=60, help="images fetched by the sequential baseline")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=1000, help="rows per process() call, like an executor's batch")
    ap.add_argument("--session-batch", type=int, default=256, help="rows per batch in the kept-clients comparison")
    ap.add_argument("--session-rounds", type=int, default=3)
    args = ap.parse_args()
    latency = args.latency_ms / 1000

    ctx_mp = mp.get_context("spawn")
    port_q, stop = ctx_mp.Queue(), ctx_mp.Event()
    server = ctx_mp.Process(target=serve, args=(latency, port_q, stop), daemon=True)
    server.start()
    try:
        port = port_q.get(timeout=30)
        base = f"http://127.0.0.1:{port}/img/"
        urls = [f"{base}{i}.jpg" for i in range(args.n)]

        base_rate = baseline_rate([f"{base}b{i}.jpg" for i in range(args.baseline_n)], reuse_client=False)
        keepalive_rate = baseline_rate([f"{base}c{i}.jpg" for i in range(args.baseline_n)], reuse_client=True)

        # the bench server is on loopback, which a recipe must open explicitly
        cfg = FetchConfig(concurrency=args.concurrency, per_host_concurrency=args.concurrency, timeout_s=10,
                          allow_loopback=True)
        with tempfile.TemporaryDirectory() as tmp:
            ctx = RunContext(run_dir=Path(tmp), recipe_dir=Path(tmp))
            step = FetchStep(cfg, ctx)
            kept = 0
            t = time.perf_counter()
            try:
                for start in range(0, args.n, args.batch):
                    rows = [{"key": f"k{i}", "source": "bench", "url": u}
                            for i, u in enumerate(urls[start : start + args.batch], start)]
                    kept += step.process(pairs_table(rows)).kept.num_rows
                elapsed = time.perf_counter() - t
            finally:
                step.close()  # its loop and clients: aiohttp warns of an unclosed session otherwise
        rate = args.n / elapsed

        per_request = client_cpu(urls[: min(args.n, 1000)], args.concurrency)
        ideal = args.concurrency / latency
        print(f"fetch step : {args.n} images in {elapsed:.2f} s = {rate:.0f} images/s "
              f"(kept {kept}, concurrency {args.concurrency}, latency {args.latency_ms:.0f} ms, batch {args.batch})")
        print(f"baseline   : sequential urllib.request.urlopen over {args.baseline_n} URLs = {base_rate:.1f} images/s")
        print(f"baseline 2 : sequential, one kept-alive http.client connection = {keepalive_rate:.1f} images/s")
        print(f"speedup vs baseline: {rate / base_rate:.1f}x (vs baseline 2: {rate / keepalive_rate:.1f}x)")
        print("HTTP client CPU per request (same URLs, concurrency {}): {}".format(
            args.concurrency, ", ".join(f"{k} {v:.2f} ms" for k, v in per_request.items())))
        print(f"ideal (concurrency/latency) = {ideal:.0f} images/s; fetch step reaches {rate / ideal:.2f} of it")
        print(f"stats: {ctx.stats['fetch']}")
        bench_session(urls, cfg, args.session_batch, args.session_rounds)
    finally:
        stop.set()
        server.join(timeout=5)
    bench_resize()
    bench_png_check()


if __name__ == "__main__":
    main()
