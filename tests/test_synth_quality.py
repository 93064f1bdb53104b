"""What a careful annotator checks, measured on a generated 2,000-image COCO-format set and on the demo:
defensible spatial claims, visible objects only, trusted scene text, natural wording, varied
phrasings, yes shares balanced per family and per label, Chinese as rich as English."""

from __future__ import annotations

import copy
import re
import statistics
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

from datagen.records import pairs_table
from datagen.steps import RunContext
from datagen.synth.checker import Checker, en_categories, zh_categories, zh_question_verb
from datagen.synth.config import MultiImageConfig, SynthConfig
from datagen.synth.fakecoco import fake_coco_pairs, pairs_from_coco_files
from datagen.synth.lexicon import LEXICON
from datagen.synth.quality import activity_questions, detailed_lengths, mask_question, phrasing_counts
from datagen.synth.step import SynthesizeStep

ANIMATE = {lab for lab, t in LEXICON.items() if t.supercategory in ("person", "animal")}
SINGLE = ["existence", "counting", "wrong_count", "spatial", "relative_size", "false_premise", "attribute",
          "scene_text", "brief_description", "detailed_description"]
MULTI = ["multi_image_which", "multi_image_existence", "multi_image_count", "multi_image_difference", "in_context"]


def obj(label, bbox, attrs=(), crowd=False):
    return {"label": label, "bbox": list(bbox), "score": None, "attributes": list(attrs), "iscrowd": crowd}


def row(key, objects, captions=(), width=640, height=480, **extra):
    return {"key": key, "source": "test", "width": width, "height": height, "objects": objects,
            "captions": list(captions), "caption": captions[0] if captions else None, **extra}


def synth(tmp_path, table, cfg):
    if isinstance(table, list):  # pairs_table keeps the pair schema only; OCR rows need their extra column
        table = pa.Table.from_pylist(table) if any("ocr" in r for r in table) else pairs_table(table)
    ctx = RunContext(run_dir=tmp_path, recipe_dir=tmp_path, seed=0)
    step = SynthesizeStep(cfg, ctx)
    step.prepare([table])
    return table, step.process(table), ctx.stats["synthesize"]


