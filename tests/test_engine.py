"""Engine guarantees a user relies on: resume after kill -9, one run per folder, same bytes
whatever the sharding and worker count, bounded-memory mixing."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.cli import main
from datagen.sinks.buckets import BucketSpill, plan_samples

from conftest import ROOT
from servers import LocalServer, Reply, noise_jpeg

N_URLS = 120
SHARD_ROWS = 20


def _jpeg(i: int) -> bytes:
    return noise_jpeg(i, 48, 64)


def _recipe(tmp_path, srv, **executor):
    pq.write_table(pa.table({"URL": [srv.url(f"/img/{i}.jpg") for i in range(N_URLS)],
                             "TEXT": [f"a noisy picture number {i}" for i in range(N_URLS)]}), tmp_path / "urls.parquet")
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({
        "name": "crash", "sources": [{"name": "web", "kind": "laion", "path": "urls.parquet"}],
        "fetch": {"retries": 0, "concurrency": 4, "timeout_s": 10, "allow_loopback": True},  # the server is local
        "filters": {"quality": {"min_side": 10}}, "stage2": {"sources": []},
        "output": {"shard_max_count": 25},
        "executor": {"shard_rows": SHARD_ROWS, **executor},
    }))
    return path


@pytest.fixture
def image_server():
    images = {i: _jpeg(i) for i in range(N_URLS)}
    with LocalServer() as srv:
        srv.delay_s = 0.02
        srv.route("/img/", lambda req: Reply(200, images[int(req.path.split("/")[-1].split(".")[0])],
                                             {"Content-Type": "image/jpeg"}, delay_s=srv.delay_s))
        yield srv


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "datagen.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)


def _shard_hashes(out):
    manifest = json.loads((out / "manifest.json").read_text())
    return [(s["path"], s["sha256"]) for s in manifest["shards"]]


def _wait_for(cond, proc, timeout=120):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def test_kill_9_then_rerun_gives_identical_shards_and_refetches_only_shards_in_flight(tmp_path, image_server):
    recipe = _recipe(tmp_path, image_server)
    proc = _cli("run", str(recipe), "--out", str(tmp_path / "killed"))
    _wait_for(lambda: image_server.count("/img/") >= N_URLS // 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = image_server.count("/img/")
    assert before < N_URLS, "killed before the end"
    # The killed run's lock is stale (its process is gone): the rerun takes it and resumes.
    again = _cli("run", str(recipe), "--out", str(tmp_path / "killed"))
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()[-2000:]
    total = image_server.count("/img/")
    workers = 1
    assert total <= N_URLS + workers * SHARD_ROWS, f"{total} requests: more than the shards in flight were redone"
    assert not list((tmp_path / "killed").rglob("*.tmp-*")), "temporaries of the killed run are cleaned up"

    clean = _cli("run", str(recipe), "--out", str(tmp_path / "clean"))
    out, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err.decode()[-2000:]
    assert _shard_hashes(tmp_path / "killed") == _shard_hashes(tmp_path / "clean")
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["counts"]["pairs"] == {"in": N_URLS, "kept": N_URLS, "rejected": 0, "reconciled": True}


def test_a_second_run_on_a_folder_in_use_stops_at_once_and_the_first_finishes(tmp_path, image_server, capsys):
    recipe = _recipe(tmp_path, image_server)
    image_server.delay_s = 0.25  # about 8 s of fetching: the first run is surely still running
    first = _cli("run", str(recipe), "--out", str(tmp_path / "out"))
    _wait_for(lambda: image_server.count("/img/") >= 5, first)
    t0 = time.time()
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    assert time.time() - t0 < 10
    err = capsys.readouterr().err
    assert "is in use by pid" in err and str(first.pid) in err, err
    out, errs = first.communicate(timeout=300)
    assert first.returncode == 0, errs.decode()[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["pairs"]["kept"] == N_URLS and manifest["counts"]["pairs"]["reconciled"]
    assert image_server.count("/img/") == N_URLS, "the refused run fetched nothing"


def test_borrowed_cores_are_the_idle_processes_shares_split_among_the_busy(monkeypatch):
    from datagen.core import steps

    assert steps.borrowed_cores() == 0  # outside a pool
    for (idle, busy), share, expect in [((0, 0), 1, 0), ((0, 2), 1, 0), ((1, 1), 1, 1), ((1, 1), 2, 2),
                                        ((3, 1), 2, 6), ((1, 2), 1, 0), ((2, 3), 2, 1), ((1, 0), 1, 0)]:
        monkeypatch.setitem(steps._PASS_CORES, "counts", [idle, busy])
        monkeypatch.setitem(steps._PASS_CORES, "share", share)
        assert steps.borrowed_cores() == expect, (idle, busy, share)


def test_the_last_busy_process_decodes_on_the_cores_the_others_left_idle(tmp_path, image_server):
    """A pass of a 100-row and a 20-row shard on 2 processes: once the short task is done and no task is
    left for its process, the long task decodes in threads on that core too (the pass's shared counts,
    ``fetch._borrow``), and the shards are the same bytes as a one-process run's. ``fetch.workers`` set
    explicitly is left as it is."""
    def fetch_stats(out):
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"]["pairs"]["kept"] == N_URLS
        return next(s for s in manifest["steps"] if s["name"] == "fetch")["stats"]

    recipe = _recipe(tmp_path, image_server, workers=2, shard_rows=100)
    assert main(["run", str(recipe), "--out", str(tmp_path / "two")]) == 0
    assert fetch_stats(tmp_path / "two").get("decoded_on_borrowed_cores", 0) > 0
    assert main(["run", str(recipe), "--out", str(tmp_path / "one"), "--set", "executor.workers=1"]) == 0
    assert "decoded_on_borrowed_cores" not in fetch_stats(tmp_path / "one")
    assert _shard_hashes(tmp_path / "two") == _shard_hashes(tmp_path / "one")
    assert main(["run", str(recipe), "--out", str(tmp_path / "set"), "--set", "fetch.workers=0"]) == 0
    assert "decoded_on_borrowed_cores" not in fetch_stats(tmp_path / "set")


@pytest.mark.slow
def test_demo_shards_are_the_same_bytes_whatever_the_sharding_and_workers(tmp_path):
    # OCR and CLIP scores are floats from batched models: their last bits may change with the batch size.
    sets = ["--set", "ocr=null", "--set", "filters.clip=null", "--set", "synthesize.multi_image.enabled=false"]
    recipe = str(ROOT / "recipes" / "demo.yaml")
    assert main(["run", recipe, "--out", str(tmp_path / "a"), *sets]) == 0
    assert main(["run", recipe, "--out", str(tmp_path / "b"), *sets,
                 "--set", "executor.shard_rows=7", "--set", "executor.workers=2", "--set", "executor.batch_size=3"]) == 0
    a, b = (json.loads((tmp_path / x / "manifest.json").read_text()) for x in "ab")
    assert _shard_hashes(tmp_path / "a") == _shard_hashes(tmp_path / "b")
    assert a["counts"] == b["counts"] and a["rejects"] == b["rejects"]
    synth = [next(s for s in m["steps"] if s["name"] == "synthesize")["stats"] for m in (a, b)]
    for k in ("negative_share", "polarity", "family", "checker_disagreements", "rows_in", "rows_out"):
        assert synth[0][k] == synth[1][k], k
    fetch = next(s for s in b["steps"] if s["name"] == "fetch")
    assert fetch["stats"]["rows_in"] == fetch["in"] == a["counts"]["pairs"]["in"] - 1  # the malformed TSV row


def test_plan_fills_every_bucket_but_the_last_and_honours_weights():
    meta = pl.DataFrame({"key": [f"k{i}" for i in range(1000)], "source": ["a"] * 500 + ["b"] * 500,
                         "_shard": ["s0"] * 1000})
    plan = plan_samples(meta, {"a": 2.0, "b": 0.5}, seed=3, shuffle=True, per_bucket=64)
    sizes = plan.group_by("bucket").len().sort("bucket")["len"].to_list()
    assert all(n == 64 for n in sizes[:-1]) and 0 < sizes[-1] <= 64
    from_a = plan.filter(pl.col("key").is_in([f"k{i}" for i in range(500)]))
    assert from_a.height == 1000 and from_a["out_key"].n_unique() == 1000
    assert 200 < plan.height - 1000 < 300, "weight 0.5 keeps about half"
    again = plan_samples(meta, {"a": 2.0, "b": 0.5}, seed=3, shuffle=True, per_bucket=64)
    assert again.equals(plan)
    ordered = plan_samples(meta, {}, seed=3, shuffle=False, per_bucket=100)
    assert ordered["bucket"].to_list() == [i // 100 for i in range(1000)], "no shuffle keeps input order"


def _plan_row_by_row(meta, weights, seed, shuffle, per_bucket, group=None):
    """The plan by its definition, one row and one copy at a time: a weight's whole part in copies of each row,
    one more when the row's hash falls below its fraction, copy r named ``<key>-r<r>``, ordered by the hash
    of the sample's key (or its position), ranked into buckets of ``per_bucket``."""
    def unit(key: str, salt: str) -> float:  # a hash of seed and key, uniform in [0, 1)
        return int.from_bytes(hashlib.sha256(f"{seed}\x1f{salt}\x1f{key}".encode()).digest()[:8], "big") / 2**64

    def repeats(weight: float, key: str) -> int:
        whole = int(weight)
        return whole + (1 if weight != whole and unit(key, "mix") < weight - whole else 0)

    rows = []
    for k, s, shard, *g in meta.select("key", "source", "_shard", *([group] if group else [])).iter_rows():
        for r in range(repeats(weights.get(s, 1.0), k)):
            out = k if r == 0 else f"{k}-r{r}"
            rows.append((k, shard, *g, out, unit(out, "order") if shuffle else float(len(rows))))
    names = ["key", "_shard", *([group] if group else []), "out_key", "order"]
    plan = pl.DataFrame(rows, schema=names, orient="row")
    by = plan.partition_by(group, maintain_order=True) if group else [plan]
    out = []
    for part in by:
        ranks = sorted(range(part.height), key=lambda i: (part["order"][i], i))
        bucket = [0] * part.height
        for rank, i in enumerate(ranks):
            bucket[i] = rank // per_bucket
        out.append(part.with_columns(pl.Series("bucket", bucket, dtype=pl.Int64)))
    return pl.concat(out)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("group", [None, "images"])
