"""datagen against img2dataset, side by side, on one kit of web-like images served from 127.0.0.1.

What it does (issue 10):
1. Builds the kit once (cached in ``--kit``): ``--images`` distinct JPEGs of
   300x200 to 1024x768 pixels cut from the real photographs that ship with
   scikit-image and scikit-learn (random crops, sizes, mild sensor noise and
   JPEG qualities 85-96, one in ten progressive: realistic file sizes, about
   100 KB on average), plus ``--missing`` URLs that answer 404 and ``--html``
   URLs whose body is an HTML page served as ``image/jpeg``. The URL list is a
   LAION-layout parquet (``URL``, ``TEXT``), shuffled.
2. Serves the kit from one threaded HTTP/1.1 server on 127.0.0.1 (its own
   process; responses from memory, Nagle off).
3. Runs both tools alternately, ``--rounds`` times each, the first tool
   swapping every round, on the same cores (``--cores`` processes each) and
   the same output: webdataset, longer side resized to 256, JPEG quality 90:
   - img2dataset from its own virtual environment (``--peers-venv``; created
     and filled from the registry when missing, so its pins never touch ours):
     ``--processes_count CORES --thread_count 64 --resize_mode keep_ratio_largest``;
   - ``datagen run`` on a recipe with the LAION source, ``fetch.max_side: 256``,
     concurrency and per-host 64, ``executor.workers`` CORES, stage-1 shards only.
   Both cut the list into shards of ``--shard-rows`` rows and retry nothing.
4. Prints for each run: wall seconds, images/s, CPU seconds per image (the
   children's rusage: the whole tool, every process), the process tree's peak
   memory (sampled from /proc every 0.1 s: the sum of PSS, which counts a page
   that forked processes share once, as the headline; the sum of RSS, which
   counts it in every process; the largest process's RSS), successes and failures (img2dataset's
   ``*_stats.json``; datagen's manifest and reject reasons); then the ratio of
   the tools' best and median images/s, and datagen's share of the machine's
   decode + resize + encode ceiling, measured in the same run (and the test
   server's CPU per request, which both tools share the cores with): the kit's JPEG
   bytes decoded (DCT-scaled), resized to 256 and encoded on all cores, no
   network, with the fastest method available. And where each tool's wall time goes, from the server's
   clock: start to the first request, the downloads (first request to the end of the last response) and
   the exit after the last response, with the stored images per second of the downloads alone, and at
   full speed (the middle 80% of the responses), against the same ceiling. Last, where each tool's
   core-seconds (wall x cores) went: the ceiling's own CPU for the images it stored (the share of the
   ceiling, end to end), its other CPU, the test server's, and idle.

    python bench/bench_download.py                     # 3,000 images, 2 rounds (make bench-peers)
    python bench/bench_download.py --images 300 --rounds 1   # a quick look
    python bench/bench_download.py --baseline-root /tmp/old   # and an older checkout, in the same rounds
"""
from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from _proc import cpu_seconds, measure  # noqa: E402 - bench/_proc.py, beside this script

IMG2DATASET = "img2dataset==1.47.0"
MAX_SIDE = 256
QUALITY = 90
HTML = b"<!doctype html><html><head><title>Not found</title></head><body><p>This page moved.</p></body></html>\n"


# ----------------------------------------------------------------------------- the kit

def _photos() -> list[np.ndarray]:
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    out = [getattr(sk, n)() for n in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                                      "immunohistochemistry", "retina", "camera")]
    out += list(load_sample_images().images)  # china.jpg, flower.jpg
    return [np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3] for a in out]


_PHOTOS: list[np.ndarray] = []