def turns(rows, lang=None, task=None):
    for r in rows:
        for c in r["conversations"]:
            if lang and c["lang"] != lang:
                continue
            ts = c["turns"]
            for i in range(0, len(ts) - 1, 2):
                if task is None or ts[i]["task"] == task:
                    yield r, c, ts[i]["content"], ts[i + 1]["content"], ts[i]["task"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """The generated 2,000-image COCO-format set, synthesised once with multi-image samples."""
    cfg = SynthConfig(multi_image=MultiImageConfig(enabled=True, share=0.1))
    table, out, stats = synth(tmp_path_factory.mktemp("big"), fake_coco_pairs(2000, seed=0), cfg)
    return cfg, table, out.kept.to_pylist(), stats


# ------------------------------------------------------------------------------- diversity

@pytest.mark.parametrize("lang", ["en", "zh"])
def test_at_least_15_phrasings_per_family_and_6_per_multi_image_family(big, lang):
    _, _, rows, _ = big
    found = phrasing_counts(rows)[lang]
    counts = {task: found.get(task, 0) for task in SINGLE + MULTI}
    assert all(counts[t] >= 15 for t in SINGLE), counts
    assert all(counts[t] >= 6 for t in MULTI), counts


def test_answers_come_short_full_and_with_a_reason(big):
    _, _, rows, _ = big
    by_task = defaultdict(set)
    for _, _, _, a, task in turns(rows, "en"):
        by_task[task].add(mask_question(a, "en"))
    assert {"Yes.", "No."} <= by_task["existence"]
    assert any(a.startswith("No, ") for a in by_task["existence"]) and any(a.startswith("Yes, ") for a in by_task["existence"])
    assert "<N>." in by_task["counting"] and any(len(a.split()) >= 4 for a in by_task["counting"])
    # wrong premises are corrected with the reason: the true count against the claimed one
    assert any(re.search(r"not (just )?<N>", a) for a in by_task["wrong_count"])


# -------------------------------------------------------------------------------- balance

def test_yes_share_per_family_and_top_labels_between_04_and_06(big):
    cfg, _, rows, stats = big
    shares = Checker.from_config(cfg).yes_shares(rows)  # read from the text, independent of the planner
    for fam in ("existence", "spatial", "relative_size", "attribute", "scene_text", "multi_image_existence", "in_context"):
        assert 0.4 <= shares["family"][fam] <= 0.6, (fam, shares["family"])
    assert len(shares["label"]) == 10
    assert all(0.4 <= v <= 0.6 for v in shares["label"].values()), shares["label"]
    # the manifest's own figures (counted by the step per item) agree on which side of 0.5 each falls
    for fam, v in stats["yes_share"]["family"].items():
        assert 0.4 <= v <= 0.6, (fam, v)
    assert len(stats["yes_share"]["label"]) == 10 and all(0.4 <= v <= 0.6 for v in stats["yes_share"]["label"].values())


def test_popular_negatives_spread_over_the_top_k(tmp_path):
    table = fake_coco_pairs(300, seed=3)
    only_popular = {"random": 0, "popular": 1.0, "adversarial": 0}
    weights = {f: 0.0 for f in SINGLE} | {"existence": 1.0}
    labels = {}
    for k in (1, 8):
        cfg = SynthConfig(positive_ratio=0.0, negative_modes=only_popular, family_weights=weights, popular_top_k=k, items_per_image=1)
        _, out, _ = synth(tmp_path / str(k), table, cfg)
        labels[k] = [en_categories(q)[0] for _, _, q, _, _ in turns(out.kept.to_pylist(), "en", "existence")]
    top = max(set(labels[1]), key=labels[1].count)
    assert labels[1].count(top) / len(labels[1]) > 0.5  # top 1: one label dominates (what the issue measured)
    assert len(set(labels[8])) >= 8 and max(labels[8].count(x) for x in set(labels[8])) / len(labels[8]) < 0.4


def test_an_object_the_captions_name_is_never_called_absent(tmp_path):
    rows = [row(f"c{i}", [obj("dog", (100, 100, 200, 150))], captions=["A man walks his dog past a parked car."]) for i in range(30)]
    cfg = SynthConfig(positive_ratio=0.0, items_per_image=8, family_weights={f: 0.0 for f in SINGLE} | {"existence": 1.0, "false_premise": 1.0})
    _, out, _ = synth(tmp_path, rows, cfg)
    asked = [c for _, _, q, _, _ in turns(out.kept.to_pylist(), "en") for c in en_categories(q)]
    assert asked and not {"person", "car"} & set(asked)


# ----------------------------------------------------------------------------- geometry

def _overlap_of_smaller(a, b):
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


def _spatial_claims(rows):
    """(row key, conversation id, a, relation, b) for every relation stated in English."""
    rel_words = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
    cat = "|".join(re.escape(f) for f in sorted({f for t in LEXICON.values() for f in (t.en, t.en_plural)}, key=len, reverse=True))
    one = rf"(?:[Tt]he) ({cat}) is (to the left of|to the right of|above|below) the ({cat})"
    for r, c, q, a, task in turns(rows, "en"):
        if task == "spatial":
            cats = en_categories(q)
            m = re.search(r"to the left of|to the right of|\babove\b|\bbelow\b", a, re.I)
            if m and not a.startswith("No"):
                yield r["key"], c["id"], cats[0], rel_words[m.group(0).lower()], cats[1]
            elif m:  # "No, the a is <truth> the b."
                yield r["key"], c["id"], cats[0], rel_words[m.group(0).lower()], cats[1]
        if task == "detailed_description":
            for x, rel, y in re.findall(one, a):
                yield r["key"], c["id"], en_categories(x)[0], rel_words[rel], en_categories(y)[0]


def test_spatial_claims_never_state_containment_overlap_stuff_or_a_minor_axis(big):
    _, table, rows, _ = big
    boxes = {r["key"]: r for r in table.select(["key", "objects", "width", "height"]).to_pylist()}
    n = 0
    per_conversation = defaultdict(list)
    for key, cid, a, rel, b in _spatial_claims(rows):
        r = boxes[key]
        ba = next(o["bbox"] for o in r["objects"] if o["label"] == a)
        bb = next(o["bbox"] for o in r["objects"] if o["label"] == b)
        assert _overlap_of_smaller(ba, bb) <= 0.5, (key, a, rel, b)
        for lab, box in ((a, ba), (b, bb)):
            assert not (lab in ("dining table", "bed", "couch") and box[2] * box[3] >= 0.6 * r["width"] * r["height"])
        dx = (ba[0] + ba[2] / 2) - (bb[0] + bb[2] / 2)
        dy = (ba[1] + ba[3] / 2) - (bb[1] + bb[3] / 2)
        main, other = (dx, dy) if rel in ("left", "right") else (dy, dx)
        assert abs(main) >= 2 * abs(other), (key, a, rel, b, dx, dy)
        assert (main < 0) == (rel in ("left", "above"))
        per_conversation[cid].append(frozenset((a, b)))
        n += 1
    assert n > 150
    # a pair is stated once per conversation, never again reversed
    assert all(len(v) == len(set(v)) for v in per_conversation.values())


def test_hand_made_cases_from_the_demo_review(tmp_path):
    cfg = SynthConfig(items_per_image=12, positive_ratio=0.5, neutral_items_per_image=2,
                      family_weights={f: 0.0 for f in SINGLE} | {"spatial": 1.0, "detailed_description": 1.0})
    rows = [
        # coco_4 / coco_21: the table's box is the whole image
        row("table", [obj("dining table", (0, 0, 640, 480)), obj("spoon", (400, 50, 60, 30)), obj("cup", (60, 300, 100, 90))]),
        # coco_22: the bottle's box is inside the motorcycle's
        row("inside", [obj("motorcycle", (100, 100, 400, 300)), obj("bottle", (150, 120, 40, 80))]),
        # coco_23: the offset is mostly horizontal, though also vertical beyond the margin
        row("diagonal", [obj("bicycle", (40, 60, 80, 80)), obj("bench", (400, 160, 120, 80))]),
    ]
    _, out, _ = synth(tmp_path, rows, cfg)
    claims = list(_spatial_claims(out.kept.to_pylist()))
    assert not [c for c in claims if "dining table" in (c[2], c[4]) or c[0] == "inside"]
    diag = [c for c in claims if c[0] == "diagonal"]
    assert diag and all(c[3] in ("left", "right") for c in diag)
    # the cup and the spoon are far apart on both axes: stated on the dominant one only, if at all
    assert not [c for c in claims if c[0] == "table" and c[3] in ("left", "right")]


def test_checker_flags_containment_and_a_minor_axis():
    checker = Checker()
    inside = row("k", [obj("motorcycle", (100, 100, 400, 300)), obj("bottle", (150, 120, 40, 80))])
    from datagen.synth.checker import Truth

    probs = checker.check_turn(Truth.from_row(inside), "spatial", "en", "Is the motorcycle below the bottle?", "Yes.")
    assert probs and "not safe" in probs[0]
    diagonal = row("k", [obj("bicycle", (40, 60, 80, 80)), obj("bench", (400, 160, 120, 80))])
    assert checker.check_turn(Truth.from_row(diagonal), "spatial", "en", "Is the bicycle above the bench?", "Yes.")
    assert checker.check_turn(Truth.from_row(diagonal), "spatial", "en", "Is the bicycle to the left of the bench?", "Yes.") == []


# --------------------------------------------------------------------------- visibility

def test_tiny_objects_get_no_questions_but_are_never_called_absent(tmp_path):
    # a 0.19% bottle and a 20x64 px sleeve (the shuttle photo's "person") next to a large cat
    rows = [row(f"t{i}", [obj("cat", (200, 100, 300, 300)), obj("bottle", (10, 10, 24, 24)), obj("person", (600, 10, 20, 64))])
            for i in range(20)]
    cfg = SynthConfig(items_per_image=10, neutral_items_per_image=2)
    table, out, _ = synth(tmp_path, rows, cfg)
    for r, c, q, a, task in turns(out.kept.to_pylist(), "en"):
        assert not {"bottle", "person"} & set(en_categories(q)), q
        assert not {"bottle", "person"} & set(en_categories(a)), a
    assert Checker.from_config(cfg).check_tables(table, out.kept) == []
    from datagen.synth.checker import Truth

    t = Truth.from_row(rows[0])
    assert Checker().check_turn(t, "counting", "en", "How many people are there?", "One.")  # the checker agrees
    assert Checker().check_turn(t, "existence", "en", "Is there a bottle in the image?", "No.")  # present, however small
    # the shuttle photo: a 20x64 px sleeve on the border of a 200x300 picture is a person cut to a sliver
    shuttle = [row("s", [obj("person", (0, 236, 20, 64))], captions=["A model of the space shuttle on a stand."], width=200, height=300)]
    _, out, _ = synth(tmp_path / "shuttle", shuttle, cfg)
    assert not [q for *_, q, a, _ in turns(out.kept.to_pylist(), "en") if "person" in en_categories(q) + en_categories(a)]


# ---------------------------------------------------------------------------- wording

def test_no_activity_questions_about_objects_and_no_colour_questions_about_people(big):
    _, _, rows, _ = big
    n_activity = 0
    for lang, act in (("en", re.compile(r"\b(doing|why|up to)\b|looking at\?", re.I)), ("zh", re.compile("做什么|干什么|为什么|在看什么"))):
        for r, c, q, a, task in turns(rows, lang):
            if task not in ("false_premise", "wrong_count", "attribute"):
                continue
            cats = en_categories(q) if lang == "en" else zh_categories(q)
            if act.search(q):
                n_activity += 1
                if task == "false_premise":
                    assert any(c_ in ANIMATE for c_ in cats), q  # the absent subject is a person or animal
                else:
                    assert (cats[0] if lang == "en" else cats[-1]) in ANIMATE, q
            if (re.search(r"\bcolou?r\b", q, re.I) if lang == "en" else "颜色" in q):
                assert "person" not in cats[:1] or task == "false_premise" and len(cats) > 1, q
    assert n_activity > 50  # people and animals still get them
    assert activity_questions(rows) == {"fitting": n_activity, "unfitting": 0}


def test_checker_flags_unnatural_wording():
    from datagen.synth.checker import Truth

    t = Truth.from_row(row("k", [obj("dog", (0, 0, 100, 100))]))
    assert Checker().check_turn(t, "false_premise", "en", "What is the bench in this picture doing?", "There is no bench in this image.")
    assert Checker().check_turn(t, "false_premise", "zh", "图中的三张餐桌在做什么？", "图中没有餐桌。")
    assert Checker().check_turn(t, "false_premise", "en", "What color is the person in the photo?", "There is no person in this image.")
    assert Checker().check_turn(t, "false_premise", "en", "What is the cat in this picture doing?", "There is no cat in this image.") == []


def test_chinese_answers_mirror_the_question_verb(big):
    _, _, rows, _ = big
    seen = defaultdict(int)
    for r, c, q, a, task in turns(rows, "zh"):
        if task not in ("existence", "multi_image_existence") and not (task in ("spatial", "relative_size", "attribute") and a[:2] in ("是的", "不是", "能，", "能。", "不能")):
            continue
        verb = zh_question_verb(q.split("\n")[-1])
        expected = {"能": ("能", "不能"), "有": ("有", "没有"), "是": ("是", "不是")}[verb]
        assert a.startswith(expected), (q, a)
        seen[verb] += 1
    assert seen["能"] > 100 and seen["有"] > 100


def test_checker_flags_an_answer_with_the_wrong_verb():
    from datagen.synth.checker import Truth

    t = Truth.from_row(row("k", [obj("dog", (0, 0, 100, 100))]))
    assert Checker().check_turn(t, "existence", "zh", "你能在图中看到狗吗？", "有，图中有狗。")
    assert Checker().check_turn(t, "existence", "zh", "你能在图中看到狗吗？", "能，画面中可以看到狗。") == []


def test_hair_dryer_and_plural_agreement_in_text(big):
    _, _, rows, _ = big
    texts = [t["content"] for r in rows for c in r["conversations"] for t in c["turns"] if c["lang"] == "en"]
    assert not [t for t in texts if "hair drier" in t]
    for t in texts:  # "Image 0 shows horses" about one horse: the count is always spelled out
        m = re.match(r"Image (\d+) shows (.+?), which image", t)
        if m:
            for part in re.split(r", | and ", m.group(2)):
                assert re.match(r"(an?|some|one|two|three|four|five|six|seven|eight|nine|ten|\d+) ", part), t


# --------------------------------------------------------------------------- scene text

def test_scene_text_is_quoted_only_when_trusted(tmp_path):
    yamans = {"text": "YAMANS", "bbox": [10, 10, 24, 10], "score": 0.675}
    cfg = SynthConfig(items_per_image=6, family_weights={f: 0.0 for f in SINGLE} | {"scene_text": 1.0, "existence": 0.01})
    rows = [
        row("coco_24", [obj("motorcycle", (0, 0, 600, 400))], captions=["A Yamaha emblem on a motorcycle."], ocr=[yamans]),
        row("misread", [obj("motorcycle", (0, 0, 600, 400))], captions=["A Yamaha emblem on a motorcycle."],
            ocr=[{"text": "YAMANS", "bbox": [10, 10, 120, 40], "score": 0.95}]),
        row("good", [obj("motorcycle", (0, 0, 600, 400))], captions=["A Yamaha emblem on a motorcycle."],
            ocr=[{"text": "YAMAHA", "bbox": [10, 10, 120, 40], "score": 0.95}]),
        row("blank", [obj("motorcycle", (0, 0, 600, 400))], captions=["A red motorcycle."], ocr=[]),
    ]
    table, out, stats = synth(tmp_path, rows, cfg)
    got = defaultdict(list)
    for r, c, q, a, task in turns(out.kept.to_pylist(), "en", "scene_text"):
        got[r["key"]].append((q, a))
    assert not got["coco_24"] and not got["misread"]
    assert stats["ocr_dropped"] == {"ocr_low_score": 1, "ocr_caption_mismatch": 1}
    assert got["good"] and all('"YAMAHA"' in a for _, a in got["good"])
    negatives = [(q, a) for q, a in got["good"] if a.startswith("No")]
    assert negatives and all(re.search(r'"(?!YAMAHA)[A-Z ]+"', q) for q, _ in negatives)  # "Does it say EXIT?" "No, it says YAMAHA."
    assert all("no" in a.lower() and '"' not in a for _, a in got["blank"])
    assert Checker.from_config(cfg).check_tables(table, out.kept) == []
    # the checker refuses the misread text on its own
    from datagen.synth.checker import Truth

    assert Checker().check_turn(Truth.from_row(rows[1]), "scene_text", "en", "What does the text say?", 'It says "YAMANS".')


# --------------------------------------------------------------------------- the demo

def test_demo_every_captioned_image_speaks_chinese_and_chinese_descriptions_are_rich(tmp_path):
    demo = Path(__file__).resolve().parents[1] / "datagen" / "assets" / "demo" / "annotations"
    table = pairs_from_coco_files(demo / "instances_demo2017.json", demo / "captions_demo2017.json", source="demo")
    cfg = SynthConfig(multi_image=MultiImageConfig(enabled=True, share=0.2), neutral_items_per_image=2)
    _, out, _ = synth(tmp_path, table, cfg)
    rows = out.kept.to_pylist()
    captioned = {r["key"] for r in table.to_pylist() if r["captions"]}
    with_zh = {r["images"][0] for r in rows if len(r["images"]) == 1 for c in r["conversations"] if c["lang"] == "zh"}
    assert captioned and captioned <= with_zh
    lengths = detailed_lengths(rows)
    en_words, zh_chars = lengths["en"], lengths["zh"]
    assert en_words and zh_chars and statistics.median(zh_chars) >= statistics.median(en_words)
    for *_, a, _ in turns(rows, None, "detailed_description"):
        assert not re.search(r"in total|altogether|一共", a, re.I), a
    assert Checker.from_config(cfg).check_tables(table, out.kept) == []


def test_checker_stays_independent_of_generation_on_the_big_set(big):
    cfg, table, rows, _ = big
    assert Checker.from_config(cfg).check_rows(table.to_pylist(), rows) == []
    bad = copy.deepcopy(rows)
    n = 0
    for r in bad:  # state the reverse of every English open spatial answer
        for c in r["conversations"]:
            for i in range(0, len(c["turns"]) - 1, 2):
                if c["lang"] == "en" and c["turns"][i]["task"] == "spatial" and c["turns"][i + 1]["content"].startswith("The "):
                    swap = {"left": "right", "right": "left", "above": "below", "below": "above"}
                    c["turns"][i + 1]["content"] = re.sub(r"left|right|above|below", lambda m: swap[m.group(0)], c["turns"][i + 1]["content"], count=1)
                    n += 1
    found = Checker.from_config(cfg).check_rows(table.to_pylist(), bad)
    assert n > 20 and len({(d.conversation, d.turn) for d in found}) == n


def test_caption_descriptions_without_chinese_go_to_the_translation_backend_a_recipe_names(tmp_path, monkeypatch):
    """No Chinese caption: the English caption description is its own conversation (template:caption),
    and translate.by_generator routes exactly those to DeepL; native template turns stay native."""
    from servers import LocalServer
    from test_translate_support import FakeDeepL

    from datagen.translate.config import TranslateConfig
    from datagen.translate.step import TranslateStep

    rows = [row("k1", [obj("dog", (100, 100, 200, 150))], captions=["A brown dog lies on the grass."])]
    cfg = SynthConfig(items_per_image=2, neutral_items_per_image=1, family_weights={f: 0.0 for f in SINGLE} | {"existence": 1.0, "brief_description": 1.0})
    _, out, _ = synth(tmp_path, rows, cfg)
    convs = out.kept.to_pylist()[0]["conversations"]
    caption_conv = [c for c in convs if c["id"] == "k1-d0-en"]
    assert caption_conv and caption_conv[0]["turns"][1]["content"] == "A brown dog lies on the grass."
    monkeypatch.setenv("TEST_DEEPL_KEY", "fake-key:fx")
    with LocalServer() as srv:
        fake = FakeDeepL(srv, "fake-key:fx")
        tcfg = TranslateConfig(share=1.0, by_generator={"template": "native", "template:caption": "deepl"},
                               deepl={"server_url": srv.url(""), "auth_key_env": "TEST_DEEPL_KEY"})
        step = TranslateStep(tcfg, RunContext(run_dir=tmp_path / "t", recipe_dir=tmp_path, seed=0))
        step.process(out.kept)
        step.close()
    sent = " ".join(fake.texts)
    assert "A brown dog lies on the grass." in sent
    natives = [t["content"] for c in convs if c["id"] != "k1-d0-en" for t in c["turns"]]
    assert natives and not any(t.removeprefix("<image>\n") in sent for t in natives)
