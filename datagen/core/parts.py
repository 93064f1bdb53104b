"""Shard parts: what one shard task leaves on disk, written once and atomically.

A part is a folder ``<pass dir>/<shard id>/`` holding ``kept.parquet`` (the
rows that survived, image bytes included where the pass fetched them),
``rejects.parquet`` (every row that did not, with its reason and step) and
``stats.json`` (per-step counts, step stats and warnings). It is built under a
temporary name unique to the running process and renamed into place when
complete, so a part exists only when finished and a killed run leaves only
temporaries, which the next run (holding the folder's lock) deletes.

A pass folder is named by the fingerprint chain of everything that decides its
output (source files and settings, the steps' configs and code versions, the
barrier decisions it applies), so editing a later step never invalidates an
earlier pass, and a rerun skips every finished part.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from datagen.core.records import REJECT_SCHEMA

RUN_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # temporary names are unique per process
TMP_MARK = ".tmp-"


def chain(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(paths: list[Path | str]) -> str:
    """Cheap identity of input files (local, or URIs on a pyarrow filesystem): path, size, mtime."""
    from datagen.core.storage import identity

    return chain([identity(p) for p in paths])


def tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARK}{RUN_ID}")


def remove_temporaries(root: Path) -> int:
    """Delete what killed runs left half-written under ``root`` (call only while holding the run lock)."""
    n = 0
    if root.exists():
        for p in sorted(root.rglob(f"*{TMP_MARK}*"), reverse=True):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = tmp_name(path)
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=str))
    os.replace(tmp, path)


@dataclass
class Part:
    dir: Path
    info: dict = field(default_factory=dict)

    @property
    def kept(self) -> Path:
        return self.dir / "kept.parquet"

    @property
    def rejects(self) -> Path:
        return self.dir / "rejects.parquet"

    @property
    def done(self) -> bool:
        return (self.dir / "stats.json").is_file()

    def load_info(self) -> dict:
        if not self.info:
            self.info = json.loads((self.dir / "stats.json").read_text())
        return self.info

    def rows(self) -> int:
        return pq.ParquetFile(self.kept).metadata.num_rows


class PartWriter:
    """Streams a shard task's kept rows and rejects into a temporary folder; ``commit`` renames it."""

    def __init__(self, final: Path, empty_schema: pa.Schema):
        self.final = final
        self.tmp = tmp_name(final)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.empty_schema = empty_schema
        self._kept: pq.ParquetWriter | None = None
        self._rejects: pq.ParquetWriter | None = None
        self.n_kept = self.n_rejected = 0

    def write(self, kept: pa.Table | None, rejects: pa.Table | None = None) -> None:
        if kept is not None and kept.num_rows:
            if self._kept is None:
                self._kept = pq.ParquetWriter(self.tmp / "kept.parquet", kept.schema)
            elif kept.schema != self._kept.schema:
                kept = kept.select(self._kept.schema.names).cast(self._kept.schema)
            self._kept.write_table(kept)
            self.n_kept += kept.num_rows
        if rejects is not None and rejects.num_rows:
            if self._rejects is None:
                self._rejects = pq.ParquetWriter(self.tmp / "rejects.parquet", REJECT_SCHEMA)
            self._rejects.write_table(rejects.select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA))
            self.n_rejected += rejects.num_rows

    def commit(self, info: dict) -> Part:
        if self._kept is None:
            self._kept = pq.ParquetWriter(self.tmp / "kept.parquet", self.empty_schema)
        if self._rejects is None:
            self._rejects = pq.ParquetWriter(self.tmp / "rejects.parquet", REJECT_SCHEMA)
        self._kept.close()
        self._rejects.close()
        info = {**info, "kept": self.n_kept, "rejected": self.n_rejected}
        (self.tmp / "stats.json").write_text(json.dumps(info, indent=1, ensure_ascii=False, default=str))
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        return Part(self.final, info)

    def abort(self) -> None:
        for w in (self._kept, self._rejects):
            if w is not None:
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - best effort while failing
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def iter_batches(path: Path, batch_size: int, columns: list[str] | None = None,
                 use_threads: bool = True) -> Iterator[pa.Table]:
    """``use_threads=False``: decode columns in this thread (Arrow's pool threads each keep memory)."""
    pf = pq.ParquetFile(path)
    if columns is not None:
        have = set(pf.schema_arrow.names)
        columns = [c for c in columns if c in have]
    for b in pf.iter_batches(batch_size=batch_size, columns=columns, use_threads=use_threads):
        yield pa.Table.from_batches([b])


def columns_except(path: Path, *drop: str) -> list[str]:
    return [c for c in pq.ParquetFile(path).schema_arrow.names if c not in drop]
