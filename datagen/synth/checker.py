"""Independent checker: re-derive every template answer from the text and the annotations.

It shares no code path with generation. It never reads the planner's facts:
it reads the rendered question back (category words through the lexicon's
surface forms, number words, relation and colour words), recomputes the truth
from the raw ``objects`` of the pair row (its own counts, crowd handling, box
geometry with the configured margins) and compares with what the rendered
answer says (its verdict, its first number, its stated relation/colour/list).
Only the turn's ``task`` label is used, to know which reading to apply.

Use it as a gate on template output (``check_tables`` -> list of
disagreements; zero expected) and in tests by corrupting an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import pyarrow as pa

from datagen.synth import scene_checker
from datagen.synth.items import COLOURS
from datagen.synth.lexicon import EN_NUMBER_WORDS, LEXICON, parse_zh_number

# ------------------------------------------------------------------------ vocabulary

_EN_FORMS: dict[str, str] = {}
for _lab, _t in LEXICON.items():
    _EN_FORMS[_t.en.lower()] = _lab
    _EN_FORMS[_t.en_plural.lower()] = _lab
_ZH_FORMS = {t.zh: lab for lab, t in LEXICON.items()}
_EN_CAT = "|".join(re.escape(f) for f in sorted(_EN_FORMS, key=len, reverse=True))
_ZH_CAT = "|".join(re.escape(f) for f in sorted(_ZH_FORMS, key=len, reverse=True))
EN_CAT_RE = re.compile(rf"\b({_EN_CAT})\b")  # matched against lower-cased text: much faster than IGNORECASE
ZH_CAT_RE = re.compile(rf"({_ZH_CAT})")
_NUM = "|".join(sorted(EN_NUMBER_WORDS, key=len, reverse=True)) + r"|\d+"
EN_NUM_RE = re.compile(rf"\b({_NUM})\b", re.IGNORECASE)
_MEASURES = "".join(sorted({t.zh_measure for t in LEXICON.values()}))
ZH_NUM_RE = re.compile(rf"([零一二两三四五六七八九十]+|\d+)([{_MEASURES}])({_ZH_CAT})?")
_COL_EN = "|".join(sorted(COLOURS, key=len, reverse=True))
_COL_ZH = "|".join(sorted(set(COLOURS.values()), key=len, reverse=True))
EN_REL = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
ZH_REL = {"左边": "left", "右边": "right", "上方": "above", "下方": "below"}
EN_REL_RE = re.compile(r"(to the left of|to the right of|\babove\b|\bbelow\b)", re.IGNORECASE)
ZH_REL_RE = re.compile("(左边|右边|上方|下方)")


def _templated(turn: dict) -> bool:
    """Template output ("template", or "template:caption" for caption descriptions a recipe may translate)."""
    g = turn.get("generator") or ""
    return g == "template" or g.startswith("template:")


def _en_num(word: str) -> int:
    w = word.lower()
    return int(w) if w.isdigit() else EN_NUMBER_WORDS[w]


def en_categories(text: str) -> list[str]:
    return [_EN_FORMS[m.group(1)] for m in EN_CAT_RE.finditer(text.lower())]


def zh_categories(text: str) -> list[str]:
    return [_ZH_FORMS[m.group(1)] for m in ZH_CAT_RE.finditer(text)]


def verdict(answer: str, lang: str) -> bool | None:
    a = answer.strip()
    if lang == "en":
        low = a.lower()
        if re.match(r"(no\b|there (is|are) no\b|actually\b|i count\b|i don't\b|none\b)", low):
            return False
        if low.startswith("yes"):
            return True
        return None
    if a.startswith(("没有", "不", "其实", "图中没有", "画面里没有")):
        return False
    if a.startswith(("是", "有", "对", "能")):
        return True
    return None


ACTIVITY_EN = re.compile(r"\b(doing|why|up to)\b|looking at\?", re.IGNORECASE)
ACTIVITY_ZH = re.compile("做什么|干什么|为什么|在看什么")
COLOUR_Q_EN = re.compile(r"\bcolou?r\b", re.IGNORECASE)


def is_animate(lab: str) -> bool:
    return LEXICON[lab].supercategory in ("person", "animal")


def zh_question_verb(q: str) -> str:
    """The verb a Chinese yes/no question asks with, read from the question without its category
    names or quoted text: 能 (can), 有 (have), otherwise 是 (be)."""
    core = re.sub("“[^”]*”", "§", ZH_CAT_RE.sub("§", q))
    if "能" in core:
        return "能"
    if "有" in core:
        return "有"
    return "是"


def zh_verb_problems(q: str, a: str) -> list[str]:
    verb = zh_question_verb(q)
    openings = {"能": ("能", "不能"), "有": ("有", "没有"), "是": ("是", "不是")}[verb]
    return [] if a.startswith(openings) else [f"answer {a[:6]!r} does not mirror the question's verb {verb}"]


def first_count(answer: str, lang: str) -> int | None:
    if lang == "en":
        m = EN_NUM_RE.search(answer)
        return _en_num(m.group(1)) if m else None
    m = ZH_NUM_RE.search(answer)
    return parse_zh_number(m.group(1)) if m else None


# ----------------------------------------------------------------------- annotations

def _edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / longer length (its own measure, not the generator's difflib)."""
    a, b = a.lower(), b.lower()
    if not a or not b:
        return 0.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1 - prev[-1] / max(len(a), len(b))


