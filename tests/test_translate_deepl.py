"""The translate step with the deepl backend against a DeepL API v2 server on 127.0.0.1."""

from __future__ import annotations

import time

import deepl
import pytest
from servers import LocalServer
from test_translate_support import FakeDeepL

from datagen.core.records import CONVERSATION_SCHEMA, conversations_table, pairs_table
from datagen.core.cache import RequestCache, merge
from datagen.core.steps import RunContext
from datagen.translate.config import TranslateConfig
from datagen.translate.errors import BackendConfigError, QuotaExhausted
from datagen.translate.step import TranslateStep

KEY = "fake-key:fx"


def turn(role, content, generator="llm:test"):
    return {"role": role, "content": content, "task": "qa", "polarity": "positive", "generator": generator}


def conv(cid, *pairs, generator="llm:test", lang="en", parent_id=None):
    turns = []
    for q, a in pairs:
        turns += [turn("user", q, generator), turn("assistant", a, generator)]
    return {"id": cid, "lang": lang, "parent_id": parent_id, "turns": turns}


def rows():
    return conversations_table([
        {"key": "coco_1", "source": "coco", "images": ["coco_1"], "conversations": [
            conv("c1", ("<image>\nIs there an orange on the table?", "Yes, there is an orange on the table."),
                 ("How many cats are on the couch?", "There are 2 cats on the couch.")),
            conv("c2", ("<image>\nWhere is the remote?", "It is next to the bed.")),  # 远程: lexicon reject
        ]},
        {"key": "coco_2", "source": "coco", "images": ["coco_2"], "conversations": [
            conv("c3", ("<image>\nDescribe the scene.", "A man rides a bicycle down the street.")),  # French
            conv("c4", ("<image>\nWhat is the man holding in his hand today?", "It is next to the bed.")),
            conv("c5", ("<image>\nIs there a dog in the image?", "No, there is no dog in the image.")),
        ]},
        {"key": "two_img", "source": "mmicl", "images": ["a", "b"], "conversations": [
            conv("c6", ("<image_0> <image_1> What is different in the second image?", "It is next to the bed.")),
            conv("c7", ("How many birds are there?", "It is next to the bed.")),  # invents a number
            conv("c8", ("Please describe this photograph in as much detail as you possibly can.",
                        "It is next to the bed.")),  # far too short
        ]},
    ])


EXPECTED_REJECTS = {
    "c2": "translate_lexicon:remote", "c3": "translate_lang_mismatch", "c4": "translate_untranslated_english",
    "c6": "translate_protected_spans", "c7": "translate_protected_spans", "c8": "translate_length_ratio",
}


def make_step(tmp_path, srv, **over):
    deepl_cfg = {"server_url": srv.url(""), "auth_key_env": "TEST_DEEPL_KEY", "batch_size": 50, **over.pop("deepl", {})}
    cfg = TranslateConfig(**{"backend": "deepl", "share": 1.0, "deepl": deepl_cfg, **over})
    ctx = RunContext(run_dir=tmp_path, recipe_dir=tmp_path, seed=7)
    return TranslateStep(cfg, ctx), ctx


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("TEST_DEEPL_KEY", KEY)
    monkeypatch.setattr(deepl.http_client, "max_network_retries", deepl.http_client.max_network_retries)


def translated(table):
    out = {}
    for row in table.to_pylist():
        for c in row["conversations"]:
            if c["lang"] == "zh" and c["id"].endswith("-zh") and any(
                    t["generator"].startswith("translate:") for t in c["turns"]):
                out[c["parent_id"]] = (row["key"], c)
    return out


