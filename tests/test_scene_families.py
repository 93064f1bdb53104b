"""The scene families (relation, universal, grounding) and the open vocabulary behind them."""

from __future__ import annotations

import copy
import io
import json
import random
import re

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from datagen.core.records import pairs_table
from datagen.core.steps import RunContext
from datagen.synth import scene_checker, vocab
from datagen.synth.checker import Checker
from datagen.synth.config import DEFAULT_FAMILY_WEIGHTS, SynthConfig
from datagen.synth.facts import facts_from_row
from datagen.synth.planner import Planner
from datagen.synth.scene import scene_from_row
from datagen.synth.stats import LabelStats
from datagen.synth.step import SynthesizeStep


def vobj(label, bbox, attrs=(), synsets=None):
    syn = synsets if synsets is not None else [vocab.CONCEPTS[label].synset] if label in vocab.CONCEPTS else []
    return {"label": label, "bbox": list(bbox), "score": None, "attributes": list(attrs), "iscrowd": False, "synsets": syn}


def vg_row(key="vg_1", width=800, height=600):
    """A Visual Genome-style row: a man riding a horse on grass, wearing a hat; three umbrellas; a region."""
    objects = [
        vobj("man", (100, 50, 200, 400), ["smiling"]),          # 0
        vobj("horse", (80, 200, 500, 350), ["brown"]),          # 1
        vobj("hat", (150, 40, 60, 40), ["black"]),              # 2
        vobj("grass", (0, 500, 800, 100), ["green"]),           # 3
        vobj("umbrella", (600, 10, 80, 60), ["red"]),           # 4
        vobj("umbrella", (700, 10, 80, 60), ["red", "open"]),   # 5
        vobj("umbrella", (602, 12, 78, 58), ["striped"]),       # 6: a duplicate box of 4 (VG does that)
        vobj("umbrella", (520, 100, 70, 60), ["blue"]),         # 7
        vobj("flag", (300, 20, 40, 30), ["white"]),             # 8
        vobj("flag", (360, 20, 40, 30), ["white", "red"]),      # 9
    ]
    meta = {"vg_width": width, "vg_height": height, "regions": [{"phrase": "man riding a brown horse", "bbox": [90, 45, 500, 500]}],
            "relationships": [{"subject": 0, "predicate": "riding", "object": 1},
                              {"subject": 0, "predicate": "wearing", "object": 2},
                              {"subject": 1, "predicate": "on", "object": 3}]}
    return {"key": key, "source": "vg", "width": width, "height": height, "objects": objects, "captions": [],
            "caption": "man riding a brown horse", "meta": json.dumps(meta)}


def only(**weights):
    return {**{f: 0.0 for f in DEFAULT_FAMILY_WEIGHTS}, **weights}


def generate(rows, seeds=range(6), **cfg):
    table = pairs_table(rows)
    out = []
    cfg = SynthConfig(**{"items_per_image": 10, "max_items_per_conversation": 10, "max_negatives_per_conversation": 10, **cfg})
    for seed in seeds:
        ctx = RunContext(run_dir=Path(tempfile.gettempdir()), recipe_dir=Path(tempfile.gettempdir()), seed=seed)
        step = SynthesizeStep(cfg, ctx)
        step._stats = LabelStats()
        out += step.process(table).kept.to_pylist()
    return cfg, table, out


def turns(rows, task):
    for r in rows:
        for c in r["conversations"]:
            t = c["turns"]
            for i in range(0, len(t), 2):
                if t[i]["task"] == task:
                    yield r, c, i, t[i]["polarity"], t[i]["content"].removeprefix("<image>\n"), t[i + 1]["content"]


# ----------------------------------------------------------------------- vocabulary

def test_animal_is_never_absent_when_a_dog_is_present():
    dog = [vobj("dog", (0, 0, 10, 10), synsets=["dog.n.01"])]
    assert "animal" not in vocab.absent_candidates(dog) and vocab.blocked_by(vocab.CONCEPTS["animal"], dog)
    assert "dog" not in vocab.absent_candidates(dog)
    # the other way: an annotated "animal" may be the dog
    assert vocab.blocked_by(vocab.CONCEPTS["dog"], [vobj("animal", (0, 0, 10, 10))])
    # a puppy is a dog is an animal
    puppy = [vobj("puppy", (0, 0, 10, 10))]
    assert vocab.blocked_by(vocab.CONCEPTS["dog"], puppy) and vocab.blocked_by(vocab.CONCEPTS["animal"], puppy)
    assert not vocab.blocked_by(vocab.CONCEPTS["cat"], puppy)
    # a man is a person: "Is there a person?" is never answered No
    assert vocab.blocked_by(vocab.CONCEPTS["person"], [vobj("man", (0, 0, 10, 10))])
    # a synset we do not know could be anything: categories and name-sharing words are blocked
    unknown = [vobj("police dog", (0, 0, 10, 10), synsets=["police_dog.n.01"])]
    assert vocab.blocked_by(vocab.CONCEPTS["dog"], unknown) and vocab.blocked_by(vocab.CONCEPTS["animal"], unknown)
    assert not vocab.blocked_by(vocab.CONCEPTS["car"], unknown)


