"""One persistent cache for costly external calls (LLM, DeepL, HTTP).

Keyed by the request: callers pass whatever determines the answer (backend,
model, prompt, options) and get the stored answer back, so a rerun or a
resumed run never pays twice. SQLite in WAL mode, so several processes of one
run can share the file; values are JSON.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


def request_key(namespace: str, request: Any) -> str:
    """A stable hash of a JSON-serialisable request. Never put secrets in ``request``."""
    blob = json.dumps([namespace, request], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, namespace TEXT, value TEXT,"
                " created REAL DEFAULT (julianday('now')))"
            )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, namespace: str, request: Any) -> Any | None:
        row = self._conn().execute("SELECT value FROM cache WHERE key=?", (request_key(namespace, request),)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, namespace: str, request: Any, value: Any) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO cache (key, namespace, value) VALUES (?, ?, ?)",
            (request_key(namespace, request), namespace, json.dumps(value, ensure_ascii=False)),
        )

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM cache").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
