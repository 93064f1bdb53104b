"""Fake DeepL and OpenAI-compatible servers for the translate tests (no tests in here).

Both "translate" with a small phrase table, piece by piece between placeholder
tags, so the step's checks have real output to pass or fail. Some entries are
scripted bad translations: known lexicon mistakes (远程 for remote), the wrong
language, untranslated English, a far too short answer. Text that is not in the
table comes back unchanged (untranslated), like a broken MT system.
"""

from __future__ import annotations

import json
import re
import threading
from xml.sax.saxutils import escape, unescape

from servers import LocalServer, Reply

GOOD = {
    "Is there an orange on the table?": "桌子上有橙子吗？",
    "Yes, there is an orange on the table.": "是的，桌子上有一个橙子。",
    "Is there a dog in the image?": "图片中有狗吗？",
    "No, there is no dog in the image.": "不，图片中没有狗。",
    "How many cats are on the couch?": "沙发上有几只猫？",
    "There are": "有",
    "cats on the couch.": "只猫在沙发上。",
    "What is in": "里面有什么",
    "?": "？",
    "Where is the remote control?": "遥控器在哪里？",
    "It is next to the bed.": "它在床旁边。",
    "A parking meter stands on the street.": "街上立着一个停车计时器。",
    "Describe the image briefly.": "简要描述这张图片。",
    "A man rides a bicycle down the street.": "一名男子沿着街道骑自行车。",
    "Two dogs play in the park.": "两只狗在公园里玩耍。",
    "A bowl of fruit on the kitchen counter.": "厨房台面上的一碗水果。",
    "What is different in the second image?": "第二张图片有什么不同？",
}
BAD = {
    "Where is the remote?": "远程在哪里？",  # lexicon: remote -> 遥控器
    "Is the orange ripe?": "橙色熟了吗？",  # lexicon: the colour instead of the fruit
    "Where is the parking meter?": "停车费在哪里？",  # lexicon: parking fee
    "Describe the scene.": "Décrivez la scène.",  # wrong language
    "What is the man holding in his hand today?": "这个男人手里拿着什么？ He is holding a small black umbrella.",
    "Please describe this photograph in as much detail as you possibly can.": "描述。",  # far too short
    "How many birds are there?": "有2只鸟吗？",  # invents a number: spans differ
}
PHRASES = {**GOOD, **BAD}
TAG = re.compile(r'(<x\s+id\s*=\s*"?[0-9]+"?\s*(?:/>|>\s*</x>))')


def translate_masked(text: str, xml: bool = False) -> str:
    """Translate the pieces between placeholder tags; drop the tags for 'the second image'."""
    parts = TAG.split(text)
    drop_tags = "second image" in text
    out = []
    for i, p in enumerate(parts):
        if i % 2:
            if not drop_tags:
                out.append(p)
            continue
        plain = unescape(p) if xml else p
        core = plain.strip()
        lead, trail = plain[: len(plain) - len(plain.lstrip())], plain[len(plain.rstrip()):]
        new = lead + PHRASES.get(core, core) + trail if core else plain
        out.append(escape(new) if xml else new)
    return "".join(out)


class FakeDeepL:
    """Speaks the DeepL API v2 as the official client uses it (JSON bodies)."""

    def __init__(self, srv: LocalServer, auth_key: str = "fake-key:fx", quota_chars: int | None = None):
        self.srv = srv
        self.auth_key = auth_key
        self.quota_chars = quota_chars
        self.used_chars = 0
        self.texts: list[str] = []  # every text translated (billed)
        self.translate_bodies: list[dict] = []
        self.glossaries: dict[str, dict] = {}
        self.fail_next: list[int] = []  # statuses to answer before serving normally (429, 500 ...)
        self._lock = threading.Lock()
        srv.route("/v2/translate", self._translate)
        srv.route("/v2/glossaries", self._glossaries)
        srv.route("/v2/usage", self._usage)

    def _auth(self, req) -> Reply | None:
        if req.headers.get("authorization") != f"DeepL-Auth-Key {self.auth_key}":
            return Reply(403, {"message": "Wrong key"})
        return None

    def _translate(self, req) -> Reply:
        if (bad := self._auth(req)) is not None:
            return bad
        with self._lock:
            if self.fail_next:
                status = self.fail_next.pop(0)
                return Reply(status, {"message": "scripted failure"})
            body = req.json()
            texts = body["text"]
            n = sum(len(t) for t in texts)
            if self.quota_chars is not None and self.used_chars + n > self.quota_chars:
                return Reply(456, {"message": "Quota Exceeded"})
            self.used_chars += n
            self.texts.extend(texts)
            self.translate_bodies.append(body)
        xml = body.get("tag_handling") == "xml"
        return Reply(200, {"translations": [
            {"detected_source_language": "EN", "text": translate_masked(t, xml), "billed_characters": len(t)}
            for t in texts
        ]})

    def _info(self, gid: str) -> dict:
        g = self.glossaries[gid]
        return {"glossary_id": gid, "name": g["name"], "ready": True, "source_lang": g["source_lang"].lower(),
                "target_lang": g["target_lang"].lower(), "creation_time": "2026-11-22T11:00:00.123456Z",
                "entry_count": len(g["entries"])}

    def _glossaries(self, req) -> Reply:
        if (bad := self._auth(req)) is not None:
            return bad
        if req.method == "POST":
            body = req.json()
            assert body["entries_format"] == "tsv"
            entries = dict(line.split("\t") for line in body["entries"].splitlines() if line)
            gid = f"g{len(self.glossaries) + 1}"
            self.glossaries[gid] = {**body, "entries": entries}
            return Reply(201, self._info(gid))
        gid = req.path.rstrip("/").split("/")[-1]
        if req.method == "GET" and gid in self.glossaries:
            return Reply(200, self._info(gid))
        return Reply(404, {"message": "Glossary not found"})

    def _usage(self, req) -> Reply:
        return Reply(200, {"character_count": self.used_chars, "character_limit": self.quota_chars or 10**9})


class FakeOpenAI:
    """POST /v1/chat/completions translating the numbered JSON list in the user message."""

    def __init__(self, srv: LocalServer, malformed_if=None, fail_status: int | None = None, delay_s: float = 0.0):
        self.srv = srv
        self.delay_s = delay_s  # per-request latency, for bench/bench_translate.py
        self.fail_next: list[Reply] = []  # scripted answers before serving normally (429 with Retry-After ...)
        self._lock = threading.Lock()
        self.batches: list[list[str]] = []
        self.malformed_if = malformed_if or (lambda texts: False)
        self.fail_status = fail_status
        srv.route("/v1/chat/completions", self._chat)

    def _chat(self, req) -> Reply:
        body = req.json()
        with self._lock:
            if self.fail_next:
                return self.fail_next.pop(0)
        if self.fail_status:
            return Reply(self.fail_status, {"error": {"message": "scripted", "type": "server_error"}})
        user = body["messages"][-1]["content"]
        items = json.loads(user.split("Items:\n", 1)[1])
        texts = [it["text"] for it in items]
        self.batches.append(texts)
        if self.malformed_if(texts):
            content = "Sure! Here are the translations: [{\"id\": 1, \"text\": "  # cut off: not JSON
        else:
            content = "```json\n" + json.dumps(
                [{"id": it["id"], "text": translate_masked(it["text"])} for it in items], ensure_ascii=False
            ) + "\n```"
        prompt_tokens = sum(len(m["content"]) for m in body["messages"]) // 4
        return Reply(200, delay_s=self.delay_s, body={
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content) // 4,
                      "total_tokens": prompt_tokens + len(content) // 4},
        })
