"""Config of the LLM generation step (owned by datagen.llm)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What a text-only LLM can produce from an image's symbolic context (LLaVA's three kinds,
# plus LRV-style negatives: nonexistent objects/activities and wrong attributes).
# "knowledge" is LRV's third kind: wrong knowledge about a named thing (brand, place, text) that
# the captions or OCR name; opt-in, since most images name nothing (datagen.llm.knowledge).
LLMTask = Literal["conversation", "detailed_description", "complex_reasoning", "negative", "knowledge"]
DEFAULT_TASKS: tuple[str, ...] = ("conversation", "detailed_description", "complex_reasoning", "negative")
ALL_TASKS: tuple[str, ...] = DEFAULT_TASKS + ("knowledge",)

DEFAULT_PROMPTS = {task: f"prompts/llm/{task}.yaml" for task in ALL_TASKS}


class LLMGenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(..., description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    model: str
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable that holds the key.")
    tasks: list[LLMTask] = Field(
        default_factory=lambda: list(DEFAULT_TASKS),
        description="What to generate per image; each task is one request per image.",
    )
    prompts: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_PROMPTS),
        description="Task -> prompt YAML (system, instruction, few-shot examples). Relative paths resolve "
        "against the recipe directory, then against the bundled recipes/ directory.",
    )
    temperature: float = Field(0.2, ge=0, le=2)
    max_tokens: int = Field(1024, ge=16)
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx and timeouts, with backoff.")
    timeout_s: float = Field(60.0, gt=0)
    backoff_base_s: float = Field(
        0.5, gt=0, description="First retry waits about this long, doubling each time; Retry-After wins."
    )
    price_per_1k_input: float = Field(0.0, ge=0, description="For the cost estimate in the manifest.")
    price_per_1k_output: float = Field(0.0, ge=0)
    json_mode: bool = Field(
        False, description="Send response_format={'type': 'json_object'} (OpenAI, vLLM; not every server has it)."
    )
    negatives_per_image: int = Field(3, ge=1, le=10, description="Negative items asked for per image.")
    max_objects: int = Field(40, ge=0, description="Boxes listed in the context, largest first.")
    use_ocr: bool = Field(True, description="Add the `ocr` column's text to the context when present.")
    ocr_min_score: float = Field(0.5, ge=0, le=1)
    extra_leak_patterns: list[str] = Field(
        default_factory=list, description="More regexes (case-insensitive) that must not appear in answers."
    )
    dry_run_show: int = Field(2, ge=0, description="Under --dry-run, full prompts printed per batch.")

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("tasks must name at least one of " + ", ".join(ALL_TASKS))
        if len(set(v)) != len(v):
            raise ValueError(f"tasks has duplicates: {v}")
        return v
