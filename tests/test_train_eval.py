"""POPE-style probe construction and metrics (no model needed)."""

from __future__ import annotations

import pytest

from datagen.train.eval import existence_question, pope_metrics, pope_questions


@pytest.mark.parametrize(
    "label, question",
    [
        ("dog", "Is there a dog in the image?"),
        ("umbrella", "Is there an umbrella in the image?"),
        ("orange", "Is there an orange in the image?"),
        ("hair drier", "Is there a hair dryer in the image?"),  # COCO's name, the word people write
        ("scissors", "Is there a pair of scissors in the image?"),  # COCO: the lexicon's surface form
        ("tv", "Is there a TV in the image?"),
        ("hour glass", "Is there an hour glass in the image?"),  # not COCO: article by sound
        ("unicycle", "Is there a unicycle in the image?"),
        ("jeans", "Are there any jeans in the image?"),
    ],
)
def test_existence_question_article_and_number(label, question):
    assert existence_question(label) == question


def test_chinese_questions_use_the_checked_lexicon():
    assert existence_question("orange", "zh") == "图中有橙子吗？"  # the fruit, not the colour
    assert existence_question("dog", "zh") == "图中有狗吗？"
    assert existence_question("unicycle", "zh") is None  # no checked translation: not asked


def test_pope_metrics_against_hand_counts():
    truth = [True, True, True, False, False, False]
    pred = [True, True, False, True, False, False]  # tp 2, fn 1, fp 1, tn 2
    m = pope_metrics(truth, pred)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 6)
    always_yes = pope_metrics(truth, [True] * 6)
    assert always_yes["yes_ratio"] == 1.0 and always_yes["f1"] == pytest.approx(2 / 3)


IMAGES = [
    {"key": "a", "image": b"", "labels": {"dog", "frisbee"}},
    {"key": "b", "image": b"", "labels": {"dog", "frisbee", "person"}},
    {"key": "c", "image": b"", "labels": {"car"}},
    {"key": "d", "image": b"", "labels": {"car", "person"}},
    {"key": "e", "image": b"", "labels": {"person", "bench"}},
]


@pytest.mark.parametrize("sampling", ["random", "popular", "adversarial"])
def test_probes_are_balanced_and_negatives_are_absent(sampling):
    qs = pope_questions(IMAGES, sampling=sampling, per_image=1, seed=1)
    assert len(qs) == 2 * len(IMAGES)
    by_key = {im["key"]: im["labels"] for im in IMAGES}
    for q in qs:
        assert (q["label"] in by_key[q["key"]]) == q["answer"]


def test_popular_and_adversarial_pick_the_documented_negatives():
    # frequencies: person 3, dog 2, frisbee 2, car 2, bench 1
    pop = pope_questions([IMAGES[2]], sampling="popular", per_image=1, stats=[im["labels"] for im in IMAGES])
    assert [q["label"] for q in pop if not q["answer"]] == ["person"]
    # image "c" has a car; car co-occurs with person (image d) and nothing else
    adv = pope_questions([IMAGES[2]], sampling="adversarial", per_image=1, stats=[im["labels"] for im in IMAGES])
    assert [q["label"] for q in adv if not q["answer"]] == ["person"]
    # image "a" has dog + frisbee; both co-occur with person (image b) -> person; popularity would say car
    adv_a = pope_questions([IMAGES[0]], sampling="adversarial", per_image=2, stats=[im["labels"] for im in IMAGES])
    assert [q["label"] for q in adv_a if not q["answer"]][0] == "person"
    with pytest.raises(ValueError, match="random, popular or adversarial"):
        pope_questions(IMAGES, sampling="bogus", per_image=1)