def test_open_vocabulary_rows_never_deny_a_hypernym_in_any_family():
    """Over many seeds, no generated negative names a thing related to what is there (dog, man)."""
    r = vg_row()
    r_objs = json.loads(json.dumps(r["objects"])) + [vobj("dog", (400, 400, 80, 60), synsets=["dog.n.01"])]
    r = {**r, "objects": r_objs}
    cfg, table, out = generate([r], seeds=range(25), family_weights={"existence": 3, "false_premise": 2, "grounding": 3})
    denied = set()
    for task in ("existence", "false_premise", "grounding"):
        for _, c, _, pol, q, a in turns(out, task):
            if pol == "negative" and c["lang"] == "en":
                denied.add(q)
    assert denied, "negatives were generated"
    text = " ".join(denied).lower().replace("hot dog", "hot-dog")  # a hot dog is food, not a dog
    for related in (" animal", " dog", " person", " man", " puppy", " horse"):
        assert related + " " not in text and related + "?" not in text, (related, sorted(denied))
    assert Checker.from_config(cfg).check_tables(table, pa.Table.from_pylist(out)) == []


def test_checker_flags_a_denied_hypernym():
    r = vg_row()
    bad = {"key": r["key"], "images": [r["key"]], "conversations": [{"id": "x", "lang": "en", "parent_id": None, "turns": [
        {"role": "user", "content": "Is there a person in the image?", "task": "existence", "polarity": "negative", "generator": "template"},
        {"role": "assistant", "content": "No.", "task": "existence", "polarity": "negative", "generator": "template"}]}]}
    assert Checker().check_rows([r], [bad]), "a man is a person"


# --------------------------------------------------------------------------- families

@pytest.mark.parametrize("family", ["relation", "universal", "grounding"])
def test_family_gives_both_polarities_in_both_languages_and_the_checker_agrees(family):
    cfg, table, out = generate([vg_row()], family_weights=only(**{family: 1.0}))
    seen = {(c["lang"], pol) for _, c, _, pol, _, _ in turns(out, family)}
    assert seen == {("en", "positive"), ("en", "negative"), ("zh", "positive"), ("zh", "negative")}
    assert Checker.from_config(cfg).check_tables(table, pa.Table.from_pylist(out)) == []


def test_relation_answers_come_from_triples():
    _, _, out = generate([vg_row()], family_weights=only(relation=1.0))
    pairs = {(c["lang"], pol, q, a) for _, c, _, pol, q, a in turns(out, "relation")}
    en = {(q, a) for lang, pol, q, a in pairs if lang == "en"}
    # a real triple: Yes; a swapped subject/object or contrasted predicate: No with the true triple
    assert any("the man riding the horse" in q and a.startswith("Yes") for q, a in en)
    assert any("the horse riding the man" in q and a == "No, the man is riding the horse." for q, a in en)
    assert any("the horse under the grass" in q and a == "No, the horse is on the grass." for q, a in en)
    zh = {(q, a) for lang, pol, q, a in pairs if lang == "zh"}
    assert any("马骑着男人" in q and a == "不是，男人骑着马。" for q, a in zh)


def test_universal_uses_merged_instances_and_names_exceptions():
    sc = scene_from_row(vg_row())
    assert sc.counts["umbrella"] == 3, "the duplicate box folds into its twin"
    _, _, out = generate([vg_row()], family_weights=only(universal=1.0))
    qa = {(c["lang"], q, a) for _, c, _, _, q, a in turns(out, "universal")}
    red = [a for lang, q, a in qa if lang == "en" and re.search(r"\bred\b", q) and "umbrella" in q]
    assert red and all(a.startswith("No, not all of them: some umbrellas are blue") for a in red), red
    none = [a for lang, q, a in qa if lang == "en" and a.startswith("No, none of the umbrellas")]
    assert any(lang == "en" and "flag" in q and "white" in q and a.startswith("Yes") for lang, q, a in qa)
    assert none and all(a.endswith("they are blue and red.") for a in none)
    assert any(lang == "zh" and "有的是蓝色的" in a for lang, q, a in qa)
    # every umbrella needs a colour: drop the blue one's colour and nothing is asked
    r = vg_row()
    r["objects"][7]["attributes"] = ["open"]
    _, _, out = generate([r], family_weights=only(universal=1.0))
    asked = [q for _, c, _, _, q, _ in turns(out, "universal") if c["lang"] == "en"]
    assert asked and not [q for q in asked if "umbrella" in q]


