"""URL-caption tables: LAION/COYO parquet and CC3M/CC12M header-less TSV.

Both stream with pyarrow (``ParquetFile.iter_batches``, ``csv.open_csv``), so a
multi-GB shard never sits in memory at once (img2dataset users' complaint).
Relative paths in the url column resolve against the table's own folder, so a
table and its images can move together, and are stored relative to the recipe's
folder (``portable_path``), so outputs do not depend on where the checkout lives.
Source columns we do not map are kept as JSON in ``meta`` (LAION ``similarity``/``punsafe``, COYO's scores...).

A file that cannot be read (truncated parquet, a missing mapped column) is an
``InputFileError`` naming the file and, where known, the row. TSV line numbers
are the file's own: blank lines are skipped but still counted.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from datagen.core import storage
from datagen.core.records import PAIR_SCHEMA, make_key, reject, rejects_table
from datagen.sources.config import PARQUET_PRESETS, PRESET_LANG, TSV_PRESETS, ParquetSource, TsvSource
from datagen.sources.errors import InputFileError
from datagen.core.steps import RunContext, StepOutput


def source_files(pattern: str, ctx: RunContext, source: str, remote: bool = False) -> list[Path | str]:
    """The files a path or glob names, sorted; a clear error when there are none. With ``remote``,
    a URI (``s3://bucket/x/*.parquet``) names files on a pyarrow filesystem (``datagen.core.storage``)."""
    if storage.is_uri(pattern):
        if not remote:
            raise InputFileError(pattern, f"source {source!r} reads local files only; remote URIs work for "
                                 "parquet and tsv sources (laion, coyo, wukong, parquet, cc3m, cc12m, tsv)",
                                 "Copy the file to a local or shared path")
        try:
            files = storage.expand(pattern)
            missing = [f for f in files if not storage.is_file(f)]
        except OSError as e:
            raise FileNotFoundError(f"source {source!r}: cannot list {pattern}: {e}") from None
        if not files or missing:
            raise FileNotFoundError(f"source {source!r}: no file at {missing[0] if missing else pattern}")
        return files
    resolved = str(ctx.resolve(pattern))
    files = sorted(Path(p) for p in glob.glob(resolved)) if glob.has_magic(resolved) else [Path(resolved)]
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        raise FileNotFoundError(f"source {source!r}: no file at {missing[0] if missing else resolved}")
    return files


def portable_path(path: Path | str, root: Path | str) -> str:
    """A local file as stored in ``url``: its path relative to ``root``, the recipe's folder, where
    the fetch step resolves relative paths again (``RunContext.resolve``). So shard bytes do not
    depend on where the checkout lives: two checkouts at different paths write the same url. Called
    once per row of a local source: ``root``'s real path and each folder's path relative to it are
    worked out once (``storage.real_folder``, ``_relative_folder``); ``os.path.relpath`` per row was a
    quarter of bench_scale's source read."""
    folder, name = os.path.split(storage.realpath(path))
    rel = _relative_folder(folder, storage.real_folder(os.path.abspath(root)))
    rel = name if rel == "." else os.path.join(rel, name)
    return rel if os.sep == "/" else Path(rel).as_posix()


@functools.lru_cache(maxsize=4096)
def _relative_folder(folder: str, root: str) -> str:
    return os.path.relpath(folder, root)


def resolve_url(url: str | None, base: Path | str, root: Path) -> str | None:
    """Absolute paths and URLs pass; a bare relative path resolves against ``base`` (the table's
    folder) and is stored relative to ``root`` (``portable_path``). A table in a bucket keeps its
    relative paths as they are."""
    if url is None:
        return None
    url = url.strip()
    if not url or "://" in url or url.startswith("/") or storage.is_uri(base):
        return url
    return portable_path(os.path.join(base, url), root)


def _key(name: str, n_files: int, file_idx: int, row: int) -> str:
    return make_key(name, f"{row:09d}" if n_files == 1 else f"{file_idx:05d}-{row:09d}")


def read_parquet(cfg: ParquetSource, ctx: RunContext) -> Iterator[StepOutput]:
    mapping = {**PARQUET_PRESETS[cfg.kind], **cfg.columns}
    files = source_files(cfg.path, ctx, cfg.name, remote=True)
    lang = cfg.lang or PRESET_LANG.get(cfg.kind)
    emitted = 0
    for fi, path in enumerate(files):
        try:
            pf = pq.ParquetFile(storage.open_input(path))
        except (pa.ArrowException, OSError) as e:
            raise InputFileError(path, f"not a readable parquet file ({e})",
                                 "The file is truncated or not parquet: download it again, or drop it from "
                                 f"sources[{cfg.name}].path") from None
        names = pf.schema_arrow.names
        for field in ("url", "caption"):
            if mapping.get(field) not in names:
                raise InputFileError(
                    path, f"source {cfg.name!r} ({cfg.kind}) expects column {mapping.get(field)!r} for {field};"
                    f" the file has {names}", f"Map it with sources[].columns.{field}")
        mapped = {f: c for f, c in mapping.items() if c in names}
        meta_cols = cfg.meta_columns if cfg.meta_columns is not None else [c for c in names if c not in mapped.values()]
        unknown = [c for c in meta_cols if c not in names]
        if unknown:
            raise InputFileError(path, f"meta_columns {unknown} are not in the file's columns {names}",
                                 "Fix sources[].meta_columns")
        row, base = 0, storage.parent(path)
        for batch in _batches(pf, path, cfg.batch_size, sorted(set(mapped.values()) | set(meta_cols))):
            cols = batch.to_pydict()
            n = batch.num_rows
            if cfg.limit is not None:
                n = min(n, cfg.limit - emitted)
            out = []
            for i in range(n):
                get = lambda f: cols[mapped[f]][i] if f in mapped else None  # noqa: E731
                local_id = get("id")
                out.append({
                    "key": make_key(cfg.name, local_id) if local_id is not None else _key(cfg.name, len(files), fi, row + i),
                    "source": cfg.name,
                    "url": resolve_url(get("url"), base, ctx.recipe_dir),
                    "caption": get("caption"),
                    "width": get("width"),
                    "height": get("height"),
                    "meta": json.dumps({**{c: cols[c][i] for c in meta_cols}, **({"lang": lang} if lang else {})},
                                       ensure_ascii=False, default=str),
                })
            row += batch.num_rows
            emitted += n
            yield StepOutput(pa.Table.from_pylist(out, schema=PAIR_SCHEMA))
            if cfg.limit is not None and emitted >= cfg.limit:
                return


def _batches(pf: pq.ParquetFile, path: Path, batch_size: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """``iter_batches`` with a corrupt row group reported by file and row instead of a bare Arrow error."""
    it = pf.iter_batches(batch_size=batch_size, columns=columns)
    row = 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise InputFileError(path, f"parquet data is corrupt ({e})", "Download the file again",
                                 where=f"after row {row}") from None
        row += batch.num_rows
        yield batch


def _open_tsv(path: Path, **options) -> pacsv.CSVStreamingReader:
    try:
        return pacsv.open_csv(storage.open_input(path), **options)
    except (pa.ArrowException, OSError) as e:
        raise InputFileError(path, f"cannot read as tab-separated text ({e})",
                             "Check that it is a UTF-8, header-less TSV", where="1") from None


def _tsv_batches(reader, path: Path, last_line) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise InputFileError(path, f"cannot read as tab-separated text ({e})",
                                 "Check that it is UTF-8 text with one caption/url pair per line",
                                 where=f"after line {last_line()}") from None
        yield batch


def read_tsv(cfg: TsvSource, ctx: RunContext) -> Iterator[StepOutput]:
    columns = cfg.columns or TSV_PRESETS[cfg.kind]
    if sorted(columns) != ["caption", "url"]:
        raise ValueError(f"source {cfg.name!r}: columns must name caption and url once each, got {columns}")
    files = source_files(cfg.path, ctx, cfg.name, remote=True)
    emitted = 0
    for fi, path in enumerate(files):
        bad: list[tuple[int, str]] = []  # malformed lines not yet reported
        skipped: set[int] = set()  # all malformed line numbers seen so far

        def on_invalid(row: pacsv.InvalidRow) -> str:
            bad.append((row.number, row.text))
            skipped.add(row.number)
            return "skip"

        reader = _open_tsv(
            path,
            read_options=pacsv.ReadOptions(column_names=columns, block_size=1 << 20, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                             newlines_in_values=False, ignore_empty_lines=False,
                                             invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                                 strings_can_be_null=False),
        )
        line = 0  # 1-based line numbers; skipped (malformed) lines keep their numbers
        base = storage.parent(path)
        for batch in _tsv_batches(reader, path, lambda: line):
            cols = batch.to_pydict()
            out = []
            for i in range(batch.num_rows):
                line += 1
                while line in skipped:
                    line += 1
                if not cols["url"][i] and not cols["caption"][i]:
                    continue  # a blank line (kept by the parser only so that line numbers stay the file's)
                if cfg.limit is not None and emitted >= cfg.limit:
                    break
                emitted += 1
                out.append({
                    "key": _key(cfg.name, len(files), fi, line),
                    "source": cfg.name,
                    "url": resolve_url(cols["url"][i], base, ctx.recipe_dir),
                    "caption": cols["caption"][i],
                    "meta": json.dumps({"file": storage.name(path), "line": line, **({"lang": cfg.lang} if cfg.lang else {})}),
                })
            rejects = [
                reject({"key": _key(cfg.name, len(files), fi, n), "source": cfg.name}, "source", "malformed_row",
                       f"{path}:{n}: expected {len(columns)} tab-separated fields ({', '.join(columns)}): {text[:200]!r}")
                for n, text in bad
            ]
            bad.clear()
            yield StepOutput(pa.Table.from_pylist(out, schema=PAIR_SCHEMA), rejects_table(rejects))
