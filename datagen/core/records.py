"""The row contracts: Arrow schemas for pair rows, conversation rows and rejects.

Everything that flows between steps is a ``pyarrow.Table`` whose columns are a
superset of one of these schemas. Steps may add stat columns (``clip_score``,
``phash``...) but never rename or drop the core ones. ``schemas/*.json`` hold the
same contracts as JSON Schema for the outputs that leave the tool (shard JSON,
exports, manifest); ``tests/test_records.py`` keeps the two in step.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Sequence

import pyarrow as pa

# --------------------------------------------------------------------------- pair rows

OBJECT_TYPE = pa.struct(
    [
        ("label", pa.string()),
        ("bbox", pa.list_(pa.float64())),  # [x, y, w, h] in pixels of the stored image
        ("score", pa.float64()),  # null for human annotations
        ("attributes", pa.list_(pa.string())),  # Visual Genome style, may be empty
        ("iscrowd", pa.bool_()),  # COCO crowd regions: never counted
        ("synsets", pa.list_(pa.string())),  # WordNet synsets (Visual Genome); null or empty: a closed vocabulary (COCO)
    ]
)

PAIR_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("image", pa.binary()),
        ("image_sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("objects", pa.list_(OBJECT_TYPE)),
        ("captions", pa.list_(pa.string())),
        ("meta", pa.string()),  # source columns kept as JSON text
    ]
)

# ------------------------------------------------------------------- conversation rows

TURN_TYPE = pa.struct(
    [
        ("role", pa.string()),  # "user" | "assistant"
        ("content", pa.string()),
        ("task", pa.string()),  # template family or generator task, e.g. "existence"
        ("polarity", pa.string()),  # "positive" | "negative" | "neutral"
        ("generator", pa.string()),  # "template" | "llm:<model>" | "translate:<backend>" | "source"
    ]
)

CONVERSATION_TYPE = pa.struct(
    [
        ("id", pa.string()),
        ("lang", pa.string()),  # "en" | "zh"
        ("parent_id", pa.string()),  # set on translations: the id of the original
        ("turns", pa.list_(TURN_TYPE)),
    ]
)

CONVERSATION_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("images", pa.list_(pa.string())),  # image keys; empty for text-only rows
        ("conversations", pa.list_(CONVERSATION_TYPE)),
        ("meta", pa.string()),
    ]
)

# ----------------------------------------------------------------------------- rejects

REJECT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("step", pa.string()),
        ("reason", pa.string()),  # short stable code: http_404, clip_below_threshold, duplicate_of:<key>
        ("detail", pa.string()),  # free text for humans, never parsed
        ("url", pa.string()),  # so failed downloads can be retried
    ]
)

POLARITIES = ("positive", "negative", "neutral")
ROLES = ("user", "assistant")

_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")


def safe_key_part(text: str) -> str:
    """Make ``text`` usable inside a webdataset key: letters, digits, ``_`` and ``-`` only.

    webdataset splits a file name at its FIRST dot, so dots and slashes must never
    appear in keys."""
    return _KEY_BAD.sub("-", str(text))


def make_key(source: str, local_id: str | int) -> str:
    """A stable, unique key: ``<source>_<local id>`` with unsafe characters replaced."""
    return f"{safe_key_part(source)}_{safe_key_part(local_id)}"


def hashed_key(source: str, *parts: Any) -> str:
    """A stable key for rows without a natural id: the source plus a short content hash."""
    h = hashlib.sha1("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]
    return make_key(source, h)


def to_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def pairs_table(rows: Sequence[dict]) -> pa.Table:
    """Build a pair table from dicts; missing core columns become nulls."""
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in PAIR_SCHEMA} for r in rows], schema=PAIR_SCHEMA)


def conversations_table(rows: Sequence[dict]) -> pa.Table:
    return pa.Table.from_pylist(
        [{f.name: r.get(f.name) for f in CONVERSATION_SCHEMA} for r in rows], schema=CONVERSATION_SCHEMA
    )


def rejects_table(rows: Iterable[dict]) -> pa.Table:
    """Build a reject table from dicts with at least ``key``, ``step`` and ``reason``."""
    rows = list(rows)
    for r in rows:
        if not r.get("reason") or not r.get("step"):
            raise ValueError(f"reject without reason or step: {r!r}")
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in REJECT_SCHEMA} for r in rows], schema=REJECT_SCHEMA)


def reject(row: dict, step: str, reason: str, detail: str | None = None) -> dict:
    """One reject record for a pair or conversation row (a dict as from ``to_pylist``)."""
    return {
        "key": row.get("key"),
        "source": row.get("source"),
        "step": step,
        "reason": reason,
        "detail": detail,
        "url": row.get("url"),
    }


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast the core columns of ``table`` to ``schema``, keeping any extra stat columns.

    Raises a ValueError naming the first missing core column."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"table lacks core columns {missing}; has {table.column_names}")
    cols, fields = [], []
    for f in schema:
        cols.append(table.column(f.name).cast(f.type))
        fields.append(f)
    for name in table.column_names:
        if name not in schema.names:
            cols.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))
