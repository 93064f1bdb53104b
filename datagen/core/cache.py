"""One persistent cache for costly external calls (LLM, DeepL, HTTP), safe on a cluster.

Keyed by the request: callers pass whatever determines the answer (backend,
model, prompt, options) and get the stored answer back, so a rerun or a
resumed run never pays twice. Values are JSON.

Many processes on many nodes use one cache at once, over a shared filesystem
(NFS, Lustre, JuiceFS), where SQLite's locking (and WAL mode above all) is not
safe. So nothing is ever written in place:

- ``<path>`` (``llm.sqlite``, ...) is a read-only **snapshot**: an SQLite file
  opened with ``immutable=1`` (no locks, no journal), replaced whole, never
  modified.
- A process keeps the answers it got in memory and **flushes** the new ones
  to a **part file** of its own, ``<path>.parts/<host>-<pid>-<uuid>.jsonl``,
  written under a temporary name and renamed when complete (like the pass
  parts in :mod:`datagen.core.parts`): a part exists only whole. A process
  flushes at the end of every shard task (:func:`task_scope`, entered by the
  executor; inside it, closing a cache defers to the task's end, so a step
  that opens a cache per batch still writes one part per task), when it
  closes a cache outside a task, when its pending answers pass
  ``FLUSH_BYTES``, and at exit.
- The **driver merges** the parts into a new snapshot (:func:`merge`) at the
  start of a run and after every pass, while no worker reads: it copies the
  snapshot, adds the parts, renames the copy over the snapshot and deletes the
  merged parts. Merges of one cache take turns through an ``flock`` on
  ``<path>.lock`` (for caches that several runs share).

A reader sees the snapshot plus what its own process wrote; answers another
process got during the same pass become visible after the next merge. A process
killed before it flushed loses only the answers of its unfinished task, which
the retried task asks again.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from datagen.core.parts import TMP_MARK

log = logging.getLogger("datagen")

FLUSH_BYTES = 32 * 2**20  # a process flushes its pending answers when they pass this size
KEEP_BYTES = 256 * 2**20  # answers a process keeps in memory after flushing them, at most
PARTS_SUFFIX = ".parts"
_SCHEMA = ("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, namespace TEXT, value TEXT,"
           " created REAL DEFAULT (julianday('now')))")


def request_key(namespace: str, request: Any) -> str:
    """A stable hash of a JSON-serialisable request. Never put secrets in ``request``."""
    blob = json.dumps([namespace, request], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def parts_dir(path: Path) -> Path:
    return path.with_name(path.name + PARTS_SUFFIX)


class _Store:
    """This process's view of one cache: the snapshot, plus the answers it got itself."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.RLock()
        self.memory: dict[str, tuple[str, str]] = {}  # key -> (namespace, JSON value), newest answers
        self.pending: list[str] = []  # keys not yet flushed to a part
        self.pending_bytes = self.memory_bytes = 0
        self.generation = 0  # bumped when a merge in this process replaced the snapshot
        self._local = threading.local()

    def _snapshot(self) -> sqlite3.Connection | None:
        t = self._local
        if getattr(t, "generation", None) != self.generation:
            if getattr(t, "conn", None) is not None:
                t.conn.close()
            t.conn, t.generation = None, self.generation
        if t.conn is None and self.path.is_file():
            t.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                     check_same_thread=False)
        return t.conn

    def get(self, key: str) -> str | None:
        with self.lock:
            hit = self.memory.get(key)
        if hit is not None:
            return hit[1]
        for attempt in (0, 1):
            conn = self._snapshot()
            if conn is None:
                return None
            try:
                row = conn.execute("SELECT value FROM cache WHERE key=?", (key,)).fetchone()
                return None if row is None else row[0]
            except sqlite3.DatabaseError:
                # A merge by another run sharing this cache replaced the snapshot under us; on NFS the
                # old file's handle goes stale ("disk I/O error"). Open the new snapshot, once.
                if attempt:
                    raise
                self.close_thread()
        return None  # not reached

    def put(self, key: str, namespace: str, value: str) -> None:
        with self.lock:
            if key not in self.memory:
                self.memory_bytes += len(value)
            self.memory[key] = (namespace, value)
            self.pending.append(key)
            self.pending_bytes += len(value)
            if self.pending_bytes >= FLUSH_BYTES:
                self.flush()

    def flush(self) -> Path | None:
        """Write the pending answers to a new part file (atomically); returns it, or None."""
        with self.lock:
            if not self.pending:
                return None
            d = parts_dir(self.path)
            d.mkdir(parents=True, exist_ok=True)
            final = d / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}.jsonl"
            tmp = final.with_name(final.name + TMP_MARK + uuid.uuid4().hex[:8])
            with open(tmp, "w", encoding="utf-8") as f:
                for key in dict.fromkeys(self.pending):  # once each, in order
                    ns, value = self.memory[key]
                    f.write(json.dumps([key, ns, value], ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            self.pending, self.pending_bytes = [], 0
            if self.memory_bytes > KEEP_BYTES:  # flushed answers stay readable after the next merge
                self.memory, self.memory_bytes = {}, 0
            return final

    def close_thread(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


def _store(path: Path) -> _Store:
    key = str(path.resolve())
    with _STORES_LOCK:
        s = _STORES.get(key)
        if s is None:
            s = _STORES[key] = _Store(Path(key))
        return s


def flush_all() -> list[Path]:
    """Flush every cache this process holds answers for (after each shard task, at exit)."""
    with _STORES_LOCK:
        stores = list(_STORES.values())
    return [p for s in stores if (p := s.flush()) is not None]


atexit.register(flush_all)


def _forget_after_fork() -> None:
    """A forked child starts empty: its parent's pending answers are the parent's to flush, and
    SQLite connections must not cross a fork."""
    global _STORES_LOCK
    _STORES.clear()
    _STORES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)

_TASKS = 0  # shard tasks running in this process (task_scope)


@contextmanager
def task_scope():
    """Around one shard task: caches closed inside it flush once, when it ends (failed or not)."""
    global _TASKS
    _TASKS += 1
    try:
        yield
    finally:
        _TASKS -= 1
        flush_all()


class RequestCache:
    """A handle on the cache at ``path``; all handles on one path in a process share its answers."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._store = _store(self.path)

    def get(self, namespace: str, request: Any) -> Any | None:
        value = self._store.get(request_key(namespace, request))
        return None if value is None else json.loads(value)

    def put(self, namespace: str, request: Any, value: Any) -> None:
        self._store.put(request_key(namespace, request), namespace, json.dumps(value, ensure_ascii=False))

    def flush(self) -> Path | None:
        return self._store.flush()

    def __len__(self) -> int:
        """Distinct answers in the snapshot, the unmerged parts and this process's memory."""
        keys = set(self._store.memory)
        for p in sorted(parts_dir(self.path).glob("*.jsonl")):
            keys.update(k for k, _, _ in _read_part(p))
        conn = self._store._snapshot()
        if conn is not None:
            keys.update(k for (k,) in conn.execute("SELECT key FROM cache"))
        return len(keys)

    def close(self) -> None:
        """Make this process's new answers durable (a part file; inside a shard task, at its end) and
        release the thread's connection."""
        if not _TASKS:
            self._store.flush()
        self._store.close_thread()


# ----------------------------------------------------------------------------- merging (driver)

def _read_part(path: Path) -> Iterator[tuple[str, str, str]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                key, ns, value = json.loads(line)
            except (ValueError, TypeError):
                log.warning("cache part %s line %d is not a [key, namespace, value] record; skipped", path, n)
                continue
            yield key, ns, value


@contextmanager
def _merge_lock(path: Path):
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def merge(path: str | Path) -> int:
    """Merge the finished part files of the cache at ``path`` into a new snapshot; returns the number
    of answers merged. Call while no other process reads the snapshot (the driver, between passes)."""
    path = Path(path)
    d = parts_dir(path)
    if not d.is_dir():
        return 0
    with _merge_lock(path):
        parts = sorted(d.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        if not parts:
            return 0
        tmp = path.with_name(path.name + TMP_MARK + uuid.uuid4().hex[:8])
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            if path.is_file():
                src = sqlite3.connect(path)  # a plain connection also reads an old WAL file's log
                try:
                    src.backup(dst)
                finally:
                    src.close()
            dst.execute("PRAGMA journal_mode=DELETE")  # a snapshot never uses a WAL
            dst.execute("PRAGMA synchronous=OFF")  # the copy is private until the rename
            dst.execute(_SCHEMA)
            n = 0
            dst.execute("BEGIN")
            for p in parts:
                for key, ns, value in _read_part(p):
                    dst.execute("INSERT OR REPLACE INTO cache (key, namespace, value) VALUES (?, ?, ?)",
                                (key, ns, value))
                    n += 1
            dst.execute("COMMIT")
        except BaseException:
            dst.close()
            tmp.unlink(missing_ok=True)
            raise
        dst.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for p in parts:  # a crash before this point only merges them again: same answers
            p.unlink(missing_ok=True)
        with _STORES_LOCK:
            s = _STORES.get(str(path.resolve()))
        if s is not None:
            s.generation += 1  # this process reopens the new snapshot
    log.debug("cache %s: merged %d answers from %d parts", path, n, len(parts))
    return n


def merge_dir(cache_dir: str | Path, *extra: str | Path) -> int:
    """Merge every cache under ``cache_dir`` (those with parts), and the caches at ``extra`` paths."""
    cache_dir = Path(cache_dir)
    paths = [p.with_name(p.name[: -len(PARTS_SUFFIX)]) for p in sorted(cache_dir.glob("*" + PARTS_SUFFIX))
             if p.is_dir()] if cache_dir.is_dir() else []
    paths += [Path(p) for p in extra if p]
    return sum(merge(p) for p in dict.fromkeys(paths))
