"""Webdataset shard writing: atomic shards, stage-1 and stage-2 samples.

Layout (DESIGN.md section 3): ``<out>/<split>/<split>-%06d.tar``. Each shard is
written as ``*.tar.partial`` and renamed when closed, and a whole split is
built in ``<out>/.<split>.tmp-<run id>/`` and swapped in at the end, so a killed
run never leaves a half-written shard or a mix of old and new shards behind.
The files of one sample are adjacent in the tar; keys contain no dots.

Sample layout rules that loaders depend on live here, so the sinks and the
readers share one definition:

- stage 1: ``<key>.jpg``, ``<key>.txt``, ``<key>.json`` (img2dataset's layout).
- stage 2: the images of a sample are ALWAYS numbered, ``<key>.0.jpg``,
  ``<key>.1.jpg`` ..., a single image too (``stage2_images``). So the first image
  of every sample sits in the same column (``0.jpg``) for loaders that build a
  table from the member names (Hugging Face's webdataset builder).
- ``<key>.json`` is the row minus image bytes and ``_``-prefixed working columns;
  a list-typed field is a list, empty when there is nothing, never null
  (``shard_json``): a loader that infers column types from the first samples
  breaks on null in one sample and a list in another. ``meta`` stays the JSON text
  the row carries, since its fields differ from source to source.
- every split folder holds ``sizes.json`` (shard file name -> samples), the
  file open_clip's ``get_dataset_size`` reads from the shard folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from datagen.core.parts import tmp_name


FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z


@dataclass
class ShardInfo:
    split: str
    path: str  # relative to the output folder
    count: int
    bytes: int
    sha256: str


IMAGE_EXTS = ("jpg", "png", "webp")  # what image_ext can return


def image_ext(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise ValueError("image bytes are not JPEG, PNG or WebP")


def _tarinfo_header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, FIXED_MTIME, 0o444, "bigdata", "bigdata"
    return ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


_TEMPLATE = bytearray(_tarinfo_header("x", 0))
_TEMPLATE[0:100] = bytes(100)  # name
_TEMPLATE[124:136] = bytes(12)  # size
_TEMPLATE[148:156] = b" " * 8  # checksum, counted as spaces
_TEMPLATE_SUM = sum(_TEMPLATE)


def ustar_header(name: str, size: int) -> bytes:
    """The USTAR header ``tarfile.TarInfo.tobuf`` writes for our members (same bytes, tested), built
    from a template: only the name, size and checksum change between members."""
    raw = name.encode("utf-8")
    if len(raw) > 100 or size >= 8**11:
        return _tarinfo_header(name, size)  # long names and huge members: the standard library's way
    h = bytearray(_TEMPLATE)
    h[0:len(raw)] = raw
    h[124:135] = b"%011o" % size
    chk = _TEMPLATE_SUM + sum(raw) + sum(h[124:135])
    h[148:156] = b"%06o\0 " % chk
    return bytes(h)


_REGULAR = (b"0", b"\0", b"7")  # tarfile's regular types (7: contiguous file)


def tar_members(path: Path) -> list[tuple[str, int, int]]:
    """(name, offset of its data, size) of each regular file in a tar, in order: the reading side of
    ``TarShard``. Plain USTAR headers (ours, webdataset's, most tools') are read here, one 512-byte block
    per member and the data skipped: ``tarfile``'s header parsing was 25 us a member, most of a report's
    reading (3,000 samples: 0.22 s, now 0.07 s; the report's cap of 50,000: 3.2 s, now 1.0 s). Anything else (pax or GNU long
    names, links, base-256 sizes, a checksum that does not add up, data past the end of the file) goes
    to ``tarfile`` for the whole file, which reads it, or raises its own error."""
    end = os.path.getsize(path)
    found: list[tuple[str, int, int]] = []
    with open(path, "rb") as f:
        pos = 0
        while pos + 512 <= end:
            f.seek(pos)
            h = f.read(512)
            if not any(h):  # a zero block ends the archive
                break
            kind = h[156:157]
            if (kind not in _REGULAR and kind != b"5") or h[124] & 0x80:
                return _tarfile_members(path)
            try:
                size = int(h[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
                chk = int(h[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
            except ValueError:
                return _tarfile_members(path)
            if chk != sum(h[:148]) + 256 + sum(h[156:]) or pos + 512 + size > end:
                return _tarfile_members(path)
            name = h[:100].split(b"\0", 1)[0]
            if h[257:263] == b"ustar\0" and h[345]:
                name = h[345:500].split(b"\0", 1)[0] + b"/" + name
            text = name.decode("utf-8", "surrogateescape")
            if kind != b"5" and not (kind == b"\0" and text.endswith("/")):  # tarfile: AREGTYPE + "/" is a folder
                found.append((text, pos + 512, size))
            pos += 512 + size + (-size % 512)
    return found


def _tarfile_members(path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]


class TarShard:
    """One webdataset tar: a sample's files adjacent, in sorted order, as ``<key>.<ext>`` (USTAR, the
    layout and header fields of webdataset's ``TarWriter``). Headers come from the standard
    library's ``tarfile.TarInfo``; the writes are ours, because ``TarFile.addfile`` per member was
    most of the sink's time. A fixed mtime makes shards byte-reproducible."""

    def __init__(self, path: Path):
        self._f = open(path, "wb", buffering=1 << 20)  # 1 MB: 27 instead of 36 us a 13 KB sample
        self.sha256 = hashlib.sha256()  # hashed as written: no second read of the shard

    def _out(self, data: bytes) -> None:
        self._f.write(data)
        self.sha256.update(data)

    def write(self, key: str, files: dict[str, bytes]) -> None:
        out = []
        for ext in sorted(files):
            data = files[ext]
            out += [ustar_header(f"{key}.{ext}", len(data)), data, b"\0" * (-len(data) % 512)]
        self._out(b"".join(out))

    def close(self) -> str:
        """Ends the archive; returns its sha256."""
        end = self._f.tell() + 2 * 512  # two zero blocks end the archive; pad to tar's record size
        self._out(b"\0" * (2 * 512 + (-end % tarfile.RECORDSIZE)))
        self._f.close()
        return self.sha256.hexdigest()