def test_deepl_translates_checks_and_rejects(tmp_path):
    with LocalServer() as srv:
        fake = FakeDeepL(srv, KEY)
        step, ctx = make_step(tmp_path, srv)
        out = step.process(rows())
        step.close()

    assert out.kept.schema.equals(CONVERSATION_SCHEMA)
    assert out.kept.num_rows == 3
    zh = translated(out.kept)
    assert set(zh) == {"c1", "c5"}
    key, c1 = zh["c1"]
    assert key == "coco_1" and c1["id"] == "c1-zh" and c1["lang"] == "zh" and c1["parent_id"] == "c1"
    assert [t["content"] for t in c1["turns"]] == [
        "<image>\n桌子上有橙子吗？", "是的，桌子上有一个橙子。", "沙发上有几只猫？", "有 2 只猫在沙发上。"]
    assert {t["generator"] for t in c1["turns"]} == {"translate:deepl"}
    assert [t["role"] for t in c1["turns"]] == ["user", "assistant", "user", "assistant"]
    # the originals are all still there, untouched
    assert sum(len(r["conversations"]) for r in out.kept.to_pylist()) == 8 + 2

    rej = {r["detail"].split()[1]: r for r in out.rejects.to_pylist()}
    assert {cid: r["reason"] for cid, r in rej.items()} == EXPECTED_REJECTS
    assert all(r["step"] == "translate" for r in rej.values())
    assert rej["c6"]["key"] == "two_img"

    # what went over the wire: XML tag handling, the glossary, placeholders instead of spans
    body = fake.translate_bodies[0]
    assert body["tag_handling"] == "xml" and body["target_lang"] == "ZH-HANS" and body["source_lang"] == "EN"
    assert body["glossary_id"] == "g1"
    assert '<x id="0"/>\nIs there an orange on the table?' in body["text"]
    assert not any("<image" in t for t in fake.texts)
    # the lexicon became the glossary, once; the adjective-prone "orange" is left out
    (g,) = fake.glossaries.values()
    assert g["entries"]["remote"] == "遥控器" and g["entries"]["parking meters"] == "停车计时器"
    assert g["entries"]["couch"] == "沙发" and "orange" not in g["entries"]
    assert (g["source_lang"], g["target_lang"]) == ("EN", "ZH")

    st = ctx.stats["translate"]
    assert st["translated"] == 2 and st["selected"] == 8
    assert st["deepl_billed_characters"] == sum(len(t) for t in fake.texts) > 0
    assert st["deepl_requests"] == 1 and st["cache_hits"] == 0
    assert st["rejects_by_reason"]["translate_protected_spans"] == 2
    assert st["checks"]["lexicon"]["failed"] == 1 and 0 < st["checks"]["lexicon"]["pass_rate"] < 1
    assert st["checks"]["protected_spans"]["failed"] == 2
    # the key never lands in the cache or the stats
    merge(tmp_path / "cache" / "requests.sqlite")  # the parts the step wrote, into the snapshot
    assert len(RequestCache(tmp_path / "cache" / "requests.sqlite")) > 0
    assert KEY.encode() not in b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert KEY not in repr(ctx.stats)


def test_rerun_pays_nothing_and_reuses_the_glossary(tmp_path):
    with LocalServer() as srv:
        fake = FakeDeepL(srv, KEY)
        step, _ = make_step(tmp_path, srv)
        first = step.process(rows())
        step.close()
        sent = len(fake.texts)
        step2, ctx2 = make_step(tmp_path, srv)
        second = step2.process(rows())
        step2.close()
        assert len(fake.texts) == sent and srv.count("/v2/translate") == 1
        assert srv.count("/v2/glossaries") == 1  # everything cached: not even the glossary is looked up
        # new text in a later run: the glossary made in the first run is checked and reused, not re-made
        step3, ctx3 = make_step(tmp_path, srv)
        step3.process(conversations_table([{"key": "n", "source": "coco", "images": [], "conversations": [
            conv("n1", ("Describe the image briefly.", "Two dogs play in the park."))]}]))
        step3.close()
        assert len(fake.glossaries) == 1
        assert [r.method for r in srv.requests if r.path.startswith("/v2/glossaries")] == ["POST", "GET"]
        assert fake.texts[sent:] == ["Describe the image briefly.", "Two dogs play in the park."]
        assert fake.translate_bodies[-1]["glossary_id"] == "g1"
        assert ctx3.stats["translate"]["glossary_reused"] == 1
    assert second.kept.to_pylist() == first.kept.to_pylist()
    assert second.rejects.to_pylist() == first.rejects.to_pylist()
    assert ctx2.stats["translate"].get("deepl_billed_characters", 0) == 0
    assert ctx2.stats["translate"]["cache_hits"] > 0


