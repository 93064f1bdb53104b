"""Request cache on one machine: the cluster-safe cache (per-process parts merged into a read-only
snapshot, ``datagen/core/cache.py``) against the SQLite WAL cache it replaced (a copy below), in the
same run.

Writes ``--n`` answers of ``--kb`` KB (a first run paying for them), merges them (the driver's work
after a pass), then reads every one back from a fresh process's view (a rerun), and prints the rates
and the ratios against the baseline.

    python bench/bench_cache.py [--n 20000] [--kb 2]
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datagen.core import cache as cache_mod  # noqa: E402
from datagen.core.cache import RequestCache, merge, request_key  # noqa: E402


class WalCache:
    """The SQLite WAL cache as it was before (one connection per thread, a commit per put)."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        self._conn().execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, namespace TEXT, value TEXT,"
                             " created REAL DEFAULT (julianday('now')))")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, namespace, request):
        row = self._conn().execute("SELECT value FROM cache WHERE key=?", (request_key(namespace, request),)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, namespace, request, value):
        self._conn().execute("INSERT OR REPLACE INTO cache (key, namespace, value) VALUES (?, ?, ?)",
                             (request_key(namespace, request), namespace, json.dumps(value, ensure_ascii=False)))

    def close(self):
        self._conn().close()


def run(make, path: Path, n: int, kb: int, merge_after: bool) -> dict:
    value = {"text": "x" * (kb * 1024), "prompt_tokens": 10}
    c = make(path)
    t0 = time.perf_counter()
    for i in range(n):
        c.put("chat", {"prompt": i}, value)
    c.close()
    put_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if merge_after:
        merge(path)
    merge_s = time.perf_counter() - t0
    cache_mod._STORES.clear()  # a rerun: a fresh process's view, nothing in memory
    c = make(path)
    t0 = time.perf_counter()
    hits = sum(c.get("chat", {"prompt": i}) is not None for i in range(n))
    get_s = time.perf_counter() - t0
    assert hits == n, hits
    return {"puts_per_s": round(n / put_s), "merge_s": round(merge_s, 2), "gets_per_s": round(n / get_s),
            "puts_and_merge_per_s": round(n / (put_s + merge_s))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--kb", type=int, default=2, help="answer size (an LLM reply is a few KB)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_cache-") as d:
        new = run(RequestCache, Path(d) / "new.sqlite", args.n, args.kb, True)
        old = run(WalCache, Path(d) / "old.sqlite", args.n, args.kb, False)
    print(f"cluster-safe cache, {args.n} answers of {args.kb} KB: {json.dumps(new)}")
    print(f"SQLite WAL cache (before), same run:      {json.dumps(old)}")
    print(f"puts, the merge included: {new['puts_and_merge_per_s'] / old['puts_and_merge_per_s']:.2f}x the WAL "
          f"cache; gets on a rerun: {new['gets_per_s'] / old['gets_per_s']:.2f}x")


if __name__ == "__main__":
    main()