def test_grounding_negatives_are_absent_and_region_descriptions_are_english_only():
    _, _, out = generate([vg_row()], family_weights=only(grounding=1.0))
    g = list(turns(out, "grounding"))
    negs = {a for _, c, _, pol, q, a in g if pol == "negative" and c["lang"] == "en"}
    assert negs and all(re.fullmatch(r"There is no [a-z ]+ in this image\.", a) for a in negs)
    assert any(a == "Man riding a brown horse." for _, c, _, _, q, a in g if c["lang"] == "en")
    assert any(re.fullmatch(r"一匹棕色的马。", a) for _, c, _, _, q, a in g if c["lang"] == "zh")


@pytest.mark.parametrize("family", ["relation", "universal", "grounding"])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_checker_catches_corrupted_scene_answers(family, lang):
    cfg, table, out = generate([vg_row()], family_weights=only(**{family: 1.0}))
    checker = Checker.from_config(cfg)
    pairs = table.to_pylist()
    tried = 0
    for r, c, i, pol, q, a in turns(out, family):
        if c["lang"] != lang:
            continue
        bad = copy.deepcopy(r)
        conv = next(x for x in bad["conversations"] if x["id"] == c["id"])
        conv["turns"][i + 1]["content"] = _corrupt(family, lang, pol, a)
        found = checker.check_rows(pairs, [bad])
        assert found and {d.task for d in found} == {family}, (q, a, conv["turns"][i + 1]["content"])
        tried += 1
    assert tried >= 4


def _corrupt(family, lang, pol, a):
    if family == "grounding":
        if a.startswith(("There is no", "图中没有")):
            return "<ref>x</ref><box>(1,2),(3,4)</box>"
        if "<box>" in a:
            return re.sub(r"\((\d+),", lambda m: f"({(int(m.group(1)) + 200) % 1000},", a, count=1)
        return "A red giraffe." if lang == "en" else "一只红色的长颈鹿。"
    if lang == "en":
        return "No." if a.startswith("Yes") else "Yes."
    return "不是。" if a.startswith("是的") else "是的。"


def test_llava_box_format():
    cfg, table, out = generate([vg_row()], family_weights=only(grounding=1.0), box_format="llava")
    boxes = [a for _, c, _, pol, q, a in turns(out, "grounding") if pol == "positive" and "[" in a]
    assert boxes and all("<box>" not in a and "<ref>" not in a for a in boxes)
    assert all(re.search(r"\[0\.\d\d, 0\.\d\d, (0\.\d\d|1\.00), (0\.\d\d|1\.00)\]", a) for a in boxes)
    assert Checker.from_config(cfg).check_tables(table, pa.Table.from_pylist(out)) == []


# ------------------------------------------------------------------------------ boxes

