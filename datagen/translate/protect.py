"""Protected spans: the parts of a text that machine translation must not touch.

Image placeholders (``<image>``, ``<image_N>``), grounding tags
(``<ref>...</ref>``, ``<box>...</box>``), numbers (and bracketed number lists
such as normalised boxes ``[0.12, 0.3, 0.5, 0.9]``) and code spans (inline
backticks and fenced blocks) are replaced by placeholders ``<x id="N"/>``
before a text goes to a backend and put back afterwards. A translator that
reorders a sentence moves the placeholder along; one that drops, duplicates or
invents a placeholder is caught by :func:`restore` (and later by comparing the
span multisets of source and output).

Why one placeholder format for every backend: DeepL leaves XML tags alone when
``tag_handling="xml"`` (the text around them is XML-escaped by
:func:`to_xml`), and chat models copy ``<x id="3"/>`` reliably when told to.
Text that already contains something that looks like a placeholder is itself
masked, so :func:`mask` and :func:`restore` round-trip any string exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.sax.saxutils import escape as _xml_escape
from xml.sax.saxutils import unescape as _xml_unescape

_NUM = r"[0-9]+(?:[.,][0-9]+)*%?"
SPAN_RE = re.compile(
    r"```.*?```"  # fenced code block (may span lines)
    r"|`[^`\n]+`"  # inline code
    r"|<ref>.*?</ref>"
    r"|<box>.*?</box>"
    r"|<image(?:_[0-9]+)?>"
    r"|(?i:<x\s+id\s*=\s*\"?[0-9]+\"?\s*(?:/>|>\s*</x>))"  # looks like a placeholder: protect it too
    rf"|\[\s*{_NUM}(?:\s*,\s*{_NUM})*\s*\]"  # [x1, y1, x2, y2]
    rf"|{_NUM}",
    re.S,
)
# What backends may hand back for a placeholder: DeepL may expand a self-closing tag,
# chat models sometimes add or drop spaces and quotes.
PLACEHOLDER_ANY = re.compile(r"<x\s+id\s*=\s*\"?([0-9]+)\"?\s*(?:/>|>\s*</x>)", re.I)


def placeholder(n: int) -> str:
    return f'<x id="{n}"/>'


@dataclass(frozen=True)
class Masked:
    """A text with its protected spans replaced by numbered placeholders."""

    text: str
    spans: tuple[str, ...]


class ProtectedSpanError(ValueError):
    """The translated text lost, duplicated or invented a placeholder."""


def find_spans(text: str) -> list[str]:
    """The protected spans of ``text`` in order of appearance."""
    return [m.group(0) for m in SPAN_RE.finditer(text)]


def strip_spans(text: str, replacement: str = " ") -> str:
    """``text`` without its protected spans: what the language and length checks look at."""
    return SPAN_RE.sub(replacement, text)


def mask(text: str) -> Masked:
    spans: list[str] = []

    def repl(m: re.Match) -> str:
        spans.append(m.group(0))
        return placeholder(len(spans) - 1)

    return Masked(SPAN_RE.sub(repl, text), tuple(spans))


def restore(translated: str, spans: tuple[str, ...] | list[str]) -> str:
    """Put the spans back into a translated masked text.

    Raises :class:`ProtectedSpanError` unless every placeholder appears exactly once."""
    seen: list[int] = []

    def repl(m: re.Match) -> str:
        n = int(m.group(1))
        if n >= len(spans):
            raise ProtectedSpanError(f"unknown placeholder id {n} (text has {len(spans)} spans)")
        seen.append(n)
        return spans[n]

    out = PLACEHOLDER_ANY.sub(repl, translated)
    if sorted(seen) != list(range(len(spans))):
        missing = sorted(set(range(len(spans))) - set(seen))
        dup = sorted({n for n in seen if seen.count(n) > 1})
        raise ProtectedSpanError(f"placeholders missing {missing} duplicated {dup}")
    return out


def to_xml(masked_text: str) -> str:
    """Escape the text between placeholders so DeepL can parse it with ``tag_handling="xml"``."""
    parts = re.split(r'(<x id="[0-9]+"/>)', masked_text)
    return "".join(p if i % 2 else _xml_escape(p) for i, p in enumerate(parts))


def from_xml(xml_text: str) -> str:
    """Inverse of :func:`to_xml` for DeepL's answer: unescape text, normalise placeholders."""
    parts = PLACEHOLDER_ANY.split(xml_text)
    out = []
    for i, p in enumerate(parts):
        out.append(placeholder(int(p)) if i % 2 else _xml_unescape(p, {"&quot;": '"', "&apos;": "'"}))
    return "".join(out)
