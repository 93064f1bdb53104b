"""The request cache with many processes at once: per-process part files merged into a read-only
snapshot (datagen.core.cache). Nothing is lost, nothing is corrupt, and a rerun asks nothing again."""

import multiprocessing as mp
import sqlite3
import time

import pytest

from datagen.core import cache as cache_mod
from datagen.core.cache import RequestCache, flush_all, merge, merge_dir, parts_dir, task_scope

N_PROCS = 4
N_KEYS = 300


def _writer(path: str, proc: int, shared_from: int, out) -> None:
    """Write this process's answers (some keys shared with every other process), flushing in several
    parts, and read each back at once; report the keys whose read-back was wrong."""
    cache = RequestCache(path)
    wrong = []
    for i in range(N_KEYS):
        key = {"i": i} if i >= shared_from else {"proc": proc, "i": i}
        value = {"answer": f"v{i}" if i >= shared_from else f"p{proc}-{i}", "pad": "x" * 200}
        cache.put("ns", key, value)
        if cache.get("ns", key) != value:
            wrong.append(i)
        if i % 50 == 49:
            cache.flush()  # a part per "task"
    cache.close()
    out.put((proc, wrong))


def _run_writers(path, ctx, merging: bool):
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), p, N_KEYS - 50, q)) for p in range(N_PROCS)]
    for p in procs:
        p.start()
    merges = 0
    while merging and any(p.is_alive() for p in procs):
        merges += merge(path) > 0  # the driver merging while workers still flush: nothing may be lost
        time.sleep(0.01)
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(not wrong for _, wrong in results), results
    return merges


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_many_processes_write_at_once_and_nothing_is_lost(tmp_path, start):
    path = tmp_path / "cache" / "llm.sqlite"
    merges = _run_writers(path, mp.get_context(start), merging=(start == "fork"))
    merge(path)
    assert not list(parts_dir(path).glob("*.jsonl")), "every part was merged and removed"
    assert not list(path.parent.rglob("*.tmp-*")), "no temporaries left"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",), "a snapshot has no WAL"
    conn.close()
    cache = RequestCache(path)
    shared = 50
    assert len(cache) == N_PROCS * (N_KEYS - shared) + shared
    for p in range(N_PROCS):
        for i in range(N_KEYS - shared):
            assert cache.get("ns", {"proc": p, "i": i}) == {"answer": f"p{p}-{i}", "pad": "x" * 200}
    for i in range(N_KEYS - shared, N_KEYS):
        assert cache.get("ns", {"i": i})["answer"] == f"v{i}"
    if start == "fork":
        assert merges >= 1, "the merges ran while the writers were writing"


def test_a_merge_is_seen_by_a_fresh_process_and_old_wal_caches_still_read(tmp_path):
    path = tmp_path / "requests.sqlite"
    # a cache written by the SQLite WAL version: its rows (some still in the -wal log) stay
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE cache (key TEXT PRIMARY KEY, namespace TEXT, value TEXT, created REAL)")
    from datagen.core.cache import request_key

    old.execute("INSERT INTO cache (key, namespace, value) VALUES (?, ?, ?)",
                (request_key("t", {"text": "old"}), "t", '"旧"'))
    c = RequestCache(path)
    c.put("t", {"text": "new"}, "新")
    c.close()
    assert merge(path) == 1
    old.close()
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        got = pool.apply(_read_two, (str(path),))
    assert got == ["旧", "新"]
    assert merge(path) == 0, "nothing left to merge"


def _read_two(path: str) -> list:
    c = RequestCache(path)
    return [c.get("t", {"text": "old"}), c.get("t", {"text": "new"})]


def test_merge_dir_finds_every_cache_and_a_reader_in_the_merging_process_sees_the_new_snapshot(tmp_path):
    a, b = RequestCache(tmp_path / "llm.sqlite"), RequestCache(tmp_path / "fetch.sqlite")
    a.put("x", 1, "one")
    b.put("y", 2, "two")
    assert len(flush_all()) == 2
    assert merge_dir(tmp_path) == 2
    assert (tmp_path / "llm.sqlite").is_file() and (tmp_path / "fetch.sqlite").is_file()
    assert a.get("x", 1) == "one" and b.get("y", 2) == "two"
    assert merge_dir(tmp_path / "missing") == 0


def test_a_task_that_opens_the_cache_per_batch_writes_one_part_even_when_it_fails(tmp_path):
    path = tmp_path / "fetch.sqlite"
    for attempt in ("ok", "fails"):
        try:
            with task_scope():
                for batch in range(5):  # as the fetch step does: a cache per batch, closed after it
                    c = RequestCache(path)
                    c.put("get", f"{attempt}-{batch}", batch)
                    c.close()
                    assert not list(parts_dir(path).glob("*.jsonl")) or attempt == "fails"
                if attempt == "fails":
                    raise RuntimeError("the task failed after paying for its answers")
        except RuntimeError:
            pass
    assert len(list(parts_dir(path).glob("*.jsonl"))) == 2, "one part per task"
    assert merge(path) == 10
    c = RequestCache(path)
    c.close()  # outside a task, closing flushes at once
    c.put("get", "late", 1)
    c.close()
    assert len(list(parts_dir(path).glob("*.jsonl"))) == 1


def _child_flushes(path: str, q) -> None:
    q.put([str(p) for p in flush_all()])


def test_a_forked_child_does_not_flush_its_parents_answers_again(tmp_path):
    c = RequestCache(tmp_path / "llm.sqlite")
    c.put("ns", "parent", 1)  # pending in the parent
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_flushes, args=(str(tmp_path / "llm.sqlite"), q))
    p.start()
    assert q.get(timeout=60) == []
    p.join(timeout=60)
    assert len(flush_all()) == 1 and merge(tmp_path / "llm.sqlite") == 1


class _StaleHandle:
    """An SQLite connection whose file was replaced under it on NFS: every read is an I/O error."""

    def execute(self, *a):
        raise sqlite3.OperationalError("disk I/O error")

    def close(self):
        pass


def test_a_stale_snapshot_handle_is_reopened_once(tmp_path):
    path = tmp_path / "requests.sqlite"
    c = RequestCache(path)
    c.put("t", "x", "answer")
    c.close()
    merge(path)
    cache_mod._STORES.clear()  # a reader that holds nothing in memory
    reader = RequestCache(path)
    assert reader.get("t", "x") == "answer"
    reader._store._local.conn = _StaleHandle()  # another run's merge replaced the file on NFS
    assert reader.get("t", "x") == "answer"
    reader._store._local.conn = _StaleHandle()
    reader._store._snapshot = lambda: _StaleHandle()  # a snapshot that stays unreadable: the error shows
    with pytest.raises(sqlite3.OperationalError):
        reader.get("t", "x")