def _make_jpeg(i: int) -> bytes:
    if not _PHOTOS:
        _PHOTOS.extend(_photos())
    rng = np.random.default_rng(i)
    src = _PHOTOS[i % len(_PHOTOS)]
    w, h = int(rng.integers(300, 1025)), int(rng.integers(200, 769))
    sh, sw = src.shape[:2]
    scale = min(sw / w, sh / h) * float(rng.uniform(0.5, 1.0))  # a crop with the target's aspect ratio
    cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
    x, y = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    img = Image.fromarray(src[y:y + ch, x:x + cw]).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, rng.uniform(3, 9), (h, w, 1)).astype(np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(85, 97)), progressive=bool(i % 10 == 7))
    return buf.getvalue()


def make_kit(folder: Path, images: int, missing: int, html: int) -> Path:
    """The images on disk and the shuffled URL list (paths only; the server's port goes in at run time)."""
    done = folder / "kit.json"
    want = {"images": images, "missing": missing, "html": html, "version": 2}
    if done.exists() and json.loads(done.read_text()) == want:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "img").mkdir(parents=True)
    t0 = time.time()
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        for i, data in enumerate(pool.imap(_make_jpeg, range(images), chunksize=16)):
            (folder / "img" / f"{i}.jpg").write_bytes(data)
    paths = [f"/img/{i}.jpg" for i in range(images)] + [f"/missing/{i}.jpg" for i in range(missing)] \
        + [f"/html/{i}.jpg" for i in range(html)]
    random.Random(0).shuffle(paths)
    pq.write_table(pa.table({"path": paths}), folder / "paths.parquet")
    done.write_text(json.dumps(want))
    print(f"kit: {images} JPEGs in {time.time() - t0:.0f} s", flush=True)
    return folder


# ----------------------------------------------------------------------------- the server

def _serve(folder: str, port_queue, stop, marks, ends, count) -> None:
    """The kit over HTTP/1.1; ``marks`` (two doubles, zeroed by the caller before each run): the ``time.time()``
    of the first request and of the end of the last response; ``ends``: the end of every response, in the order
    they end (``count`` of them, zeroed by the caller; the ones past the array's end are not kept)."""
    bodies = {f"/img/{p.name}": p.read_bytes() for p in (Path(folder) / "img").iterdir()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self):  # noqa: N802
            if not marks[0]:
                with marks.get_lock():
                    marks[0] = marks[0] or time.time()
            path = self.path.split("?", 1)[0]
            body, status = bodies.get(path), 200
            if path.startswith("/html/"):
                body = HTML
            elif body is None:
                body, status = b"not found\n", 404
            self.send_response(status)
            self.send_header("Content-Type", "image/jpeg" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            marks[1] = now = time.time()
            with count.get_lock():
                i = count.value
                count.value += 1
            if i < len(ends):
                ends[i] = now

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024
        daemon_threads = True

        def handle_error(self, request, client_address):  # a client that drops a connection it no longer needs
            if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()


# ----------------------------------------------------------------------------- measuring a run

def url_list(kit: Path, port: int, dest: Path) -> Path:
    paths = pq.read_table(kit / "paths.parquet").column("path").to_pylist()
    urls = [f"http://127.0.0.1:{port}{p}" for p in paths]
    caps = [f"a photograph, sample number {i}" for i in range(len(urls))]
    pq.write_table(pa.table({"URL": urls, "TEXT": caps}), dest)
    return dest


def run_img2dataset(venv: Path, urls: Path, out: Path, cores: int, shard_rows: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(venv / "bin" / "img2dataset"), "--url_list", str(urls), "--input_format", "parquet",
           "--url_col", "URL", "--caption_col", "TEXT", "--output_format", "webdataset",
           "--output_folder", str(out), "--processes_count", str(cores), "--thread_count", "64",
           "--image_size", str(MAX_SIDE), "--resize_mode", "keep_ratio_largest", "--resize_only_if_bigger", "True",
           "--encode_quality", str(QUALITY), "--number_sample_per_shard", str(shard_rows),
           "--retries", "0", "--timeout", "10", "--enable_wandb", "False"]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("PYTHONPATH", None)
    r = measure(cmd, env, cwd=ROOT)
    ok = fail = 0
    reasons: dict[str, int] = {}
    for f in out.glob("*_stats.json"):
        s = json.loads(f.read_text())
        ok += s["successes"]
        fail += s["count"] - s["successes"]
        for k, v in s.get("status_dict", {}).items():
            if k != "success":
                reasons[k[:40]] = reasons.get(k[:40], 0) + v
    r.update(ok=ok, failed=fail, reasons=reasons)
    return r


def run_datagen(urls: Path, out: Path, work: Path, cores: int, shard_rows: int, root: Path = ROOT) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    recipe = work / "bench-download.yaml"
    recipe.write_text(json.dumps({
        "name": "bench-download", "sources": [{"name": "laion", "kind": "laion", "path": str(urls)}],
        "fetch": {"max_side": MAX_SIDE, "jpeg_quality": QUALITY, "concurrency": 64, "per_host_concurrency": 64,
                  "retries": 0, "timeout_s": 10, "allow_loopback": True},
        # img2dataset has no size or aspect rules: turn ours off so both keep the same images
        "filters": {"quality": {"min_side": None, "max_aspect": None}},
        "dedup": None,
        "stage2": {"sources": []},
        "output": {"shard_max_count": shard_rows},  # img2dataset's shards hold its input shard's rows
        "executor": {"workers": cores, "shard_rows": shard_rows},
    }))
    env = {**os.environ, "PYTHONPATH": str(root)}
    # cwd too: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH, so from
    # this checkout's root a --baseline-root run would import this checkout's datagen
    r = measure([sys.executable, "-m", "datagen.cli", "run", str(recipe), "--out", str(out)], env, cwd=root)
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]["pairs"]
    r.update(ok=c["kept"], failed=c["rejected"], reasons=dict(m["rejects"].get("by_reason", m["rejects"])))
    r["steps_s"] = {s["name"]: round(s["seconds"], 1) for s in m["steps"] if s["seconds"]}
    return r


