"""One run per output folder.

``RunLock`` takes an exclusive ``flock`` on ``<out>/.datagen.lock`` and writes
who holds it (pid, host, start time, command). A second run on the same folder
fails at once with :class:`FolderInUse` naming the holder. The kernel drops a
``flock`` when its process dies, even on ``kill -9``, so a lock left by a dead
run is never in the way: the next run takes it and says it found a stale one.
Re-entrant within a process: ``datagen run`` holds it across the steps and
the sinks, and the executor's own ``with RunLock(...)`` inside is a no-op.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

log = logging.getLogger("datagen")

LOCK_NAME = ".datagen.lock"
_HELD: dict[str, tuple[int, int]] = {}  # resolved folder -> (fd, depth) held by this process


class FolderInUse(RuntimeError):
    """Another live process holds the output folder."""


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


class RunLock:
    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.stale: dict | None = None  # what a dead holder left, when we found one

    def __enter__(self) -> "RunLock":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = _holder(self.path)
            who = (f"pid {h.get('pid')} on {h.get('host')}, started {h.get('started')}: {h.get('command')}"
                   if h else "another process")
            raise FolderInUse(f"output folder {self.out_dir} is in use by {who}. Wait for that run to finish, "
                              f"or use another --out") from None
        previous = _holder(self.path)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            self.stale = previous
            log.info("found a stale lock of pid %s (%s), which no longer runs; taking it over",
                     previous.get("pid"), previous.get("started"))
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = (fd, 1)
        return self

    def __exit__(self, *exc) -> None:
        key = str(self.path.resolve())
        fd, depth = _HELD[key]
        if depth > 1:
            _HELD[key] = (fd, depth - 1)
            return
        del _HELD[key]
        os.ftruncate(fd, 0)  # a clean exit leaves no holder behind
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
