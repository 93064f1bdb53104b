"""Whole runs against misbehaving loopback servers (issue 18): `datagen retry-failed` after a 503 storm gives
the shards of a run that never failed; a failure spike stops the run cleanly and a rerun resumes; a server
that never answers some requests does not hang the run, and the summary explains every failure."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.cli import main
from servers import LocalServer, Reply, noise_jpeg

N = 60
SHARD_ROWS = 20


def _jpeg(i: int) -> bytes:
    return noise_jpeg(i, 40, 56)


# Rows 48..59 show the same pictures as rows 0..11: dedup keeps the first, so a row that failed and
# comes back changes which twin is kept (the barriers must run again after a retry).
IMAGES = {i: _jpeg(i % 48) for i in range(N)}
GONE = {5, 33}  # 404 for good: never retried unless named


def _index(req) -> int:
    return int(req.path.split("/")[-1].split(".")[0])


@pytest.fixture
def server():
    with LocalServer() as srv:
        srv.failing = set()  # indexes answered with 503 for now

        def handle(req):
            i = _index(req)
            if i in GONE:
                return Reply(404)
            if i in srv.failing:
                return Reply(503)
            return Reply(200, IMAGES[i], {"Content-Type": "image/jpeg"})

        srv.route("/img/", handle)
        yield srv


def _recipe(tmp_path, srv, fetch=None, n=N):
    pq.write_table(pa.table({"URL": [srv.url(f"/img/{i}.jpg") for i in range(n)],
                             "TEXT": [f"a noisy picture number {i}" for i in range(n)]}), tmp_path / "urls.parquet")
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({
        "name": "trust", "sources": [{"name": "web", "kind": "laion", "path": "urls.parquet"}],
        "fetch": {"retries": 0, "concurrency": 4, "timeout_s": 5, "allow_loopback": True, **(fetch or {})},
        "filters": {"quality": {"min_side": 10}}, "stage2": {"sources": []},
        "output": {"shard_max_count": 25},
        "executor": {"shard_rows": SHARD_ROWS},
    }))
    return path


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def _shards(out):
    return [(s["path"], s["sha256"]) for s in _manifest(out)["shards"]]


def _requests(srv) -> list[int]:
    return [_index(r) for r in srv.requests if r.path.startswith("/img/")]


def test_retry_failed_after_a_503_storm_equals_a_run_that_never_failed(tmp_path, server, capsys):
    recipe = _recipe(tmp_path, server)
    server.failing = {i for i in range(N) if i % 10 in (1, 4, 7)}  # 30% of the requests
    out = tmp_path / "stormy"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    first = _manifest(out)
    fetch = next(s for s in first["steps"] if s["name"] == "fetch")
    assert fetch["stats"]["failures"]["by_reason"] == {"http_503": 18, "http_404": 2}
    assert fetch["stats"]["failures"]["top_hosts"][0] == {"host": "127.0.0.1", "failed": 20,
                                                         "reasons": {"http_503": 18, "http_404": 2}}
    printed = capsys.readouterr().out
    assert "fetch failures: 20 rows" in printed and "http_503" in printed and "retry-failed" in printed

    server.failing = set()  # the storm is over
    server.requests.clear()
    assert main(["retry-failed", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fetched 18 rows again (http_503 18) in 3 shards: 18 kept now, 0 rejected again" in printed
    assert sorted(_requests(server)) == sorted(i for i in range(N) if i % 10 in (1, 4, 7))  # only those

    clean = tmp_path / "clean"
    assert main(["run", str(recipe), "--out", str(clean)]) == 0
    assert _shards(out) == _shards(clean)  # byte-identical shards, duplicates decided the same way
    after, never = _manifest(out), _manifest(clean)
    assert after["counts"]["pairs"] == never["counts"]["pairs"]
    assert after["counts"]["pairs"]["reconciled"] and after["counts"]["pairs"]["rejected"] == 2 + 11  # 404s; twins (row 53 has none: row 5 is gone)
    assert after["rejects"]["by_reason"] == never["rejects"]["by_reason"]
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert sorted(r["reason"] for r in rejects if r["step"] == "fetch") == ["http_404", "http_404"]
    fetch_after = next(s for s in after["steps"] if s["name"] == "fetch")
    fetch_never = next(s for s in never["steps"] if s["name"] == "fetch")
    for k in ("in", "kept", "rejected"):
        assert fetch_after[k] == fetch_never[k]
    assert fetch_after["stats"]["failures"] == fetch_never["stats"]["failures"]
    assert fetch_after["stats"]["rows_in"] == N and fetch_after["stats"]["retried_rows"] == 18

    # permanent reasons are retried only when named
    server.requests.clear()
    assert main(["retry-failed", str(out)]) == 0
    assert _requests(server) == [] and "nothing to retry" in capsys.readouterr().out
    assert main(["retry-failed", str(out), "--reasons", "http_404"]) == 0
    assert sorted(_requests(server)) == sorted(GONE)
    assert _shards(out) == _shards(clean)


def test_a_failure_spike_stops_the_run_cleanly_and_a_rerun_resumes(tmp_path, server, capsys):
    recipe = _recipe(tmp_path, server, {"concurrency": 1, "failure_window": 10, "max_failure_rate": 0.5})
    server.failing = set(range(40, N))  # the third shard's host falls over
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out)]) == 6
    err = capsys.readouterr().err
    assert "stopped:" in err and "http_503 in the last 10 downloads" in err and "max_failure_rate" in err
    assert "rerun the same command to resume" in err
    parts = sorted(p.parent.name for p in (out / "_run" / "pairs").rglob("stats.json"))
    assert parts == ["web-000000", "web-000001"]  # finished shards are kept
    assert not (out / "manifest.json").exists()

    server.failing = set()
    server.requests.clear()
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    assert sorted(_requests(server)) == list(range(40, N))  # only the shard that was stopped
    assert _manifest(out)["counts"]["pairs"]["reconciled"]


def test_a_server_that_never_answers_some_requests_does_not_hang_the_run(tmp_path, capsys):
    release = threading.Event()
    with LocalServer() as srv:
        def handle(req):
            i = _index(req)
            if i % 15 == 7:
                release.wait(60)
            return Reply(200, IMAGES[i], {"Content-Type": "image/jpeg"})

        srv.route("/img/", handle)
        recipe = _recipe(tmp_path, srv, {"timeout_s": 30, "total_timeout_s": 60, "concurrency": 20,
                                         "per_host_concurrency": 20,
                                         "straggler_cutoff": {"done_fraction": 0.9, "wait_s": 0.5}}, n=45)
        try:
            assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
        finally:
            release.set()
        m = _manifest(tmp_path / "out")
        fetch = next(s for s in m["steps"] if s["name"] == "fetch")
        assert fetch["stats"]["rejects"] == {"straggler_timeout": 3}
        assert m["counts"]["pairs"]["reconciled"] and m["counts"]["pairs"]["in"] == 45
        printed = capsys.readouterr().out
        assert "straggler_timeout" in printed and "127.0.0.1" in printed
        # the host answers again: the stragglers are picked up, and only they
        srv.requests.clear()
        assert main(["retry-failed", str(tmp_path / "out"), "--reasons", "straggler_timeout"]) == 0
        assert sorted(_requests(srv)) == [7, 22, 37]
    m = _manifest(tmp_path / "out")
    assert m["counts"]["pairs"] == {"in": 45, "kept": 45, "rejected": 0, "reconciled": True}
