"""Errors of the translate step that must stop a run rather than reject a row."""
from __future__ import annotations


class QuotaExhausted(RuntimeError):
    """The translation service refused more work for this billing period (DeepL HTTP 456).

    Raised instead of rejecting rows because nothing is wrong with the rows: the
    run must stop, and a rerun after the quota is restored resumes from the
    cache, paying only for the texts that were not translated yet."""

    def __init__(self, backend: str, detail: str, translated: int = 0, pending: int = 0):
        self.backend = backend
        self.detail = detail
        self.translated = translated
        self.pending = pending
        super().__init__(
            f"{backend} quota exhausted ({detail}); {translated} texts were translated and cached in this run, "
            f"{pending} still pending. Rerun when the quota is restored: cached translations are not paid again."
        )


class BackendConfigError(ValueError):
    """A backend cannot start: missing API key variable, missing settings."""
