"""Decoding a batch's images for a model-backed filter: each row decodes or becomes a reject."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from datagen.core.records import reject


@dataclass
class Decoded:
    meta: list[dict]  # key, source, url of every row (for rejects)
    rows: list[int] = field(default_factory=list)  # rows whose image decoded, in order
    images: list[Any] = field(default_factory=list)  # what ``decode`` made of them
    rejects: list[dict] = field(default_factory=list)  # no_image / image_decode_error


def decode_images(table: pa.Table, step: str, decode: Callable[[bytes], Any]) -> Decoded:
    out = Decoded(table.select([c for c in ("key", "source", "url") if c in table.column_names]).to_pylist())
    images = table.column("image")
    for i, n in enumerate(pc.binary_length(images).to_pylist()):
        if not n:
            out.rejects.append(reject(out.meta[i], step, "no_image", "image bytes missing (not fetched?)"))
            continue
        try:
            out.images.append(decode(images[i].as_py()))
            out.rows.append(i)
        except Exception as e:  # PIL raises many types for bad bytes; each is one row's problem
            out.rejects.append(reject(out.meta[i], step, "image_decode_error", f"{type(e).__name__}: {e}"[:200]))
    return out
