"""Prompt files and the symbolic image context a text-only LLM sees (LLaVA style).

The LLM never sees pixels. It gets what we know about the image as text:
captions, object boxes written as ``label: [x1, y1, x2, y2]`` normalised to 0-1
(LLaVA's format, so models tuned on LLaVA-style prompts read it well), and
optional OCR text. Prompts and few-shot examples live in YAML files under
``recipes/prompts/llm/`` so they can be edited without touching code; the
few-shot examples are written in exactly the context format produced here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datagen.yamlconfig import ConfigError, describe_validation_error, read_mapping

BUNDLED_RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


class FewShotExample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context: str = Field(min_length=1)
    response: dict[str, Any]


class PromptSpec(BaseModel):
    """One task's prompt file."""

    model_config = ConfigDict(extra="forbid")
    task: str
    system: str = Field(min_length=1)
    instruction: str = Field(min_length=1)
    questions: list[str] = Field(default_factory=list)  # detailed_description: the user question shown
    examples: list[FewShotExample] = Field(default_factory=list)


def resolve_prompt_path(path: str | Path, recipe_dir: Path) -> Path:
    """Relative paths resolve against the recipe directory, then the bundled ``recipes/``."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (recipe_dir, BUNDLED_RECIPES_DIR):
        if (base / p).is_file():
            return (base / p).resolve()
    return (recipe_dir / p).resolve()


def load_prompt(path: Path, task: str) -> PromptSpec:
    """Load and validate a prompt file; errors name the file and the bad key."""
    if not path.is_file():
        raise FileNotFoundError(f"prompt file for llm task {task!r} not found: {path}")
    data = read_mapping(path, "prompt file (keys system, instruction, examples)")
    try:
        spec = PromptSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, str(path), "prompt file")) from None
    if spec.task != task:
        raise ValueError(f"{path}: declares task {spec.task!r} but is configured for task {task!r}")
    if task == "detailed_description" and not spec.questions:
        raise ValueError(f"{path}: detailed_description needs a non-empty 'questions' list")
    return spec


# ------------------------------------------------------------------------ context


def _norm_box(bbox: list[float] | None, width: Any, height: Any) -> list[float] | None:
    """[x, y, w, h] pixels -> [x1, y1, x2, y2] as fractions of the image, clamped to 0-1."""
    if not bbox or len(bbox) != 4 or not width or not height or width <= 0 or height <= 0:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None

    def clamp(v: float) -> float:
        return min(max(v, 0.0), 1.0)

    return [clamp(x / width), clamp(y / height), clamp((x + w) / width), clamp((y + h) / height)]


def _fmt_box(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in box) + "]"


def build_context(row: dict, *, max_objects: int = 40, use_ocr: bool = True, ocr_min_score: float = 0.5) -> str:
    """The text an LLM gets instead of the image. Empty string when we know nothing.

    Objects are listed largest first, so a cap on their number keeps the salient
    ones; boxes without a usable size are listed by label alone."""
    lines: list[str] = []
    captions = [c.strip() for c in (row.get("captions") or []) if c and c.strip()]
    if not captions and row.get("caption") and str(row["caption"]).strip():
        captions = [str(row["caption"]).strip()]
    if captions:
        lines.append("Captions:")
        lines += [f"- {c}" for c in captions]

    width, height = row.get("width"), row.get("height")
    objects = [o for o in (row.get("objects") or []) if o and o.get("label")]

    def area(o: dict) -> float:
        box = _norm_box(o.get("bbox"), width, height)
        return (box[2] - box[0]) * (box[3] - box[1]) if box else 0.0

    objects = sorted(objects, key=area, reverse=True)[:max_objects]
    if objects:
        lines.append("Objects (label: [x1, y1, x2, y2], coordinates normalised to 0-1):")
        for o in objects:
            box = _norm_box(o.get("bbox"), width, height)
            text = f"- {o['label']}: {_fmt_box(box)}" if box else f"- {o['label']}"
            attrs = [a for a in (o.get("attributes") or []) if a]
            if attrs:
                text += f" ({', '.join(attrs)})"
            lines.append(text)

    if use_ocr:
        texts = []
        for t in row.get("ocr") or []:
            if not t or not (t.get("text") or "").strip():
                continue
            if t.get("score") is not None and t["score"] < ocr_min_score:
                continue
            box = _norm_box(t.get("bbox"), width, height)
            quoted = json.dumps(t["text"].strip(), ensure_ascii=False)
            texts.append(f"- {quoted} at {_fmt_box(box)}" if box else f"- {quoted}")
        if texts:
            lines.append("Text seen in the image:")
            lines += texts
    return "\n".join(lines)


def build_messages(spec: PromptSpec, context: str, *, n_negatives: int = 3) -> list[dict]:
    """System prompt, few-shot turns (context -> JSON answer), then this image's context."""
    instruction = spec.instruction.replace("{n}", str(n_negatives)).strip()
    messages = [{"role": "system", "content": spec.system.strip()}]
    for ex in spec.examples:
        messages.append({"role": "user", "content": f"{ex.context.strip()}\n\n{instruction}"})
        messages.append({"role": "assistant", "content": json.dumps(ex.response, ensure_ascii=False)})
    messages.append({"role": "user", "content": f"{context.strip()}\n\n{instruction}"})
    return messages