class SplitWriter:
    """Writes samples of one split into size- and count-capped shards."""

    def __init__(self, out_dir: Path, split: str, max_count: int, max_bytes: int):
        self.out_dir = out_dir
        self.split = split
        self.final_dir = out_dir / split
        self.work_dir = tmp_name(out_dir / f".{split}")  # unique per run
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True)
        self.max_count, self.max_bytes = max_count, max_bytes
        self.shards: list[ShardInfo] = []
        self._writer: TarShard | None = None
        self._count = 0
        self._bytes = 0

    def _name(self, i: int) -> str:
        return f"{self.split}-{i:06d}.tar"

    def _open(self) -> None:
        name = self._name(len(self.shards))
        self._writer = TarShard(self.work_dir / (name + ".partial"))
        self._count = self._bytes = 0

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        sha = self._writer.close()
        name = self._name(len(self.shards))
        tmp, final = self.work_dir / (name + ".partial"), self.work_dir / name
        os.replace(tmp, final)
        self.shards.append(ShardInfo(self.split, f"{self.split}/{name}", self._count, final.stat().st_size, sha))
        self._writer = None

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """One sample: ``files`` maps an extension (``jpg``, ``0.jpg``, ``json``...) to bytes."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} contains '.' or '/', which webdataset cannot split")
        size = sum(len(v) for v in files.values())
        if self._writer is not None and (self._count >= self.max_count or self._bytes + size > self.max_bytes):
            self._close_shard()
        if self._writer is None:
            self._open()
        self._writer.write(key, files)
        self._count += 1
        self._bytes += size

    def close(self) -> list[tuple[Path, ShardInfo]]:
        """End the last shard and return every shard's file and info, without publishing the split: the
        shards of a bucket written in a pool process, which the split's own writer then ``adopt``s."""
        self._close_shard()
        return [(self.work_dir / Path(s.path).name, s) for s in self.shards]

    def adopt(self, path: Path, info: ShardInfo) -> None:
        """Take a finished shard written by another writer (``close``) as this split's next shard: the file
        is moved here, under this split's next name."""
        self._close_shard()
        name = self._name(len(self.shards))
        os.replace(path, self.work_dir / name)
        self.shards.append(ShardInfo(self.split, f"{self.split}/{name}", info.count, info.bytes, info.sha256))

    def commit(self) -> list[ShardInfo]:
        self._close_shard()
        write_split_sizes(self.work_dir, self.shards)
        shutil.rmtree(self.final_dir, ignore_errors=True)
        os.replace(self.work_dir, self.final_dir)
        return self.shards

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(self.work_dir, ignore_errors=True)


