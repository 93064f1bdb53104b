"""The knowledge task (LRV's knowledge manipulation) against the scripted OpenAI-compatible server."""

from __future__ import annotations

import json


from datagen.llm.config import ALL_TASKS, LLMGenerateConfig
from datagen.llm.prompts import BUNDLED_RECIPES_DIR
from datagen.llm.replies import KnowledgeItem, check_knowledge
from datagen.llm.step import LLMGenerateStep
from datagen.core.steps import RunContext
from servers import Reply
from test_llm import pair_rows
from test_llm_client import chat_completion, chat_server

ITEMS = [
    # kept: denied, evidence read in the image, claim nowhere
    {"claim": "a Honda shop", "evidence": "SURF SHOP", "question": "Is this the sign of a Honda shop?",
     "answer": "No, the sign reads SURF SHOP."},
    # ungrounded: the evidence is not in any caption or OCR line
    {"claim": "Rio", "evidence": "Sydney", "question": "Is this beach in Rio?", "answer": "No, this is Sydney."},
    # not denied
    {"claim": "a kite shop", "evidence": "SURF SHOP", "question": "Is that a kite shop?", "answer": "It reads SURF SHOP."},
    # the claim is what the image says: maybe true
    {"claim": "red kite", "evidence": "SURF SHOP", "question": "Is the red kite from the surf shop?",
     "answer": "No, SURF SHOP sells boards."},
    # leaks the notes
    {"claim": "Nike", "evidence": "SURF SHOP", "question": "Is it a Nike sign?", "answer": "No, the OCR says SURF SHOP."},
]


def test_knowledge_items_are_parsed_checked_and_kept_only_when_grounded(tmp_path):
    seen = []

    def handler(req):
        body = req.json()
        seen.append(body["messages"])
        return Reply(200, chat_completion(json.dumps({"items": ITEMS}), prompt_tokens=50, completion_tokens=40, model="m"))

    with chat_server() as srv:
        srv.route("/v1/chat/completions", handler)
        cfg = LLMGenerateConfig(base_url=srv.url("/v1"), model="m", tasks=["knowledge"], negatives_per_image=5,
                                backoff_base_s=0.01)
        step = LLMGenerateStep(cfg, RunContext(run_dir=tmp_path / "run", recipe_dir=BUNDLED_RECIPES_DIR))
        out = step.process(pair_rows(("a",)))
    assert len(seen) == 1
    system, user = seen[0][0]["content"], seen[0][-1]["content"]
    assert "WRONG KNOWLEDGE" in system and "wrong-knowledge questions" in user and '"SURF SHOP"' in user
    assert any("YAMAHA" in m["content"] for m in seen[0][1:-1]), "few-shot examples travel with the request"
    rows = out.kept.to_pylist()
    convs = rows[0]["conversations"]
    assert [c["id"] for c in convs] == ["coco_a-llm-knowledge-0"]
    turns = convs[0]["turns"]
    assert [(t["task"], t["polarity"]) for t in turns] == [("knowledge", "negative")] * 2
    assert turns[0]["content"] == "<image>\nIs this the sign of a Honda shop?" and turns[1]["content"] == "No, the sign reads SURF SHOP."
    drops = json.loads(rows[0]["meta"])["llm"]["dropped_items"]
    assert drops == {"llm_knowledge_ungrounded": 1, "llm_knowledge_not_denied": 1, "llm_knowledge_claim_present": 1,
                     "llm_leak": 1}


def test_knowledge_is_opt_in():
    assert "knowledge" in ALL_TASKS
    assert "knowledge" not in LLMGenerateConfig(base_url="http://127.0.0.1:9/v1", model="m").tasks


def test_low_confidence_ocr_is_no_evidence():
    row = pair_rows(("a",)).to_pylist()[0]
    item = KnowledgeItem(claim="Nike", evidence="blur", question="Is it a Nike sign?", answer="No, it says blur.")
    assert check_knowledge(item, row) == "llm_knowledge_ungrounded", "the 'blur' line has score 0.1"
    assert check_knowledge(item, row, ocr_min_score=0.05) is None


def test_bundled_knowledge_examples_pass_the_grounding_check():
    import re

    from datagen.llm.prompts import load_prompt
    from datagen.llm.replies import parse_reply

    spec = load_prompt(BUNDLED_RECIPES_DIR / "prompts/llm/knowledge.yaml", "knowledge")
    for ex in spec.examples:
        captions = re.findall(r"^- ([A-Z][^\n\[]+)$", ex.context, re.M)
        ocr = [{"text": t, "score": None} for t in re.findall(r'^- "([^"]+)"', ex.context, re.M)]
        row = {"captions": captions, "ocr": ocr}
        for item in parse_reply("knowledge", json.dumps(ex.response)).items:
            assert check_knowledge(item, row) is None, item
