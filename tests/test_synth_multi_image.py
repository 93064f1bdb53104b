"""Multi-image / in-context samples: placeholder contract (hypothesis), renumbering, answers."""

from __future__ import annotations

import re

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.core.records import CONVERSATION_SCHEMA
from datagen.core.steps import RunContext
from datagen.synth.checker import Checker
from datagen.synth.config import MultiImageConfig, SynthConfig
from datagen.synth.fakecoco import fake_coco_pairs
from datagen.synth.multi_image import PLACEHOLDER, Sample, merge_samples, placeholder_errors, renumber_text
from datagen.synth.step import SynthesizeStep

POOL = fake_coco_pairs(40, seed=5)


def _sub_sample(draw, idx):
    """A random sample written with its own numbering from 0: either one bare <image> or
    several declared <image_k>, in any order in the text."""
    n = draw(st.integers(1, 3))
    keys = [f"img{idx}_{k}" for k in range(n)]
    if n == 1 and draw(st.booleans()):
        text = "<image>\nHow many cats are in image 0?"
    else:
        order = draw(st.permutations(list(range(n))))
        text = " ".join(f"Image {k} is <image_{k}>." for k in order) + " Which image shows a dog?"
    return Sample(keys, [{"role": "user", "content": text, "task": "t", "polarity": "neutral", "generator": "template"}])


@st.composite
def compositions(draw):
    return [_sub_sample(draw, i) for i in range(draw(st.integers(1, 5)))]


@settings(max_examples=150, deadline=None)
@given(compositions())
def test_merged_placeholders_name_each_image_exactly_once(parts):
    merged = merge_samples(parts)
    texts = [t["content"] for t in merged.turns]
    assert placeholder_errors(merged.images, texts) == []
    # the n-th placeholder of the merged text points at the image that sub-sample meant
    offset = 0
    for part, turn in zip(parts, merged.turns):
        for m in PLACEHOLDER.finditer(turn["content"]):
            i = int(m.group(1))
            assert offset <= i < offset + len(part.images)
            assert merged.images[i] == part.images[i - offset]
        # plain-text indices move with the placeholders
        for m in re.finditer(r"Image (\d+) is <image_(\d+)>", turn["content"]):
            assert m.group(1) == m.group(2)
        offset += len(part.images)


def test_placeholder_errors_catch_violations():
    assert placeholder_errors(["a", "b"], ["Image 0 is <image_0>."]) == ["image 1 (b) never referenced"]
    assert "<image_2> but only 2 images" in placeholder_errors(["a", "b"], ["<image_0> <image_1> <image_2>"])
    assert "<image_0> declared 2 times" in placeholder_errors(["a"], ["<image_0> <image_0>"])
    assert renumber_text("Image 0 is <image>. How many dogs in image 0?", 3) == "Image 3 is <image_3>. How many dogs in image 3?"


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 4), st.integers(0, 3), st.integers(0, 10_000))
def test_step_multi_image_rows_satisfy_the_contract(tmp_path_factory, n_img, few_shot, seed):
    tmp = tmp_path_factory.mktemp("mm")
    cfg = SynthConfig(items_per_image=2, multi_image=MultiImageConfig(enabled=True, images_per_sample=n_img, share=0.5, few_shot=few_shot))
    table = POOL.slice(seed % 20, 20)
    step = SynthesizeStep(cfg, RunContext(run_dir=tmp, recipe_dir=tmp, seed=seed))
    step.prepare([POOL])
    out = step.process(table)
    mm = [r for r in out.kept.to_pylist() if r["key"].startswith("mm_")]
    assert mm, "share=0.5 over 20 images must give multi-image rows"
    for r in mm:
        assert "." not in r["key"] and len(set(r["images"])) == len(r["images"]) >= 2
        for c in r["conversations"]:
            assert placeholder_errors(r["images"], [t["content"] for t in c["turns"]]) == []
    pa.Table.from_pylist(out.kept.to_pylist(), schema=CONVERSATION_SCHEMA)
    assert Checker.from_config(cfg).check_tables(table, out.kept) == []


def test_cross_image_answers_checked_and_corruption_found(tmp_path):
    cfg = SynthConfig(items_per_image=2, multi_image=MultiImageConfig(enabled=True, images_per_sample=3, share=1.0, few_shot=2))
    table = POOL
    step = SynthesizeStep(cfg, RunContext(run_dir=tmp_path, recipe_dir=tmp_path))
    step.prepare([table])
    rows = step.process(table).kept.to_pylist()
    checker = Checker.from_config(cfg)
    assert checker.check_rows(table.to_pylist(), rows) == []
    kinds = {t["task"] for r in rows if r["key"].startswith("mm_") for c in r["conversations"] for t in c["turns"]}
    assert {"multi_image_which", "multi_image_existence", "multi_image_count", "multi_image_difference", "in_context"} <= kinds
    # corrupt one "which image" answer and one in-context answer
    done = set()
    for r in rows:
        for c in r["conversations"]:
            if c["lang"] != "en":
                continue
            t = c["turns"][-1]
            if t["task"] == "in_context" and "ic" not in done:
                t["content"] = "Twenty."
                done.add("ic")
            if c["turns"][1]["task"] == "multi_image_which" and "w" not in done:
                c["turns"][1]["content"] = "Image 7."
                done.add("w")
    found = {d.task for d in checker.check_rows(table.to_pylist(), rows)}
    assert found == {"in_context", "multi_image_which"}


def test_rows_validate_against_the_conversation_row_json_schema(tmp_path):
    from datagen.schemas import validator

    cfg = SynthConfig(multi_image=MultiImageConfig(enabled=True, share=0.3, few_shot=2))
    step = SynthesizeStep(cfg, RunContext(run_dir=tmp_path, recipe_dir=tmp_path))
    step.prepare([POOL])
    rows = step.process(POOL).kept.to_pylist()
    v = validator("conversation_row")
    errors = [f"{r['key']}: {e.message}" for r in rows for e in v.iter_errors(r)]
    assert errors == []
    assert any(r["key"].startswith("mm_") for r in rows)
