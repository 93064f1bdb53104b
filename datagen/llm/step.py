"""LLM instruction generation, LLaVA style: pair rows in, conversation rows out.

A text-only LLM behind any OpenAI-compatible server gets each image's symbolic
context (captions, normalised boxes, OCR text; see :mod:`datagen.llm.prompts`)
and writes, per task chosen in the recipe, a multi-turn conversation, a detailed
description, a complex-reasoning question, and negative (false-premise) items.

Every reply is parsed and validated (:mod:`datagen.llm.replies`). A malformed
reply gets exactly one more chance: a fresh request that shows the model its
reply and what was wrong with it. Items that leak the context or contradict the
annotations are dropped; a row whose tasks all fail goes to the rejects table
with the first task's reason code, so no row is lost silently. Counts, tokens
and cost go to ``ctx.stat("llm_generate")`` and from there into the manifest.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from datagen.core.cache import RequestCache
from datagen.llm.client import ChatClient, ChatResult, LLMRequestError
from datagen.llm.config import LLMGenerateConfig
from datagen.llm.prompts import PromptSpec, build_context, build_messages, load_prompt, resolve_prompt_path
from datagen.llm.replies import (
    ConversationReply,
    DescriptionReply,
    KnowledgeReply,
    LeakChecker,
    MalformedReply,
    NegativeReply,
    ReasoningReply,
    check_knowledge,
    check_negative,
    parse_reply,
    present_names,
)
from datagen.core.records import CONVERSATION_SCHEMA, conversations_table, reject, rejects_table, to_json
from datagen.core.steps import RunContext, Step, StepOutput

CACHE_NAMESPACE = "llm_generate"
NUDGE = ("Your previous reply could not be used: {error}. Reply again with only the JSON object in the "
         "requested format, and no other text.")


@dataclass
class _Job:
    """One (row, task) request and what became of it."""

    row: int
    task: str
    messages: list[dict]
    text: str | None = None
    reply: Any = None
    error: str | None = None  # reason code when the task produced nothing usable
    detail: str = ""
    nudged: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dropped: list[str] = field(default_factory=list)  # reason codes of items dropped from a usable reply


class LLMGenerateStep(Step):
    name = "llm_generate"
    kind = "expand"
    version = 1

    def __init__(self, config: LLMGenerateConfig, ctx: RunContext):
        super().__init__(config, ctx)
        self.specs: dict[str, PromptSpec] = {}
        for task in config.tasks:
            if task not in config.prompts:
                raise ValueError(
                    f"llm_generate: task {task!r} has no entry in 'prompts' (has {sorted(config.prompts)})"
                )
            self.specs[task] = load_prompt(resolve_prompt_path(config.prompts[task], ctx.recipe_dir), task)
        self.leaks = LeakChecker(config.extra_leak_patterns)
        self.generator = f"llm:{config.model}"
        self._client: ChatClient | None = None

    # The prompt files' content decides the output as much as the config does.
    def fingerprint(self) -> str:
        prompts = {t: s.model_dump(mode="json") for t, s in sorted(self.specs.items())}
        blob = super().fingerprint() + to_json(prompts)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def client(self) -> ChatClient:
        if self._client is None:
            c = self.config
            self._client = ChatClient(
                c.base_url, c.model, api_key_env=c.api_key_env, concurrency=c.concurrency,
                max_retries=c.max_retries, timeout_s=c.timeout_s,
                cache=RequestCache(self.ctx.cache_dir / "llm.sqlite"), temperature=c.temperature,
                max_tokens=c.max_tokens, price_per_1k_input=c.price_per_1k_input,
                price_per_1k_output=c.price_per_1k_output, backoff_base_s=c.backoff_base_s,
            )
        return self._client

    def __getstate__(self) -> dict:  # process pools: each worker builds its own client
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    def close(self) -> None:
        if self._client is not None and self._client.cache is not None:
            self._client.cache.close()
        self._client = None

    # ------------------------------------------------------------------ the batch

    def process(self, table: pa.Table) -> StepOutput:
        cfg = self.config
        stat = self.ctx.stat(self.name)
        rows = table.select([c for c in table.column_names if c != "image"]).to_pylist()
        rejects: list[dict] = []
        jobs: list[_Job] = []
        for i, row in enumerate(rows):
            context = build_context(row, max_objects=cfg.max_objects, use_ocr=cfg.use_ocr,
                                    ocr_min_score=cfg.ocr_min_score)
            if not context:
                rejects.append(reject(row, self.name, "llm_no_context", "no captions, objects or OCR text"))
                continue
            for task in cfg.tasks:
                jobs.append(_Job(i, task, build_messages(self.specs[task], context,
                                                         n_negatives=cfg.negatives_per_image)))
        _add(stat, rows_in=len(rows))

        if self.ctx.dry_run:
            self._print_dry_run(rows, jobs)
            _add(stat, dry_run_requests=len(jobs))
            return StepOutput(CONVERSATION_SCHEMA.empty_table(), rejects_table(rejects))

        overrides = {"namespace": CACHE_NAMESPACE}
        if cfg.json_mode:
            overrides["response_format"] = {"type": "json_object"}
        self._run(jobs, [j.messages for j in jobs], overrides)
        retry = [j for j in jobs if j.error == "llm_malformed_reply"]
        if retry:
            _add(stat, malformed_retries=len(retry))
            nudges = [j.messages + [{"role": "assistant", "content": j.text or ""},
                                    {"role": "user", "content": NUDGE.format(error=j.detail)}] for j in retry]
            for j in retry:
                j.error, j.nudged = None, True
            self._run(retry, nudges, overrides)

        by_row: dict[int, list[_Job]] = {}
        for j in jobs:
            by_row.setdefault(j.row, []).append(j)
        out_rows = []
        dropped_items, failed_tasks = Counter(), Counter()
        for i, row_jobs in sorted(by_row.items()):
            row = rows[i]
            conversations = []
            for j in row_jobs:
                if j.error is None:
                    convs, item_drops = self._conversations(row, j)
                    j.dropped += item_drops
                    if not convs:
                        j.error = item_drops[0] if item_drops else "llm_empty_reply"
                        j.detail = f"every item dropped: {', '.join(item_drops)}"
                    conversations += convs
                dropped_items.update(j.dropped)
                if j.error:
                    failed_tasks[j.error] += 1
            meta = {
                "llm": {
                    "model": cfg.model,
                    "prompt_tokens": sum(j.prompt_tokens for j in row_jobs),
                    "completion_tokens": sum(j.completion_tokens for j in row_jobs),
                    "failed_tasks": {j.task: j.error for j in row_jobs if j.error},
                    "dropped_items": dict(Counter(d for j in row_jobs for d in j.dropped)),
                }
            }
            if conversations:
                out_rows.append({"key": row["key"], "source": row.get("source"), "images": [row["key"]],
                                 "conversations": conversations, "meta": to_json(meta)})
            else:
                first = next(j for j in row_jobs if j.error)
                detail = "; ".join(f"{j.task}: {j.error} {j.detail}".strip() for j in row_jobs)
                rejects.append(reject(row, self.name, first.error, detail[:1000]))

        _add(stat, rows_kept=len(out_rows), rows_rejected=len(rejects),
             conversations=sum(len(r["conversations"]) for r in out_rows))
        for name, counts in (("dropped_items", dropped_items), ("failed_tasks", failed_tasks)):
            acc = stat.setdefault(name, {})
            for reason, n in counts.items():
                acc[reason] = acc.get(reason, 0) + n
        if self._client is not None:  # cumulative for this process: requests, retries, tokens, cost
            stat["client"] = self._client.stats
        return StepOutput(conversations_table(out_rows), rejects_table(rejects))

    def _run(self, jobs: list[_Job], requests: list[list[dict]], overrides: dict) -> None:
        """Send ``requests`` (one per job) concurrently and parse each answer into its job."""
        if not requests:
            return
        results = self.client.complete_many(requests, **overrides)
        for job, res in zip(jobs, results):
            if isinstance(res, LLMRequestError):
                job.error, job.detail = res.reason, res.detail
                continue
            if isinstance(res, BaseException):  # a bug or an unexpected library error: keep the row, say what
                job.error, job.detail = "llm_error", f"{type(res).__name__}: {res}"[:300]
                continue
            assert isinstance(res, ChatResult)
            job.prompt_tokens += res.prompt_tokens
            job.completion_tokens += res.completion_tokens
            job.text = res.text
            try:
                job.reply = parse_reply(job.task, res.text)
            except MalformedReply as e:
                job.error, job.detail = "llm_malformed_reply", str(e)

    # ------------------------------------------------------------ reply -> turns

    def _turn(self, role: str, content: str, task: str, polarity: str) -> dict:
        return {"role": role, "content": content, "task": task, "polarity": polarity, "generator": self.generator}

    def _qa(self, conv_id: str, pairs: list[tuple[str, str]], task: str, polarity: str) -> dict:
        turns = []
        for n, (q, a) in enumerate(pairs):
            turns.append(self._turn("user", ("<image>\n" + q) if n == 0 else q, task, polarity))
            turns.append(self._turn("assistant", a, task, polarity))
        return {"id": conv_id, "lang": "en", "parent_id": None, "turns": turns}

    def _leak(self, *texts: str) -> str | None:
        for t in texts:
            found = self.leaks.find(t)
            if found:
                return found[0]
        return None

    def _conversations(self, row: dict, job: _Job) -> tuple[list[dict], list[str]]:
        """Conversations from a parsed reply, and the reason codes of what was dropped."""
        key, reply, drops = row["key"], job.reply, []
        base = f"{key}-llm-{job.task}"
        if isinstance(reply, ConversationReply):
            pairs = []
            for t in reply.turns:  # a conversation is cut at its first leaking turn: later turns build on it
                leak = self._leak(t.question, t.answer)
                if leak:
                    drops.append(leak)
                    break
                pairs.append((t.question, t.answer))
            return ([self._qa(base, pairs, "conversation", "positive")] if pairs else []), drops
        if isinstance(reply, DescriptionReply):
            question = self.ctx.rng(key, job.task).choice(self.specs[job.task].questions)
            leak = self._leak(reply.description)
            if leak:
                return [], [leak]
            return [self._qa(base, [(question, reply.description)], "detailed_description", "positive")], drops
        if isinstance(reply, ReasoningReply):
            leak = self._leak(reply.question, reply.answer)
            if leak:
                return [], [leak]
            return [self._qa(base, [(reply.question, reply.answer)], "complex_reasoning", "positive")], drops
        if isinstance(reply, KnowledgeReply):
            convs = []
            for n, item in enumerate(reply.items[: self.config.negatives_per_image]):
                why = self._leak(item.question, item.answer) or check_knowledge(item, row, self.config.ocr_min_score)
                if why:
                    drops.append(why)
                    continue
                convs.append(self._qa(f"{base}-{n}", [(item.question, item.answer)], "knowledge", "negative"))
            return convs, drops
        if isinstance(reply, NegativeReply):
            present = present_names(row)
            convs = []
            for n, item in enumerate(reply.items[: self.config.negatives_per_image]):
                why = self._leak(item.question, item.answer) or check_negative(item, present)
                if why:
                    drops.append(why)
                    continue
                convs.append(self._qa(f"{base}-{n}", [(item.question, item.answer)], item.kind, "negative"))
            return convs, drops
        raise TypeError(f"unexpected reply type {type(reply).__name__}")  # pragma: no cover

    # ------------------------------------------------------------------ dry run

    def _print_dry_run(self, rows: list[dict], jobs: list[_Job]) -> None:
        out = sys.stdout
        shown = jobs[: self.config.dry_run_show]
        for j in shown:
            print(f"=== llm_generate (dry run) key={rows[j.row]['key']} task={j.task} model={self.config.model} ===",
                  file=out)
            for m in j.messages:
                print(f"[{m['role']}]\n{m['content']}\n", file=out)
        if len(jobs) > len(shown):
            print(f"=== llm_generate (dry run): {len(jobs) - len(shown)} more requests not shown, "
                  f"{len(jobs)} in this batch ===", file=out)


def _add(stat: dict, **counts: int) -> None:
    for k, v in counts.items():
        stat[k] = stat.get(k, 0) + v
