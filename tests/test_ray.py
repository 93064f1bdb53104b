"""The Ray executor on a real local Ray instance (2 CPUs): the same shard tasks, the same bytes,
and a worker process killed mid-run is restarted by Ray with the same output."""

import json
import os
import signal
import threading
import time

import pytest
import ray  # the ray extra: make installs it

from datagen.cli import main  # noqa: E402

from conftest import ROOT  # noqa: E402
from test_engine import N_URLS, _recipe, _shard_hashes, image_server  # noqa: E402,F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    yield
    ray.shutdown()


def test_demo_on_ray_gives_the_local_executors_bytes(tmp_path):
    # OCR and CLIP scores are floats from batched models, and Ray workers run torch with other thread
    # counts: their last bits may differ, so this compares the engine, not the models.
    sets = ["--set", "ocr=null", "--set", "filters.clip=null"]
    recipe = str(ROOT / "recipes" / "demo.yaml")
    assert main(["run", recipe, "--out", str(tmp_path / "local"), *sets]) == 0
    assert main(["run", recipe, "--out", str(tmp_path / "ray"), *sets, "--set", "executor.kind=ray",
                 "--set", "executor.workers=2"]) == 0
    a, b = (json.loads((tmp_path / x / "manifest.json").read_text()) for x in ("local", "ray"))
    assert _shard_hashes(tmp_path / "local") == _shard_hashes(tmp_path / "ray")
    assert a["counts"] == b["counts"] and a["rejects"] == b["rejects"]


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
