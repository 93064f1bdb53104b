"""Bilingual tuning data: the translate step (deepl | llm | native backends) and its checks.

Entry points: :class:`datagen.translate.step.TranslateStep` with
:class:`datagen.translate.config.TranslateConfig`; a DeepL quota stop raises
:class:`datagen.translate.errors.QuotaExhausted`.
"""
