"""Text-only instruction sets (Alpaca, ShareGPT/Vicuna) -> conversation rows with no images.

mPLUG-Owl's stage 2 mixes these with multimodal instructions so the LLM keeps
its text skills. JSONL streams line by line; a JSON list streams with ijson.
A line that does not parse, or lacks the fields its format needs, becomes a
reject naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import ijson
import pyarrow as pa

from datagen.core.records import CONVERSATION_SCHEMA, make_key, reject, rejects_table
from datagen.sources.config import InstructionSource
from datagen.sources.errors import InputFileError, brief
from datagen.sources.tables import source_files
from datagen.core.steps import RunContext, StepOutput
from datagen.text import guess_lang

class BadItem(ValueError):
    """An item that cannot become a conversation: ``code`` is the reject reason."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant"}


def _items(path: Path) -> Iterator[tuple[int, object]]:
    """(1-based item number, parsed item or the raw text of a line that did not parse).

    A JSONL line that does not parse is one bad item; a JSON list that breaks
    off (truncated download) or a file that is not UTF-8 stops with an
    InputFileError naming the file and where."""
    if path.suffix == ".jsonl":
        n = 0
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})",
                                         "Convert the file to UTF-8", where=str(n)) from None
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    yield n, BadItem("malformed_row", f"not JSON ({e.msg}): {line[:120]!r}")
    else:
        n = 0
        try:
            with open(path, "rb") as f:
                for n, item in enumerate(ijson.items(f, "item"), 1):
                    yield n, item
        except (ijson.JSONError, UnicodeDecodeError) as e:
            raise InputFileError(path, f"invalid JSON after item {n} ({brief(e)})",
                                 "The file is truncated or not a JSON list: download it again, or use .jsonl "
                                 "for one item per line") from None


def _turns(item: object, fmt: str) -> list[tuple[str, str]]:
    """(role, content) pairs; raises BadItem saying what is missing."""
    if isinstance(item, BadItem):
        raise item
    if not isinstance(item, dict):
        raise BadItem("malformed_row", f"expected an object, got {type(item).__name__}")
    if fmt == "alpaca":
        for field in ("instruction", "output"):
            if not isinstance(item.get(field), str) or not item[field].strip():
                raise BadItem(f"missing_field:{field}", f"alpaca item needs a non-empty {field!r}")
        prompt = item["instruction"].strip()
        if isinstance(item.get("input"), str) and item["input"].strip():
            prompt += "\n\n" + item["input"].strip()
        return [("user", prompt), ("assistant", item["output"].strip())]
    conv = item.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise BadItem("missing_field:conversations", "sharegpt item needs a non-empty 'conversations' list")
    turns = []
    for t in conv:
        role = _SHAREGPT_ROLES.get(str(t.get("from", "")).lower()) if isinstance(t, dict) else None
        if role is None or not isinstance(t.get("value"), str):
            raise BadItem("bad_turn", f"turn needs 'from' (human/gpt) and a string 'value': {str(t)[:120]}")
        turns.append((role, t["value"].strip()))
    while turns and turns[0][0] != "user":
        turns.pop(0)
    if turns and turns[-1][0] != "assistant":
        turns.pop()
    if len(turns) < 2:
        raise BadItem("too_few_turns", "needs a user turn followed by an assistant turn")
    return turns


def read_instructions(cfg: InstructionSource, ctx: RunContext) -> Iterator[StepOutput]:
    emitted = 0
    for path in source_files(cfg.path, ctx, cfg.name):
        rows, rejects = [], []
        for n, item in _items(path):
            if cfg.limit is not None and emitted >= cfg.limit:
                break
            key = make_key(cfg.name, f"{path.stem}-{n:08d}")
            try:
                turns = _turns(item, cfg.format)
            except BadItem as e:
                rejects.append(reject({"key": key, "source": cfg.name}, "source", e.code, f"{path}:{n}: {e}"))
                continue
            lang = cfg.lang or guess_lang(" ".join(c for _, c in turns))
            rows.append({
                "key": key,
                "source": cfg.name,
                "images": [],
                "conversations": [{
                    "id": f"{key}-c0-{lang}",
                    "lang": lang,
                    "parent_id": None,
                    "turns": [{"role": r, "content": c, "task": "text_instruction", "polarity": "neutral",
                               "generator": "source"} for r, c in turns],
                }],
                "meta": json.dumps({"file": path.name, "item": n}),
            })
            emitted += 1
            if len(rows) >= cfg.batch_size:
                yield StepOutput(pa.Table.from_pylist(rows, schema=CONVERSATION_SCHEMA), rejects_table(rejects))
                rows, rejects = [], []
        yield StepOutput(pa.Table.from_pylist(rows, schema=CONVERSATION_SCHEMA), rejects_table(rejects))
