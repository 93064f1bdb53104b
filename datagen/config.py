"""The recipe: one pydantic model whose JSON Schema is ``schemas/recipe.schema.json``.

Each step owns its config model in its own module; this file only assembles
them. ``datagen schema`` regenerates the JSON Schema and a test keeps the file
in sync with these models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from datagen.check_config import CheckConfig
from datagen.dedup import DedupConfig
from datagen.fetch.config import FetchConfig
from datagen.filters.aesthetic import AestheticConfig
from datagen.filters.caption import CaptionRulesConfig
from datagen.filters.clip_config import ClipConfig
from datagen.filters.meta import MetaRule
from datagen.filters.nsfw import NsfwConfig
from datagen.filters.semdedup import SemDedupConfig
from datagen.filters.watermark import WatermarkConfig
from datagen.filters.quality import QualityConfig
from datagen.llm.config import LLMGenerateConfig
from datagen.ocr import OcrConfig
from datagen.sources.config import NAME_PATTERN, SourceConfig
from datagen.synth.config import SynthConfig
from datagen.translate.config import TranslateConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FiltersConfig(_Strict):
    meta: list[MetaRule] = Field(
        default_factory=list, description="Rules over the source's own columns (LAION punsafe, COYO "
        "aesthetic_score_laion_v2...), applied before any download; each failing rule rejects as meta_<column>.")
    caption: CaptionRulesConfig | None = Field(
        None, description="Language ID (caption_lang column, optional allow-list) and alt-text junk patterns, "
        "before any download; null skips them.")
    quality: QualityConfig = Field(default_factory=QualityConfig)
    nsfw: NsfwConfig | None = Field(
        None, description="NudeNet on the fetched pictures (pip install 'datagen[nsfw]'): nsfw_score column and a "
        "threshold; null skips it.")
    watermark: WatermarkConfig | None = Field(
        None, description="LAION's watermark detector on the fetched pictures (a local watermark_model_v1.pt); "
        "null skips it.")
    clip: ClipConfig | None = Field(None, description="CLIP score filter; null skips it.")
    aesthetic: AestheticConfig | None = Field(
        None, description="LAION aesthetic predictor over the CLIP ViT-L/14 image embeddings (needs filters.clip "
        "with ViT-L-14/openai); null skips it.")
    semantic_dedup: SemDedupConfig | None = Field(
        None, description="SemDeDup over the CLIP image embeddings (needs filters.clip); null skips it.")

    @model_validator(mode="after")
    def _embeddings_need_clip(self) -> "FiltersConfig":
        for name in ("semantic_dedup", "aesthetic"):
            if getattr(self, name) is not None and self.clip is None:
                raise ValueError(f"filters.{name} reads the CLIP image embeddings: set filters.clip too")
        return self


class StageConfig(_Strict):
    sources: list[str] | None = Field(None, description="Sources that feed this stage; null: all that apply.")
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Mixing weight per source (default 1, at least 0). Below 1 subsamples, above 1 repeats rows.",
    )


class OutputConfig(_Strict):
    shard_max_count: int = Field(1000, ge=1, description="Samples per shard at most.")
    shard_max_bytes: int = Field(1_000_000_000, ge=1024, description="Bytes per shard at most.")
    shuffle: bool = Field(True, description="Deterministic global shuffle (by seed) before sharding.")
    exports: list[Literal["llava", "mplug_owl", "sharegpt", "hf"]] = Field(
        default_factory=list, description="Extra formats written under <out>/export/ after the shards."
    )
    keep_intermediate: bool = Field(
        True, description="Keep the fetched images in <out>/_run/ after a successful run, so that editing a later "
        "step reuses them; false deletes them (a later run fetches again).")
    check: CheckConfig | None = Field(
        None, description="Run `datagen check` over the shards and exports at the end of the run: any problem "
        "(a sample a trainer would drop or mis-train) fails the run with exit code 5; the report is in manifest.json.")
    upload_to: str | None = Field(
        None, pattern=r"^[a-zA-Z][a-zA-Z0-9+.-]*://",
        description="A pyarrow filesystem URI (s3://bucket/prefix; S3 settings from AWS_* env vars) to copy the "
        "finished output to after a successful run: shards, exports, manifest (last), sizes, rejects, dataset "
        "card; not _run/.")


class ExecutorConfig(_Strict):
    kind: Literal["local", "ray"] = Field(
        "local", description="'local': shard tasks in this process or a process pool; 'ray': on Ray actors "
        "(pip install 'datagen[ray]').")
    address: str | None = Field(
        None, description="kind ray: the cluster to join ('auto', 'ray://host:port', 'host:port'); null starts a "
        "local Ray instance.")
    gpus_per_worker: float = Field(0, ge=0, description="kind ray: GPUs each worker asks for (CLIP, OCR on GPU).")
    cpus_per_worker: float = Field(1, gt=0, description="kind ray: CPUs each worker asks for.")
    workers: int = Field(1, ge=1, description="Processes (local) or Ray actors that run shard tasks (local 1: "
                         "run in this process).")
    batch_size: int = Field(256, ge=1, description="Rows per batch handed through a shard task's fused steps.")
    shard_rows: int = Field(10_000, ge=1, description="Rows per input shard: the unit of work, of resume "
                            "(a killed run redoes only shards in flight) and of distribution.")


class Recipe(_Strict):
    """A datagen recipe: sources -> fetch -> filters -> dedup -> synthesize -> translate -> shards."""

    name: str = Field(..., pattern=NAME_PATTERN)
    description: str = ""
    seed: int = 0
    out: str | None = Field(None, description="Output folder (relative to the current directory); default out/<name>.")
    sources: list[Annotated[SourceConfig, Field(discriminator="kind")]] = Field(..., min_length=1)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    dedup: DedupConfig | None = Field(default_factory=DedupConfig)
    ocr: OcrConfig | None = None
    synthesize: SynthConfig | None = None
    llm_generate: LLMGenerateConfig | None = None
    translate: TranslateConfig | None = None
    stage1: StageConfig = Field(default_factory=StageConfig)
    stage2: StageConfig = Field(default_factory=StageConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @model_validator(mode="after")
    def _names(self) -> "Recipe":
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique; repeated: {dup}")
        for stage_name in ("stage1", "stage2"):
            stage: StageConfig = getattr(self, stage_name)
            for ref in list(stage.sources or []) + list(stage.weights):
                if ref not in names:
                    raise ValueError(f"{stage_name} names source {ref!r}, which is not among the sources {names}")
        return self
