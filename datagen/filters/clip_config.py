"""The CLIP filter's recipe settings (``filters.clip``); light to import: no torch, no open_clip."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A small CLIP that builds in well under a second on a CPU. Used only when the real
# weights cannot be had and the recipe allows it; the text side uses open_clip's
# bundled BPE vocabulary, which needs no download.
TINY_UNTRAINED_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

_HF_CONFIG_NAME = "open_clip_config.json"
_HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipLanguage(BaseModel):
    """Per-language overrides of the base CLIP settings (``filters.clip.languages.<code>``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), serialize_by_alias=True)

    model: str | None = Field(None, description="open_clip architecture for this language, e.g. "
                              "xlm-roberta-base-ViT-B-32; null: the base model.")
    pretrained: str | None = Field(None, description="Its pretrained tag or checkpoint path (required with model or "
                                   "model_config, null = random weights), e.g. laion5b_s13b_b90k.")
    model_config_: dict[str, Any] | None = Field(None, alias="model_config",
                                                 description="An open_clip model config for this language.")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="This language's threshold (LAION "
                                    "multilingual: 0.26); unset: the base min_score; null: score only.")
    top_fraction: float | None = Field(None, gt=0.0, le=1.0, description="Top fraction kept within this language; "
                                       "unset: the base top_fraction.")
    batch_size: int | None = Field(None, ge=1, description="Pairs per forward pass; unset: the base batch_size.")

    @property
    def names_model(self) -> bool:
        return bool({"model", "model_config_"} & self.model_fields_set)

    @model_validator(mode="after")
    def _check(self) -> "ClipLanguage":
        if self.names_model and "pretrained" not in self.model_fields_set and not (self.model or "").startswith(
                ("hf-hub:", "local-dir:")):
            raise ValueError("clip.languages entry names a model: give its pretrained too (a tag, a checkpoint "
                             "path, or null for random weights); it is never inherited from the base model")
        return self


def caption_language(meta_lang: str | None, caption_lang: str | None) -> str | None:
    """A row's caption language: the source's ``meta.lang`` if set, else the detected ``caption_lang``."""
    return meta_lang or caption_lang or None


class ClipConfig(BaseModel):
    # The open_clip config field is called model_config in recipes; pydantic reserves that
    # attribute name, so it lives in model_config_ with an alias, also on dump.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), serialize_by_alias=True)

    model: str = Field(
        "ViT-B-32",
        description="open_clip architecture name (open_clip.list_models()) or 'hf-hub:org/name'. "
        "With model_config set this is only a label.",
    )
    pretrained: str | None = Field(
        "laion2b_s34b_b79k",
        description="open_clip pretrained tag (open_clip.list_pretrained()) or a local checkpoint path "
        "(relative to the recipe); null = random weights (tests only). Ignored for hf-hub models.",
    )
    model_config_: dict[str, Any] | None = Field(
        None,
        alias="model_config",
        description="An open_clip model config (embed_dim, vision_cfg, text_cfg) to build instead of a named "
        "architecture; random weights unless pretrained is a checkpoint path.",
    )
    min_score: float | None = Field(
        0.28, ge=-1.0, le=1.0, description="Reject rows below this cosine (LAION English: 0.28); null = score only."
    )
    top_fraction: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Keep only this top fraction by score over the whole dataset (DataComp's best simple "
        "baseline: 0.3 with ViT-L/14); combined with min_score, both must hold.",
    )
    batch_size: int = Field(64, ge=1, description="Image-text pairs encoded per forward pass.")
    keep_embedding: bool = Field(
        False, description="Store the L2-normalised image embedding as _clip_embedding (a working column, not exported to the shards; set by the pipeline "
        "when filters.semantic_dedup is on; semantic dedup reads it and never recomputes it).")
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="Model precision; fp16/bf16 want a GPU.")
    preprocess_threads: int | None = Field(
        None, ge=1, description="Threads that decode and preprocess images while the model encodes the previous "
        "batch; null: 8 (at most the CPU count) on a GPU, 1 (inline) on the CPU. On an H200 one thread feeds "
        "~300 images/s, far below what ViT-B/32 or ViT-L/14 take (bench/bench_clip.py).")
    cache_dir: str | None = Field(
        None, description="Where weights are cached; null = the Hugging Face hub cache and ~/.cache/clip."
    )
    allow_untrained_fallback: bool = Field(
        False,
        description="If the weights cannot be had offline, score with a small UNTRAINED model (a loud warning; "
        "min_score is then not applied) instead of failing.",
    )

    languages: dict[str, ClipLanguage] | None = Field(
        None,
        description="Per caption language (the source's lang, else the caption filter's caption_lang): overrides "
        "of model/pretrained/model_config/min_score/top_fraction/batch_size, e.g. {zh: {model: "
        "xlm-roberta-base-ViT-B-32, pretrained: laion5b_s13b_b90k, min_score: 0.26}}. Rows in other languages "
        "use the base settings. Each row records clip_lang and clip_model.",
    )

    def route(self, lang: str | None) -> str | None:
        """The ``languages`` key that applies to a caption language (exact, else its primary subtag:
        zh-CN -> zh), or None for the base settings."""
        if not self.languages or not lang:
            return None
        lang = lang.strip().lower()
        keys = {k.lower(): k for k in self.languages}
        return keys.get(lang) or keys.get(lang.replace("_", "-").split("-")[0])

    def for_language(self, key: str | None) -> "ClipConfig":
        """The full settings for one ``languages`` key (None: the base), without ``languages``."""
        base = self.model_dump(by_alias=True, exclude={"languages"})
        if key is None:
            return ClipConfig(**base)
        entry = self.languages[key]
        if entry.names_model:
            base.update(model_config=None)
        base.update(entry.model_dump(by_alias=True, exclude_unset=True))
        return ClipConfig(**base)

    @model_validator(mode="after")
    def _check(self) -> "ClipConfig":
        if self.model_config_ is not None:
            missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in self.model_config_]
            if missing:
                raise ValueError(f"clip.model_config lacks {missing}: an open_clip model config needs "
                                 "embed_dim, vision_cfg and text_cfg")
            if self.model.startswith(("hf-hub:", "local-dir:")):
                raise ValueError("clip.model_config cannot be combined with an hf-hub:/local-dir: model")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"clip.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.languages:
            lowered = [k.strip().lower() for k in self.languages]
            if len(set(lowered)) != len(lowered) or not all(lowered):
                raise ValueError(f"clip.languages keys must be distinct, non-empty language codes: {list(self.languages)}")
            for k in self.languages:
                try:
                    self.for_language(k)
                except ValueError as e:
                    raise ValueError(f"clip.languages.{k}: {e}") from None
        return self


def scorer_config(cfg: ClipConfig, keep_embedding: bool) -> ClipConfig:
    """``cfg`` for scoring only, every threshold (also per language) taken out: the threshold is its own
    barrier, so editing one never recomputes scores."""
    data = cfg.model_dump(by_alias=True, exclude_unset=False)
    data.update(min_score=None, top_fraction=None, keep_embedding=keep_embedding)
    if cfg.languages:
        data["languages"] = {k: v.model_dump(by_alias=True, exclude_unset=True, exclude={"min_score", "top_fraction"})
                             for k, v in cfg.languages.items()}
    return ClipConfig(**data)
