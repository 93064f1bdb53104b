"""Configs of the sources a recipe can read.

One model per reader; ``kind`` picks it. Column presets for the public sets
(LAION, COYO, CC3M, CC12M) live here so a recipe only names the kind.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9_\-]+$"


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=NAME_PATTERN, description="Short unique name; prefixes every key of this source.")
    limit: int | None = Field(None, ge=1, description="Read at most this many rows (for trials).")
    batch_size: int = Field(512, ge=1, description="Rows per Arrow batch read from disk.")


class CocoSource(_Source):
    """COCO captions JSON + optional instances JSON + image folder (2014 or 2017 layout)."""

    kind: Literal["coco"]
    captions: str = Field(..., description="captions_<split><year>.json")
    instances: str | None = Field(None, description="instances_<split><year>.json; boxes and categories")
    images: str = Field(..., description="Folder with the images named in the captions file (file_name).")
    zh_captions: str | None = Field(
        None, description="COCO-CN style Chinese captions ('<image>#<n><TAB><caption>' per line), joined by image id "
        "onto `captions` after the English ones.")


# Column presets: our field -> the source's column name.
PARQUET_PRESETS: dict[str, dict[str, str]] = {
    "laion": {"url": "URL", "caption": "TEXT", "width": "WIDTH", "height": "HEIGHT"},
    "coyo": {"url": "url", "caption": "text", "width": "width", "height": "height", "id": "id"},
    "parquet": {"url": "url", "caption": "caption"},
    # Noah-Wukong (100M Chinese pairs): parquet/csv shards with columns url, caption.
    "wukong": {"url": "url", "caption": "caption"},
}
# The caption language a preset implies; `lang` on the source overrides it.
PRESET_LANG: dict[str, str] = {"wukong": "zh"}
TSV_PRESETS: dict[str, list[str]] = {
    "cc3m": ["caption", "url"],  # header-less caption<TAB>url
    "cc12m": ["url", "caption"],  # header-less url<TAB>caption
    "tsv": ["caption", "url"],
}


class ParquetSource(_Source):
    """URL-caption tables in parquet: LAION-400M/2B, COYO-700M, or any with ``columns``."""

    kind: Literal["laion", "coyo", "parquet", "wukong"]
    path: str = Field(..., description="A parquet file, or a glob of them (shards); also a URI such as "
                      "s3://bucket/laion/*.parquet (pyarrow filesystems; S3 settings from AWS_* env vars).")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Override the preset: our field (url, caption, width, height, id) -> column name.",
    )
    meta_columns: list[str] | None = Field(
        None, description="Columns kept as JSON in `meta`; null keeps every column not mapped above."
    )
    lang: str | None = Field(
        None, description="Language of every caption (e.g. zh for Wukong), kept in `meta.lang`; null: the preset's (wukong: zh) or unknown."
    )


class TsvSource(_Source):
    """Header-less TSV of URL-caption pairs: CC3M (caption, url) or CC12M (url, caption)."""

    kind: Literal["cc3m", "cc12m", "tsv"]
    path: str = Field(..., description="A .tsv file, or a glob of them; also a URI such as s3://bucket/cc3m/*.tsv.")
    columns: list[str] | None = Field(None, description="Column order for kind tsv, e.g. [caption, url].")
    lang: str | None = Field(None, description="Language of every caption, kept in `meta.lang`; null: unknown.")


class VisualGenomeSource(_Source):
    """Visual Genome v1.2/1.4: image_data.json + objects/attributes/relationships/region_descriptions JSON.

    Each file is a JSON list with one entry per image (keyed by ``image_id``); all are streamed.
    Only ``image_data`` is required; the others add objects, attributes, relations and regions."""

    kind: Literal["visual_genome"]
    image_data: str = Field(..., description="image_data.json (image_id, url, width, height, coco_id, flickr_id).")
    objects: str | None = Field(None, description="objects.json: per image, objects with names, synsets and boxes.")
    attributes: str | None = Field(None, description="attributes.json: per image, objects with their attribute words.")
    relationships: str | None = Field(None, description="relationships.json: per image, subject-predicate-object triples.")
    region_descriptions: str | None = Field(None, description="region_descriptions.json: per image, phrases with boxes.")
    images: str = Field(..., description="Image folder: <images>/<image_id>.jpg or <images>/VG_100K[_2]/<image_id>.jpg.")


class InstructionSource(_Source):
    """Text-only instruction sets (Alpaca JSON/JSONL, ShareGPT/Vicuna) for stage 2."""

    kind: Literal["instructions"]
    path: str = Field(..., description=".json (a list) or .jsonl file.")
    format: Literal["alpaca", "sharegpt"] = "alpaca"
    lang: str | None = Field(None, description="Language code for every row; null: detect per row.")


SourceConfig = Union[CocoSource, ParquetSource, TsvSource, InstructionSource, VisualGenomeSource]
SOURCE_KINDS = frozenset(k for m in (CocoSource, ParquetSource, TsvSource, InstructionSource, VisualGenomeSource)
                         for k in m.model_fields["kind"].annotation.__args__)
