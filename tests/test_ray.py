"""The Ray executor on a real local Ray instance (2 CPUs): the same shard tasks, the same bytes,
and a worker process killed mid-run is restarted by Ray with the same output."""

import json
import logging
import os
import re
import signal
import threading
import time

import pytest
import ray  # the ray extra: make installs it

from datagen.cli import main  # noqa: E402

from conftest import ROOT  # noqa: E402
from datagen.core.cache import RequestCache, parts_dir  # noqa: E402
from test_engine import N_URLS, SHARD_ROWS, _cli, _recipe, _shard_hashes, _wait_for, image_server  # noqa: E402,F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    yield
    ray.shutdown()


def _without_timings(obj):
    """Manifest step records and stats as they must agree between executors: timings dropped."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items()
                if k != "seconds" and not k.endswith(("_seconds", "_s", "per_s"))}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _displays(records) -> list[str]:
    """The progress displays a run showed (``datagen.progress``: log lines off a terminal), by name,
    with how often each reached its total."""
    lines = [r.getMessage() for r in records if r.name == "datagen.progress"]
    names = dict.fromkeys(m.split(":")[0] for m in lines)
    return [f"{n} x{sum(m.startswith(n + ':') and '(100%)' in m for m in lines)}" for n in names]


def test_demo_on_ray_gives_the_local_executors_bytes_summary_and_manifest(tmp_path, capsys, caplog):
    # OCR and CLIP scores are floats from batched models, and Ray workers run torch with other thread
    # counts: their last bits may differ, so this compares the engine, not the models.
    sets = ["--set", "ocr=null", "--set", "filters.clip=null"]
    recipe = str(ROOT / "recipes" / "demo.yaml")
    caplog.set_level(logging.INFO, logger="datagen.progress")
    assert main(["run", recipe, "--out", str(tmp_path / "local"), *sets]) == 0
    local, local_displays = capsys.readouterr(), _displays(caplog.records)
    caplog.clear()
    assert main(["run", recipe, "--out", str(tmp_path / "ray"), *sets, "--set", "executor.kind=ray",
                 "--set", "executor.workers=2"]) == 0
    on_ray, ray_displays = capsys.readouterr(), _displays(caplog.records)
    a, b = (json.loads((tmp_path / x / "manifest.json").read_text()) for x in ("local", "ray"))
    assert _shard_hashes(tmp_path / "local") == _shard_hashes(tmp_path / "ray")
    assert a["counts"] == b["counts"] and a["rejects"] == b["rejects"]
    # the workers' statistics merge into the same per-step records and stats as on one machine
    assert [s["name"] for s in a["steps"]] == [s["name"] for s in b["steps"]]
    assert _without_timings(a["steps"]) == _without_timings(b["steps"])
    # one summary, the same but for timings and the output folder; one progress display per pass, shown
    # by the driver (the workers' output never reaches the terminal)
    mask = lambda out, name: re.sub(r"\d+\.\ds", "_s", out.replace(str(tmp_path / name), "OUT"))  # noqa: E731
    assert mask(local.out, "local") == mask(on_ray.out, "ray")
    assert ray_displays == local_displays and "pairs x1" in ray_displays, (ray_displays, local_displays)
    assert "pid=" not in on_ray.err


def _ray_worker_pids() -> list[int]:
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::_RayWorker"):
                pids.append(int(p))
    return pids


def test_a_killed_ray_worker_is_restarted_and_the_output_is_the_same(tmp_path, image_server):
    recipe = _recipe(tmp_path, image_server, kind="ray")
    image_server.delay_s = 0.1  # about 3 s of fetching: time to kill the worker mid-shard
    killed = []

    def kill_when_halfway():
        t0 = time.time()
        while image_server.count("/img/") < N_URLS // 3 and time.time() - t0 < 120:
            time.sleep(0.01)
        for pid in _ray_worker_pids():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    th = threading.Thread(target=kill_when_halfway)
    th.start()
    assert main(["run", str(recipe), "--out", str(tmp_path / "ray")]) == 0
    th.join()
    assert killed, "no Ray worker process was found to kill"
    assert image_server.count("/img/") > N_URLS, "the killed worker's shard was fetched again"
    assert main(["run", str(recipe), "--out", str(tmp_path / "local"), "--set", "executor.kind=local"]) == 0
    assert _shard_hashes(tmp_path / "ray") == _shard_hashes(tmp_path / "local")


def test_kind_ray_without_ray_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    recipe = str(ROOT / "recipes" / "demo.yaml")
    assert main(["run", recipe, "--out", str(tmp_path / "x"), "--set", "executor.kind=ray"]) == 2
    assert "pip install 'datagen[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "nothing is written before the error"


def test_the_workers_cache_answers_merge_and_a_fresh_rerun_on_ray_asks_nothing_again(tmp_path, image_server):
    recipe = _recipe(tmp_path, image_server, kind="ray", workers=2)
    out = tmp_path / "out"
    cache = ["--set", "fetch.cache_downloads=true"]
    assert main(["run", str(recipe), "--out", str(out), *cache]) == 0
    assert image_server.count("/img/") == N_URLS
    path = out / "_run" / "cache" / "fetch.sqlite"
    assert path.is_file() and not list(parts_dir(path).glob("*")), "the driver merged every worker's part"
    assert len(RequestCache(path)) == N_URLS
    first = _shard_hashes(out)
    # --fresh forgets every pass but keeps the cache: all shards run again, no image is fetched again
    assert main(["run", str(recipe), "--out", str(out), *cache, "--fresh"]) == 0
    assert image_server.count("/img/") == N_URLS
    fetch = next(s for s in json.loads((out / "manifest.json").read_text())["steps"] if s["name"] == "fetch")
    assert fetch["stats"]["cache_hits"] == N_URLS and not fetch["reused"]
    assert _shard_hashes(out) == first


RAY_DIR = os.path.dirname(ray.__file__)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return f"pid {pid} (gone)"


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_ray_driver_leaves_no_ray_behind_and_the_rerun_resumes_by_shard(tmp_path, image_server):
    recipe = _recipe(tmp_path, image_server, kind="ray", workers=2)
    image_server.delay_s = 0.2  # about 1 s a shard: time to kill the driver between parts
    out = tmp_path / "killed"
    proc = _cli("run", str(recipe), "--out", str(out))  # its own local Ray instance
    parts = lambda: list(out.glob("_run/pairs/*/*/stats.json"))  # noqa: E731
    try:
        _wait_for(lambda: len(parts()) >= 2, proc, timeout=240)
        ray_procs = _descendants(proc.pid)  # GCS, raylet, log monitor, agents, the actors
        names = " ".join(_cmdline(p) for p in ray_procs)
        assert "gcs_server" in names and "raylet" in names, f"the driver started no local Ray instance: {names}"
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone: Ray's processes must follow it
        proc.wait()
        # Ray's two agents exit on their own once they find their raylet dead, but only after their
        # goodbye to the dead GCS times out (63 s measured): the test waits for everything else.
        agents = {p for p in ray_procs if _cmdline(p).startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))}
        core = ray_procs - agents
        t0 = time.time()
        while any(_alive(p) for p in core) and time.time() - t0 < 30:
            time.sleep(0.2)
        left = [p for p in core if _alive(p)]
        assert not left, f"the killed driver's Ray processes still run: {[_cmdline(p) for p in left]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for p in ray_procs if "ray_procs" in locals() else ():  # leftovers: the agents, on their way out
            if _alive(p) and _cmdline(p).startswith(("ray::", str(RAY_DIR))):  # ray's own, not a reused pid
                os.kill(p, signal.SIGKILL)
    done = {p: p.stat().st_mtime_ns for p in parts()}
    fetched = image_server.count("/img/")
    assert len(done) < N_URLS // SHARD_ROWS, "killed before the last part"

    assert main(["run", str(recipe), "--out", str(out)]) == 0  # resumes on this process's Ray instance
    assert {p: p.stat().st_mtime_ns for p in done} == done, "finished parts were not computed again"
    all_parts = {p: p.stat().st_mtime_ns for p in parts()}
    assert len(all_parts) == N_URLS // SHARD_ROWS and len(all_parts) - len(done) >= 1
    # only the shards that were not finished ran: fewer fetches than the whole source (a task that Ray
    # retries, say after its memory monitor killed a worker, fetches its shard's images again)
    assert image_server.count("/img/") - fetched < N_URLS
    assert not list(out.rglob("*.tmp-*")), "the killed run's temporaries are gone"
    assert main(["run", str(recipe), "--out", str(tmp_path / "clean"), "--set", "executor.kind=local"]) == 0
    assert _shard_hashes(out) == _shard_hashes(tmp_path / "clean")