def test_quota_exhausted_stops_then_resumes_paying_only_the_rest(tmp_path):
    with LocalServer() as srv:
        fake = FakeDeepL(srv, KEY, quota_chars=150)
        step, _ = make_step(tmp_path, srv, deepl={"batch_size": 3})
        with pytest.raises(QuotaExhausted, match="deepl quota exhausted.*Rerun when the quota is restored") as exc:
            step.process(rows())
        step.close()
        assert exc.value.translated > 0 and exc.value.pending > 0
        paid_first = list(fake.texts)
        assert len(paid_first) == exc.value.translated

        fake.quota_chars = None  # the new billing period
        step2, ctx2 = make_step(tmp_path, srv, deepl={"batch_size": 3})
        out = step2.process(rows())
        step2.close()
        paid_second = fake.texts[len(paid_first):]
    assert not set(paid_first) & set(paid_second)
    assert len(paid_first) + len(paid_second) == len(set(fake.texts))
    assert ctx2.stats["translate"]["cache_hits"] == len(paid_first)
    assert set(translated(out.kept)) == {"c1", "c5"}


def test_429_is_retried_by_the_client_with_backoff(tmp_path):
    with LocalServer() as srv:
        fake = FakeDeepL(srv, KEY)
        fake.fail_next = [429]
        step, ctx = make_step(tmp_path, srv, deepl={"max_retries": 2})
        t0 = time.monotonic()
        out = step.process(rows())
        waited = time.monotonic() - t0
        step.close()
        assert srv.count("/v2/translate") == 2
    assert waited >= 0.7  # the client slept (1 s +- 23 % jitter) before retrying
    assert set(translated(out.kept)) == {"c1", "c5"}


def test_persistent_server_errors_reject_with_a_reason(tmp_path):
    with LocalServer() as srv:
        fake = FakeDeepL(srv, KEY)
        fake.fail_next = [400]
        step, _ = make_step(tmp_path, srv, deepl={"max_retries": 0})
        out = step.process(rows())
        step.close()
    assert translated(out.kept) == {}
    assert {r["reason"] for r in out.rejects.to_pylist()} == {"translate_deepl_http_400"}
    assert out.kept.num_rows == 3


def test_missing_key_and_wrong_key_stop_with_clear_errors(tmp_path, monkeypatch):
    with LocalServer() as srv:
        FakeDeepL(srv, KEY)
        monkeypatch.delenv("TEST_DEEPL_KEY")
        step, _ = make_step(tmp_path, srv)
        with pytest.raises(BackendConfigError, match="TEST_DEEPL_KEY"):
            step.process(rows())
        monkeypatch.setenv("TEST_DEEPL_KEY", "wrong-key")
        step, _ = make_step(tmp_path, srv)
        with pytest.raises(BackendConfigError, match=r"rejected the key in \$TEST_DEEPL_KEY") as exc:
            step.process(rows())
        assert "wrong-key" not in str(exc.value)


def test_questions_only_keeps_english_answers(tmp_path):
    with LocalServer() as srv:
        fake = FakeDeepL(srv, KEY)
        step, _ = make_step(tmp_path, srv, translate_answers=False)
        out = step.process(rows())
        step.close()
    assert not any(t.startswith("Yes, there") for t in fake.texts)
    _, c1 = translated(out.kept)["c1"]
    assert [(t["role"], t["content"], t["generator"]) for t in c1["turns"]] == [
        ("user", "<image>\n桌子上有橙子吗？", "translate:deepl"),
        ("assistant", "Yes, there is an orange on the table.", "llm:test"),
        ("user", "沙发上有几只猫？", "translate:deepl"),
        ("assistant", "There are 2 cats on the couch.", "llm:test"),
    ]


