"""Decide which items one image gets: polarity quota first, then families.

Why a quota and not a coin per item: the share of negatives over the output
must land within 2 points of the target whatever the batch size or the number
of processes. Each image gets ``n_neg = floor(k * target + u)`` negatives with
``u`` drawn from the image's own RNG (stochastic rounding): the expectation is
exact per image, so the sum over thousands of items stays within a fraction
of a point, and the result depends only on the image and the seed. When an
image has fewer distinct positive questions than its quota asks for, ``k``
shrinks so that the negatives shrink with it (same expected share).

Why twins: the quota balances the output as a whole, but a family whose
negatives are easier to make than its positives (any absent label makes an
existence negative) would still lean to "no", and "Is the bus white?" would
lean to "yes" if only positives had a yes/no form. So each negative yes/no
question is planned together with a positive yes/no question of the same
family (or not at all), and the remaining positives prefer open forms. Which
label a yes/no existence question names is weighted per label (fitted once
over the input, ``fit_existence_weights``) so that balance holds per label too.
"""

from __future__ import annotations

import math
import random
from itertools import combinations, permutations

from datagen.synth.config import NEGATIVE_FAMILIES, NEGATIVE_MODES, NEUTRAL_FAMILIES, POSITIVE_FAMILIES, SynthConfig
from datagen.synth.facts import OPPOSITE, ImageFacts, Obj, spatial_relation
from datagen.synth.items import COLOURS, WRONG_COLOUR_CHOICES, Item, inventory
from datagen.synth.lexicon import LEXICON
from datagen.synth.stats import LabelStats


