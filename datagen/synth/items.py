"""Language-free instruction items: what to ask about one image, before wording.

An item is a family, a polarity and the facts its answer rests on. Planning
items once and rendering them in each language natively (templates_en /
templates_zh) is what makes the English and Chinese conversations twins
without translating one from the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Colour attributes the templates can use, with context-correct Chinese.
# Only colours: swapping one colour for another gives a wrong attribute that is
# certainly wrong, which is not true of e.g. "large" vs "big".
COLOURS: dict[str, str] = {
    "red": "红色",
    "white": "白色",
    "black": "黑色",
    "blue": "蓝色",
    "green": "绿色",
    "yellow": "黄色",
    "brown": "棕色",
    "gray": "灰色",
    "grey": "灰色",
    "orange": "橙色",
    "pink": "粉色",
    "purple": "紫色",
    "silver": "银色",
}
# The colours offered as wrong attributes (one spelling each).
WRONG_COLOUR_CHOICES = ("red", "white", "black", "blue", "green", "yellow", "brown", "gray", "pink", "purple")


@dataclass
class Item:
    family: str
    polarity: str  # positive | negative | neutral
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> tuple:
        """What makes two items the same question, so an image never gets it twice."""
        f = self.facts
        keys = {
            "existence": ("label",),
            "counting": ("label",),
            "wrong_count": ("label",),
            "spatial": ("pair",),
            "relative_size": ("a", "b"),
            "false_premise": ("label",),
            "attribute": ("label",),
            "scene_text": ("polarity",),
            "brief_description": (),
            "detailed_description": (),
        }[self.family]
        # A spatial pair is one question whichever way round it is asked: never state it reversed.
        extra = {"pair": tuple(sorted((f.get("a", ""), f.get("b", "")))), "polarity": self.polarity}
        return (self.family, *(extra[k] if k in extra else f[k] for k in keys))


def inventory(counts: dict[str, int], crowd: set[str], hidden: set[str] = frozenset(),
              visible: set[str] | None = None) -> list[tuple[str, int | str]]:
    """(label, count) for the categories one can make out; count "many" where a crowd region
    makes it unknown, "some" where a too-small instance makes it uncertain. Labels with no
    visible instance are left out (the list is what one sees, never a claim of completeness).

    Ordered by count (larger first) then name, so descriptions read naturally and stably."""
    inv: list[tuple[str, int | str]] = []
    for lab in set(counts) | set(crowd):
        if visible is not None and lab not in visible:
            continue
        inv.append((lab, "many" if lab in crowd else "some" if lab in hidden else counts[lab]))
    rank = {"many": 1000, "some": 999}
    return sorted(inv, key=lambda t: (-(rank[t[1]] if isinstance(t[1], str) else t[1]), t[0]))
