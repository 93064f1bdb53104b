"""Parse, validate and police what the LLM sends back.

Models asked for JSON still wrap it in code fences, add a sentence before it, or
drop a field. We accept the first two (cheap to undo) and reject the third
through pydantic, so a malformed reply can be retried with a nudge naming the
problem. Then every question and answer is checked for *leaks*: text that only
makes sense to someone who read our notes instead of seeing the image ("the
caption says", "[0.12, 0.30, ...]", "bounding box"). LLaVA's data has such
leaks; training on them teaches a model to talk about captions it never gets.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2)]


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")  # models add fields like "reasoning"; harmless


class QA(_Reply):
    question: Text
    answer: Text


class ConversationReply(_Reply):
    turns: list[QA] = Field(min_length=1, max_length=12)


class DescriptionReply(_Reply):
    description: Text


class ReasoningReply(QA):
    pass


NegativeKind = Literal["nonexistent_object", "nonexistent_activity", "wrong_attribute"]


class NegativeItem(QA):
    kind: NegativeKind
    target: Text

    @field_validator("kind", mode="before")
    @classmethod
    def _normalise_kind(cls, v: Any) -> Any:
        # "Nonexistent object", "nonexistent-object" -> nonexistent_object
        return re.sub(r"[\s\-]+", "_", v.strip().lower()) if isinstance(v, str) else v


class NegativeReply(_Reply):
    items: list[NegativeItem] = Field(min_length=1, max_length=20)


class KnowledgeItem(QA):
    claim: Text  # the wrong knowledge the question asserts ("Honda")
    evidence: Text  # what the image shows instead, as the captions or OCR write it ("YAMAHA")


class KnowledgeReply(_Reply):
    items: list[KnowledgeItem] = Field(min_length=1, max_length=20)


REPLY_MODELS: dict[str, type[_Reply]] = {
    "conversation": ConversationReply,
    "detailed_description": DescriptionReply,
    "complex_reasoning": ReasoningReply,
    "negative": NegativeReply,
    "knowledge": KnowledgeReply,
}


class MalformedReply(ValueError):
    """The reply is not the JSON object the task asked for; ``str(e)`` says why (for the nudge)."""


_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.S)


def extract_json(text: str) -> Any:
    """The JSON object in ``text``: bare, inside a code fence, or between prose."""
    s = (text or "").strip()
    if not s:
        raise MalformedReply("the reply was empty")
    m = _FENCE.match(s)
    if m:
        s = m.group(1).strip()
    try:
        return json.loads(s)
    except json.JSONDecodeError as first:
        start, end = s.find("{"), s.rfind("}")
        if start != -1 and end > start:
            try:
                return json.loads(s[start : end + 1])
            except json.JSONDecodeError:
                pass
        raise MalformedReply(f"the reply is not valid JSON ({first.msg} at char {first.pos})") from None


def parse_reply(task: str, text: str) -> _Reply:
    data = extract_json(text)
    if not isinstance(data, dict):
        raise MalformedReply(f"expected a JSON object, got {type(data).__name__}")
    try:
        return REPLY_MODELS[task].model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors()[:5])
        raise MalformedReply(f"the JSON does not match the format: {problems}") from None


# ---------------------------------------------------------------------------- leaks

# What a model might call the notes it was given, and how it might cite them.
_SOURCES = r"(descriptions?|annotations?|notes|metadata|object list|context)"
_CITES = r"(say|says|said|state|states|mention|mentions|mentioned|indicate|indicates|suggest|suggests|provided|given)"

# (reason code, pattern). Reason codes are stable: they end up in reject tables and stats.
_LEAK_PATTERNS: list[tuple[str, str]] = [
    ("llm_leak", r"\bcaption(s|ed)?\b"),
    ("llm_leak", r"\bbounding[\s-]*box(es)?\b|\bbbox(es)?\b"),
    ("llm_leak", r"\bcoordinates?\b|\b[xy][12]\b"),
    ("llm_leak", r"\[\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+"),  # [0.12, 0.3 ...
    ("llm_leak", r"(?<![\d.])[01]\.\d{3}(?![\d])"),  # 0.125: our three-decimal box format
    ("llm_leak", r"\b(the|these|those|given|provided)\s+(image\s+)?" + _SOURCES + r"\s+" + _CITES + r"\b"),
    ("llm_leak", r"\baccording to the\s+(" + _SOURCES + r"|information|data|text provided)\b"),
    ("llm_leak", r"\bas\s+(described|annotated|listed)\b"),
    ("llm_leak", r"\bOCR\b"),
    ("llm_refusal", r"\bI\s+(can\s*not|can't|cannot|am unable to|am not able to|don't have the ability to)\s+see\b"),
    ("llm_refusal", r"\bas an AI\b|\btext[- ]based (AI|model|assistant)\b|\bwithout (seeing|access to) the image\b"),
]


class LeakChecker:
    """Finds text that gives away the symbolic context. One instance per step (compiled once)."""

    def __init__(self, extra_patterns: list[str] = ()):
        self.patterns = [(reason, re.compile(p, re.I)) for reason, p in _LEAK_PATTERNS]
        for p in extra_patterns:
            try:
                self.patterns.append(("llm_leak", re.compile(p, re.I)))
            except re.error as e:
                raise ValueError(f"extra_leak_patterns: {p!r} is not a valid regex: {e}") from None

    def find(self, text: str) -> tuple[str, str] | None:
        """(reason, the offending snippet) for the first leak in ``text``, or None."""
        for reason, rx in self.patterns:
            m = rx.search(text or "")
            if m:
                return reason, m.group(0)
        return None


# ------------------------------------------------------------------------ negatives

_NEGATION = re.compile(r"\b(no|not|none|nobody|nothing|neither|nor|never|isn't|aren't|wasn't|weren't|doesn't|don't|"
                       r"didn't|cannot|can't|there's no|without)\b|n't\b", re.I)
_ARTICLES = re.compile(r"^(a|an|the|any|some|two|three|several)\s+", re.I)


def _singular(word: str) -> str:
    w = word.lower().strip()
    w = _ARTICLES.sub("", w)
    for suffix, repl in (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("sses", "ss"), ("xes", "x"), ("s", "")):
        if w.endswith(suffix) and len(w) > len(suffix) + 2 and not w.endswith("ss"):
            return w[: -len(suffix)] + repl
    return w


def present_names(row: dict) -> set[str]:
    """Singular lower-case labels of the objects annotated in the image."""
    return {_singular(o["label"]) for o in (row.get("objects") or []) if o and o.get("label")}


def check_knowledge(item: KnowledgeItem, row: dict, ocr_min_score: float = 0.5) -> str | None:
    """Reason code when a knowledge item is not grounded, else None.

    The correction must rest on what the image shows: the evidence is written in
    a caption or in OCR text, the answer states it and denies the question, and
    the claimed knowledge is nowhere in that text (else it may be true)."""
    texts = [str(c) for c in (row.get("captions") or []) + [row.get("caption") or ""]]
    texts += [str(t.get("text") or "") for t in (row.get("ocr") or [])
              if t and (t.get("score") is None or t["score"] >= ocr_min_score)]
    seen = " \n ".join(texts).lower()
    if not _NEGATION.search(item.answer):
        return "llm_knowledge_not_denied"
    if item.evidence.lower() not in seen or item.evidence.lower() not in item.answer.lower():
        return "llm_knowledge_ungrounded"
    if item.claim.lower() in seen:
        return "llm_knowledge_claim_present"
    return None


def check_negative(item: NegativeItem, present: set[str]) -> str | None:
    """Reason code when a negative item is wrong on its own terms, else None.

    A "nonexistent" object that the annotations list is a false negative: exactly
    the hallucination-in-reverse we must not train on. An answer that never denies
    anything does not correct the false premise."""
    if item.kind == "nonexistent_object" and _singular(item.target) in present:
        return "llm_negative_present"
    if not _NEGATION.search(item.answer):
        return "llm_negative_not_denied"
    return None
