"""The COCO lexicon: real ids, context-correct Chinese, English articles and plurals."""

import pytest

from datagen.synth.lexicon import (
    BY_ID,
    LEXICON,
    en_count_phrase,
    en_with_article,
    indefinite_article,
    parse_zh_number,
    term,
    zh_count_phrase,
    zh_number,
)

# The official COCO 2017 instances categories (id, name), copied from instances_val2017.json.
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
]


def test_all_80_real_categories_with_real_ids():
    assert len(LEXICON) == 80
    assert {(t.id, name) for name, t in LEXICON.items()} == set(COCO_CATEGORIES)
    assert BY_ID[90] == "toothbrush" and 12 not in BY_ID and 26 not in BY_ID


@pytest.mark.parametrize(
    "label,good,bad",
    [
        ("orange", "橙子", "橙色"),
        ("remote", "遥控器", "远程"),
        ("parking meter", "停车计时器", "停车费"),
        ("couch", "沙发", "在沙发上"),
        ("mouse", "鼠标", "老鼠"),
        ("tie", "领带", "平局"),
        ("baseball bat", "棒球棒", "蝙蝠"),
        ("cell phone", "手机", "细胞"),
        ("tv", "电视机", "电视台"),
    ],
)
def test_known_mistranslations(label, good, bad):
    t = term(label)
    assert t.zh == good
    assert bad in t.zh_avoid


def test_no_chinese_name_contains_its_own_mistranslation():
    for name, t in LEXICON.items():
        assert t.zh and t.zh_measure and t.zh_avoid, name
        for bad in t.zh_avoid:
            assert bad not in t.zh, (name, bad)


def test_chinese_names_are_unique():
    names = [t.zh for t in LEXICON.values()]
    assert len(set(names)) == len(names)


def test_articles_by_sound():
    assert en_with_article("orange") == "an orange"
    assert en_with_article("umbrella") == "an umbrella"
    assert en_with_article("elephant") == "an elephant"
    assert en_with_article("airplane") == "an airplane"
    assert en_with_article("oven") == "an oven"
    assert en_with_article("sports ball") == "a sports ball"
    assert en_with_article("tv") == "a TV"
    assert en_with_article("hot dog") == "a hot dog"
    assert en_with_article("skis") == "a pair of skis"
    assert indefinite_article("unicycle") == "a"
    assert indefinite_article("hour-long ride") == "an"
    assert indefinite_article("orange bus") == "an"
    assert indefinite_article("white bus") == "a"
    assert indefinite_article("SUV") == "an"


def test_plurals_and_number_words():
    assert en_count_phrase("zebra", 1) == "one zebra"
    assert en_count_phrase("zebra", 2) == "two zebras"
    assert en_count_phrase("zebra", 0) == "no zebras"
    assert en_count_phrase("sheep", 3) == "three sheep"
    assert en_count_phrase("person", 2) == "two people"
    assert en_count_phrase("knife", 2) == "two knives"
    assert en_count_phrase("wine glass", 4) == "four wine glasses"
    assert en_count_phrase("mouse", 2) == "two mice"
    assert en_count_phrase("skis", 2) == "two pairs of skis"
    assert en_count_phrase("bus", 2) == "two buses"
    assert en_count_phrase("bench", 25) == "25 benches"


def test_chinese_counts_use_liang_and_classifiers():
    assert zh_count_phrase("zebra", 2) == "两匹斑马"
    assert zh_count_phrase("car", 1) == "一辆汽车"
    assert zh_count_phrase("cat", 3) == "三只猫"
    assert zh_count_phrase("airplane", 2) == "两架飞机"
    assert zh_count_phrase("boat", 2) == "两艘船"
    assert zh_count_phrase("book", 12) == "十二本书"
    assert zh_count_phrase("person", 22) == "二十二个人"
    assert zh_number(2, before_measure=False) == "二"
    for n in range(0, 100):
        assert parse_zh_number(zh_number(n)) == n


def test_unknown_label_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown object label 'unicorn'.*80 COCO"):
        term("unicorn")