def is_yesno(item: Item) -> bool:
    """A yes/no question. A negative one is planned together with a positive one of the same
    family, so that each family's answers are about half "yes"."""
    return item.facts.get("form") == "yesno"


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
        self.inv = inventory(facts.counts, facts.crowd, facts.hidden, facts.visible)
        self.mode_counts: dict[str, int] = {}
        self._ranked: dict[str, list[str]] = {}

    # ------------------------------------------------------------ candidates per family

    def _spatial_pairs(self) -> list[tuple[Obj, Obj, str]]:
        """One relation per unordered pair (on its dominant axis), in a random direction: a pair
        is never stated twice, once reversed."""
        out = []
        for a, b in combinations(self.uniq, 2):
            if self.rng.random() < 0.5:
                a, b = b, a
            rel = spatial_relation(a, b, self.f.width, self.f.height, self.f.geo)
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
            "existence": len(f.visible),
            "counting": len(f.countable(self.cfg.max_count)),
            "spatial": len({(a.label, b.label) for a, b, _ in self._spatial_pairs()}),
            "relative_size": len(self._size_pairs()),
            "attribute": len(self._coloured()),
            "scene_text": len(f.ocr_texts[:1]),
        }

    # ------------------------------------------------------------------ absent labels

    def absent_label(self, mode: str) -> str | None:
        """An absent category not used yet in this image, sampled the POPE way ``mode``: random
        (uniform), popular or adversarial (uniform over the top ``popular_top_k`` of the ranking).
        Categories the captions name are not absent, whatever the boxes say."""
        excluded = self.f.not_absent() | self.used_absent
        if mode == "random":
            pool = sorted(lab for lab in LEXICON if lab not in excluded)
        else:
            if mode not in self._ranked:  # one ranking per image and mode
                present = self.f.present
                self._ranked[mode] = self.stats.popular_absent(present) if mode == "popular" else self.stats.adversarial_absent(present)
            pool = [lab for lab in self._ranked[mode] if lab not in excluded][: self.cfg.popular_top_k]
        if not pool:
            return None
        # Weighted by the odds of the label being present (frequent labels more often): positive
        # questions ask about labels in proportion to how often they occur, so negatives must too,
        # or "Is there a person?" would be mostly "no" while rare labels were mostly "yes".
        weights = [self.stats.absent_odds(lab) * self.stats.negative_weight(lab) for lab in pool]
        lab = self.rng.choices(pool, weights=weights, k=1)[0]
        self.used_absent.add(lab)
        self.mode_counts[mode] = self.mode_counts.get(mode, 0) + 1
        return lab

    def _mode(self) -> str:
        return _weighted(self.rng, list(NEGATIVE_MODES), self.cfg.negative_modes) or "random"

    # ------------------------------------------------------------------- item makers

    def make(self, family: str, polarity: str, yesno: bool | None = None) -> Item | None:
        """One new item of ``family``/``polarity`` not asked before, or None if none is left.
        ``yesno`` True/False restricts to yes/no questions or to the other forms; None: either."""
        rng, f, cfg = self.rng, self.f, self.cfg

        def form(yes_no_form: str, other: str | None) -> str | None:
            options = [x for x, ok in ((yes_no_form, yesno is not False), (other, yesno is not True)) if x and ok]
            return rng.choice(options) if options else None

        tries = []
        if family == "existence":
            if yesno is False:
                return None
            if polarity == "positive":
                # Weighted draw without replacement (keys u^(1/w)): labels that negatives ask about
                # often are asked about positively as often (LabelStats.balance_existence).
                keyed = sorted(sorted(f.visible), key=lambda lab: -rng.random() ** (1.0 / self.stats.existence_weight(lab)))
                for lab in keyed:
                    it = Item("existence", "positive", {"label": lab, "form": "yesno"})
                    if it.identity not in self.used:
                        return self._new(it)
                return None
            else:
                mode = self._mode()
                lab = self.absent_label(mode)
                return self._new(Item("existence", "negative", {"label": lab, "mode": mode, "form": "yesno"})) if lab else None
        elif family == "counting":
            if yesno is True:
                return None
            tries = [Item("counting", "positive", {"label": lab, "count": f.counts[lab], "form": "open"}) for lab in f.countable(cfg.max_count)]
        elif family == "wrong_count":
            if yesno is True:
                return None
            for lab in f.countable(cfg.max_count):
                n = f.counts[lab]
                wrong = [c for c in (n - 1, n + 1, n + 2) if c >= 2 and c != n]
                tries.append(Item("wrong_count", "negative", {"label": lab, "count": n, "claimed": rng.choice(wrong), "form": "premise"}))
        elif family == "spatial":
            for a, b, rel in self._spatial_pairs():
                fm = form("yesno", "open" if polarity == "positive" else None)
                if fm is None:
                    continue
                if polarity == "positive":
                    tries.append(Item("spatial", "positive", {"a": a.label, "b": b.label, "truth": rel, "asked": rel if fm == "yesno" else None, "form": fm}))
                else:
                    tries.append(Item("spatial", "negative", {"a": a.label, "b": b.label, "truth": rel, "asked": OPPOSITE[rel], "form": "yesno"}))
        elif family == "relative_size":
            for big, small in self._size_pairs():
                cmp = rng.choice(["bigger", "larger", "smaller"])
                if polarity == "positive":
                    fm = form("yesno", "choice")
                    if fm == "choice":
                        a, b = (big, small) if rng.random() < 0.5 else (small, big)
                        winner = big if cmp != "smaller" else small
                        tries.append(Item("relative_size", "positive", {"a": a.label, "b": b.label, "asked": cmp, "winner": winner.label, "form": "choice"}))
                    elif fm == "yesno":
                        a, b = (big, small) if cmp != "smaller" else (small, big)
                        tries.append(Item("relative_size", "positive", {"a": a.label, "b": b.label, "asked": cmp, "form": "yesno"}))
                elif yesno is not False:
                    a, b = (small, big) if cmp != "smaller" else (big, small)
                    tries.append(Item("relative_size", "negative", {"a": a.label, "b": b.label, "asked": cmp, "form": "yesno"}))
        elif family == "false_premise":
            if yesno is True:
                return None
            mode = self._mode()
            lab = self.absent_label(mode)
            if lab is None:
                return None
            anchors = sorted(f.visible)
            anchor = rng.choice(anchors) if anchors and rng.random() < 0.6 else None
            return self._new(Item("false_premise", "negative", {"label": lab, "anchor": anchor, "mode": mode, "inventory": self.inv, "form": "premise"}))
        elif family == "attribute":
            for o in self._coloured():
                true = [a for a in o.attributes if a in COLOURS]
                true_zh = {COLOURS[a] for a in true}
                if polarity == "positive":
                    fm = form("yesno", "open")
                    if fm:
                        tries.append(Item("attribute", "positive", {"label": o.label, "asked": rng.choice(true) if fm == "yesno" else None, "true": true, "form": fm}))
                else:
                    fm = form("yesno", "premise")
                    wrong = [c for c in WRONG_COLOUR_CHOICES if COLOURS[c] not in true_zh]
                    if fm:
                        tries.append(Item("attribute", "negative", {"label": o.label, "asked": rng.choice(wrong), "true": true, "form": fm}))
        elif family == "scene_text":
            texts = f.ocr_texts[:3]
            if polarity == "positive" and texts:
                fm = form("yesno", "open")
                if fm:
                    tries = [Item("scene_text", "positive", {"texts": texts, "asked": rng.choice(texts) if fm == "yesno" else None, "form": fm})]
            elif polarity == "negative":
                if texts and yesno is not False:
                    wrong = [w for w in SIGN_WORDS if all(not _similar(w, t) for t in f.ocr_texts)]
                    tries = [Item("scene_text", "negative", {"texts": texts, "asked": rng.choice(wrong), "form": "yesno"})]
                elif not texts and f.ocr_ran and not f.ocr_dropped and yesno is not True and rng.random() < 0.3:
                    # OCR ran and saw nothing at all: a question that presumes text has a false premise.
                    tries = [Item("scene_text", "negative", {"texts": [], "asked": None, "form": "premise"})]
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
            for a, b, rel in pairs:
                if ("spatial", tuple(sorted((a.label, b.label)))) in self.used:
                    continue  # already asked about in this image: never state a pair twice
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

    def _snapshot(self) -> tuple:
        return set(self.used), set(self.used_absent), dict(self.mode_counts)

    def _restore(self, snap: tuple) -> None:
        self.used, self.used_absent, self.mode_counts = set(snap[0]), set(snap[1]), dict(snap[2])

    def _fill(self, polarity: str, families: tuple[str, ...], yesno: bool | None) -> Item | None:
        fams = list(families)
        while fams:
            fam = _weighted(self.rng, fams, self.cfg)
            if fam is None:
                return None
            item = self.make(fam, polarity, yesno)
            if item is not None:
                return item
            fams.remove(fam)
        return None

    def plan(self) -> list[Item]:
        """Negatives first; each negative yes/no question brings a positive yes/no question of the
        same family (so every family's yes share stays near one half); the remaining positive slots
        prefer open forms ("Where is...", "How many...") over yes/no."""
        cfg, rng = self.cfg, self.rng
        items: list[Item] = []
        if self.f.objects:
            target_neg = 1.0 - cfg.positive_ratio
            k = cfg.items_per_image
            pos_cap = sum(self.positive_candidates().values())
            u = rng.random()
            n_neg = math.floor(k * target_neg + u)
            n_pos = k - n_neg
            if n_pos > pos_cap:
                n_pos = pos_cap
                n_neg = math.floor(n_pos * target_neg / (1 - target_neg) + u) if target_neg < 1 else k
            negatives: list[Item] = []
            positives: list[Item] = []
            for _ in range(n_neg):
                fams = list(NEGATIVE_FAMILIES)
                item = None
                while fams and item is None:
                    fam = _weighted(rng, fams, cfg)
                    if fam is None:
                        break
                    snap = self._snapshot()
                    item = self.make(fam, "negative")
                    if item is not None and is_yesno(item) and len(positives) < n_pos:
                        twin = self.make(fam, "positive", yesno=True)
                        if twin is None:  # no positive yes/no left in this family: do not tilt it
                            self._restore(snap)
                            item = None
                        else:
                            positives.append(twin)
                    if item is None:
                        fams.remove(fam)
                if item is None and self.f.objects:  # the fallback that is always feasible for an annotated image
                    item = self.make("existence", "negative")
                if item is not None:
                    negatives.append(item)
            open_families = tuple(f for f in POSITIVE_FAMILIES if f != "existence")
            while len(positives) < n_pos:
                item = self._fill("positive", open_families, yesno=False) or self._fill("positive", POSITIVE_FAMILIES, None)
                if item is None:
                    break
                positives.append(item)
            items = negatives + positives
        for _ in range(cfg.neutral_items_per_image):
            fam = _weighted(rng, list(NEUTRAL_FAMILIES), cfg)
            item = self.neutral(fam) if fam else None
            if item is None and fam:
                other = [x for x in NEUTRAL_FAMILIES if x != fam][0]
                item = self.neutral(other)
            if item is not None:
                items.append(item)
        return items


