"""Step checkpoints: each step's output persisted as parquet under the run directory.

A checkpoint folder holds ``data.parquet`` (kept rows), ``rejects.parquet`` and
``done.json`` (fingerprint, counts, stats). The fingerprint chains the step's
config hash with its input's fingerprint, so editing a later step reuses every
earlier result, and a killed run resumes at the first step that did not
finish. A checkpoint is written under a temporary name and renamed when
complete: a folder without ``done.json`` never exists under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from datagen.records import REJECT_SCHEMA


def chain(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(paths: list[Path]) -> str:
    """Cheap identity of input files: path, size, mtime."""
    return chain([(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in paths])


@dataclass
class Checkpoint:
    dir: Path
    fingerprint: str
    counts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False
    warnings: list[str] = field(default_factory=list)  # said while the step ran; repeated on reuse

    @property
    def data(self) -> Path:
        return self.dir / "data.parquet"

    @property
    def rejects(self) -> Path:
        return self.dir / "rejects.parquet"

    def num_rows(self) -> int:
        return pq.ParquetFile(self.data).metadata.num_rows if self.data.exists() else 0


def load(dir: Path, fingerprint: str) -> Checkpoint | None:
    """The finished checkpoint in ``dir`` if its fingerprint matches, else None."""
    done = dir / "done.json"
    if not done.is_file():
        return None
    info = json.loads(done.read_text())
    if info.get("fingerprint") != fingerprint:
        return None
    return Checkpoint(dir, fingerprint, info.get("counts", {}), info.get("stats", {}), info.get("seconds", 0.0), True,
                      info.get("warnings", []))


class CheckpointWriter:
    """Streams kept rows and rejects into a temporary folder; ``commit`` renames it into place."""

    def __init__(self, dir: Path, fingerprint: str):
        self.final = dir
        self.tmp = dir.with_name(dir.name + ".partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.fingerprint = fingerprint
        self._data: pq.ParquetWriter | None = None
        self._rejects: pq.ParquetWriter | None = None
        self.kept = 0
        self.rejected = 0

    def write(self, kept: pa.Table | None, rejects: pa.Table | None = None) -> None:
        if kept is not None and (kept.num_rows or self._data is None):
            if self._data is None:
                self._data = pq.ParquetWriter(self.tmp / "data.parquet", kept.schema)
            elif kept.schema != self._data.schema:
                kept = kept.select(self._data.schema.names).cast(self._data.schema)
            self._data.write_table(kept)
            self.kept += kept.num_rows
        if rejects is not None and rejects.num_rows:
            if self._rejects is None:
                self._rejects = pq.ParquetWriter(self.tmp / "rejects.parquet", REJECT_SCHEMA)
            self._rejects.write_table(rejects.cast(REJECT_SCHEMA))
            self.rejected += rejects.num_rows

    def commit(self, counts: dict[str, int], stats: dict[str, Any], seconds: float, empty_schema: pa.Schema,
               warnings: list[str]) -> Checkpoint:
        if self._data is None:
            self._data = pq.ParquetWriter(self.tmp / "data.parquet", empty_schema)
        self._data.close()
        if self._rejects is None:
            self._rejects = pq.ParquetWriter(self.tmp / "rejects.parquet", REJECT_SCHEMA)
        self._rejects.close()
        (self.tmp / "done.json").write_text(
            json.dumps({"fingerprint": self.fingerprint, "counts": counts, "stats": stats, "seconds": seconds,
                        "warnings": warnings}, indent=1, default=str)
        )
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        return Checkpoint(self.final, self.fingerprint, counts, stats, seconds, False, warnings)

    def abort(self) -> None:
        for w in (self._data, self._rejects):
            if w is not None:
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - best effort while failing
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def iter_batches(paths: list[Path], batch_size: int) -> Iterator[pa.Table]:
    for p in paths:
        if not p.exists():
            continue
        pf = pq.ParquetFile(p)
        for b in pf.iter_batches(batch_size=batch_size):
            yield pa.Table.from_batches([b])


def count_rows(paths: list[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths if p.exists())
