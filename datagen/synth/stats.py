"""Label frequency and co-occurrence over a whole dataset, for POPE-style negatives.

POPE's "popular" negatives are the most frequent categories absent from an
image and its "adversarial" negatives the absent categories that co-occur most
with the present ones. Both are dataset-level facts, but a step sees one batch
at a time, possibly in several processes. So the executor computes them once
(``label_stats_from_tables`` over the input, via ``SynthesizeStep.prepare``),
they are written as JSON into the run directory, and every worker reads the
same file. Counting is per image: an image with three dogs counts one dog.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from datagen.synth.lexicon import LEXICON


@dataclass
class LabelStats:
    images: int = 0
    frequency: Counter = field(default_factory=Counter)  # label -> images containing it
    cooccurrence: dict[str, Counter] = field(default_factory=dict)  # a -> b -> images with both
    existence_weights: dict[str, float] = field(default_factory=dict)  # label -> weight of a positive existence pick
    negative_weights: dict[str, float] = field(default_factory=dict)  # label -> weight of an absent-label pick

    def existence_weight(self, label: str) -> float:
        return self.existence_weights.get(label, 1.0)

    def negative_weight(self, label: str) -> float:
        return self.negative_weights.get(label, 1.0)

    def absent_odds(self, label: str) -> float:
        """How much more often a negative asks about ``label``: the odds of it being present."""
        f = self.frequency.get(label, 0)
        return (f + 0.5) / (max(self.images, 1) - f + 0.5)

    def add_image(self, labels: Iterable[str]) -> None:
        labs = sorted(set(labels))
        self.images += 1
        self.frequency.update(labs)
        for a, b in combinations(labs, 2):
            self.cooccurrence.setdefault(a, Counter())[b] += 1
            self.cooccurrence.setdefault(b, Counter())[a] += 1

    def popular_absent(self, present: set[str]) -> list[str]:
        """Absent categories, most frequent first (ties by name, so the order is stable)."""
        return sorted((lab for lab in LEXICON if lab not in present), key=lambda lab: (-self.frequency.get(lab, 0), lab))

    def adversarial_absent(self, present: set[str]) -> list[str]:
        """Absent categories ordered by how often they co-occur with the present ones."""

        def score(lab: str) -> int:
            return sum(self.cooccurrence.get(p, {}).get(lab, 0) for p in present)

        return sorted((lab for lab in LEXICON if lab not in present), key=lambda lab: (-score(lab), -self.frequency.get(lab, 0), lab))

    def to_json(self) -> dict:
        return {
            "images": self.images,
            "frequency": dict(sorted(self.frequency.items())),
            "cooccurrence": {a: dict(sorted(c.items())) for a, c in sorted(self.cooccurrence.items())},
            "existence_weights": self.existence_weights,
            "negative_weights": self.negative_weights,
        }

    @classmethod
    def from_json(cls, data: dict) -> "LabelStats":
        return cls(
            images=int(data["images"]),
            frequency=Counter(data["frequency"]),
            cooccurrence={a: Counter(c) for a, c in data["cooccurrence"].items()},
            existence_weights=dict(data.get("existence_weights") or {}),
            negative_weights=dict(data.get("negative_weights") or {}),
        )

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), sort_keys=True))
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> "LabelStats":
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a label stats file written by SynthesizeStep.prepare ({e})") from e


SAMPLE_COLUMNS = ("key", "width", "height", "objects", "captions", "caption", "ocr")


def label_stats_from_tables(tables: Iterable[pa.Table], sample: list[dict] | None = None, sample_size: int = 2000) -> LabelStats:
    """One pass over pair tables; reads only the ``objects`` column's labels (and, when a
    ``sample`` list is given, fills it with a reservoir sample of up to ``sample_size`` annotated
    rows, deterministic for a given input order, for fitting the existence weights)."""
    import random

    stats = LabelStats()
    rng = random.Random("label-stats-sample")
    seen = 0
    for table in tables:
        if "objects" not in table.column_names:
            continue
        cols = [c for c in SAMPLE_COLUMNS if c in table.column_names] if sample is not None else ["objects"]
        for row in table.select(cols).to_pylist():
            objs = row["objects"]
            if not objs:
                continue
            stats.add_image(o["label"] for o in objs if o.get("label") in LEXICON)
            if sample is not None:
                seen += 1
                if len(sample) < sample_size:
                    sample.append(row)
                else:
                    j = rng.randrange(seen)
                    if j < sample_size:
                        sample[j] = row
    return stats
