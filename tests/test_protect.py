"""Protected spans survive masking and restoring, for any text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.translate.protect import PLACEHOLDER_ANY as PLACEHOLDER_OUT
from datagen.translate.protect import (
    ProtectedSpanError, find_spans, from_xml, mask, placeholder, restore, strip_spans, to_xml,
)

FRAGMENTS = st.sampled_from([
    "<image>", "<image_0>", "<image_12>", "<ref>the dog</ref>", "<box>(12,34),(56,78)</box>", "<box>", "</ref>",
    "3", "2.5", "1,000", "50%", "[0.12, 0.3, 0.5, 0.9]", "`code`", "```\nprint(1)\n```", "```", "`",
    '<x id="0"/>', '<x id="7"></x>', '<X ID=3 />', "&amp;", "&lt;x id=\"1\"/&gt;", "<", ">", "&", "\n", " ",
    "orange", "What is in the image?", "图片", "é", "\x00",
])
TEXTS = st.one_of(st.text(), st.lists(st.one_of(FRAGMENTS, st.text(max_size=5)), max_size=12).map("".join))


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_mask_restore_round_trips_any_text(text):
    m = mask(text)
    assert restore(m.text, m.spans) == text
    assert list(m.spans) == find_spans(text)
    # the masked text holds exactly our placeholders, in order, and nothing a backend could mistake for one
    assert [int(n) for n in PLACEHOLDER_OUT.findall(m.text)] == list(range(len(m.spans)))


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_xml_escaping_round_trips_masked_text(text):
    m = mask(text)
    xml = to_xml(m.text)
    assert "&" not in xml.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
    assert from_xml(xml) == m.text
    assert restore(from_xml(xml), m.spans) == text


@settings(max_examples=200, deadline=None)
@given(TEXTS, st.randoms(use_true_random=False))
def test_restore_follows_placeholders_that_a_translator_moved(text, rnd):
    m = mask(text)
    tags = [placeholder(i) for i in range(len(m.spans))]
    rnd.shuffle(tags)
    out = restore("译文".join(tags), m.spans)
    assert sorted(find_spans(out)) == sorted(m.spans) or not m.spans


def test_spans_found_in_a_typical_instruction():
    text = ("<image_0> <image_1>\nIs <ref>the dog</ref><box>(1,2),(3,4)</box> bigger than 2 cats at "
            "[0.12, 0.3, 0.5, 0.9]? Run `ls -l` or\n```py\nx = 1\n```")
    assert find_spans(text) == ["<image_0>", "<image_1>", "<ref>the dog</ref>", "<box>(1,2),(3,4)</box>", "2",
                                "[0.12, 0.3, 0.5, 0.9]", "`ls -l`", "```py\nx = 1\n```"]
    m = mask(text)
    assert m.text.startswith('<x id="0"/> <x id="1"/>\nIs <x id="2"/><x id="3"/> bigger than <x id="4"/> cats')
    assert strip_spans("a <image> b 3 c", "") == "a  b  c"


def test_restore_rejects_dropped_duplicated_and_invented_placeholders():
    m = mask("<image> has 2 dogs")
    assert restore('<x id="1"/>只狗 <x id="0"/>', m.spans) == "2只狗 <image>"
    with pytest.raises(ProtectedSpanError, match=r"missing \[1\]"):
        restore('<x id="0"/> 狗', m.spans)
    with pytest.raises(ProtectedSpanError, match=r"duplicated \[0\]"):
        restore('<x id="0"/><x id="0"/><x id="1"/>', m.spans)
    with pytest.raises(ProtectedSpanError, match="unknown placeholder id 5"):
        restore('<x id="0"/><x id="1"/><x id="5"/>', m.spans)


def test_backend_variants_of_a_placeholder_are_accepted():
    assert from_xml('a <x id="0"></x> b <x id=1 /> &lt;&amp;') == 'a <x id="0"/> b <x id="1"/> <&'
