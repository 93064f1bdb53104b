"""A bucket as storage: parquet and TSV sources read, and finished outputs uploaded, through pyarrow's
S3 filesystem against a real S3 server (moto's, on 127.0.0.1), with the endpoint and credentials from
the environment."""

import hashlib
import json
import logging
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer  # the dev extra: moto[server]

from datagen.cli import main
from datagen.core import storage
from datagen.core.steps import RunContext
from datagen.sources.config import TsvSource
from datagen.sources.tables import read_tsv

from test_engine import N_URLS, image_server  # noqa: F401

SECRET = "s3-secret-never-logged-4711"


@pytest.fixture
def s3(monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "datagen-test",
                 "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():  # nothing but the loopback server is asked
        monkeypatch.setenv(k, v)
    fs, _ = storage.filesystem("s3://bucket/")
    from pyarrow import fs as pafs

    pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir("bucket")
    yield fs
    server.stop()


def _tables(srv) -> list[pa.Table]:
    urls = [srv.url(f"/img/{i}.jpg") for i in range(N_URLS)]
    half = N_URLS // 2
    return [pa.table({"URL": urls[a:b], "TEXT": [f"a noisy picture number {i}" for i in range(a, b)],
                      "similarity": [0.3] * (b - a)}) for a, b in ((0, half), (half, N_URLS))]


def _recipe(tmp_path, path: str) -> str:
    p = tmp_path / f"r-{abs(hash(path))}.yaml"
    p.write_text(json.dumps({
        "name": "bucket", "sources": [{"name": "web", "kind": "laion", "path": path}],
        "fetch": {"retries": 0, "concurrency": 4, "timeout_s": 10, "allow_loopback": True},
        "filters": {"quality": {"min_side": 10}}, "stage2": {"sources": []},
        "output": {"shard_max_count": 25}, "executor": {"shard_rows": 20},
    }))
    return str(p)


def _samples(out) -> list[tuple[str, bytes]]:
    got = []
    for shard in sorted((out / "stage1").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                data = tar.extractfile(m).read()
                if m.name.endswith(".json"):
                    row = json.loads(data)
                    assert row.pop("provenance")["recipe_sha256"]
                    data = json.dumps(row, sort_keys=True).encode()
                got.append((f"{shard.name}/{m.name}", data))
    assert len(got) == 3 * N_URLS
    return got


def test_a_laion_source_in_a_bucket_gives_the_same_shards_as_on_disk(tmp_path, s3, image_server, caplog):
    caplog.set_level(logging.DEBUG)
    (tmp_path / "local").mkdir()
    for i, t in enumerate(_tables(image_server)):
        pq.write_table(t, tmp_path / "local" / f"part-{i:05d}.parquet")
        pq.write_table(t, f"bucket/laion/part-{i:05d}.parquet", filesystem=s3)
    pq.write_table(_tables(image_server)[0], "bucket/other/not-matched.parquet", filesystem=s3)

    assert main(["run", _recipe(tmp_path, "s3://bucket/laion/*.parquet"), "--out", str(tmp_path / "from_s3")]) == 0
    assert main(["run", _recipe(tmp_path, str(tmp_path / "local" / "*.parquet")), "--out", str(tmp_path / "disk")]) == 0
    # the same samples, byte for byte, but for the recipe's hash (its source path differs)
    assert _samples(tmp_path / "from_s3") == _samples(tmp_path / "disk")
    manifest = json.loads((tmp_path / "from_s3" / "manifest.json").read_text())
    assert manifest["counts"]["pairs"]["in"] == N_URLS and manifest["counts"]["pairs"]["kept"] == N_URLS
    # the credentials stay in the environment: not in the logs, the manifest or the run folder
    assert SECRET not in caplog.text
    assert not [p for p in (tmp_path / "from_s3").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]

    # a rerun finds the bucket's files unchanged (size, mtime) and reuses the source shards
    n = image_server.count("/img/")
    assert main(["run", _recipe(tmp_path, "s3://bucket/laion/*.parquet"), "--out", str(tmp_path / "from_s3")]) == 0
    assert image_server.count("/img/") == n


def test_missing_objects_and_remote_paths_for_local_only_sources_are_clear_errors(tmp_path, s3, capsys):
    assert main(["run", _recipe(tmp_path, "s3://bucket/nothing/*.parquet"), "--out", str(tmp_path / "a")]) == 2
    assert "no file at s3://bucket/nothing/*.parquet" in capsys.readouterr().err
    assert main(["run", _recipe(tmp_path, "s3://bucket/absent.parquet"), "--out", str(tmp_path / "b")]) == 2
    assert "no file at s3://bucket/absent.parquet" in capsys.readouterr().err
    text_only = tmp_path / "t.yaml"
    text_only.write_text(json.dumps({"name": "t", "sources": [
        {"name": "llava", "kind": "instructions", "path": "s3://bucket/llava.json"}]}))
    assert main(["run", str(text_only), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "s3://bucket/llava.json: source 'llava' reads local files only; remote URIs work for parquet" in err, err


def test_a_tsv_in_a_bucket_reads_like_a_local_one(tmp_path, s3):
    text = "a cat on a mat\thttp://127.0.0.1:9/a.jpg\n\nbroken line\nrelative\timg/b.jpg\n"
    with s3.open_output_stream("bucket/cc3m/train.tsv") as f:
        f.write(text.encode())
    (tmp_path / "train.tsv").write_text(text)
    ctx = RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path, seed=0)
    remote = list(read_tsv(TsvSource(name="cc", kind="cc3m", path="s3://bucket/cc3m/train.tsv"), ctx))
    local = list(read_tsv(TsvSource(name="cc", kind="cc3m", path=str(tmp_path / "train.tsv")), ctx))
    rk, lk = (pa.concat_tables([o.kept for o in x]).to_pylist() for x in (remote, local))
    assert [r["key"] for r in rk] == [r["key"] for r in lk] and len(rk) == 2
    assert rk[0]["url"] == lk[0]["url"] == "http://127.0.0.1:9/a.jpg"
    assert rk[1]["url"] == "img/b.jpg", "a relative path in a bucket's table is kept as written"
    rr = pa.concat_tables([o.rejects for o in remote]).to_pylist()
    assert [r["reason"] for r in rr] == ["malformed_row"] and "s3://bucket/cc3m/train.tsv:3" in rr[0]["detail"]


def test_the_finished_output_is_uploaded_to_a_bucket_manifest_last(tmp_path, s3, image_server, capsys):
    (tmp_path / "in").mkdir()
    pq.write_table(_tables(image_server)[0], tmp_path / "in" / "t.parquet")
    recipe = _recipe(tmp_path, str(tmp_path / "in" / "t.parquet"))
    out = tmp_path / "out"
    assert main(["run", recipe, "--out", str(out), "--set", "output.upload_to=s3://bucket/runs/one"]) == 0
    assert "uploaded: " in capsys.readouterr().out
    from pyarrow import fs as pafs

    infos = s3.get_file_info(pafs.FileSelector("bucket/runs/one", recursive=True))
    remote = {i.path.removeprefix("bucket/runs/one/"): i for i in infos if i.type == pafs.FileType.File}
    local = {p.relative_to(out).as_posix() for p in out.rglob("*")
             if p.is_file() and p.relative_to(out).parts[0] != "_run" and p.name != ".datagen.lock"}
    assert set(remote) == local and "manifest.json" in local and "stage1/stage1-000000.tar" in local
    manifest = json.loads(s3.open_input_file("bucket/runs/one/manifest.json").read())
    for shard in manifest["shards"]:
        data = s3.open_input_file(f"bucket/runs/one/{shard['path']}").read()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    assert remote["manifest.json"].mtime >= max(i.mtime for i in remote.values())

    # a bucket that does not exist: a clear error, the local output complete
    assert main(["run", recipe, "--out", str(out), "--set", "output.upload_to=s3://no-such-bucket/x"]) == 2
    err = capsys.readouterr().err
    assert "output.upload_to: copying" in err and "rerun the same command to upload again" in err, err
    assert (out / "manifest.json").is_file()
    assert SECRET not in err
    # not a URI: the recipe is refused before anything runs
    assert main(["validate", recipe, "--set", "output.upload_to=/data/somewhere"]) == 2
    assert "upload_to" in capsys.readouterr().err


def test_realpath_matches_os_realpath_through_linked_folders_and_files(tmp_path, monkeypatch):
    """storage.realpath resolves each folder once: the same answers as os.path.realpath for a linked
    folder, a linked file, '..' through a link, a missing file and a relative path."""
    import os

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.symlink(tmp_path / "real" / "a.jpg", tmp_path / "real" / "b.jpg")
    monkeypatch.chdir(tmp_path)
    cases = [tmp_path / "link" / "a.jpg", tmp_path / "link" / "b.jpg", tmp_path / "link" / ".." / "real" / "a.jpg",
             tmp_path / "link" / "missing.jpg", tmp_path / "link", tmp_path / "link" / ".", "link/b.jpg", "x.jpg"]
    for p in cases:
        assert storage.realpath(p) == os.path.realpath(p), p
    assert storage.realpath(tmp_path / "link" / "b.jpg") == str(tmp_path / "real" / "a.jpg")
