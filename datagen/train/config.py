"""Training configs: one pydantic model per concern, loaded from YAML with ``--set`` overrides.

Why pydantic with ``extra="forbid"``: a typo in a recipe (``lerning_rate``) must
fail loudly with the file and key path, not silently train with a default.
Tiny configs (random weights, built from dicts) and real ones (open_clip names,
Hugging Face ids, local folders) go through the same models, so the code path
a test exercises is the one a real run takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from datagen.yamlconfig import ConfigError, apply_override, describe_validation_error, read_mapping, set_path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VisionConfig(_Strict):
    """The open_clip vision tower. ``name`` may be a built-in (``ViT-L-14``), ``hf-hub:org/repo``
    or ``local-dir:/path``; ``config`` instead builds a randomly initialised ViT from an
    open_clip ``vision_cfg`` dict (tests, tiny runs, throughput benches)."""

    name: str | None = Field("ViT-L-14", description="open_clip model name or hf-hub:/local-dir: id.")
    pretrained: str | None = Field("openai", description="open_clip pretrained tag or checkpoint file.")
    config: dict[str, Any] | None = Field(None, description="open_clip vision_cfg for a random-weight ViT.")
    quick_gelu: bool | None = Field(
        None, description="QuickGELU activations (OpenAI CLIP weights); null: as the pretrained tag says."
    )
    resize: Literal["squash", "pad"] = Field(
        "squash",
        description="How an image becomes the ViT's square input. 'squash': resize to size x size, as "
        "mPLUG-Owl does; 'pad': pad to a square with the mean colour, then resize. Never a crop, which "
        "can cut annotated objects out of the picture the conversation talks about.",
    )

    @model_validator(mode="after")
    def _one_source(self):
        if self.config is not None:
            self.name = None
            self.pretrained = None
        elif not self.name:
            raise ValueError("vision needs either 'name' (open_clip model) or 'config' (vision_cfg dict)")
        return self


class AbstractorConfig(_Strict):
    """The visual abstractor (mPLUG-Owl: 64 queries, 6 layers, width 1024)."""

    num_queries: int = Field(64, ge=1)
    layers: int = Field(6, ge=1)
    hidden: int = Field(1024, ge=8)
    heads: int = Field(16, ge=1)
    mlp_hidden: int = Field(2816, ge=8, description="SwiGLU inner width.")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden % self.heads:
            raise ValueError(f"abstractor.hidden={self.hidden} is not divisible by abstractor.heads={self.heads}")
        return self

    @property
    def tokens_per_image(self) -> int:
        """Queries plus the learned end token: what one image costs in LLM positions."""
        return self.num_queries + 1


class LLMConfig(_Strict):
    """Any Hugging Face causal LM: ``name`` is a hub id or a local folder; ``config`` instead
    builds a random-weight LLaMA from ``LlamaConfig`` keyword arguments."""

    name: str | None = Field(None, description="Hugging Face id or local folder of a causal LM.")
    config: dict[str, Any] | None = Field(None, description="LlamaConfig kwargs for a random-weight LLaMA.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype of the LLM (frozen or LoRA-adapted; LoRA weights stay float32)."
    )
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = Field(
        "sdpa", description="LLM attention kernel; flash_attention_2 needs the flash-attn package and a GPU."
    )

    @model_validator(mode="after")
    def _one_source(self):
        if (self.name is None) == (self.config is None):
            raise ValueError("llm needs exactly one of 'name' (HF id / folder) or 'config' (LlamaConfig kwargs)")
        return self


class TokenizerConfig(_Strict):
    """``name`` loads AutoTokenizer (default: the LLM's name). ``bpe_vocab_size`` instead trains a
    small byte-level BPE on the shard texts: there is no tokenizer to download offline, and
    a trained BPE keeps tiny runs' sequences short."""

    name: str | None = None
    bpe_vocab_size: int | None = Field(None, ge=300, le=65536)


class ModelConfig(_Strict):
    vision: VisionConfig = Field(default_factory=VisionConfig)
    abstractor: AbstractorConfig = Field(default_factory=AbstractorConfig)
    llm: LLMConfig
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)


class LoraSpec(_Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])