@pytest.mark.parametrize("weights", [{}, {"a": 2.0, "b": 0.5, "c": 2.5, "d": 0.0}])
def test_plan_is_the_row_by_row_definition(shuffle, group, weights):
    """``plan_samples`` works on columns (numpy copies, polars names, hashes a chunk at a time); it must give
    the same samples, names, orders and buckets as the definition computed one row at a time."""
    import datagen.sinks.buckets as buckets

    n = 3000
    meta = pl.DataFrame({"key": [f"key-{i * 7919 % 10007}" for i in range(n)], "source": [("a", "b", "c", "d", "e")[i % 5] for i in range(n)],
                         "_shard": [f"s{i // 500}" for i in range(n)], "images": [i % 3 == 0 for i in range(n)]})
    expect = _plan_row_by_row(meta, weights, 5, shuffle, 100, group)
    old_chunk, buckets._CHUNK = buckets._CHUNK, 256  # several chunks of hashes
    try:
        plan = plan_samples(meta, weights, 5, shuffle, 100, group)
    finally:
        buckets._CHUNK = old_chunk
    if group:  # the definition lists a group's samples together; the plan keeps input order
        plan = pl.concat(plan.partition_by(group, maintain_order=True))
    assert plan.columns == expect.columns
    assert plan.equals(expect)
    if weights:
        assert plan.height != n and plan["out_key"].str.contains("-r2").any()


