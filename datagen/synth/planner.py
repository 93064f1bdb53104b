"""Decide which items one image gets: polarity quota first, then families.

Why a quota and not a coin per item: the share of negatives over the output
must land within 2 points of the target whatever the batch size or the number
of processes. Each image gets ``n_neg = floor(k * target + u)`` negatives with
``u`` drawn from the image's own RNG (stochastic rounding): the expectation is
exact per image, so the sum over thousands of items stays within a fraction
of a point, and the result depends only on the image and the seed. When an
image has fewer distinct positive questions than its quota asks for, ``k``
shrinks so that the negatives shrink with it (same expected share).
"""

from __future__ import annotations

import math
import random
from itertools import permutations

from datagen.synth.config import NEGATIVE_FAMILIES, NEGATIVE_MODES, NEUTRAL_FAMILIES, POSITIVE_FAMILIES, SynthConfig
from datagen.synth.facts import OPPOSITE, ImageFacts, Obj, horizontal_relation, vertical_relation
from datagen.synth.items import COLOURS, WRONG_COLOUR_CHOICES, Item, inventory
from datagen.synth import scene
from datagen.synth.lexicon import LEXICON
from datagen.synth.stats import LabelStats


def _weighted(rng: random.Random, options: list[str], weights: dict[str, float] | SynthConfig) -> str | None:
    w = [weights.weight(o) if isinstance(weights, SynthConfig) else float(weights.get(o, 0.0)) for o in options]
    if not options or sum(w) <= 0:
        return None
    return rng.choices(options, weights=w, k=1)[0]


