"""Where input tables may live: a local path, or a URI that a pyarrow filesystem reads.

``s3://bucket/laion/*.parquet`` (and ``gs://``, ``hdfs://``, ``abfs://``: whatever
``pyarrow.fs.FileSystem.from_uri`` knows) works wherever a parquet or TSV
source takes a path. The driver reads a source once and cuts it into input
shards in the run folder, so workers never touch the bucket.

S3 settings come from the environment, as for every AWS client:
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (MinIO, Ceph, a test server),
``AWS_REGION``/``AWS_DEFAULT_REGION``, and credentials from the AWS SDK's own
chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance
role). datagen never reads, stores or logs the credentials. A URI with its own
query (``s3://b/x.parquet?endpoint_override=host:9000&scheme=http``) goes to
pyarrow as it is.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
import re
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

URI_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


@lru_cache(maxsize=4096)
def real_folder(folder: str) -> str:
    """``os.path.realpath`` of a folder, resolved once per process (see ``realpath``)."""
    return os.path.realpath(folder)


def realpath(path: str | Path) -> str:
    """``os.path.realpath`` for the many files of a few folders (a source's images, one per row): the
    folder's real path is resolved once, and only the file itself is checked for being a link, so a
    row costs one ``lstat`` instead of one per path component (a 1M-row local source spent a minute
    here). The result is the same as ``os.path.realpath`` while the folders are not re-linked."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    if name in ("", ".", "..") or os.path.islink(path):
        return os.path.realpath(path)
    return os.path.join(real_folder(folder), name)


def is_uri(p: str | Path) -> bool:
    """A remote location (``s3://...``); ``file://`` and plain paths are local."""
    m = URI_RE.match(str(p)) if isinstance(p, str) else None
    return bool(m) and m.group(1).lower() != "file"


@lru_cache(maxsize=None)
def _s3(endpoint: str | None, region: str | None):
    from pyarrow import fs as pafs

    kwargs = {}
    if endpoint:
        u = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=u.netloc, scheme=u.scheme)
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a URI."""
    from pyarrow import fs as pafs

    scheme, rest = uri.split("://", 1)
    if scheme.lower() in ("s3", "s3a") and "?" not in uri:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ("us-east-1" if endpoint else None)
        return _s3(endpoint, region), rest
    return pafs.FileSystem.from_uri(uri)


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0]


def expand(pattern: str | Path) -> list[str | Path]:
    """The files a local path or glob, or a URI or URI glob, names (sorted); missing ones are kept,
    for the caller to report."""
    if not is_uri(pattern):
        s = str(pattern)
        return sorted(Path(p) for p in glob.glob(s)) if glob.has_magic(s) else [Path(s)]
    if not glob.has_magic(pattern):
        return [pattern]
    from pyarrow import fs as pafs

    fs, path = filesystem(pattern)
    parts = path.split("/")
    base = "/".join(parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))])
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(f"{_scheme(pattern)}://{i.path}" for i in infos
                  if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path))


def is_file(p: str | Path) -> bool:
    if not is_uri(p):
        return Path(p).is_file()
    from pyarrow import fs as pafs

    fs, path = filesystem(str(p))
    return fs.get_file_info(path).type == pafs.FileType.File


def open_input(p: str | Path) -> str | Path | BinaryIO:
    """What pyarrow readers take: the local path itself, or a random-access file on the remote store."""
    if not is_uri(p):
        return p
    fs, path = filesystem(str(p))
    return fs.open_input_file(path)


def identity(p: str | Path) -> tuple[str, int, int]:
    """(location, size, mtime seconds): cheap identity of an input file, local or remote."""
    if not is_uri(p):
        st = Path(p).stat()
        return str(p), st.st_size, int(st.st_mtime)
    fs, path = filesystem(str(p))
    info = fs.get_file_info(path)
    return str(p), info.size, int(info.mtime.timestamp()) if info.mtime else 0


def parent(p: str | Path) -> str | Path:
    return posixpath.dirname(p) if is_uri(p) else Path(p).parent


def name(p: str | Path) -> str:
    return posixpath.basename(p) if is_uri(p) else Path(p).name


class UploadError(OSError):
    """Copying a finished output folder to its ``output.upload_to`` URI failed."""


def upload(out_dir: Path, uri: str) -> list[str]:
    """Copy a finished output folder (shards, exports, sizes.json, rejects, dataset card; not ``_run/``
    nor the lock) to ``uri``, ``manifest.json`` last, so a manifest in the bucket means a complete copy.
    Returns the URIs written."""
    if not is_uri(uri):
        raise UploadError(f"output.upload_to: {uri!r} is not a URI such as s3://bucket/prefix")
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.relative_to(out_dir).parts[0] != "_run"
                   and not p.name.startswith(".datagen.lock") and ".tmp-" not in p.name)
    files.sort(key=lambda p: p.relative_to(out_dir).as_posix() == "manifest.json")
    fs, base = filesystem(uri.rstrip("/"))
    written = []
    for p in files:
        rel = p.relative_to(out_dir).as_posix()
        try:
            with open(p, "rb") as src, fs.open_output_stream(f"{base}/{rel}") as dst:
                while chunk := src.read(8 << 20):
                    dst.write(chunk)
        except OSError as e:
            raise UploadError(f"output.upload_to: copying {rel} to {uri.rstrip('/')}/{rel} failed ({e}); the "
                              f"output in {out_dir} is complete: rerun the same command to upload again") from None
        written.append(f"{uri.rstrip('/')}/{rel}")
    return written