def _tokens(text: str) -> list[str]:
    return re.findall(r"[0-9a-z]+|[\u4e00-\u9fff]", text.lower())


@dataclass
class Truth:
    """The checker's own reading of one pair row's annotations."""

    width: float
    height: float
    present: set[str]
    counts: dict[str, int]
    crowd: set[str]
    boxes: dict[str, list[list[float]]]
    attrs: dict[str, set[str]]
    ocr: list[dict]  # every OCR line as given: text, score, bbox
    captions: list[str]
    ocr_ran: bool = False
    raw: dict | None = None  # the pair row itself, for the scene families (scene_checker)

    @classmethod
    def from_row(cls, row: dict[str, Any], ocr_min_score: float = 0.0) -> "Truth":
        present, counts, crowd, boxes, attrs = set(), {}, set(), {}, {}
        for o in row.get("objects") or []:
            lab = o["label"]
            present.add(lab)
            if o.get("iscrowd"):
                crowd.add(lab)
                continue
            counts[lab] = counts.get(lab, 0) + 1
            boxes.setdefault(lab, []).append(list(o["bbox"]))
            attrs.setdefault(lab, set()).update(COLOURS.get(a.lower(), a.lower()) for a in (o.get("attributes") or []))
        ocr = [{"text": " ".join(str(x.get("text") or "").split()), "score": x.get("score"), "bbox": x.get("bbox")} for x in (row.get("ocr") or [])]
        caps = row.get("captions") or ([row["caption"]] if row.get("caption") else [])
        norm = []
        for c in caps:
            c = " ".join(str(c).split())
            if c:
                c = c[0].upper() + c[1:]
                norm.append(c if c[-1] in ".!?。！？" else c + ("。" if "\u4e00" <= c[-1] <= "\u9fff" else "."))
        present |= scene_checker.implied_present(row)  # open vocabulary: no "animal" absent next to a dog
        return cls(float(row.get("width") or 0), float(row.get("height") or 0), present, counts, crowd, boxes, attrs, ocr, norm,
                   isinstance(row.get("ocr"), list), row)

    def unique(self, lab: str) -> bool:
        return self.counts.get(lab) == 1 and lab not in self.crowd

    def centre(self, lab: str) -> tuple[float, float]:
        x, y, w, h = self.boxes[lab][0]
        return x + w / 2, y + h / 2

    def area(self, lab: str) -> float:
        return self.boxes[lab][0][2] * self.boxes[lab][0][3]

    def box_visible(self, box: list[float], min_share: float, min_side: float, min_edge: float) -> bool:
        x, y, w, h = box
        if w * h < min_share * self.width * self.height or w < min_side * self.width or h < min_side * self.height:
            return False
        # a thin strip along the frame: the object is mostly outside the picture
        if (x <= 1 or x + w >= self.width - 1) and w < min_edge * self.width:
            return False
        return not ((y <= 1 or y + h >= self.height - 1) and h < min_edge * self.height)

    @cached_property
    def _named(self) -> set[str]:
        text = " ".join(self.captions)
        return set(en_categories(text)) | set(zh_categories(text))

    def named_in_captions(self, lab: str) -> bool:
        """The category's own English or Chinese name occurs in a caption, read longest-first (网球拍
        is a tennis racket, not a 球): a weaker test than the generator's synonym list, so every
        label it flags the generator also avoids."""
        return lab in self._named


# The pair-row columns the checker reads (meta: Visual Genome relationships and regions).
PAIR_COLUMNS = ("key", "width", "height", "objects", "captions", "caption", "ocr", "meta")


@dataclass
class Disagreement:
    key: str
    conversation: str
    turn: int
    task: str
    problem: str
    question: str
    answer: str


