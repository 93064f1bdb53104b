"""The translate step with the llm backend against an OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from servers import LocalServer
from test_translate_deepl import EXPECTED_REJECTS, conv, rows, translated
from test_translate_support import FakeOpenAI

from datagen.core.records import conversations_table
from datagen.core.cache import RequestCache, merge
from datagen.core.steps import RunContext
from datagen.translate.config import TranslateConfig
from datagen.translate.llm_backend import build_messages, parse_reply
from datagen.translate.step import TranslateStep


def make_step(tmp_path, srv, **llm):
    cfg = TranslateConfig(backend="llm", share=1.0, llm={
        "base_url": srv.url("/v1"), "model": "tiny-mt", "api_key_env": "TEST_LLM_KEY", "batch_size": 4,
        "concurrency": 2, "max_retries": 0, **llm})
    ctx = RunContext(run_dir=tmp_path, recipe_dir=tmp_path, seed=7)
    return TranslateStep(cfg, ctx), ctx


def test_llm_batches_translate_and_count_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-secret-test")
    with LocalServer() as srv:
        fake = FakeOpenAI(srv)
        step, ctx = make_step(tmp_path, srv)
        out = step.process(rows())
        step.close()
        n_texts = sum(len(b) for b in fake.batches)
        assert srv.count("/v1/chat/completions") == -(-n_texts // 4)  # ceil: batches of 4
        assert all(len(b) <= 4 for b in fake.batches)
        first = srv.requests[0]
        assert first.headers["authorization"] == "Bearer sk-secret-test"
    assert set(translated(out.kept)) == {"c1", "c5"}
    _, c1 = translated(out.kept)["c1"]
    assert c1["turns"][0]["content"] == "<image>\n桌子上有橙子吗？"
    assert {t["generator"] for t in c1["turns"]} == {"translate:llm"}
    assert {r["detail"].split()[1]: r["reason"] for r in out.rejects.to_pylist()} == EXPECTED_REJECTS
    st = ctx.stats["translate"]
    assert st["llm_requests"] == len(fake.batches)
    assert st["llm_prompt_tokens"] > 0 and st["llm_completion_tokens"] > 0
    merge(tmp_path / "cache" / "requests.sqlite")  # the parts the step wrote, into the snapshot
    assert len(RequestCache(tmp_path / "cache" / "requests.sqlite")) > 0
    assert b"sk-secret-test" not in b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())

    # a rerun sends nothing
    with LocalServer() as srv:
        FakeOpenAI(srv)
        step, ctx = make_step(tmp_path, srv)
        again = step.process(rows())
        step.close()
        assert srv.count("/") == 0
    assert again.kept.to_pylist() == out.kept.to_pylist()
    assert ctx.stats["translate"].get("llm_prompt_tokens", 0) == 0


def test_malformed_batches_are_split_then_rejected(tmp_path):
    poison = "Describe the scene."
    with LocalServer() as srv:
        fake = FakeOpenAI(srv, malformed_if=lambda texts: any(poison in t for t in texts))
        step, ctx = make_step(tmp_path, srv)
        out = step.process(rows())
        step.close()
    sizes = [len(b) for b in fake.batches if any(poison in t for t in b)]
    assert sizes == [4, 2, 1]  # halved until the bad text stands alone
    rej = {r["detail"].split()[1]: r["reason"] for r in out.rejects.to_pylist()}
    assert rej["c3"] == "translate_llm_malformed"
    # the texts that shared a batch with the poison were still translated
    assert set(translated(out.kept)) == {"c1", "c5"}
    assert ctx.stats["translate"]["llm_malformed_replies"] == 3


def test_server_errors_become_rejects(tmp_path):
    with LocalServer() as srv:
        FakeOpenAI(srv, fail_status=500)
        step, _ = make_step(tmp_path, srv)
        out = step.process(rows())
        step.close()
    assert translated(out.kept) == {}
    assert {r["reason"] for r in out.rejects.to_pylist()} == {"translate_llm_http_500"}


def test_prompt_carries_the_lexicon_terms_of_the_batch():
    from datagen.synth.lexicon import LEXICON
    from datagen.translate.llm_backend import LLMBackend
    from datagen.translate.config import LLMSettings

    b = LLMBackend(LLMSettings(base_url="http://127.0.0.1:9/v1", model="m"), LEXICON, {})
    texts = ["Where is the remote?", 'A parking meter and <x id="0"/> cars.', "An orange shirt."]
    gl = b._glossary(texts)
    assert gl == {"remote": "遥控器", "parking meter": "停车计时器", "car": "汽车"}
    msgs = build_messages(texts, gl, "en", "zh")
    assert "Simplified Chinese" in msgs[0]["content"]
    assert "remote = 遥控器" in msgs[1]["content"]
    items = json.loads(msgs[1]["content"].split("Items:\n")[1])
    assert items[1] == {"id": 2, "text": 'A parking meter and <x id="0"/> cars.'}


@pytest.mark.parametrize("reply,ok", [
    ('[{"id": 1, "text": "一"}, {"id": 2, "text": "二"}]', ["一", "二"]),
    ('```json\n[{"id": 1, "text": "一"}, {"id": 2, "text": "二"}]\n```', ["一", "二"]),
    ('Here you go: ["一", "二"] Enjoy', ["一", "二"]),
    ('[{"id": 1, "text": "一"}]', None),  # one missing
    ('[{"id": 2, "text": "一"}, {"id": 1, "text": "二"}]', None),  # ids out of order
    ('[{"id": 1, "text": "一"}, {"id": 2}]', None),
    ("一, 二", None),
])
def test_parse_reply(reply, ok):
    assert parse_reply(reply, 2) == ok


def test_text_only_conversations_without_image_are_translated(tmp_path):
    table = conversations_table([{"key": "alpaca_1", "source": "alpaca", "images": [], "conversations": [
        conv("a1", ("Describe the image briefly.", "Two dogs play in the park."), generator="source")]}])
    with LocalServer() as srv:
        FakeOpenAI(srv)
        step, _ = make_step(tmp_path, srv)
        out = step.process(table)
        step.close()
    _, a1 = translated(out.kept)["a1"]
    assert [t["content"] for t in a1["turns"]] == ["简要描述这张图片。", "两只狗在公园里玩耍。"]


def test_429_is_honoured_with_retry_after(tmp_path):
    from servers import Reply

    with LocalServer() as srv:
        fake = FakeOpenAI(srv)
        fake.fail_next = [Reply(429, {"error": {"message": "slow down"}}, headers={"retry-after-ms": "200"})]
        step, ctx = make_step(tmp_path, srv, max_retries=2, concurrency=1)
        out = step.process(conversations_table([{"key": "a", "source": "s", "images": [], "conversations": [
            conv("a1", ("Describe the image briefly.", "Two dogs play in the park."))]}]))
        step.close()
        assert srv.count("/v1/chat/completions") == 2
    assert set(translated(out.kept)) == {"a1"}
    assert out.rejects.num_rows == 0
