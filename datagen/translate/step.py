"""The translate step: Chinese versions of English conversations (and, optionally, captions).

Conversations mode (``mode: conversations``, a ``map`` over conversation rows):
for a configured share of the English conversations of each row (picked
deterministically per row key and conversation id through ``ctx.rng``) it
appends ``{id: "<id>-zh", lang: "zh", parent_id: <id>, turns: ...}`` to the same
row's ``conversations`` list. Conversations that already have a native Chinese
twin in the row (template output) and generators routed to the ``native``
backend are skipped: the template rendering is better than any MT. With
``translate_answers: false`` only the user turns are translated and the English
answers are kept (Chinese questions, English answers).

Captions mode (``mode: captions``, a ``map`` over pair rows): adds a
``caption_zh`` column (null where the row was not picked or its translation
failed) for bilingual stage-1 pre-training. One row stays one row, so the image
is stored once.

A translation that fails a check is dropped, never the row: the row goes on
unchanged and a reject record (key = row key, step ``translate``, reason
``translate_*``, detail naming the conversation) says what was dropped. These
rejects count translations, not rows.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

from datagen.core.cache import RequestCache
from datagen.core.records import CONVERSATION_SCHEMA, rejects_table, reject
from datagen.core.steps import RunContext, Step, StepOutput
from datagen.translate.checks import CHECK_ORDER, first_failure, run_checks
from datagen.translate.config import TranslateConfig
from datagen.translate.translator import CachedTranslator, Translation

_CONVERSATIONS_TYPE = CONVERSATION_SCHEMA.field("conversations").type


class TranslateStep(Step):
    name = "translate"
    kind = "map"
    version = 1

    def __init__(self, config: TranslateConfig, ctx: RunContext):
        super().__init__(config, ctx)
        self.config: TranslateConfig = config
        self._cache: RequestCache | None = None
        self._backends: dict[str, Any] = {}
        self._lexicon = None

    def __getstate__(self) -> dict:
        """Executors may ship the step to worker processes: connections are reopened there."""
        state = self.__dict__.copy()
        state["_cache"], state["_backends"] = None, {}
        return state

    # ------------------------------------------------------------------ plumbing

    @property
    def stats(self) -> dict[str, Any]:
        return self.ctx.stat(self.name)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def cache(self) -> RequestCache:
        if self._cache is None:
            path = (self.ctx.resolve(self.config.cache_path) if self.config.cache_path
                    else self.ctx.cache_dir / "requests.sqlite")
            self._cache = RequestCache(path)
        return self._cache

    def lexicon(self):
        if self._lexicon is None:
            from datagen.translate.lexicon_check import default_lexicon

            self._lexicon = default_lexicon()
        return self._lexicon

    def translator(self, backend: str) -> CachedTranslator:
        if backend not in self._backends:
            if backend == "deepl":
                from datagen.translate.deepl_backend import DeepLBackend

                b = DeepLBackend(self.config.deepl, self.cache(), self.lexicon(), self.stats)
            elif backend == "llm":
                from datagen.translate.llm_backend import LLMBackend

                b = LLMBackend(self.config.llm, self.lexicon(), self.stats, self.config.source_lang,
                               self.config.target)
            else:
                raise ValueError(f"translate: backend {backend!r} does not machine-translate")
            self._backends[backend] = CachedTranslator(b, self.cache(), self.stats)
        return self._backends[backend]

    def close(self) -> None:
        for t in self._backends.values():
            t.backend.close()
        self._backends.clear()
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def backend_for(self, generator: str | None, source: str | None) -> str:
        """by_generator (exact, then the part before ':'), then by_source, then the default."""
        cfg = self.config
        if generator:
            if generator in cfg.by_generator:
                return cfg.by_generator[generator]
            head = generator.split(":", 1)[0]
            if head in cfg.by_generator:
                return cfg.by_generator[head]
        if source and source in cfg.by_source:
            return cfg.by_source[source]
        return cfg.backend

    def picked(self, *salt: Any) -> bool:
        return self.ctx.rng(self.name, *salt).random() < self.config.share

    def _check(self, source: str, tr: Translation) -> tuple[str | None, str | None]:
        """(reject reason, detail) for one translated text; counts every check's outcome."""
        checks = self.stats.setdefault("checks", {})
        self._count("items")
        if tr.text is None:
            if tr.reason == "translate_protected_spans":
                c = checks.setdefault("protected_spans", {"passed": 0, "failed": 0})
                c["failed"] += 1
            return tr.reason, tr.detail
        results = run_checks(source, tr.text, self.config.checks, self.config.target, self.lexicon())
        for name, reason in results:
            c = checks.setdefault(name, {"passed": 0, "failed": 0})
            c["passed" if reason is None else "failed"] += 1
        return first_failure(results), None

    def _finish_stats(self, reasons: Counter) -> None:
        by_reason = self.stats.setdefault("rejects_by_reason", {})
        for r, n in reasons.items():
            by_reason[r] = by_reason.get(r, 0) + n
        self.derive_stats(self.stats)

    def derive_stats(self, stats: dict) -> None:
        checks = stats.get("checks", {})
        for name in CHECK_ORDER:
            if name in checks:
                c = checks[name]
                total = c["passed"] + c["failed"]
                c["pass_rate"] = round(c["passed"] / total, 4) if total else None

    # ------------------------------------------------------------------ process

    def process(self, table: pa.Table) -> StepOutput:
        for key in ("selected", "translated", "skipped_native", "items"):
            self.stats.setdefault(key, 0)
        if self.config.mode == "captions":
            return self._process_captions(table)
        return self._process_conversations(table)

    def _process_conversations(self, table: pa.Table) -> StepOutput:
        cfg = self.config
        if "conversations" not in table.column_names:
            raise ValueError(f"translate (mode conversations) needs conversation rows; got columns "
                             f"{table.column_names}")
        rows = table.select(["key", "source", "conversations"]).to_pylist()
        plan: list[tuple[int, dict, str, list[int]]] = []  # (row index, conversation, backend, turn indexes)
        wanted: dict[str, set[str]] = {}
        for ri, row in enumerate(rows):
            convs = row["conversations"] or []
            for conv in convs:
                if conv.get("lang") != cfg.source_lang:
                    continue
                if not conv.get("id"):
                    raise ValueError(f"translate: row {row['key']!r} has an {cfg.source_lang} conversation without "
                                     f"an id; every conversation needs one (translations point at it by parent_id)")
                self._count("conversations_seen")
                twin_ids = {f"{conv['id']}-{cfg.target}"}
                if any(c.get("lang") == cfg.target and (c.get("parent_id") == conv["id"] or c.get("id") in twin_ids)
                       for c in convs):
                    self._count("skipped_has_native_twin")
                    continue
                if not self.picked(row["key"], conv["id"]):
                    continue
                turns = conv.get("turns") or []
                generator = next((t.get("generator") for t in turns if t.get("generator")), None)
                backend = self.backend_for(generator, row.get("source"))
                if backend == "native":
                    self._count("skipped_native")
                    continue
                idx = [i for i, t in enumerate(turns)
                       if t.get("role") == "user" or (cfg.translate_answers and t.get("role") == "assistant")]
                idx = [i for i in idx if (turns[i].get("content") or "").strip()]
                if not idx:
                    continue
                self._count("selected")
                plan.append((ri, conv, backend, idx))
                wanted.setdefault(backend, set()).update(turns[i]["content"] for i in idx)
        done: dict[str, dict[str, Translation]] = {
            b: self.translator(b).translate(sorted(texts)) for b, texts in wanted.items()
        }
        new_convs = [list(r["conversations"] or []) for r in rows]
        rejects, reasons = [], Counter()
        for ri, conv, backend, idx in plan:
            turns = [dict(t) for t in conv["turns"]]
            failure = None
            for i in idx:
                src = turns[i]["content"]
                tr = done[backend][src]
                reason, detail = self._check(src, tr)
                if reason and failure is None:
                    failure = (reason, f"conversation {conv['id']} turn {i}" + (f": {detail}" if detail else ""))
                if tr.text is not None:
                    turns[i]["content"] = tr.text
                    turns[i]["generator"] = f"translate:{backend}"
            if failure:
                reasons[failure[0]] += 1
                rejects.append(reject(rows[ri], self.name, failure[0], failure[1]))
                continue
            new_convs[ri].append({"id": f"{conv['id']}-{cfg.target}", "lang": cfg.target,
                                  "parent_id": conv["id"], "turns": turns})
            self._count(f"translated_{backend}")
            self._count("translated")
        self._finish_stats(reasons)
        col = pa.array(new_convs, type=_CONVERSATIONS_TYPE)
        kept = table.set_column(table.column_names.index("conversations"), "conversations", col)
        return StepOutput(kept, rejects_table(rejects))

    def _process_captions(self, table: pa.Table) -> StepOutput:
        cfg = self.config
        if "caption" not in table.column_names:
            raise ValueError(f"translate (mode captions) needs pair rows with a caption column; got "
                             f"{table.column_names}")
        rows = table.select(["key", "source", "caption", "url"] if "url" in table.column_names
                            else ["key", "source", "caption"]).to_pylist()
        plan: list[tuple[int, str]] = []
        wanted: dict[str, set[str]] = {}
        for ri, row in enumerate(rows):
            cap = row.get("caption")
            if not cap or not cap.strip():
                continue
            self._count("captions_seen")
            if not self.picked(row["key"], "caption"):
                continue
            backend = self.backend_for(None, row.get("source"))
            if backend == "native":
                self._count("skipped_native")
                continue
            self._count("selected")
            plan.append((ri, backend))
            wanted.setdefault(backend, set()).add(cap)
        done = {b: self.translator(b).translate(sorted(texts)) for b, texts in wanted.items()}
        out: list[str | None] = [None] * len(rows)
        rejects, reasons = [], Counter()
        for ri, backend in plan:
            src = rows[ri]["caption"]
            tr = done[backend][src]
            reason, detail = self._check(src, tr)
            if reason:
                reasons[reason] += 1
                rejects.append(reject(rows[ri], self.name, reason, "caption" + (f": {detail}" if detail else "")))
                continue
            out[ri] = tr.text
            self._count(f"translated_{backend}")
            self._count("translated")
        self._finish_stats(reasons)
        col = pa.array(out, type=pa.string())
        col_name = f"caption_{cfg.target}"
        if col_name in table.column_names:
            kept = table.set_column(table.column_names.index(col_name), col_name, col)
        else:
            kept = table.append_column(pa.field(col_name, pa.string()), col)
        return StepOutput(kept, rejects_table(rejects))