# ----------------------------------------------------------------------------- the ceiling

# The thumbnail recipes the ceiling times (and bench_resize.py compares for quality): bytes in, stored
# JPEG out, no checks. ``target_size`` is datagen's (never upscales; the kit's pictures are all larger).

def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def pillow_draft(data: bytes, resample=None) -> bytes:
    """Pillow's ``draft`` (DCT scaling by 1/2, 1/4, 1/8; datagen's fallback decode), then ``resample``
    (datagen's bicubic unless told) with the exact box."""
    from datagen.fetch.image import RESAMPLE, target_size

    img = Image.open(io.BytesIO(data))
    size = target_size(*img.size, MAX_SIDE)
    box = img.draft("RGB", size)
    return _jpeg(img.convert("RGB").resize(size, resample or RESAMPLE, box=box[1] if box else None))


def datagen_scaled(data: bytes) -> bytes:
    """datagen's own recipe without its checks: simplejpeg's N/8 decode with its margin, then its resize
    (OpenCV's blur + bicubic at the box's scale) and its encode (OpenCV's, Pillow's bytes; ``datagen.fetch.image``)."""
    import simplejpeg

    from datagen.fetch.image import _encode, _resize, _scaled_jpeg, target_size

    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    size = target_size(w, h, MAX_SIDE)
    arr, box = _scaled_jpeg(data, w, h, size)
    return _encode(_resize(arr, size, box), "jpeg", QUALITY, None)


def cv2_full(data: bytes) -> bytes:
    """What img2dataset does: OpenCV's full decode, INTER_AREA resize, OpenCV's encode."""
    return _cv2(data, reduced=False)


def cv2_reduced(data: bytes) -> bytes:
    """OpenCV's DCT-scaled decode (1/2, 1/4, 1/8, the largest that stays at or above the target), INTER_AREA."""
    return _cv2(data, reduced=True)


