"""The recipe's ``output.check``: run ``datagen check`` at the end of a run (``datagen.check``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CheckConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokenizer: str | None = Field(None, description="Local tokenizer folder (relative paths resolve against the "
                                  "recipe file): render and tokenise every conversation with `template`.")
    template: Literal["llava_v1", "vicuna_v1", "mplug_owl", "chatml"] = Field(
        "llava_v1", description="Chat template the trainer will use.")
    max_len: int = Field(2048, ge=16, description="Longest sequence the trainer keeps, in tokens.")
    tokens_per_image: int = Field(576, ge=1, description="Tokens one image takes in the sequence (LLaVA-1.5: 576).")