@pytest.mark.parametrize("fmt", ["qwen", "llava"])
def test_grounding_boxes_land_on_the_object_in_the_resized_image(tmp_path, fmt):
    """A red block at a known place, stored at half size by the fetch step: the answer's box, drawn on the
    stored image, encloses the red block and nothing much else."""
    from datagen.fetch.config import FetchConfig
    from datagen.fetch.image import process_image

    w, h, block = 1000, 600, (620, 180, 240, 300)  # x, y, w, h in the original
    img = Image.new("RGB", (w, h), (30, 140, 40))
    ImageDraw.Draw(img).rectangle([block[0], block[1], block[0] + block[2] - 1, block[1] + block[3] - 1], fill=(220, 20, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    objects = [vobj("box", block, ["red"])]
    stored = process_image(buf.getvalue(), objects, FetchConfig(max_side=500))
    assert (stored.width, stored.height) == (500, 300)
    row = {"key": "k", "source": "t", "width": stored.width, "height": stored.height, "objects": stored.objects,
           "captions": [], "caption": None, "meta": None}
    _, _, out = generate([row], family_weights=only(grounding=1.0), box_format=fmt)
    answers = [a for _, c, _, pol, q, a in turns(out, "grounding") if scene_checker.boxes_in(a) and not scene_checker.boxes_in(q)]
    assert answers
    pic = Image.open(io.BytesIO(stored.data)).convert("RGB")
    for a in answers:
        (x1, y1, x2, y2), = scene_checker.boxes_in(a)
        px = [round(x1 * pic.width), round(y1 * pic.height), round(x2 * pic.width), round(y2 * pic.height)]
        drawn = pic.copy()
        ImageDraw.Draw(drawn).rectangle(px, outline=(0, 0, 255), width=1)
        drawn.save(tmp_path / f"{fmt}.png")
        inside = pic.crop((px[0] + 2, px[1] + 2, px[2] - 2, px[3] - 2))
        arr = np.asarray(inside)
        assert ((arr[..., 0] > 150) & (arr[..., 1] < 90)).mean() > 0.97, (a, px)
        outside = [pic.getpixel((px[0] - 3, (px[1] + px[3]) // 2)), pic.getpixel((px[2] + 3, (px[1] + px[3]) // 2)),
                   pic.getpixel(((px[0] + px[2]) // 2, px[1] - 3)), pic.getpixel(((px[0] + px[2]) // 2, px[3] + 3))]
        assert all(p[1] > 100 for p in outside), "the box is tight: just outside it is background"


def test_vg_rows_skip_the_coco_families_but_keep_existence_negatives():
    facts = facts_from_row(vg_row())
    assert facts.objects == [] and facts.scene is not None and facts.scene.open_vocab
    planner = Planner(facts, SynthConfig(), LabelStats(), random.Random(0))
    cand = planner.positive_candidates()
    assert cand["counting"] == 0 and cand["spatial"] == 0 and cand["relation"] == 3
    labs = {planner.absent_label("popular") for _ in range(20)} - {None}
    assert labs and not labs & {"person", "horse"}


def test_no_colour_claims_about_people():
    r = vg_row()
    r["objects"][0]["attributes"] = ["black"]  # the man's coat, not the man
    r["objects"] += [vobj("woman", (300, 300, 100, 200), ["red"]), vobj("woman", (450, 300, 100, 200), ["red"])]
    _, _, out = generate([r], family_weights=only(universal=1.0, grounding=1.0))
    g = list(turns(out, "grounding"))
    text = " ".join(a + " " + q for _, c, _, _, q, a in list(turns(out, "universal")) + g)
    assert "women" not in text and "black man" not in text and "黑色的男人" not in text
    assert any(a == "A man." for _, c, _, _, q, a in g), "the man is still described, without a colour"


@pytest.mark.parametrize("fmt", ["qwen", "llava"])
def test_translation_masking_keeps_grounding_boxes_intact(fmt):
    """A translator sees placeholders instead of boxes; whatever it does to the words, the boxes come back."""
    from datagen.translate.protect import mask, restore

    _, _, out = generate([vg_row()], family_weights=only(grounding=1.0), box_format=fmt)
    texts = [x for _, c, _, _, q, a in turns(out, "grounding") if c["lang"] == "en" for x in (q, a)
             if scene_checker.boxes_in(x)]
    assert texts
    for text in texts:
        m = mask(text)
        assert not scene_checker.boxes_in(m.text), "no box reaches the translator"
        placeholders = re.findall(r'<x id="\d+"/>', m.text)
        fake_zh = "译文：" + "，".join(reversed(placeholders)) + "。"  # reordered, words all changed
        assert sorted(map(tuple, scene_checker.boxes_in(restore(fake_zh, m.spans)))) == \
            sorted(map(tuple, scene_checker.boxes_in(text)))


def test_checker_refuses_quantifiers_over_a_crowd():
    r = vg_row()
    r["objects"].append({**vobj("umbrella", (0, 0, 50, 50), ["red"]), "iscrowd": True})
    conv = {"key": r["key"], "images": [r["key"]], "conversations": [{"id": "x", "lang": "en", "parent_id": None, "turns": [
        {"role": "user", "content": "Are all the flags white?", "task": "universal", "polarity": "positive", "generator": "template"},
        {"role": "assistant", "content": "Yes.", "task": "universal", "polarity": "positive", "generator": "template"},
        {"role": "user", "content": "Are all the umbrellas red?", "task": "universal", "polarity": "positive", "generator": "template"},
        {"role": "assistant", "content": "Yes.", "task": "universal", "polarity": "positive", "generator": "template"}]}]}
    found = Checker().check_rows([r], [conv])
    assert [d.question for d in found] == ["Are all the umbrellas red?"]
    _, _, out = generate([r], family_weights=only(universal=1.0))
    assert not [q for _, _, _, _, q, _ in turns(out, "universal") if "umbrella" in q], "the planner skips crowds too"