def _cv2(data: bytes, reduced: bool) -> bytes:
    import cv2

    from datagen.fetch.image import target_size

    w, h = Image.open(io.BytesIO(data)).size  # the header only
    flag = cv2.IMREAD_COLOR
    for f, reduced_flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if reduced and max(w, h) / f >= MAX_SIDE:
            flag = reduced_flag
            break
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    img = cv2.resize(img, target_size(w, h, MAX_SIDE), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes()


_KIT_BYTES: list[bytes] = []


def _ceiling_chunk(args: tuple[str, int, int]) -> int:
    name, start, stop = args
    fn = {"pillow_draft": pillow_draft, "datagen_scaled": datagen_scaled, "cv2_full": cv2_full,
          "cv2_reduced": cv2_reduced}[name]
    for data in _KIT_BYTES[start:stop]:
        fn(data)
    return stop - start


def ceiling(kit: Path, cores: int, passes: int = 2) -> dict[str, tuple[float, float]]:
    """Per method: (images/s, CPU ms per image) of decode + resize + encode over the kit's JPEGs on
    ``cores`` processes; the best of ``passes`` passes, methods interleaved (the machine is shared)."""
    _KIT_BYTES[:] = [p.read_bytes() for p in sorted((kit / "img").iterdir())]
    n = len(_KIT_BYTES)
    methods = ["pillow_draft", "datagen_scaled", "cv2_full", "cv2_reduced"]
    step = max(1, math.ceil(n / (cores * 8)))
    chunks = [(s, min(n, s + step)) for s in range(0, n, step)]
    best: dict[str, tuple[float, float]] = {}
    for _ in range(passes):
        for name in methods:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            with mp.get_context("fork").Pool(cores) as pool:  # fresh workers: their CPU time is ours once joined
                done = sum(pool.map(_ceiling_chunk, [(name, a, b) for a, b in chunks]))
                pool.close()
                pool.join()
            rate = done / (time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_ms = 1000 * ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / done
            if rate > best.get(name, (0.0, 0.0))[0]:
                best[name] = (rate, cpu_ms)
    return best


# ----------------------------------------------------------------------------- main

def peers_venv(venv: Path) -> Path:
    if not (venv / "bin" / "img2dataset").exists():
        print(f"installing {IMG2DATASET} into {venv} (its own environment)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", IMG2DATASET], check=True)
    return venv


def _phases(r: dict, first: float, last: float) -> tuple[float, float, float]:
    """A run's wall time in three: start to the first request, the first request to the end of the last
    response (the downloads), the end of the last response to the exit (the last decodes, then whatever the
    tool does at its end)."""
    if not first:  # no request reached the server
        return math.nan, math.nan, math.nan
    end = r["started"] + r["wall_s"]
    return first - r["started"], last - first, end - last


def _steady(r: dict) -> float:
    """Stored images/s at full speed: the responses between the tenth and the ninetieth percentile of their end
    times (the server's clock), times the run's share of stored images. It leaves out the start-up, the ramp
    to full speed and the drain at the end, which ``_phases``'s window keeps."""
    e, ok = r["ends"], r["ok"]
    if len(e) < 20:
        return math.nan
    i, j = len(e) // 10, len(e) - 1 - len(e) // 10
    return (j - i) / (e[j] - e[i]) * ok / len(e) if e[j] > e[i] else math.nan


def _budget(r: dict, cores: int, ceiling_ms: float) -> str:
    """Where a run's core-seconds (wall x cores) went: the ceiling's own CPU for the images the run stored (the
    share of the ceiling, end to end, is this part of the whole), the tool's other CPU, the test server's,
    and idle. The first three are the machine's work; only the idle part is time a tool left unused."""
    whole = r["wall_s"] * cores
    useful = r["ok"] * ceiling_ms / 1000
    server = r["server_s"]
    idle = whole - r["cpu_s"] - server
    return (f"{whole:.1f} core-s: the ceiling's CPU for its {r['ok']} stored images {useful:.1f} "
            f"({useful / whole:.2f}), its other CPU {r['cpu_s'] - useful:.1f}, the test server {server:.1f}, "
            f"idle {idle:.1f}")


def _fmt_phases(p: tuple[float, float, float]) -> str:
    return f"first request after {p[0]:.2f} s, downloads {p[1]:.2f} s, exit {p[2]:.2f} s after the last response"


def _fmt(tool: str, r: dict, n: int) -> str:
    return (f"{tool:11s} wall {r['wall_s']:6.1f} s  {n / r['wall_s']:6.1f} images/s  "
            f"CPU {1000 * r['cpu_s'] / max(1, r['ok']):5.1f} ms/image  peak PSS {r['peak_pss'] / 1e9:4.2f} GB "
            f"(RSS sum {r['peak_rss'] / 1e9:4.2f}, largest process {r['largest_rss'] / 1e9:4.2f})  "
            f"ok {r['ok']}  failed {r['failed']}  {json.dumps(r['reasons'], sort_keys=True)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--missing", type=int, default=None, help="404 URLs (default: 4%% of --images)")
    ap.add_argument("--html", type=int, default=None, help="HTML bodies served as image/jpeg (default: 1%%)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--shard-rows", type=int, default=None, help="rows per shard, both tools (default: a quarter)")
    ap.add_argument("--kit", type=Path, default=Path(tempfile.gettempdir()) / "datagen-bench-download")
    ap.add_argument("--peers-venv", type=Path, default=ROOT / "bench" / ".peers-venv")
    ap.add_argument("--only", choices=["datagen", "img2dataset"], default=None)
    ap.add_argument("--baseline-root", type=Path, default=None,
                    help="also run the datagen of another checkout (e.g. `git archive` of an older commit) as "
                         "datagen-base, in the same rounds: a before/after in one run")
    args = ap.parse_args()
    missing = args.missing if args.missing is not None else round(args.images * 0.04)
    html = args.html if args.html is not None else round(args.images * 0.01)
    rows = args.images + missing + html
    shard_rows = args.shard_rows or math.ceil(rows / 4)

    venv = peers_venv(args.peers_venv) if args.only != "datagen" else None
    kit = make_kit(args.kit / f"kit-{args.images}-{missing}-{html}", args.images, missing, html)
    sizes = [p.stat().st_size for p in (kit / "img").iterdir()]
    print(f"kit: {args.images} JPEGs (mean {statistics.mean(sizes) / 1e3:.0f} KB), {missing} 404s, "
          f"{html} HTML bodies as image/jpeg; {rows} rows, shards of {shard_rows}; {args.cores} cores; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    ctx = mp.get_context("spawn")
    port_q, stop, marks = ctx.Queue(), ctx.Event(), ctx.Array("d", 2)
    ends, count = ctx.Array("d", rows, lock=False), ctx.Value("i", 0)
    server = ctx.Process(target=_serve, args=(str(kit), port_q, stop, marks, ends, count), daemon=True)
    server.start()
    port = port_q.get(timeout=60)
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    urls = url_list(kit, port, work / "urls.parquet")
    tools = ["img2dataset", "datagen"] if args.only is None else [args.only]
    if args.baseline_root:
        tools.append("datagen-base")
    results: dict[str, list[dict]] = {t: [] for t in tools}
    try:
        for rnd in range(args.rounds):
            order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]  # each tool goes first in turn
            for tool in order:
                load, server_cpu = os.getloadavg()[0], cpu_seconds(server.pid)
                marks[0] = marks[1] = 0.0
                count.value = 0
                if tool == "img2dataset":
                    r = run_img2dataset(venv, urls, work / "out-img2dataset", args.cores, shard_rows)
                else:
                    r = run_datagen(urls, work / "out-datagen", work, args.cores, shard_rows,
                                    args.baseline_root if tool == "datagen-base" else ROOT)
                r["load"] = load
                r["server_s"] = cpu_seconds(server.pid) - server_cpu
                r["server_ms"] = 1000 * r["server_s"] / rows
                r["ends"] = sorted(ends[:min(count.value, rows)])
                r["phases"] = _phases(r, marks[0], marks[1])
                results[tool].append(r)
                extra = f"  steps {r['steps_s']}" if "steps_s" in r else ""
                print(f"round {rnd + 1} {_fmt(tool, r, rows)}  (load {load:.2f}; the server: "
                      f"{r['server_ms']:.1f} ms CPU per request; {_fmt_phases(r['phases'])}){extra}", flush=True)
        t0 = time.perf_counter()
        ceil = ceiling(kit, args.cores)
        print(f"ceiling (decode + resize to {MAX_SIDE} + encode, {args.cores} processes, no network, "
              f"{time.perf_counter() - t0:.0f} s): " + ", ".join(f"{k} {v[0]:.0f} images/s ({v[1]:.1f} ms CPU each)" for k, v in ceil.items()),
              flush=True)
    finally:
        stop.set()
        server.join(5)
        shutil.rmtree(work, ignore_errors=True)

    print("\nsummary (images/s counts every row of the list, like img2dataset's own rate):")
    rate = {t: [rows / r["wall_s"] for r in rs] for t, rs in results.items()}
    for t, rs in results.items():
        print(f"  {t:11s} images/s best {max(rate[t]):.1f} median {statistics.median(rate[t]):.1f}; "
              f"CPU {1000 * statistics.median([r['cpu_s'] / max(1, r['ok']) for r in rs]):.1f} ms/image; "
              f"peak PSS {max(r['peak_pss'] for r in rs) / 1e9:.2f} GB (RSS sum "
              f"{max(r['peak_rss'] for r in rs) / 1e9:.2f}, largest process "
              f"{max(r['largest_rss'] for r in rs) / 1e9:.2f}); ok {rs[-1]['ok']} failed {rs[-1]['failed']}")
    if "datagen-base" in tools:
        print(f"  datagen / datagen-base: {max(rate['datagen']) / max(rate['datagen-base']):.2f}x (best), "
              f"{statistics.median(rate['datagen']) / statistics.median(rate['datagen-base']):.2f}x (median)")
    if "img2dataset" in tools and "datagen" in tools:
        print(f"  datagen / img2dataset: {max(rate['datagen']) / max(rate['img2dataset']):.2f}x (best), "
              f"{statistics.median(rate['datagen']) / statistics.median(rate['img2dataset']):.2f}x (median)")
    if "datagen" in results:
        top = max(ceil, key=lambda k: ceil[k][0])
        for t in tools:
            ok_rate = max(r["ok"] / r["wall_s"] for r in results[t])
            print(f"  {t}'s share of the ceiling ({top}, {ceil[top][0]:.0f} images/s): {ok_rate / ceil[top][0]:.2f} "
                  f"(stored images/s, best round: {ok_rate:.1f})")
        # where the rest goes: the fixed costs at both ends, and the rate while downloading
        for t in tools:
            phases = [r["phases"] for r in results[t]]
            med = [statistics.median(p[i] for p in phases) for i in range(3)]
            window_rate = max((r["ok"] / r["phases"][1] for r in results[t] if r["phases"][1] > 0), default=0.0)
            steady = max((_steady(r) for r in results[t]), default=math.nan)
            best = max(results[t], key=lambda r: r["ok"] / r["wall_s"])
            print(f"  {t}, median: {_fmt_phases(tuple(med))}; stored images/s between the first request and "
                  f"the last response, best round: {window_rate:.1f} ({window_rate / ceil[top][0]:.2f} of the ceiling); "
                  f"at full speed (the middle 80% of the responses), best round: {steady:.1f} "
                  f"({steady / ceil[top][0]:.2f} of the ceiling)")
            print(f"  {t}, best round, the {args.cores} cores' {_budget(best, args.cores, ceil[top][1])}")
    print(f"  load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
