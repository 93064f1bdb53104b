"""LLMGenerateStep against a real OpenAI-compatible HTTP server on 127.0.0.1.

The server is scripted per (image, task): it reads which image a request is about
from the context (each test image's first caption carries a tag like ``ROW-a``)
and which task from the instruction, and answers with proper chat.completion JSON.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from datagen.llm.config import ALL_TASKS, LLMGenerateConfig
from datagen.llm.prompts import BUNDLED_RECIPES_DIR, build_context, load_prompt
from datagen.llm.replies import LeakChecker, MalformedReply, check_negative, parse_reply
from datagen.llm.step import LLMGenerateStep
from datagen.core.cache import RequestCache, merge
from datagen.core.records import CONVERSATION_SCHEMA, pairs_table
from datagen.core.steps import RunContext
from servers import LocalServer, Reply
from test_llm_client import SECRET, chat_completion, chat_server

OCR_TYPE = pa.list_(pa.struct([("text", pa.string()), ("bbox", pa.list_(pa.float64())), ("score", pa.float64())]))

GOOD = {
    "conversation": {"turns": [{"question": "What is the man holding?", "answer": "He holds a red kite."},
                               {"question": "Where is he?", "answer": "He stands on a sandy beach."}]},
    "detailed_description": {"description": "A man stands on a beach flying a red kite under a clear sky."},
    "complex_reasoning": {"question": "Why is the kite flying well?",
                          "answer": "It is windy by the sea, which keeps the kite up."},
    "negative": {"items": [
        {"kind": "nonexistent_object", "target": "dog", "question": "What is the dog chasing?",
         "answer": "There is no dog here; only a man flying a kite."},
        {"kind": "Wrong attribute", "target": "kite", "question": "Why is the kite green?",
         "answer": "The kite is not green, it is red."},
    ]},
}


def task_of(messages: list[dict]) -> str:
    last = messages[-1]["content"]
    if last.startswith("Your previous reply could not be used"):
        last = messages[-3]["content"]
    for needle, task in (("natural conversation", "conversation"), ("Describe this image", "detailed_description"),
                         ("reasoning question", "complex_reasoning"), ("false-premise", "negative")):
        if needle in last:
            return task
    raise AssertionError(f"unknown task in {last!r}")


def tag_of(messages: list[dict]) -> str:
    user = messages[-1]["content"] if messages[-1]["role"] == "user" and "ROW-" in messages[-1]["content"] \
        else messages[-3]["content"]
    return re.search(r"ROW-(\w+)", user).group(1)


class ScriptedLLM:
    """Route handler: ``script(tag, task, is_nudge) -> reply text | Reply``; defaults to GOOD."""

    def __init__(self, script=None, delay_s: float = 0.0):
        self.script = script or (lambda tag, task, nudge: None)
        self.delay_s = delay_s
        self.seen: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()

    def __call__(self, req) -> Reply:
        body = req.json()
        msgs = body["messages"]
        tag, task = tag_of(msgs), task_of(msgs)
        nudge = msgs[-1]["content"].startswith("Your previous reply could not be used")
        with self.lock:
            self.seen.append((tag, task, nudge))
        out = self.script(tag, task, nudge)
        if isinstance(out, Reply):
            return out
        text = json.dumps(GOOD[task]) if out is None else out
        return Reply(200, chat_completion(text, prompt_tokens=100, completion_tokens=20, model=body["model"]),
                     delay_s=self.delay_s)


def pair_rows(tags=("a", "b"), with_ocr=True) -> pa.Table:
    rows = [
        {"key": f"coco_{t}", "source": "coco", "caption": f"ROW-{t} a man flies a kite",
         "captions": [f"ROW-{t} A man flies a red kite on the beach.", "Someone with a kite by the sea."],
         "width": 640, "height": 480,
         "objects": [{"label": "person", "bbox": [64.0, 96.0, 256.0, 288.0], "score": None, "attributes": [],
                      "iscrowd": False},
                     {"label": "kite", "bbox": [320.0, 24.0, 64.0, 48.0], "score": None, "attributes": ["red"],
                      "iscrowd": False}]}
        for t in tags
    ]
    table = pairs_table(rows)
    if with_ocr:
        ocr = [[{"text": "SURF SHOP", "bbox": [10.0, 400.0, 120.0, 40.0], "score": 0.95},
                {"text": "blur", "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.1}]] * len(tags)
        table = table.append_column("ocr", pa.array(ocr, type=OCR_TYPE))
    return table


def make_step(srv: LocalServer, tmp_path: Path, **kw) -> LLMGenerateStep:
    kw.setdefault("concurrency", 4)
    kw.setdefault("backoff_base_s", 0.01)
    cfg = LLMGenerateConfig(base_url=srv.url("/v1") if srv else "http://127.0.0.1:9/v1", model="m", **kw)
    ctx = RunContext(run_dir=tmp_path / "run", recipe_dir=BUNDLED_RECIPES_DIR, seed=7)
    return LLMGenerateStep(cfg, ctx)


def rejects_by_key(out) -> dict:
    return {r["key"]: r for r in out.rejects.to_pylist()}


# ------------------------------------------------------------------------ the happy path


def test_generates_every_task_as_conversation_rows(tmp_path):
    llm = ScriptedLLM()
    with chat_server() as srv:
        srv.route("/v1/chat/completions", llm)
        step = make_step(srv, tmp_path)
        out = step.process(pair_rows())
        # row a's request (the step sends them concurrently: the first one may be row b's)
        row_a_request = next(r.json() for r in srv.requests if task_of(r.json()["messages"]) == "conversation"
                             and "ROW-a" in r.json()["messages"][-1]["content"])
    assert out.kept.schema.equals(CONVERSATION_SCHEMA) and out.rejects.num_rows == 0
    rows = out.kept.to_pylist()
    assert [r["key"] for r in rows] == ["coco_a", "coco_b"] and rows[0]["images"] == ["coco_a"]
    convs = rows[0]["conversations"]
    # conversation + description + reasoning + two negatives
    assert [c["id"] for c in convs] == ["coco_a-llm-conversation", "coco_a-llm-detailed_description",
                                        "coco_a-llm-complex_reasoning", "coco_a-llm-negative-0",
                                        "coco_a-llm-negative-1"]
    for c in convs:
        assert c["lang"] == "en" and c["parent_id"] is None
        assert c["turns"][0]["role"] == "user" and c["turns"][0]["content"].startswith("<image>\n")
        assert sum("<image>" in t["content"] for t in c["turns"]) == 1
        assert all(t["generator"] == "llm:m" for t in c["turns"])
        assert [t["role"] for t in c["turns"]] == ["user", "assistant"] * (len(c["turns"]) // 2)
    assert convs[0]["turns"][1]["content"] == "He holds a red kite." and len(convs[0]["turns"]) == 4
    assert convs[1]["turns"][1]["content"] == GOOD["detailed_description"]["description"]
    assert convs[1]["turns"][0]["content"][len("<image>\n"):] in load_prompt(
        BUNDLED_RECIPES_DIR / "prompts/llm/detailed_description.yaml", "detailed_description").questions
    assert [(t["task"], t["polarity"]) for t in convs[4]["turns"]] == [("wrong_attribute", "negative")] * 2
    assert {t["polarity"] for c in convs[:3] for t in c["turns"]} == {"positive"}
    # the symbolic context, as the LLM saw it: LLaVA-style normalised boxes, largest first, OCR above min score
    msgs = row_a_request["messages"]
    assert msgs[0]["role"] == "system" and len(msgs) == 1 + 2 * 2 + 1  # system, two few-shot pairs, the image
    user = msgs[-1]["content"]
    assert "- person: [0.100, 0.200, 0.500, 0.800]" in user  # [64,96,256,288] px on 640x480
    assert "- kite: [0.500, 0.050, 0.600, 0.150] (red)" in user
    assert user.index("person:") < user.index("kite:")
    assert '"SURF SHOP"' in user and "blur" not in user
    assert "ROW-a A man flies a red kite" in user
    # accounting: 2 rows x 4 tasks, 100 + 20 tokens each
    stat = step.ctx.stats["llm_generate"]
    assert stat["rows_in"] == 2 and stat["rows_kept"] == 2 and stat["conversations"] == 10
    assert stat["client"]["requests"] == 8
    assert stat["client"]["prompt_tokens"] == 800 and stat["client"]["completion_tokens"] == 160
    assert json.loads(rows[0]["meta"])["llm"]["prompt_tokens"] == 400


def test_cost_estimate_and_json_mode(tmp_path):
    with chat_server() as srv:
        srv.route("/v1/chat/completions", ScriptedLLM())
        step = make_step(srv, tmp_path, tasks=["complex_reasoning"], json_mode=True,
                         price_per_1k_input=0.5, price_per_1k_output=1.5, temperature=0.7, max_tokens=300)
        step.process(pair_rows(("a", "b", "c")))
        body = srv.requests[0].json()
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0.7 and body["max_tokens"] == 300
    assert step.ctx.stats["llm_generate"]["client"]["estimated_cost"] == pytest.approx(
        300 / 1000 * 0.5 + 60 / 1000 * 1.5)


# ------------------------------------------------------------------- misbehaving server


def test_concurrency_limit_and_retries_on_429_and_500(tmp_path):
    counter = Counter()
    lock = threading.Lock()

    def flaky(tag, task, nudge):
        with lock:
            counter[(tag, task)] += 1
            n = counter[(tag, task)]
        if tag in ("a", "b") and task == "conversation" and n == 1:
            return Reply(429, {"error": {"message": "rate limited"}}, headers={"Retry-After": "0.1"})
        if tag == "c" and task == "negative" and n <= 2:
            return Reply(500, {"error": {"message": "oops"}})
        return None

    llm = ScriptedLLM(flaky, delay_s=0.03)
    tags = tuple("abcdef")
    with chat_server() as srv:
        srv.route("/v1/chat/completions", llm)
        step = make_step(srv, tmp_path, concurrency=3)
        out = step.process(pair_rows(tags))
        sent = srv.count("/v1/chat/completions")
        peak = srv.max_in_flight
    assert out.kept.num_rows == len(tags) and out.rejects.num_rows == 0
    assert peak <= 3
    assert sent == len(tags) * 4 + 2 + 2  # two 429s and two 500s were retried
    s = step.ctx.stats["llm_generate"]["client"]
    assert (s["http_429"], s["http_5xx"], s["retries"], s["requests"]) == (2, 2, 4, sent)


def test_request_that_fails_for_good_rejects_the_row_with_its_status(tmp_path):
    def script(tag, task, nudge):
        return Reply(400, {"error": {"message": "context too long"}}) if tag == "b" else None

    with chat_server() as srv:
        srv.route("/v1/chat/completions", ScriptedLLM(script))
        out = make_step(srv, tmp_path, tasks=["conversation", "negative"]).process(pair_rows(("a", "b")))
    assert out.kept.column("key").to_pylist() == ["coco_a"]
    rej = rejects_by_key(out)["coco_b"]
    assert rej["reason"] == "llm_http_400" and rej["step"] == "llm_generate" and "conversation" in rej["detail"]


def test_second_run_sends_zero_requests(tmp_path):
    with chat_server() as srv:
        srv.route("/v1/chat/completions", ScriptedLLM())
        first = make_step(srv, tmp_path).process(pair_rows())
        n = srv.count()
        second_step = make_step(srv, tmp_path)  # a fresh step in the same run dir: as after a restart
        second = second_step.process(pair_rows())
        assert srv.count() == n == 8
    assert second.kept.equals(first.kept)
    c = second_step.ctx.stats["llm_generate"]["client"]
    assert c["requests"] == 0 and c["cache_hits"] == 8 and c["prompt_tokens"] == 0
    second_step.close()  # the answers land in a cache part file, which the next run merges
    merge(tmp_path / "run" / "cache" / "llm.sqlite")
    assert len(RequestCache(tmp_path / "run" / "cache" / "llm.sqlite")) == 8


# ---------------------------------------------------------------- malformed and leaking


def test_malformed_reply_is_retried_once_with_a_nudge_then_rejected(tmp_path):
    def script(tag, task, nudge):
        if tag == "a":
            return "Sure! Here is a nice conversation about the picture."  # never JSON
        if tag == "b" and not nudge:
            return '{"turns": [{"question": "What is it?"}]}'  # answer missing; fixed after the nudge
        if tag == "c":
            return '```json\n' + json.dumps(GOOD[task]) + '\n```'  # fenced JSON is fine as is
        return None

    llm = ScriptedLLM(script)
    with chat_server() as srv:
        srv.route("/v1/chat/completions", llm)
        step = make_step(srv, tmp_path, tasks=["conversation"])
        out = step.process(pair_rows(("a", "b", "c")))
        nudge_bodies = [r.json() for r in srv.requests if "could not be used" in r.json()["messages"][-1]["content"]]
    assert sorted(out.kept.column("key").to_pylist()) == ["coco_b", "coco_c"]
    rej = rejects_by_key(out)["coco_a"]
    assert rej["reason"] == "llm_malformed_reply" and "not valid JSON" in rej["detail"]
    seen = Counter((tag, nudge) for tag, _, nudge in llm.seen)
    assert seen == {("a", False): 1, ("a", True): 1, ("b", False): 1, ("b", True): 1, ("c", False): 1}
    # the nudge shows the model its own reply and what was wrong
    b = next(m for m in nudge_bodies if "ROW-b" in m["messages"][-3]["content"])["messages"]
    assert b[-2] == {"role": "assistant", "content": '{"turns": [{"question": "What is it?"}]}'}
    assert "turns.0.answer" in b[-1]["content"]
    assert step.ctx.stats["llm_generate"]["malformed_retries"] == 2


def test_leaking_answers_are_dropped_and_rows_without_anything_left_rejected(tmp_path):
    leaky = {
        "conversation": {"turns": [
            {"question": "What is the man doing?", "answer": "He is flying a kite."},
            {"question": "Where is the kite?", "answer": "The kite is at [0.500, 0.050, 0.600, 0.150]."},
            {"question": "What colour is it?", "answer": "Red."}]},
        "detailed_description": {"description": "As the caption says, a man is flying a kite."},
        "complex_reasoning": {"question": "Why?", "answer": "According to the annotations, it is windy."},
        "negative": {"items": [
            {"kind": "nonexistent_object", "target": "persons", "question": "Who is the person?",
             "answer": "There is no person."},  # a person IS annotated: a false negative
            {"kind": "nonexistent_activity", "target": "swimming", "question": "Why is he swimming?",
             "answer": "He is standing on the sand with a kite."},  # never denies the premise
            {"kind": "nonexistent_object", "target": "dog", "question": "Is the dog's bounding box big?",
             "answer": "There is no dog."}]},
    }

    def script(tag, task, nudge):
        if tag == "a":
            return json.dumps(leaky[task])
        if tag == "b" and task != "negative":
            return json.dumps(leaky["detailed_description"] if task == "detailed_description" else leaky[
                "complex_reasoning"] if task == "complex_reasoning" else {"turns": [leaky["conversation"]["turns"][1]]})
        if tag == "b":
            return json.dumps({"items": leaky["negative"]["items"][2:]})
        return None

    with chat_server() as srv:
        srv.route("/v1/chat/completions", ScriptedLLM(script))
        step = make_step(srv, tmp_path)
        out = step.process(pair_rows(("a", "b")))
    kept = {r["key"]: r for r in out.kept.to_pylist()}
    assert list(kept) == ["coco_a"]
    convs = kept["coco_a"]["conversations"]
    assert [c["id"] for c in convs] == ["coco_a-llm-conversation"]  # everything else leaked or was wrong
    assert [t["content"] for t in convs[0]["turns"]] == ["<image>\nWhat is the man doing?", "He is flying a kite."]
    meta = json.loads(kept["coco_a"]["meta"])["llm"]
    assert meta["dropped_items"] == {"llm_leak": 4, "llm_negative_present": 1, "llm_negative_not_denied": 1}
    assert rejects_by_key(out)["coco_b"]["reason"] == "llm_leak"
    stat = step.ctx.stats["llm_generate"]
    # row a: 6 items dropped (above); row b: 3 leaks and one item with a bounding box
    assert stat["dropped_items"] == {"llm_leak": 8, "llm_negative_present": 1, "llm_negative_not_denied": 1}
    # a: description, reasoning, negative failed; b: all four
    assert stat["failed_tasks"] == {"llm_leak": 6, "llm_negative_present": 1}


def test_leak_checker_catches_leaks_and_passes_ordinary_answers():
    leaks = LeakChecker(["\\bsecret word\\b"])
    for text in ["The caption mentions a dog.", "It sits at [0.12, 0.3, 0.5, 0.9].", "Its x1 is small.",
                 "The bounding box covers half the image.", "According to the notes, it rains.",
                 "The provided descriptions say it is sunny.", "The cat is at 0.125 from the left.",
                 "As described, the man waves.", "I cannot see the image, but", "the OCR text reads STOP",
                 "This has the secret word."]:
        assert leaks.find(text) is not None, text
    for text in ["A cardboard box sits on the table.", "The bus shows route 24 to Victoria.",
                 "She is 1.5 metres from the door.", "The sign says STOP in white letters.",
                 "The description on the label is hard to read.", "Two people, three dogs and a kite."]:
        assert leaks.find(text) is None, text
    with pytest.raises(ValueError, match="extra_leak_patterns"):
        LeakChecker(["(unclosed"])


def test_parse_reply_accepts_fences_and_prose_and_names_problems():
    assert parse_reply("complex_reasoning", 'Here you go:\n{"question": "Why?", "answer": "Because."}\nBye').answer \
        == "Because."
    with pytest.raises(MalformedReply, match="items.0.kind"):
        parse_reply("negative", '{"items": [{"kind": "weird", "target": "x", "question": "qq", "answer": "no"}]}')
    with pytest.raises(MalformedReply, match="empty"):
        parse_reply("conversation", "  ")
    with pytest.raises(MalformedReply, match="JSON object"):
        parse_reply("conversation", "[1, 2]")


# ----------------------------------------------------------------------- secrets, dry run


def test_api_key_never_reaches_cache_logs_or_output(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LLM_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)

    def script(tag, task, nudge):
        return Reply(429, {"error": {"message": "x"}}, headers={"retry-after-ms": "10"}) if not nudge and \
            tag == "b" and len([s for s in llm.seen if s[0] == "b"]) == 1 else None

    llm = ScriptedLLM(script)
    with chat_server() as srv:
        srv.route("/v1/chat/completions", llm)
        step = make_step(srv, tmp_path, api_key_env="LLM_TEST_KEY", tasks=["conversation"])
        out = step.process(pair_rows())
        assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in srv.requests)
    assert step.ctx.stats["llm_generate"]["client"]["retries"] == 1
    step.close()  # the answers go to a cache part file; a merge puts them in the snapshot
    merge(tmp_path / "run" / "cache" / "llm.sqlite")
    cache_bytes = b"".join(p.read_bytes() for p in (tmp_path / "run" / "cache").rglob("*") if p.is_file())
    assert len(cache_bytes) > 0 and SECRET.encode() not in cache_bytes
    assert SECRET not in caplog.text
    assert SECRET not in json.dumps(step.ctx.stats) and SECRET not in str(out.kept.to_pylist())
    assert SECRET not in repr(step.client)


def test_dry_run_prints_prompts_and_sends_nothing(tmp_path, capsys):
    with chat_server() as srv:
        srv.route("/v1/chat/completions", ScriptedLLM())
        step = make_step(srv, tmp_path, dry_run_show=1)
        step.ctx.dry_run = True
        out = step.process(pair_rows())
        assert srv.count() == 0
    printed = capsys.readouterr().out
    assert "key=coco_a task=conversation" in printed
    assert "- person: [0.100, 0.200, 0.500, 0.800]" in printed and "[system]" in printed
    assert "7 more requests not shown" in printed
    assert out.kept.num_rows == 0 and step.ctx.stats["llm_generate"]["dry_run_requests"] == 8
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]  # no cache written


# ------------------------------------------------------------------ context and prompt files


def test_row_without_context_is_rejected_without_a_request(tmp_path):
    table = pairs_table([{"key": "laion_1", "source": "laion", "caption": "  ", "width": 10, "height": 10}])
    with chat_server() as srv:
        srv.route("/v1/chat/completions", ScriptedLLM())
        out = make_step(srv, tmp_path).process(table)
        assert srv.count() == 0
    assert out.rejects.to_pylist()[0]["reason"] == "llm_no_context"


def test_build_context_normalises_caps_and_tolerates_missing_size():
    row = {"caption": "alt text", "captions": None, "width": 200, "height": 100,
           "objects": [{"label": f"obj{i}", "bbox": [0, 0, 10 * (i + 1), 10]} for i in range(5)]
           + [{"label": "edge", "bbox": [150, 50, 100, 100]}]}
    ctx = build_context(row, max_objects=3)
    lines = ctx.splitlines()
    assert lines[:2] == ["Captions:", "- alt text"]
    # largest first: edge (100x100 px, clamped to the image) then obj4, obj3
    assert lines[3:] == ["- edge: [0.750, 0.500, 1.000, 1.000]", "- obj4: [0.000, 0.000, 0.250, 0.100]",
                         "- obj3: [0.000, 0.000, 0.200, 0.100]"]
    assert build_context({**row, "width": None}, max_objects=1).splitlines()[-1] == "- obj0"  # no size: no boxes
    broken = {"captions": ["c"], "width": 10, "height": 10,
              "objects": [{"label": "a", "bbox": [float("nan"), 0, 1, 1]}, {"label": "b", "bbox": [0, None, 1, 1]},
                          {"label": "c", "bbox": [0, 0, 0, 5]}]}
    assert build_context(broken).splitlines()[3:] == ["- a", "- b", "- c"]


@pytest.mark.parametrize("task", ALL_TASKS)
def test_bundled_few_shot_examples_pass_our_own_checks(task):
    """A prompt edit must not teach the model to produce what the step rejects."""
    spec = load_prompt(BUNDLED_RECIPES_DIR / f"prompts/llm/{task}.yaml", task)
    assert spec.examples
    leaks = LeakChecker()
    for ex in spec.examples:
        reply = parse_reply(task, json.dumps(ex.response))
        texts = [v for v in _strings(ex.response)]
        assert all(leaks.find(t) is None for t in texts), [leaks.find(t) for t in texts]
        if task == "negative":
            present = {m.group(1) for m in re.finditer(r"^- ([a-z ]+): \[", ex.context, re.M)}
            assert all(check_negative(item, present) is None for item in reply.items)
            assert len({item.kind for item in reply.items}) == 3


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_bad_prompt_file_error_names_file_and_key(tmp_path):
    bad = tmp_path / "prompts" / "conv.yaml"
    bad.parent.mkdir()
    bad.write_text(yaml.safe_dump({"task": "conversation", "system": "s", "examples": [{"context": "c"}]}))
    cfg = LLMGenerateConfig(base_url="http://127.0.0.1:9/v1", model="m", tasks=["conversation"],
                            prompts={"conversation": "prompts/conv.yaml"})
    with pytest.raises(ValueError) as e:
        LLMGenerateStep(cfg, RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path))
    msg = str(e.value)
    assert str(bad) in msg and "instruction" in msg and "examples[0].response" in msg
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        LLMGenerateStep(cfg.model_copy(update={"prompts": {"conversation": "nope.yaml"}}),
                        RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path))


def test_fingerprint_follows_prompt_content(tmp_path):
    src = BUNDLED_RECIPES_DIR / "prompts/llm/complex_reasoning.yaml"
    local = tmp_path / "prompts" / "llm" / "complex_reasoning.yaml"
    local.parent.mkdir(parents=True)
    local.write_text(src.read_text())
    cfg = LLMGenerateConfig(base_url="http://127.0.0.1:9/v1", model="m", tasks=["complex_reasoning"])
    ctx = RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path)
    before = LLMGenerateStep(cfg, ctx).fingerprint()
    local.write_text(src.read_text().replace("step by step", "carefully"))
    assert LLMGenerateStep(cfg, ctx).fingerprint() != before