class Planner:
    """Enumerates the candidate items of one image and draws from them."""

    def __init__(self, facts: ImageFacts, config: SynthConfig, stats: LabelStats, rng: random.Random):
        self.f = facts
        self.cfg = config
        self.stats = stats
        self.rng = rng
        self.used: set[tuple] = set()
        self.used_absent: set[str] = set()
        self.uniq = facts.unique_objects()
        self.inv = inventory(facts.counts, facts.crowd)
        self.mode_counts: dict[str, int] = {}
        self._ranked: dict[str, list[str]] = {}

    # ------------------------------------------------------------ candidates per family

    def _spatial_pairs(self) -> list[tuple[Obj, Obj, str]]:
        out = []
        m = self.cfg.spatial_margin
        for a, b in permutations(self.uniq, 2):
            for rel in (horizontal_relation(a, b, self.f.width, m), vertical_relation(a, b, self.f.height, m)):
                if rel:
                    out.append((a, b, rel))
        return out

    def _size_pairs(self) -> list[tuple[Obj, Obj]]:
        return [(a, b) for a, b in permutations(self.uniq, 2) if a.area >= self.cfg.size_margin * b.area]

    def _coloured(self) -> list[Obj]:
        skip = set(self.cfg.attribute_skip_labels)
        return [o for o in self.uniq if o.label not in skip and any(a in COLOURS for a in o.attributes)]

    def positive_candidates(self) -> dict[str, int]:
        """How many distinct positive items each family could give (0: infeasible)."""
        f = self.f
        return {
            "existence": len(f.present),
            "counting": len(f.countable(self.cfg.max_count)),
            "spatial": len({(a.label, b.label) for a, b, _ in self._spatial_pairs()}),
            "relative_size": len(self._size_pairs()),
            "attribute": len(self._coloured()),
            "scene_text": 1 if f.ocr_texts else 0,
            **scene.positive_candidates(f.scene, self.cfg.box_format, set(self.cfg.attribute_skip_labels)),
        }

    # ------------------------------------------------------------------ absent labels

    def absent_label(self, mode: str) -> str | None:
        """An absent category not used yet in this image, sampled the POPE way ``mode``."""
        present = self.f.present
        if self.f.scene is not None and self.f.scene.open_vocab:
            # Open vocabulary: only COCO names no present synset relates to (no "animal" next to a dog).
            pool = [lab for lab in self.f.scene.absent_names() if lab in LEXICON and lab not in self.used_absent]
            if not pool:
                return None
            lab = self.rng.choice(pool)
            mode = "random"
        elif mode == "random":
            pool = sorted(lab for lab in LEXICON if lab not in present and lab not in self.used_absent)
            if not pool:
                return None
            lab = self.rng.choice(pool)
        else:
            if mode not in self._ranked:  # one ranking per image and mode
                self._ranked[mode] = self.stats.popular_absent(present) if mode == "popular" else self.stats.adversarial_absent(present)
            ranked = self._ranked[mode]
            lab = next((lab for lab in ranked if lab not in self.used_absent), None)
            if lab is None:
                return None
        self.used_absent.add(lab)
        self.mode_counts[mode] = self.mode_counts.get(mode, 0) + 1
        return lab

    def _mode(self) -> str:
        return _weighted(self.rng, list(NEGATIVE_MODES), self.cfg.negative_modes) or "random"

    # ------------------------------------------------------------------- item makers

    def make(self, family: str, polarity: str) -> Item | None:
        """One new item of ``family``/``polarity`` not asked before, or None if none is left."""
        rng, f, cfg = self.rng, self.f, self.cfg
        tries = []
        if family == "existence":
            if polarity == "positive":
                tries = [Item("existence", "positive", {"label": lab}) for lab in sorted(f.present)]
            else:
                mode = self._mode()
                lab = self.absent_label(mode)
                return self._new(Item("existence", "negative", {"label": lab, "mode": mode})) if lab else None
        elif family == "counting":
            tries = [Item("counting", "positive", {"label": lab, "count": f.counts[lab]}) for lab in f.countable(cfg.max_count)]
        elif family == "wrong_count":
            for lab in f.countable(cfg.max_count):
                n = f.counts[lab]
                wrong = [c for c in (n - 1, n + 1, n + 2) if c >= 2 and c != n]
                tries.append(Item("wrong_count", "negative", {"label": lab, "count": n, "claimed": rng.choice(wrong)}))
        elif family == "spatial":
            for a, b, rel in self._spatial_pairs():
                if polarity == "positive":
                    form = rng.choice(["yesno", "open"])
                    tries.append(Item("spatial", "positive", {"a": a.label, "b": b.label, "truth": rel, "asked": rel if form == "yesno" else None, "form": form}))
                else:
                    tries.append(Item("spatial", "negative", {"a": a.label, "b": b.label, "truth": rel, "asked": OPPOSITE[rel], "form": "yesno"}))
        elif family == "relative_size":
            for big, small in self._size_pairs():
                if polarity == "positive":
                    form = rng.choice(["yesno", "choice"])
                    cmp = rng.choice(["bigger", "larger", "smaller"])
                    if form == "choice":
                        a, b = (big, small) if rng.random() < 0.5 else (small, big)
                        winner = big if cmp != "smaller" else small
                        tries.append(Item("relative_size", "positive", {"a": a.label, "b": b.label, "asked": cmp, "winner": winner.label, "form": "choice"}))
                    else:
                        a, b = (big, small) if cmp != "smaller" else (small, big)
                        tries.append(Item("relative_size", "positive", {"a": a.label, "b": b.label, "asked": cmp, "form": "yesno"}))
                else:
                    cmp = rng.choice(["bigger", "larger", "smaller"])
                    a, b = (small, big) if cmp != "smaller" else (big, small)
                    tries.append(Item("relative_size", "negative", {"a": a.label, "b": b.label, "asked": cmp, "form": "yesno"}))
        elif family == "false_premise":
            mode = self._mode()
            lab = self.absent_label(mode)
            if lab is None:
                return None
            anchor = rng.choice(sorted(f.present)) if f.present and rng.random() < 0.6 else None
            return self._new(Item("false_premise", "negative", {"label": lab, "anchor": anchor, "mode": mode, "inventory": self.inv}))
        elif family == "attribute":
            for o in self._coloured():
                true = [a for a in o.attributes if a in COLOURS]
                true_zh = {COLOURS[a] for a in true}
                if polarity == "positive":
                    tries.append(Item("attribute", "positive", {"label": o.label, "asked": rng.choice(true), "true": true, "form": "yesno"}))
                else:
                    wrong = [c for c in WRONG_COLOUR_CHOICES if COLOURS[c] not in true_zh]
                    form = rng.choice(["yesno", "premise"])
                    tries.append(Item("attribute", "negative", {"label": o.label, "asked": rng.choice(wrong), "true": true, "form": form}))
        elif family in scene.FAMILIES:
            tries = scene.scene_items(f.scene, family, polarity, rng, cfg.box_format, self.used_absent, set(cfg.attribute_skip_labels))
            if family == "grounding" and polarity == "negative":
                self.used_absent.update(it.facts["label"] for it in tries)
        elif family == "scene_text":
            if f.ocr_texts:
                tries = [Item("scene_text", "positive", {"texts": f.ocr_texts[:3]})]
        else:
            raise ValueError(f"unknown family {family!r}")
        rng.shuffle(tries)
        for it in tries:
            if it.identity not in self.used:
                return self._new(it)
        return None

    def _new(self, item: Item) -> Item:
        self.used.add(item.identity)
        return item

    def neutral(self, family: str) -> Item | None:
        f = self.f
        zh_caps = [c for c in f.captions if _has_cjk(c)]
        en_caps = [c for c in f.captions if not _has_cjk(c)]
        relations = []
        if family == "detailed_description":
            pairs = self._spatial_pairs()
            self.rng.shuffle(pairs)
            seen = set()
            for a, b, rel in pairs:
                if (b.label, a.label) not in seen and (a.label, b.label) not in seen:
                    seen.add((a.label, b.label))
                    relations.append((a.label, rel, b.label))
                if len(relations) == 2:
                    break
        if family == "brief_description":
            caps, zcaps = ([self.rng.choice(en_caps)] if en_caps else []), ([self.rng.choice(zh_caps)] if zh_caps else [])
        else:
            caps = self.rng.sample(en_caps, min(3, len(en_caps)))
            zcaps = zh_caps[:2]
        item = Item(family, "neutral", {"captions": caps, "zh_captions": zcaps, "inventory": self.inv, "relations": relations})
        if not (caps or zcaps or self.inv) or item.identity in self.used:
            return None
        return self._new(item)

    # ----------------------------------------------------------------------- the plan

    def plan(self) -> list[Item]:
        cfg, rng = self.cfg, self.rng
        items: list[Item] = []
        if self.f.objects or self.f.scene is not None:
            target_neg = 1.0 - cfg.positive_ratio
            k = cfg.items_per_image
            pos_cap = sum(self.positive_candidates().values())
            u = rng.random()
            n_neg = math.floor(k * target_neg + u)
            n_pos = k - n_neg
            if n_pos > pos_cap:
                n_pos = pos_cap
                n_neg = math.floor(n_pos * target_neg / (1 - target_neg) + u) if target_neg < 1 else k
            for polarity, n, families in (("positive", n_pos, POSITIVE_FAMILIES), ("negative", n_neg, NEGATIVE_FAMILIES)):
                for _ in range(n):
                    item = None
                    fams = list(families)
                    while item is None and fams:
                        fam = _weighted(rng, fams, cfg)
                        if fam is None:
                            break
                        item = self.make(fam, polarity)
                        if item is None:
                            fams.remove(fam)
                    if item is None:  # the fallback that is always feasible for an annotated image
                        item = self.make("existence", polarity)
                    if item is not None:
                        items.append(item)
        for _ in range(cfg.neutral_items_per_image):
            fam = _weighted(rng, list(NEUTRAL_FAMILIES), cfg)
            item = self.neutral(fam) if fam else None
            if item is None and fam:
                other = [x for x in NEUTRAL_FAMILIES if x != fam][0]
                item = self.neutral(other)
            if item is not None:
                items.append(item)
        return items


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)