def fit_existence_weights(stats: LabelStats, rows: list[dict], config: SynthConfig, rng_for=None, rounds: int = 8) -> dict[str, float]:
    """Per-label weights for the positive existence pick and for the absent-label pick, fitted so
    that every label is answered "yes" about as often as "no". Negatives follow POPE's samplers
    (popular ones favour frequent labels), so with uniform picks "Is there a person?" would be
    mostly "no". Each round plans a sample of images with the current weights and moves every
    label's two weights apart by its observed no/yes ratio; the round with the smallest worst
    deviation among labels asked about at least 20 times is kept. ``rng_for(key)`` gives the
    planner's own random stream for an image (the step passes the one ``process`` uses), so on
    the sampled images the real run makes exactly the choices of the kept round. Stored in
    ``stats`` (and so in the label stats file every worker reads)."""
    from collections import Counter

    from datagen.synth.facts import BadAnnotation, Geometry, OcrRules, facts_from_row

    geo, ocr = Geometry.from_config(config), OcrRules.from_config(config)
    rng_for = rng_for or (lambda key: random.Random(f"fit:{config.seed}:{key}"))
    facts = []
    for r in rows:
        try:
            facts.append(facts_from_row(r, ocr, geo))
        except BadAnnotation:
            continue
    weights: dict[str, float] = {}
    neg_weights: dict[str, float] = {}
    best: tuple[float, dict, dict] | None = None
    for _ in range(rounds):
        stats.existence_weights = dict(weights)
        stats.negative_weights = dict(neg_weights)
        yes: Counter = Counter()
        no: Counter = Counter()
        for f in facts:
            for it in Planner(f, config, stats, rng_for(f.key)).plan():
                if it.family == "existence":
                    (yes if it.polarity == "positive" else no)[it.facts["label"]] += 1
        asked = [lab for lab in set(yes) | set(no) if yes[lab] + no[lab] >= 20]
        worst = max((abs(yes[lab] / (yes[lab] + no[lab]) - 0.5) for lab in asked), default=0.0)
        if best is None or worst < best[0]:
            best = (worst, dict(weights), dict(neg_weights))
        for lab in set(yes) | set(no):
            ratio = (no[lab] + 1.0) / (yes[lab] + 1.0)
            weights[lab] = round(min(100.0, max(0.01, weights.get(lab, 1.0) * ratio ** 0.8)), 4)
            neg_weights[lab] = round(min(100.0, max(0.01, neg_weights.get(lab, 1.0) / ratio ** 0.8)), 4)
    _, weights, neg_weights = best if best else (0.0, {}, {})
    stats.existence_weights = dict(sorted(weights.items()))
    stats.negative_weights = dict(sorted(neg_weights.items()))
    return stats.existence_weights


# Words a sign plausibly says, offered as the wrong reading in scene-text negatives.
SIGN_WORDS = ("STOP", "EXIT", "OPEN", "CLOSED", "SALE", "HOTEL", "PARKING", "ONE WAY", "PUSH", "WELCOME", "TAXI", "CAFE")


def _similar(a: str, b: str) -> bool:
    """Too close to serve as a wrong reading: shares a word, or nearly the same letters."""
    from difflib import SequenceMatcher

    wa, wb = set(a.lower().split()), set(b.lower().split())
    return bool(wa & wb) or SequenceMatcher(None, a.lower(), b.lower()).ratio() >= 0.5


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)