class Checker:
    def __init__(self, spatial_margin: float = 0.1, size_margin: float = 2.0, ocr_min_score: float = 0.7, max_count: int = 10,
                 spatial_dominance: float = 2.0, spatial_max_overlap: float = 0.5, stuff_labels: Iterable[str] = ("dining table", "bed", "couch"),
                 stuff_share: float = 0.6, min_object_share: float = 0.005, min_object_side: float = 0.02,
                 ocr_min_height: float = 12.0, ocr_caption_match: float = 0.8, min_edge_side: float = 0.12):
        self.spatial_margin = spatial_margin
        self.size_margin = size_margin
        self.ocr_min_score = ocr_min_score
        self.max_count = max_count
        self.spatial_dominance = spatial_dominance
        self.spatial_max_overlap = spatial_max_overlap
        self.stuff_labels = set(stuff_labels)
        self.stuff_share = stuff_share
        self.min_object_share = min_object_share
        self.min_object_side = min_object_side
        self.min_edge_side = min_edge_side
        self.ocr_min_height = ocr_min_height
        # Its own edit-distance measure, with slack below the generator's difflib threshold (a
        # difflib ratio of 0.8 implies an edit similarity of at least about 0.67 when one string
        # only adds letters): it flags text the captions clearly do not support ("YAMANS" against
        # "Yamaha": 0.67).
        self.ocr_caption_match = max(0.0, ocr_caption_match - 0.1)

    @classmethod
    def from_config(cls, cfg) -> "Checker":
        return cls(cfg.spatial_margin, cfg.size_margin, cfg.ocr_min_score, cfg.max_count, cfg.spatial_dominance,
                   cfg.spatial_max_overlap, cfg.stuff_labels, cfg.stuff_share, cfg.min_object_share, cfg.min_object_side,
                   cfg.ocr_min_height, cfg.ocr_caption_match, cfg.min_edge_side)

    # ------------------------------------------------------------------- visibility

    def visible(self, t: Truth, lab: str) -> bool:
        """At least one instance big enough to ask about (a crowd region counts as visible)."""
        return lab in t.crowd or any(t.box_visible(b, self.min_object_share, self.min_object_side, self.min_edge_side) for b in t.boxes.get(lab, []))

    def fully_visible(self, t: Truth, lab: str) -> bool:
        """Every instance big enough: only then is a count something one can see."""
        return all(t.box_visible(b, self.min_object_share, self.min_object_side, self.min_edge_side) for b in t.boxes.get(lab, []))

    def trusted_text(self, t: Truth, text: str) -> bool:
        """An OCR line with this text passes score and size, and agrees with the captions if any."""
        for line in t.ocr:
            if line["text"] != text:
                continue
            if line["score"] is not None and line["score"] < self.ocr_min_score:
                continue
            box = line["bbox"]
            if box is not None and len(box) == 4 and min(box[2], box[3]) < self.ocr_min_height:
                continue
            if t.captions:
                target = "".join(_tokens(text))
                n = len(_tokens(text))
                ok = False
                for cap in t.captions:
                    ws = _tokens(cap)
                    for size in range(max(1, n - 1), n + 2):
                        for i in range(max(1, len(ws) - size + 1)):
                            if _edit_similarity(target, "".join(ws[i:i + size])) >= self.ocr_caption_match:
                                ok = True
                if not ok:
                    continue
            return True
        return False

    # ------------------------------------------------------------------- relations

    def relation(self, t: Truth, a: str, b: str, rel: str) -> bool | None:
        """True/False when a careful annotator would call it, None when not safe to state: a
        whole-image stuff box, boxes that overlap a lot (containment), an offset within the
        margin, or an axis that does not dominate the other."""
        ba, bb = t.boxes[a][0], t.boxes[b][0]
        img = t.width * t.height
        for lab, box in ((a, ba), (b, bb)):
            if lab in self.stuff_labels and box[2] * box[3] >= self.stuff_share * img:
                return None
        ix = max(0.0, min(ba[0] + ba[2], bb[0] + bb[2]) - max(ba[0], bb[0]))
        iy = max(0.0, min(ba[1] + ba[3], bb[1] + bb[3]) - max(ba[1], bb[1]))
        if ix * iy > self.spatial_max_overlap * min(ba[2] * ba[3], bb[2] * bb[3]):
            return None
        (ax, ay), (bx, by) = t.centre(a), t.centre(b)
        horizontal = rel in ("left", "right")
        d, other = (ax - bx, ay - by) if horizontal else (ay - by, ax - bx)
        side = t.width if horizontal else t.height
        if abs(d) / side <= self.spatial_margin or abs(d) < self.spatial_dominance * abs(other):
            return None
        return (d < 0) if rel in ("left", "above") else (d > 0)

    def bigger(self, t: Truth, a: str, b: str) -> bool | None:
        ra, rb = t.area(a), t.area(b)
        if ra >= self.size_margin * rb:
            return True
        if rb >= self.size_margin * ra:
            return False
        return None

    # ------------------------------------------------------------------- inventory

    def inventory_problems(self, t: Truth, phrase: str, lang: str) -> list[str]:
        """Every listed category is there and visible, with its right count ("many": a crowd
        region; "some": a count the checker cannot confirm either). No claim of completeness."""
        items: dict[str, int | str] = {}
        if lang == "en":
            for part in re.split(r", | and ", phrase):
                part = part.strip()
                if part.lower() == "a crowd of people":
                    items["person"] = "many"
                    continue
                m = re.fullmatch(rf"(many|some|an?|{_NUM}) ({_EN_CAT})", part, re.IGNORECASE)
                if not m:
                    return [f"unparsed inventory item {part!r}"]
                q, lab = m.group(1).lower(), _EN_FORMS[m.group(2).lower()]
                items[lab] = q if q in ("many", "some") else (1 if q in ("a", "an") else _en_num(q))
        else:
            for part in re.split("、|和", phrase):
                if part[:2] in ("许多", "一些") and part[2:] in _ZH_FORMS:
                    items[_ZH_FORMS[part[2:]]] = "many" if part[:2] == "许多" else "some"
                    continue
                m = ZH_NUM_RE.fullmatch(part)
                if not m or not m.group(3):
                    return [f"unparsed inventory item {part!r}"]
                items[_ZH_FORMS[m.group(3)]] = parse_zh_number(m.group(1))
        probs = []
        for lab, n in items.items():
            if lab not in t.present or not self.visible(t, lab):
                probs.append(f"{lab}: listed, but not annotated or too small to see")
            elif n == "many" and lab not in t.crowd:
                probs.append(f"{lab}: crowd claimed, none annotated")
            elif n == "some" and not (lab in t.crowd or t.counts.get(lab, 0) >= 2 or not self.fully_visible(t, lab)):
                probs.append(f"{lab}: 'some' for a single clear instance")
            elif isinstance(n, int) and (lab in t.crowd or t.counts.get(lab, 0) != n or not self.fully_visible(t, lab)):
                probs.append(f"{lab}: says {n}, annotations {t.counts.get(lab, 0)} (crowd={lab in t.crowd})")
        return probs

    def description_problems(self, t: Truth, answer: str, lang: str) -> list[str]:
        if "caption" in answer.lower() or "标题" in answer:
            return ["description mentions a caption"]
        if re.search(r"in total|altogether|一共|总共", answer, re.IGNORECASE):
            return ["description claims to list everything"]
        rest = answer.strip()
        probs = []
        while rest:
            cap = next((c for c in t.captions if rest.startswith(c)), None)
            if cap:
                rest = rest[len(cap):].lstrip()
                continue
            if lang == "en":
                m = re.match(r"(?:I can make out|Among other things, the picture shows|In the picture I can see|The image shows) ([^.]+)\.\s*", rest)
                if m:
                    probs += self.inventory_problems(t, m.group(1), "en")
                    rest = rest[m.end():]
                    continue
                one = rf"the ({_EN_CAT}) is (to the left of|to the right of|above|below) the ({_EN_CAT})"
                m = re.match(rf"{one}(?:, and {one})*\.\s*", rest, re.IGNORECASE)
                if m:
                    for a, r, b in re.findall(one, m.group(0), re.IGNORECASE):
                        probs += self._relation_claim(t, _EN_FORMS[a.lower()], _EN_FORMS[b.lower()], EN_REL[r.lower()])
                    rest = rest[m.end():]
                    continue
            else:
                m = re.match(r"(?:图中有|这张图片里有|画面中可以看到|图中可以看到|画面里还能看到|仔细看，图中有)([^。]+)。", rest)
                if m:
                    probs += self.inventory_problems(t, m.group(1), "zh")
                    rest = rest[m.end():]
                    continue
                one = rf"({_ZH_CAT})在({_ZH_CAT})的(左边|右边|上方|下方)"
                m = re.match(rf"{one}(?:，{one})*。", rest)
                if m:
                    for a, b, r in re.findall(one, m.group(0)):
                        probs += self._relation_claim(t, _ZH_FORMS[a], _ZH_FORMS[b], ZH_REL[r])
                    rest = rest[m.end():]
                    continue
            return probs + [f"unverifiable description text {rest[:60]!r}"]
        return probs

    def _relation_claim(self, t: Truth, a: str, b: str, rel: str) -> list[str]:
        if not (t.unique(a) and t.unique(b)):
            return [f"relation between non-unique {a}/{b}"]
        if not (self.visible(t, a) and self.visible(t, b)):
            return [f"relation with an object too small to see ({a}/{b})"]
        if self.relation(t, a, b, rel) is not True:
            return [f"{a} is not clearly {rel} of {b}"]
        return []

    # ---------------------------------------------------------------- single turns

    def check_turn(self, t: Truth, task: str, lang: str, q: str, a: str) -> list[str]:
        q = q.removeprefix("<image>\n")
        if task in scene_checker.TASKS:
            return scene_checker.check(t.raw or {}, task, lang, q, a)
        probs = self.wording_problems(t, task, lang, q)
        return probs + self._check_facts(t, task, lang, q, a)

    def wording_problems(self, t: Truth, task: str, lang: str, q: str) -> list[str]:
        """What a careful annotator would not ask: an activity or "why" question about something
        that is neither a person nor an animal, a colour question about a person."""
        if task not in ("false_premise", "wrong_count", "attribute"):
            return []
        cats = en_categories(q) if lang == "en" else zh_categories(q)
        if task == "false_premise":
            subjects = [c for c in cats if c not in t.present]
        elif task in ("wrong_count", "attribute"):
            subjects = cats[:1] if lang == "en" else cats[-1:]
        else:
            return []
        probs = []
        activity = ACTIVITY_EN.search(q) if lang == "en" else ACTIVITY_ZH.search(q)
        if activity and any(not is_animate(c) for c in subjects):
            probs.append(f"activity question ({activity.group(0)!r}) about {subjects}")
        colour_q = COLOUR_Q_EN.search(q) if lang == "en" else ("颜色" in q)
        if colour_q and "person" in subjects:
            probs.append("colour question about a person")
        return probs

    def _check_facts(self, t: Truth, task: str, lang: str, q: str, a: str) -> list[str]:
        cats = en_categories if lang == "en" else zh_categories
        if task == "existence":
            qc = cats(q)
            if len(set(qc)) != 1:
                return [f"expected one category in question, found {qc}"]
            lab = qc[0]
            v = verdict(a, lang)
            if v is None:
                return ["no yes/no verdict"]
            probs = [] if lang == "en" else zh_verb_problems(q, a)
            if v != (lab in t.present):
                return probs + [f"says {'present' if v else 'absent'}, {lab} is {'present' if lab in t.present else 'absent'}"]
            if v and not self.visible(t, lab):
                probs.append(f"asks about {lab}, too small to see")
            if not v and t.named_in_captions(lab):
                probs.append(f"says {lab} is absent, the captions name it")
            if set(cats(a)) - {lab}:
                probs.append(f"answer names other categories {cats(a)}")
            return probs
        if task in ("counting", "wrong_count"):
            qc = cats(q)
            if len(set(qc)) != 1:
                return [f"expected one category in question, found {qc}"]
            lab = qc[0]
            if lab in t.crowd:
                return [f"asks to count {lab}, which has a crowd region"]
            truth = t.counts.get(lab, 0)
            probs = [] if truth <= self.max_count else [f"asks to count {truth} {lab}, above max_count {self.max_count}"]
            if not self.fully_visible(t, lab):
                probs.append(f"asks to count {lab}, one of which is too small to see")
            if task == "wrong_count":
                claimed = first_count(q, lang)
                if claimed is None:
                    return ["no claimed number in premise"]
                if claimed == truth:
                    probs.append(f"premise count {claimed} is actually right")
            got = first_count(a, lang)
            if got != truth:
                probs.append(f"answer count {got}, annotations {truth}")
            return probs
        if task == "spatial":
            qc = cats(q)
            if len(qc) != 2 or qc[0] == qc[1]:
                return [f"expected two categories, found {qc}"]
            a_lab, b_lab = qc
            if not (t.unique(a_lab) and t.unique(b_lab)):
                return [f"ambiguous reference: {a_lab} x{t.counts.get(a_lab, 0)}, {b_lab} x{t.counts.get(b_lab, 0)}"]
            if not (self.visible(t, a_lab) and self.visible(t, b_lab)):
                return [f"relation with an object too small to see ({a_lab}/{b_lab})"]
            rel_re, rel_map = (EN_REL_RE, EN_REL) if lang == "en" else (ZH_REL_RE, ZH_REL)
            q_rel = [rel_map[m.group(1).lower() if lang == "en" else m.group(1)] for m in rel_re.finditer(q)]
            a_rel = [rel_map[m.group(1).lower() if lang == "en" else m.group(1)] for m in rel_re.finditer(a)]
            probs = []
            if q_rel:
                truth = self.relation(t, a_lab, b_lab, q_rel[0])
                if truth is None:
                    return [f"{q_rel[0]} not safe to state (overlap, containment, background or no dominant axis)"]
                v = verdict(a, lang)
                if v is None:
                    return ["no yes/no verdict"]
                if lang == "zh":
                    probs += zh_verb_problems(q, a)
                if v != truth:
                    probs.append(f"verdict {v}, truth {truth} for {a_lab} {q_rel[0]} {b_lab}")
            elif not a_rel:
                return ["open spatial question without a relation in the answer"]
            for r in a_rel:
                if self.relation(t, a_lab, b_lab, r) is not True:
                    probs.append(f"answer states {a_lab} {r} {b_lab}, not clearly true")
            return probs
        if task == "relative_size":
            qc = cats(q)
            if len(qc) != 2 or qc[0] == qc[1]:
                return [f"expected two categories, found {qc}"]
            a_lab, b_lab = qc
            if not (t.unique(a_lab) and t.unique(b_lab)):
                return ["ambiguous reference"]
            if not (self.visible(t, a_lab) and self.visible(t, b_lab)):
                return [f"size comparison with an object too small to see ({a_lab}/{b_lab})"]
            if lang == "en":
                big = bool(re.search(r"\b(bigger|larger)\b", q))
                choice = "which" in q.lower()
            else:
                stripped = ZH_CAT_RE.sub("§", q)
                big = "大" in stripped
                choice = any(w in q for w in ("哪个", "哪一个", "谁"))
            if choice:
                ac = cats(a)
                if not ac:
                    return ["choice answer names no category"]
                win = ac[0]
                other = b_lab if win == a_lab else a_lab
                truth = self.bigger(t, win, other)
                if truth is None or truth != big:
                    return [f"answer picks {win}, areas do not support it"]
                return []
            truth = self.bigger(t, a_lab, b_lab) if big else self.bigger(t, b_lab, a_lab)
            if truth is None:
                return ["sizes too close to call"]
            v = verdict(a, lang)
            if v is None:
                return ["no yes/no verdict"]
            probs = [] if lang == "en" else zh_verb_problems(q, a)
            return probs + ([] if v == truth else [f"verdict {v}, truth {truth}"])
        if task == "false_premise":
            qc = cats(q)
            absent = [c for c in qc if c not in t.present]
            if len(set(absent)) != 1:
                return [f"expected exactly one absent category in premise, found {absent} in {qc}"]
            lab = absent[0]
            form = LEXICON[lab]
            if lang == "en":
                ok = re.search(rf"\bno {re.escape(form.en)}\b", a, re.IGNORECASE) is not None
                inv = re.search(r"(?:I can see|The image shows) ([^.]+)\.", a)
            else:
                ok = f"没有{form.zh}" in a
                inv = re.search(r"(?:可以看到|图片中有)([^。]+)。", a)
            probs = [] if ok else [f"answer does not deny {lab}"]
            if t.named_in_captions(lab):
                probs.append(f"premise object {lab} is named in the captions")
            if inv:
                probs += self.inventory_problems(t, inv.group(1), lang)
            return probs
        if task == "attribute":
            if lang == "en":
                m = re.search(rf"\bthe (?:({_COL_EN}) )?({_EN_CAT})\b", q, re.IGNORECASE)
                if not m:
                    return ["no object in attribute question"]
                lab = _EN_FORMS[m.group(2).lower()]
                rest = q[: m.start(2)] + " " + q[m.end(2):]
                asked = [COLOURS[c.lower()] for c in re.findall(rf"\b({_COL_EN})\b", rest, re.IGNORECASE)]
                stated = [COLOURS[c.lower()] for grp in re.findall(rf"\bis ((?:{_COL_EN})(?:(?:, | and )(?:{_COL_EN}))*)", a) for c in re.split(r", | and ", grp)]
                own = "|".join(re.escape(w) for w in (LEXICON[lab].en, LEXICON[lab].en_plural))
                bare = [COLOURS[c.lower()] for c in re.findall(rf"\b({_COL_EN})\b", re.sub(rf"\b({own})\b", "§", a, flags=re.IGNORECASE), re.IGNORECASE)]
            else:
                qc = zh_categories(q)
                if len(set(qc)) != 1:
                    return [f"expected one category, found {qc}"]
                lab = qc[0]
                asked = re.findall(f"({_COL_ZH})", q)
                stated = [c for grp in re.findall(rf"是((?:{_COL_ZH})(?:(?:和|、)(?:{_COL_ZH}))*)的", a) for c in re.split("和|、", grp)]
                bare = re.findall(f"({_COL_ZH})", a.replace(LEXICON[lab].zh, "§"))
            if not t.unique(lab):
                return [f"ambiguous reference to {lab}"]
            if not self.visible(t, lab):
                return [f"asks about {lab}, too small to see"]
            truth_cols = t.attrs.get(lab, set())
            if not asked:  # an open colour question: every colour the answer names must be right
                if not bare:
                    return ["open colour question answered without a colour"]
                return [f"answer states {lab} is {c}" for c in bare if c not in truth_cols]
            if len(asked) != 1:
                return [f"expected one colour in question, found {asked}"]
            truth = asked[0] in truth_cols
            v = verdict(a, lang)
            if v is None:
                return ["no yes/no verdict"]
            probs = [] if v == truth else [f"verdict {v}, {lab} colours {sorted(truth_cols)}"]
            if lang == "zh" and not a.startswith("图中没有"):
                probs += zh_verb_problems(q, a)
            probs += [f"answer states {lab} is {c}" for c in stated if c not in truth_cols]
            return probs
        if task == "scene_text":
            pat = r'"([^"]+)"' if lang == "en" else r"“([^”]+)”"
            in_q, in_a = re.findall(pat, q), re.findall(pat, a)
            probs = []
            if in_q:  # "Does the text say X?"
                asked = in_q[0]
                v = verdict(a, lang)
                if v is None:
                    return ["no yes/no verdict"]
                if lang == "zh":
                    probs += zh_verb_problems(q, a)
                if v != self.trusted_text(t, asked):
                    probs.append(f"verdict {v} on {asked!r}, trusted OCR text: {self.trusted_text(t, asked)}")
                return probs + [f"text {s!r} not trusted OCR" for s in in_a if not self.trusted_text(t, s)]
            if not in_a:  # a question presuming text on an image where OCR found none
                if not t.ocr_ran or t.ocr:
                    return ["says there is no text, but OCR did not run or found some"]
                return [] if verdict(a, lang) is False else ["no-text answer does not deny the text"]
            return [f"text {s!r} not trusted OCR" for s in in_a if not self.trusted_text(t, s)]
        if task in ("brief_description", "detailed_description"):
            return self.description_problems(t, a, lang)
        return [f"unknown task {task!r}"]

    # ------------------------------------------------------------- multi-image rows

    def check_multi(self, truths: list[Truth], task: str, lang: str, q: str, a: str) -> list[str]:
        cats = en_categories if lang == "en" else zh_categories
        if "\n" in q and task != "in_context":
            q = q.split("\n", 1)[1]
        if task == "multi_image_which":
            qc = cats(q)
            if len(qc) != 1:
                return [f"expected one category, found {qc}"]
            truth = [i for i, t in enumerate(truths) if qc[0] in t.present]
            got = [int(x) for x in (re.findall(r"\d+", a) if lang == "en" else re.findall(r"图(\d+)", a))]
            return [] if got == truth else [f"answer images {got}, truth {truth}"]
        if task == "multi_image_existence":
            qc = cats(q)
            idx = re.findall(r"image (\d+)", q) if lang == "en" else re.findall(r"图(\d+)", q)
            if len(qc) != 1 or len(idx) != 1 or int(idx[0]) >= len(truths):
                return [f"expected one category and one image index, found {qc} {idx}"]
            v = verdict(a, lang)
            truth = qc[0] in truths[int(idx[0])].present
            probs = [] if lang == "en" else zh_verb_problems(q, a)
            return probs + ([] if v == truth else [f"verdict {v}, {qc[0]} in image {idx[0]}: {truth}"])
        if task == "multi_image_count":
            qc = cats(q)
            if len(set(qc)) != 1:
                return [f"expected one category, found {qc}"]
            lab = qc[0]
            if any(lab in t.crowd for t in truths):
                return ["counts a category with a crowd region"]
            total = sum(t.counts.get(lab, 0) for t in truths)
            got = first_count(a, lang) if lang == "en" else parse_zh_number(re.search(r"一共([零一二两三四五六七八九十\d]+)", a).group(1))
            return [] if got == total else [f"total {got}, truth {total}"]
        if task == "multi_image_difference":
            idx = [int(x) for x in (re.findall(r"image (\d+)", q) if lang == "en" else re.findall(r"图(\d+)", q))]
            i, j = idx[0], idx[1]
            truth = {lab for lab in truths[i].present if self.visible(truths[i], lab)} - truths[j].present
            body = a.split("which")[0] if lang == "en" else a.split("，")[0]
            got = set(cats(body)) if truth else set()
            return [] if got == truth else [f"difference {sorted(got)}, truth {sorted(truth)}"]
        if task == "in_context":
            probs = []
            segs = re.split(r"\n", q)
            for s_i, seg in enumerate(segs):
                ans = None if s_i == len(segs) - 1 else (seg.rsplit("Answer:", 1)[1] if lang == "en" else seg.rsplit("回答：", 1)[1])
                ans = a if ans is None else ans
                m = re.search(r"<image_(\d+)>", seg)
                t = truths[int(m.group(1))]
                body = seg.rsplit("Answer:", 1)[0] if lang == "en" else seg.rsplit("回答：", 1)[0]
                qc = cats(body)
                if len(qc) != 1:
                    probs.append(f"example {s_i}: categories {qc}")
                    continue
                if ("how many" in body) or ("几" in body):
                    if first_count(ans, lang) != t.counts.get(qc[0], 0) or qc[0] in t.crowd:
                        probs.append(f"example {s_i}: count {ans!r} for {qc[0]}, truth {t.counts.get(qc[0], 0)}")
                elif verdict(ans, lang) != (qc[0] in t.present):
                    probs.append(f"example {s_i}: existence answer {ans!r} for {qc[0]}")
                elif lang == "zh":
                    probs += [f"example {s_i}: {p}" for p in zh_verb_problems(body.rsplit("问题：", 1)[-1], ans.strip())]
            return probs
        return [f"unknown task {task!r}"]

    # --------------------------------------------------------------------- tables

    def check_rows(self, pair_rows: Iterable[dict], conv_rows: Iterable[dict]) -> list[Disagreement]:
        truths = {r["key"]: Truth.from_row(r, self.ocr_min_score) for r in pair_rows}
        out: list[Disagreement] = []
        for row in conv_rows:
            imgs = row["images"]
            missing = [k for k in imgs if k not in truths]
            if missing:
                out.append(Disagreement(row["key"], "", -1, "", f"images without annotations: {missing}", "", ""))
                continue
            for conv in row["conversations"]:
                turns = conv["turns"]
                for i in range(0, len(turns) - 1, 2):
                    u, ans = turns[i], turns[i + 1]
                    if not _templated(u) or not _templated(ans):
                        continue  # LLM-written and translated turns are checked elsewhere
                    if u["role"] != "user" or ans["role"] != "assistant" or u["task"] != ans["task"]:
                        out.append(Disagreement(row["key"], conv["id"], i, u["task"], "turns out of order", u["content"], ans["content"]))
                        continue
                    try:
                        if len(imgs) == 1:
                            probs = self.check_turn(truths[imgs[0]], u["task"], conv["lang"], u["content"], ans["content"])
                        else:
                            probs = self.check_multi([truths[k] for k in imgs], u["task"], conv["lang"], u["content"], ans["content"])
                    except (ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError) as e:
                        # Text the checker cannot read back is a disagreement, never a pass.
                        probs = [f"unreadable: {type(e).__name__}: {e}"]
                    out.extend(Disagreement(row["key"], conv["id"], i, u["task"], p, u["content"], ans["content"]) for p in probs)
        return out

    def yes_shares(self, conv_rows: Iterable[dict], top_labels: int = 10) -> dict[str, dict[str, float]]:
        """Share of "yes" among yes/no answers, read from the text alone: per task, and per
        category for the ``top_labels`` categories most asked about in existence questions."""
        yes, total = self.yes_no_counts(conv_rows)
        labels = sorted((n for kind, n in total if kind == "label"), key=lambda n: (-total[("label", n)], n))[:top_labels]
        out: dict[str, dict[str, float]] = {"family": {}, "label": {}}
        for (kind, name), n in sorted(total.items()):
            if kind == "family" or name in labels:
                out[kind][name] = round(yes[(kind, name)] / n, 4)
        return out

    def yes_no_counts(self, conv_rows: Iterable[dict]) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        """(yes, total) counts of yes/no answers keyed ("family", task) and ("label", category).
        A yes/no answer opens with its verdict (Yes/No; 是/不是, 有/没有, 能/不能); refusals of a
        false premise ("There is no...") are not yes/no answers and do not count."""
        yes: dict[tuple[str, str], int] = {}
        total: dict[tuple[str, str], int] = {}
        for row in conv_rows:
            for conv in row["conversations"]:
                lang, turns = conv["lang"], conv["turns"]
                for i in range(0, len(turns) - 1, 2):
                    q, a, task = turns[i]["content"], turns[i + 1]["content"].strip(), turns[i]["task"]
                    if not _templated(turns[i]):
                        continue
                    if lang == "en":
                        v = True if re.match(r"yes\b", a, re.I) else False if re.match(r"no\b", a, re.I) else None
                    else:
                        v = False if a.startswith(("不是", "没有", "不能")) else True if a.startswith(("是", "有", "能")) else None
                    if v is None:
                        continue
                    keys = [("family", task)]
                    if task == "existence":
                        cats = en_categories(q) if lang == "en" else zh_categories(q)
                        if len(set(cats)) == 1:
                            keys.append(("label", cats[0]))
                    for k in keys:
                        total[k] = total.get(k, 0) + 1
                        yes[k] = yes.get(k, 0) + int(v)
        return yes, total

    def check_tables(self, pairs: pa.Table, conversations: pa.Table) -> list[Disagreement]:
        cols = [c for c in PAIR_COLUMNS if c in pairs.column_names]
        return self.check_rows(pairs.select(cols).to_pylist(), conversations.to_pylist())