class DataConfig(_Strict):
    dir: str = Field(..., description="Folder holding stage1/, stage2/, stage2_text/ and sizes.json.")
    text_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="Stage 2: share of examples drawn from stage2_text/ (text-only)."
    )
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch per process.")
    num_workers: int = Field(2, ge=0, description="DataLoader workers; decoding and tokenising run there.")
    max_seq_len: int = Field(512, ge=16)
    shuffle_buffer: int = Field(256, ge=0, description="Samples held for shuffling within a worker (0: off).")
    epoch_batches: int = Field(100, ge=1, description="Micro-batches per process per nominal epoch (with_epoch).")
    resampled: bool = Field(
        True, description="Sample shards with replacement (infinite stream); false splits shards by node/worker."
    )
    holdout_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Keys whose hash falls below this are kept out of training for eval."
    )
    group_by_length: int = Field(
        0, ge=0, description="Batch examples of similar length: sort windows of this many batches by length "
        "(0: off). Cuts the padding share of each batch; resume stays exact."
    )


class OptimConfig(_Strict):
    lr: float = Field(1e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = Field(1.0, gt=0, description="Max global grad norm; null: no clipping.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")


class TrainConfig(_Strict):
    """One training stage. Stage 1: LLM frozen, ViT + abstractor train on captions.
    Stage 2: ViT frozen, abstractor + LoRA train on conversations (+ text-only)."""

    stage: Literal[1, 2]
    out: str = Field(..., description="Run folder: checkpoints/, log.jsonl, latest.txt.")
    seed: int = 0
    init_from: str | None = Field(
        None, description="Checkpoint (or run folder) to start from; stage 2 takes the model spec from it."
    )
    model: ModelConfig | None = Field(None, description="Required unless init_from gives it.")
    lora: LoraSpec | None = Field(None, description="Stage 2: LoRA on the LLM; null trains no LLM weights.")
    template: Literal["mplug_owl", "chat"] = Field(
        "mplug_owl", description="'mplug_owl': Human:/AI: text; 'chat': the tokenizer's own chat template."
    )
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    max_steps: int = Field(100, ge=1, description="Optimizer steps; also the cosine schedule's length.")
    stop_at_step: int | None = Field(None, ge=1, description="Stop early (checkpointed) at this step.")
    log_every: int = Field(10, ge=1)
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (the last step always).")
    resume: bool = Field(True, description="Continue from <out>/latest.txt when it exists.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on CUDA.")
    grad_checkpointing: bool = Field(
        False, description="Recompute activations in backward: for long sequences or big models only (costs ~1/3 more compute)."
    )
    train_llm: bool = Field(
        False, description="Stage 2: train every LLM weight instead of LoRA (small LLMs, e.g. the tiny demo model)."
    )
    eval_every: int | None = Field(
        None, ge=1, description="Every N steps: loss on the held-out split and the POPE probe (needs data.holdout_fraction > 0)."
    )
    eval_batches: int = Field(10, ge=1, description="Held-out batches per evaluation.")
    eval_pope_images: int = Field(20, ge=0, description="Held-out annotated images the POPE probe asks about (0: no probe).")
    tensorboard: bool = Field(True, description="Also log to <out>/tensorboard (the tensorboard package).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = Field(False, description="torch.compile the LLM (GPU runs).")

    @model_validator(mode="after")
    def _stage_rules(self):
        if self.model is None and self.init_from is None:
            raise ValueError("give 'model' (a model spec) or 'init_from' (a checkpoint holding one)")
        if self.stage == 1 and self.lora is not None:
            raise ValueError("stage 1 keeps the LLM frozen: remove 'lora'")
        if self.stage == 1 and self.data.text_ratio:
            raise ValueError("data.text_ratio applies to stage 2 only")
        if self.train_llm and (self.stage != 2 or self.lora is not None):
            raise ValueError("train_llm trains the whole LLM in stage 2: use it in stage 2, without 'lora'")
        if self.eval_every and not self.data.holdout_fraction:
            raise ValueError("eval_every evaluates on held-out keys: set data.holdout_fraction > 0")
        return self


def load_config(path: str | Path, overrides: list[str] | None = None, **fields: Any) -> TrainConfig:
    """Read a YAML training config, apply ``--set`` overrides and keyword fields, validate.

    Relative ``data.dir``, ``out`` and ``init_from`` stay relative to the current directory
    (like ``make`` targets expect). Errors name the file and the key path."""
    path = Path(path)
    tree = read_mapping(path, "training config")
    for text in overrides or []:
        apply_override(tree, text, str(path))
    for key, value in fields.items():
        if value is not None:
            set_path(tree, key.split("."), value, str(path))
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, str(path), "training config")) from None
