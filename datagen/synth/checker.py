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
EN_CAT_RE = re.compile(rf"\b({_EN_CAT})\b", re.IGNORECASE)
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


def _en_num(word: str) -> int:
    w = word.lower()
    return int(w) if w.isdigit() else EN_NUMBER_WORDS[w]


def en_categories(text: str) -> list[str]:
    return [_EN_FORMS[m.group(1).lower()] for m in EN_CAT_RE.finditer(text)]


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
    if a.startswith(("是", "有", "对")):
        return True
    return None


def first_count(answer: str, lang: str) -> int | None:
    if lang == "en":
        m = EN_NUM_RE.search(answer)
        return _en_num(m.group(1)) if m else None
    m = ZH_NUM_RE.search(answer)
    return parse_zh_number(m.group(1)) if m else None


# ----------------------------------------------------------------------- annotations

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
    ocr: set[str]
    captions: list[str]
    raw: dict | None = None  # the pair row itself, for the scene families (scene_checker)

    @classmethod
    def from_row(cls, row: dict[str, Any], ocr_min_score: float) -> "Truth":
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
        ocr = {" ".join(str(x.get("text") or "").split()) for x in (row.get("ocr") or []) if x.get("score") is None or x["score"] >= ocr_min_score}
        caps = row.get("captions") or ([row["caption"]] if row.get("caption") else [])
        norm = []
        for c in caps:
            c = " ".join(str(c).split())
            if c:
                c = c[0].upper() + c[1:]
                norm.append(c if c[-1] in ".!?。！？" else c + ".")
        present |= scene_checker.implied_present(row)  # open vocabulary: no "animal" absent next to a dog
        return cls(float(row.get("width") or 0), float(row.get("height") or 0), present, counts, crowd, boxes, attrs, ocr, norm, row)

    def unique(self, lab: str) -> bool:
        return self.counts.get(lab) == 1 and lab not in self.crowd

    def centre(self, lab: str) -> tuple[float, float]:
        x, y, w, h = self.boxes[lab][0]
        return x + w / 2, y + h / 2

    def area(self, lab: str) -> float:
        return self.boxes[lab][0][2] * self.boxes[lab][0][3]


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
    def __init__(self, spatial_margin: float = 0.1, size_margin: float = 2.0, ocr_min_score: float = 0.5, max_count: int = 10):
        self.spatial_margin = spatial_margin
        self.size_margin = size_margin
        self.ocr_min_score = ocr_min_score
        self.max_count = max_count

    @classmethod
    def from_config(cls, cfg) -> "Checker":
        return cls(cfg.spatial_margin, cfg.size_margin, cfg.ocr_min_score, cfg.max_count)

    # ------------------------------------------------------------------- relations

    def relation(self, t: Truth, a: str, b: str, rel: str) -> bool | None:
        """True/False when clear beyond the margin, None when too close to call."""
        (ax, ay), (bx, by) = t.centre(a), t.centre(b)
        d = (ax - bx) / t.width if rel in ("left", "right") else (ay - by) / t.height
        if abs(d) <= self.spatial_margin:
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

    def inventory_problems(self, t: Truth, phrase: str, lang: str, complete: bool = True) -> list[str]:
        items: dict[str, int | None] = {}
        if lang == "en":
            for part in re.split(r", | and ", phrase):
                m = re.fullmatch(rf"(a crowd of|an?|{_NUM}) ({_EN_CAT})", part.strip(), re.IGNORECASE)
                if not m:
                    return [f"unparsed inventory item {part!r}"]
                q, lab = m.group(1).lower(), _EN_FORMS[m.group(2).lower()]
                items[lab] = None if q == "a crowd of" else (1 if q in ("a", "an") else _en_num(q))
        else:
            for part in re.split("、|和", phrase):
                if part.startswith("许多") and part[2:] in _ZH_FORMS:
                    items[_ZH_FORMS[part[2:]]] = None
                    continue
                m = ZH_NUM_RE.fullmatch(part)
                if not m or not m.group(3):
                    return [f"unparsed inventory item {part!r}"]
                items[_ZH_FORMS[m.group(3)]] = parse_zh_number(m.group(1))
        probs = []
        for lab, n in items.items():
            if n is None and lab not in t.crowd:
                probs.append(f"{lab}: crowd claimed, none annotated")
            elif n is not None and (lab in t.crowd or t.counts.get(lab, 0) != n):
                probs.append(f"{lab}: says {n}, annotations {t.counts.get(lab, 0)} (crowd={lab in t.crowd})")
        if complete and set(items) != t.present:
            probs.append(f"inventory lists {sorted(items)}, annotated {sorted(t.present)}")
        return probs

    def description_problems(self, t: Truth, answer: str, lang: str) -> list[str]:
        if "caption" in answer.lower() or "标题" in answer:
            return ["description mentions a caption"]
        rest = answer.strip()
        probs = []
        while rest:
            cap = next((c for c in t.captions if rest.startswith(c)), None)
            if cap:
                rest = rest[len(cap):].lstrip()
                continue
            if lang == "en":
                m = re.match(r"(?:In total, I can see|Altogether, the image shows|The image shows) ([^.]+)\.\s*", rest)
                if m:
                    probs += self.inventory_problems(t, m.group(1), "en")
                    rest = rest[m.end():]
                    continue
                m = re.match(rf"The ({_EN_CAT}) is (to the left of|to the right of|above|below) the ({_EN_CAT})\.\s*", rest, re.IGNORECASE)
                if m:
                    a, b = _EN_FORMS[m.group(1).lower()], _EN_FORMS[m.group(3).lower()]
                    probs += self._relation_claim(t, a, b, EN_REL[m.group(2)])
                    rest = rest[m.end():]
                    continue
            else:
                m = re.match(r"(?:图中有|这张图片里有|画面中可以看到)([^。]+)。", rest)
                if m:
                    probs += self.inventory_problems(t, m.group(1), "zh")
                    rest = rest[m.end():]
                    continue
                m = re.match(rf"({_ZH_CAT})在({_ZH_CAT})的(左边|右边|上方|下方)。", rest)
                if m:
                    probs += self._relation_claim(t, _ZH_FORMS[m.group(1)], _ZH_FORMS[m.group(2)], ZH_REL[m.group(3)])
                    rest = rest[m.end():]
                    continue
            return probs + [f"unverifiable description text {rest[:60]!r}"]
        return probs

    def _relation_claim(self, t: Truth, a: str, b: str, rel: str) -> list[str]:
        if not (t.unique(a) and t.unique(b)):
            return [f"relation between non-unique {a}/{b}"]
        if self.relation(t, a, b, rel) is not True:
            return [f"{a} is not clearly {rel} of {b}"]
        return []

    # ---------------------------------------------------------------- single turns

    def check_turn(self, t: Truth, task: str, lang: str, q: str, a: str) -> list[str]:
        cats = en_categories if lang == "en" else zh_categories
        q = q.removeprefix("<image>\n")
        if task in scene_checker.TASKS:
            return scene_checker.check(t.raw or {}, task, lang, q, a)
        if task == "existence":
            qc = cats(q)
            if len(set(qc)) != 1:
                return [f"expected one category in question, found {qc}"]
            lab = qc[0]
            v = verdict(a, lang)
            if v is None:
                return ["no yes/no verdict"]
            if v != (lab in t.present):
                return [f"says {'present' if v else 'absent'}, {lab} is {'present' if lab in t.present else 'absent'}"]
            if set(cats(a)) - {lab}:
                return [f"answer names other categories {cats(a)}"]
            return []
        if task in ("counting", "wrong_count"):
            qc = cats(q)
            if len(set(qc)) != 1:
                return [f"expected one category in question, found {qc}"]
            lab = qc[0]
            if lab in t.crowd:
                return [f"asks to count {lab}, which has a crowd region"]
            truth = t.counts.get(lab, 0)
            probs = [] if truth <= self.max_count else [f"asks to count {truth} {lab}, above max_count {self.max_count}"]
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
            rel_re, rel_map = (EN_REL_RE, EN_REL) if lang == "en" else (ZH_REL_RE, ZH_REL)
            q_rel = [rel_map[m.group(1).lower() if lang == "en" else m.group(1)] for m in rel_re.finditer(q)]
            a_rel = [rel_map[m.group(1).lower() if lang == "en" else m.group(1)] for m in rel_re.finditer(a)]
            probs = []
            if q_rel:
                truth = self.relation(t, a_lab, b_lab, q_rel[0])
                if truth is None:
                    return [f"{q_rel[0]} too close to call"]
                v = verdict(a, lang)
                if v is None:
                    return ["no yes/no verdict"]
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
            return [] if v == truth else [f"verdict {v}, truth {truth}"]
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
            else:
                qc = zh_categories(q)
                if len(set(qc)) != 1:
                    return [f"expected one category, found {qc}"]
                lab = qc[0]
                asked = re.findall(f"({_COL_ZH})", q)
                stated = [c for grp in re.findall(rf"是((?:{_COL_ZH})(?:(?:和|、)(?:{_COL_ZH}))*)的", a) for c in re.split("和|、", grp)]
            if len(asked) != 1:
                return [f"expected one colour in question, found {asked}"]
            if not t.unique(lab):
                return [f"ambiguous reference to {lab}"]
            truth = asked[0] in t.attrs.get(lab, set())
            v = verdict(a, lang)
            if v is None:
                return ["no yes/no verdict"]
            probs = [] if v == truth else [f"verdict {v}, {lab} colours {sorted(t.attrs.get(lab, set()))}"]
            probs += [f"answer states {lab} is {c}" for c in stated if c not in t.attrs.get(lab, set())]
            return probs
        if task == "scene_text":
            quoted = re.findall(r'"([^"]+)"', a) if lang == "en" else re.findall(r"“([^”]+)”", a)
            if not quoted:
                return ["no quoted text in answer"]
            return [f"text {s!r} not in OCR" for s in quoted if s not in t.ocr]
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
            return [] if v == truth else [f"verdict {v}, {qc[0]} in image {idx[0]}: {truth}"]
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
            truth = truths[i].present - truths[j].present
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
                    if u.get("generator") != "template" or ans.get("generator") != "template":
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

    def check_tables(self, pairs: pa.Table, conversations: pa.Table) -> list[Disagreement]:
        cols = [c for c in PAIR_COLUMNS if c in pairs.column_names]
        return self.check_rows(pairs.select(cols).to_pylist(), conversations.to_pylist())
