"""Thresholds on the source's own columns, applied before any download.

LAION and COYO ship per-row scores (LAION ``punsafe``, ``pwatermark``,
``similarity``; COYO ``nsfw_score_opennsfw2``, ``watermark_score``,
``aesthetic_score_laion_v2``, ``clip_similarity_vitb32``...). The source
readers keep every unmapped column in the ``meta`` JSON text, and this step,
first in the pair chain, drops the rows a rule rejects, so they are never
fetched. Each rule rejects with the reason ``meta_<column>`` (and
``meta_<column>_missing`` for a null/NaN value), so the summary says which
rule cost how many rows.

A rule's column is looked up in ``meta`` first, then among the row's mapped
columns (``width``, ``height``, ``caption``). A column that a row has in neither
place is a recipe mistake (a typo, or a rule meant for another source): the run
stops with the column, the row and the columns the row does have, unless the
rule names the ``sources`` it applies to.
"""

from __future__ import annotations

import json
import math
import operator
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from datagen.core.records import reject, rejects_table
from datagen.core.steps import Step, StepOutput

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
        "!=": operator.ne, "in": lambda a, b: a in b, "not_in": lambda a, b: a not in b}
_ROW_COLUMNS = ("width", "height", "caption", "url")


class MetaRule(BaseModel):
    """Keep a row when ``<column> <op> <value>`` holds for the source's value."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(..., min_length=1, description="A source column kept in meta (e.g. punsafe, "
                        "aesthetic_score_laion_v2), or width/height/caption.")
    op: Literal["<", "<=", ">", ">=", "==", "!=", "in", "not_in"]
    value: float | int | str | bool | list[float | int | str | bool]
    missing: Literal["reject", "keep"] = Field(
        "reject", description="A null or NaN value: reject (reason meta_<column>_missing) or keep.")
    sources: list[str] | None = Field(None, description="Sources this rule applies to; null: every pair source.")

    @model_validator(mode="after")
    def _check(self) -> "MetaRule":
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"filters.meta rule on {self.column!r}: op {self.op!r} needs a list value")
        if self.op not in ("in", "not_in") and isinstance(self.value, list):
            raise ValueError(f"filters.meta rule on {self.column!r}: op {self.op!r} needs a single value")
        return self

    def text(self) -> str:
        return f"{self.column} {self.op} {self.value!r}"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def check_row(rules: list[MetaRule], meta: dict, row: dict) -> tuple[str, str] | None:
    """The first rule the row fails as (reason, detail), or None."""
    for r in rules:
        if r.sources is not None and row.get("source") not in r.sources:
            continue
        if r.column in meta:
            v = meta[r.column]
        elif r.column in _ROW_COLUMNS:
            v = row.get(r.column)
        else:
            raise ValueError(
                f"filters.meta rule {r.text()}: row {row.get('key')!r} of source {row.get('source')!r} has no "
                f"column {r.column!r}; its source columns are {sorted(meta)}. Fix the column name, or set the "
                "rule's sources: to the sources that have it")
        if _missing(v):
            if r.missing == "reject":
                return f"meta_{r.column}_missing", f"{r.column} is {v!r} (rule {r.text()})"
            continue
        try:
            ok = _OPS[r.op](v, r.value)
        except TypeError:
            return f"meta_{r.column}", f"{r.column} = {v!r} cannot be compared (rule {r.text()})"
        if not ok:
            return f"meta_{r.column}", f"{r.column} = {v!r} fails {r.text()}"
    return None


class MetaFilterStep(Step):
    """Per-row rules over ``meta`` (source columns); first in the pair chain, so before fetch."""

    name = "meta_filter"
    kind = "filter"
    config: "MetaFilterConfig"

    def process(self, table: pa.Table) -> StepOutput:
        cols = [c for c in ("key", "source", "url", "caption", "width", "height", "meta") if c in table.column_names]
        light = table.select(cols).to_pylist()
        keep, rejects = [], []
        st = self.ctx.stat(self.name)
        by_reason = st.setdefault("rejected", {})
        for i, row in enumerate(light):
            try:
                meta = json.loads(row.get("meta") or "{}")
            except json.JSONDecodeError as e:
                raise ValueError(f"meta filter: row {row.get('key')!r}: meta is not JSON ({e})") from None
            failed = check_row(self.config.rules, meta if isinstance(meta, dict) else {}, row)
            if failed:
                rejects.append(reject(row, self.name, failed[0], failed[1]))
                by_reason[failed[0]] = by_reason.get(failed[0], 0) + 1
            else:
                keep.append(i)
        st["rules"] = "; ".join(r.text() for r in self.config.rules)  # a string: stats lists concatenate across parts
        return StepOutput(table.take(pa.array(keep, type=pa.int64())), rejects_table(rejects))


class MetaFilterConfig(BaseModel):
    """The step's config: the recipe's ``filters.meta`` list."""

    model_config = ConfigDict(extra="forbid")
    rules: list[MetaRule]