SIZES = "sizes.json"


def write_split_sizes(folder: Path, shards: list[ShardInfo]) -> None:
    """``<split>/sizes.json``: shard FILE NAME -> sample count, beside the shards.

    open_clip_train/data.py, ``get_dataset_size``::

        dir_path = os.path.dirname(shards_list[0])
        sizes_filename = os.path.join(dir_path, 'sizes.json')
        ...
        total_size = sum([int(sizes[os.path.basename(shard)]) for shard in shards_list])
    """
    sizes = {Path(s.path).name: s.count for s in shards}
    (folder / SIZES).write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")


def stage2_images(images: list[bytes]) -> dict[str, bytes]:
    """The members for a stage-2 sample's images, in order: ``0.jpg``, ``1.jpg``... (one image: ``0.jpg``)."""
    return {f"{n}.{image_ext(data)}": data for n, data in enumerate(images)}


def sample_images(sample: dict) -> list[bytes]:
    """A read-back stage-2 sample's image bytes in index order (members ``0.<ext>``, ``1.<ext>``...).

    Shards written before the numbering rule kept a single image as ``jpg``; it is read too."""
    numbered = {}
    for name, data in sample.items():
        stem, _, ext = name.partition(".")
        if stem.isdigit() and ext in IMAGE_EXTS:
            numbered[int(stem)] = data
    if not numbered:
        return [sample[ext] for ext in IMAGE_EXTS if ext in sample][:1]
    if sorted(numbered) != list(range(len(numbered))):
        raise ValueError(f"{sample.get('__url__')}: sample {sample.get('__key__')} has image members"
                         f" {sorted(numbered)}, expected 0..{len(numbered) - 1}")
    return [numbered[i] for i in range(len(numbered))]


def json_fields(schema: pa.Schema) -> pa.Schema:
    """The fields of a row that go into its ``<key>.json``: all but the image bytes and ``_`` columns."""
    return pa.schema([f for f in schema if f.name != "image" and not f.name.startswith("_")])


def _no_null_lists(value: Any, typ: pa.DataType) -> Any:
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return [_no_null_lists(v, typ.value_type) for v in value] if value is not None else []
    if pa.types.is_struct(typ) and isinstance(value, dict):
        return {f.name: _no_null_lists(value.get(f.name), f.type) for f in typ}
    return value


def shard_json(row: dict, schema: pa.Schema) -> dict:
    """The ``<key>.json`` body of a sample: the row's ``json_fields``, every list-typed field (at any
    depth, ``objects[].attributes`` too) a list, empty instead of null. ``schema`` is the row's Arrow schema."""
    return shard_json_for(schema)(row)


def shard_json_for(schema: pa.Schema) -> Callable[[dict], dict]:
    """``shard_json`` for the rows of one schema, its fields worked out once: the sinks call it per
    sample, and building the field list for each one was a tenth of the stage-1 sink's time."""
    fields = [(f.name, f.type if pa.types.is_nested(f.type) else None) for f in json_fields(schema)]
    return lambda row: {name: row.get(name) if typ is None else _no_null_lists(row.get(name), typ)
                        for name, typ in fields}


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str).encode()


def shard_dicts(shards: list[ShardInfo]) -> list[dict]:
    return [asdict(s) for s in shards]
