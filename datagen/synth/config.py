"""Config of the template synthesis step (owned by datagen.synth).

Why these knobs: LRV-Instruction showed that negative instructions reduce
hallucination but that too many refusals make a model refuse real questions,
so the share of negatives is a target the sampler meets (within 2 points over
the output), refusals are capped per conversation, and every family has a
weight. Margins keep spatial and size questions to cases a human would call
without hesitation.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

POLAR_FAMILIES = ("existence", "counting", "wrong_count", "spatial", "relative_size", "false_premise", "attribute", "scene_text")
NEUTRAL_FAMILIES = ("brief_description", "detailed_description")
POSITIVE_FAMILIES = ("existence", "counting", "spatial", "relative_size", "attribute", "scene_text")
NEGATIVE_FAMILIES = ("existence", "wrong_count", "spatial", "relative_size", "false_premise", "attribute", "scene_text")
NEGATIVE_MODES = ("random", "popular", "adversarial")


DEFAULT_FAMILY_WEIGHTS = {
    "existence": 2.0,
    "counting": 1.0,
    "wrong_count": 1.0,
    "spatial": 1.0,
    "relative_size": 0.7,
    "false_premise": 1.0,
    "attribute": 1.0,
    "scene_text": 1.0,
    "brief_description": 1.0,
    "detailed_description": 1.0,
}
DEFAULT_NEGATIVE_MODES = {"random": 1.0, "popular": 1.0, "adversarial": 1.0}


class MultiImageConfig(BaseModel):
    """MMICL-style samples built from several pair rows (keys ``mm_<hash>``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Also compose multi-image / in-context samples.")
    images_per_sample: int = Field(2, ge=2, le=8, description="Images in one cross-image question sample.")
    share: float = Field(0.1, ge=0, le=1, description="Multi-image samples per input image (0.1: one per ten images).")
    few_shot: int = Field(1, ge=0, le=4, description="In-context examples before the query image in few-shot samples.")


class SynthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[str] | None = Field(None, description="Sources whose pair rows get instructions; null: all with objects or captions.")
    languages: list[Literal["en", "zh"]] = Field(["en", "zh"], description="Languages rendered natively from templates.")
    positive_ratio: float = Field(0.5, ge=0, le=1, description="Share of positive items among yes/no and premise items; negatives get the rest.")
    seed: int = Field(0, description="Mixed with the run seed; change it to draw a different sample of templates.")
    answer_style: Literal["short", "full", "mixed"] = Field("mixed", description="'Yes.' vs 'Yes, there is a dog in the image.'; mixed draws per answer.")
    items_per_image: int = Field(6, ge=1, le=40, description="Polarity-bearing items (questions) per image.")
    neutral_items_per_image: int = Field(1, ge=0, le=4, description="Description items per image (brief/detailed).")
    family_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_FAMILY_WEIGHTS),
        description="Relative weight of each template family when filling the positive/negative/neutral slots. "
        "Merged over the defaults: name only what you change, set 0 to switch a family off.",
    )
    negative_modes: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_NEGATIVE_MODES),
        description="POPE sampling of absent categories: random, popular (frequent), adversarial (co-occurring). "
        "Merged over the defaults; set 0 to switch a mode off.",
    )
    max_items_per_conversation: int = Field(4, ge=1, le=20, description="Question/answer pairs in one conversation.")
    max_negatives_per_conversation: int = Field(2, ge=1, le=20, description="Cap on refusals (negative answers) in one conversation.")
    spatial_margin: float = Field(0.1, ge=0, le=1, description="Box centres must differ by this fraction of the image side to call left/right/above/below.")
    spatial_dominance: float = Field(2.0, ge=1, description="The named axis' centre offset (pixels) must be this many times the other axis' offset.")
    spatial_max_overlap: float = Field(0.5, ge=0, le=1, description="No relation when the boxes' intersection exceeds this share of the smaller box (containment is 1).")
    stuff_labels: list[str] = Field(["dining table", "bed", "couch"], description="Background-like categories: no spatial relation when their box covers stuff_share of the image.")
    stuff_share: float = Field(0.6, ge=0, le=1, description="Share of the image a stuff_labels box must cover to count as background.")
    min_object_share: float = Field(0.005, ge=0, le=1, description="Objects under this share of the image area get no questions (they still count as present).")
    min_object_side: float = Field(0.02, ge=0, le=1, description="Objects thinner than this share of the image width/height (slivers) get no questions.")
    min_edge_side: float = Field(0.12, ge=0, le=1, description="Objects on the image border thinner than this share of the image side (cut to a sliver by the frame) get no questions.")
    popular_top_k: int = Field(5, ge=1, description="Popular and adversarial negatives are drawn uniformly from the top k absent categories (POPE).")
    size_margin: float = Field(2.0, ge=1, description="Area ratio two boxes must exceed to call one bigger.")
    attribute_skip_labels: list[str] = Field(["person"], description="No colour questions about these: a person's colours are their clothes', not theirs.")
    max_count: int = Field(10, ge=1, description="Do not ask to count a category with more instances than this.")
    ocr_min_score: float = Field(0.7, ge=0, le=1, description="OCR lines below this confidence are not used for scene-text questions.")
    ocr_min_height: float = Field(12.0, ge=0, description="OCR boxes whose shorter side is under this many pixels are not quoted.")
    ocr_caption_match: float = Field(0.8, ge=0, le=1, description="When the image has captions, OCR text must match a run of caption words this well (difflib ratio) to be quoted.")
    label_stats_path: str | None = Field(None, description="JSON written by SynthesizeStep.prepare (label frequencies and co-occurrence over the dataset).")
    multi_image: MultiImageConfig = Field(default_factory=MultiImageConfig)
    check: bool = Field(True, description="Re-derive every template answer with the independent checker after synthesis; disagreements are counted in the manifest and warned about.")

    @field_validator("family_weights", mode="before")
    @classmethod
    def _merge_family_weights(cls, v):
        return {**DEFAULT_FAMILY_WEIGHTS, **v} if isinstance(v, dict) else v

    @field_validator("negative_modes", mode="before")
    @classmethod
    def _merge_modes(cls, v):
        return {**DEFAULT_NEGATIVE_MODES, **v} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _check_keys(self) -> "SynthConfig":
        unknown = set(self.family_weights) - set(POLAR_FAMILIES) - set(NEUTRAL_FAMILIES)
        if unknown:
            raise ValueError(f"family_weights: unknown families {sorted(unknown)}; expected some of {list(POLAR_FAMILIES + NEUTRAL_FAMILIES)}")
        bad_modes = set(self.negative_modes) - set(NEGATIVE_MODES)
        if bad_modes:
            raise ValueError(f"negative_modes: unknown modes {sorted(bad_modes)}; expected some of {list(NEGATIVE_MODES)}")
        if not self.languages:
            raise ValueError("languages: need at least one of 'en', 'zh'")
        if any(w < 0 for w in list(self.family_weights.values()) + list(self.negative_modes.values())):
            raise ValueError("family_weights/negative_modes: weights must be >= 0")
        if sum(self.negative_modes.values()) <= 0:
            raise ValueError("negative_modes: at least one mode needs a weight > 0")
        return self

    def weight(self, family: str) -> float:
        return float(self.family_weights.get(family, 0.0))