def test_share_routing_and_native_twins(tmp_path):
    table = conversations_table([{"key": f"k{i}", "source": "coco", "images": [f"k{i}"], "conversations": [
        conv(f"t{i}", ("Is there a dog in the image?", "No, there is no dog in the image."), generator="template"),
        conv(f"t{i}-zh", ("图片中有狗吗？", "不，图片中没有狗。"), generator="template", lang="zh", parent_id=f"t{i}"),
        conv(f"l{i}", ("Is there a dog in the image?", "No, there is no dog in the image.")),
        conv(f"s{i}", ("Is there a dog in the image?", "No, there is no dog in the image."), generator="source"),
    ]} for i in range(40)])
    with LocalServer() as srv:
        FakeDeepL(srv, KEY)
        step, ctx = make_step(tmp_path, srv, share=0.5, by_generator={"template": "native", "source": "native"})
        out = step.process(table)
        step2, _ = make_step(tmp_path / "again", srv, share=0.5,
                             by_generator={"template": "native", "source": "native"})
        again = step2.process(table)
        step.close(), step2.close()
    zh = translated(out.kept)
    assert all(cid.startswith("l") for cid in zh)  # template twins and native generators untouched
    assert 10 <= len(zh) <= 30  # about half of the 40 eligible
    assert set(translated(again.kept)) == set(zh)  # deterministic per conversation
    st = ctx.stats["translate"]
    assert st["skipped_has_native_twin"] == 40 and 0 < st["skipped_native"] < 40
    assert all(len(r["conversations"]) in (4, 5) for r in out.kept.to_pylist())


def test_captions_mode_adds_caption_zh(tmp_path):
    table = pairs_table([
        {"key": "p1", "source": "cc3m", "caption": "A man rides a bicycle down the street."},
        {"key": "p2", "source": "cc3m", "caption": "Where is the remote?"},  # lexicon reject
        {"key": "p3", "source": "laion", "caption": "Two dogs play in the park."},
        {"key": "p4", "source": "cc3m", "caption": None},
    ])
    with LocalServer() as srv:
        FakeDeepL(srv, KEY)
        step, ctx = make_step(tmp_path, srv, mode="captions", by_source={"laion": "native"})
        out = step.process(table)
        step.close()
    assert out.kept.column("caption_zh").to_pylist() == ["一名男子沿着街道骑自行车。", None, None, None]
    assert out.kept.column("caption").to_pylist()[0] == "A man rides a bicycle down the street."
    assert [(r["key"], r["reason"]) for r in out.rejects.to_pylist()] == [("p2", "translate_lexicon:remote")]


def test_step_survives_pickling_after_use_and_rejects_bad_input(tmp_path):
    import pickle

    with LocalServer() as srv:
        FakeDeepL(srv, KEY)
        step, _ = make_step(tmp_path, srv)
        first = step.process(rows())
        clone = pickle.loads(pickle.dumps(step))  # what a process pool does
        assert clone.process(rows()).kept.to_pylist() == first.kept.to_pylist()
        assert srv.count("/v2/translate") == 1
        clone.close(), step.close()
        bad = conversations_table([{"key": "x", "source": "s", "images": [], "conversations": [
            {"id": None, "lang": "en", "parent_id": None, "turns": [turn("user", "Hi there, friend.")]}]}])
        with pytest.raises(ValueError, match="row 'x' has an en conversation without an id"):
            make_step(tmp_path, srv)[0].process(bad)
        with pytest.raises(ValueError, match="needs conversation rows"):
            make_step(tmp_path, srv)[0].process(pairs_table([{"key": "p", "caption": "x"}]))


def test_config_requires_llm_settings_when_llm_is_used():
    with pytest.raises(ValueError, match="translate.llm.base_url and translate.llm.model"):
        TranslateConfig(by_source={"laion": "llm"})
    with pytest.raises(ValueError, match="backend"):
        TranslateConfig(backend="google")
    assert TranslateConfig().backend == "native"