def test_bucket_spill_returns_every_row_of_a_bucket_across_flushes(tmp_path):
    spill = BucketSpill(tmp_path / "spill", budget=2000)  # tiny budget: many flushes
    expect: dict[int, list[int]] = {}
    for start in range(0, 600, 50):
        ids = np.arange(start, start + 50)
        buckets = ids % 7
        spill.add(buckets, pa.table({"id": ids, "blob": [hashlib.sha256(bytes([i % 256])).digest() for i in ids]}))
        for i, b in zip(ids, buckets):
            expect.setdefault(int(b), []).append(int(i))
    spill.flush()
    for b, ids in expect.items():
        assert spill.read(b).column("id").to_pylist() == ids
    spill.close()


def test_work_registered_while_waiting_runs_once_in_the_background_of_a_pool_pass(tmp_path, image_server):
    """executor.while_waiting: the driver's ahead-of-time work (the report's imports) runs once, off the
    main thread, in a pool pass once one of its processes has no task left (not before: it would take
    CPU from busy workers); registering the same function twice runs it once."""
    import threading

    from datagen.core import executor

    calls = []
    done = threading.Event()

    part_dirs = []

    def job():
        calls.append(threading.current_thread().name)
        # how many of the pass's parts (one per shard task) were finished when the job started
        part_dirs.append(len(list((tmp_path / "out" / "_run" / "pairs").glob("*/*/stats.json"))))
        done.set()

    executor.while_waiting(job)
    executor.while_waiting(job)
    assert main(["run", str(_recipe(tmp_path, image_server, workers=2)), "--out", str(tmp_path / "out")]) == 0
    assert done.wait(30)
    assert calls == ["driver-warm-up"]
    assert executor._IDLE_WORK == []
    shards = len(list((tmp_path / "out" / "_run" / "pairs").glob("*/*/stats.json")))
    assert shards >= 3 and part_dirs[0] >= shards - 1, (part_dirs, shards)  # 2 processes: after all but one


def test_pool_processes_get_their_share_of_the_cores(tmp_path, monkeypatch):
    """Each of a pool's processes is told how many cores it has to itself (``RunContext.cores``): the
    machine's divided among the processes, at least one; tasks run in the driver see the machine's. The
    fetch step sizes its decode threads by it."""
    import concurrent.futures as cf

    from datagen.core import executor
    from datagen.core.steps import RunContext, available_cores

    made = []

    class Recording:
        def __init__(self, n, mp_context=None, initializer=None, initargs=()):
            made.append((n, initargs[0]))

    monkeypatch.setattr(cf, "ProcessPoolExecutor", Recording)
    monkeypatch.setattr(executor, "available_cores", lambda: 8)
    ctx = RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path, seed=5)
    for n in (1, 2, 3, 8, 16):
        executor.open_pool(n, ctx)
    assert [(n, c.cores) for n, c in made] == [(1, 8), (2, 4), (3, 2), (8, 1), (16, 1)]
    assert all(c.seed == 5 and c.run_dir == ctx.run_dir for _, c in made)
    assert executor.task_context(ctx).cores is None and executor.task_context(ctx).cpu_cores() == available_cores()
