"""The template synthesis step: pair rows in, bilingual conversation rows out.

One conversation row per image (key = the pair row's key, images = [key]).
Items are planned once per image (``planner``), grouped into multi-turn
conversations with a cap on refusals each, and rendered natively in every
configured language; twins share an id stem: ``<key>-c0-en`` / ``<key>-c0-zh``.

POPE negatives need dataset-level label statistics. The pipeline calls
``step.prepare(tables)`` once over the kept pairs' labels (a barrier) before the first batch;
that writes ``<run_dir>/synthesize/label_stats.json`` which every worker
process loads (or set ``label_stats_path``). Without it the step counts within
each batch, records ``label_stats: "batch_fallback"`` in its stats and warns:
popular/adversarial picks then depend on how the input was batched.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from datagen.records import conversations_table, reject, rejects_table, to_json
from datagen.steps import RunContext, Step, StepOutput
from datagen.synth import templates_en, templates_zh
from datagen.synth.config import SynthConfig
from datagen.synth.facts import BadAnnotation, Geometry, ImageFacts, OcrRules, facts_from_row
from datagen.synth.items import Item
from datagen.synth.multi_image import compose_multi_image
from datagen.synth.planner import Planner, fit_existence_weights, is_yesno
from datagen.synth.stats import LabelStats, label_stats_from_tables

IMAGE = "<image>\n"
RENDERERS = {"en": templates_en.render, "zh": templates_zh.render}
_COLUMNS = ("key", "source", "url", "caption", "captions", "objects", "width", "height", "ocr")


class SynthesizeStep(Step):
    name = "synthesize"
    kind = "expand"
    version = 1

    def __init__(self, config: SynthConfig | None, ctx: RunContext):
        super().__init__(config or SynthConfig(), ctx)
        self.config: SynthConfig
        self._stats: LabelStats | None = None

    # ------------------------------------------------------------------ label stats

    @property
    def stats_path(self) -> Path:
        if self.config.label_stats_path:
            return self.ctx.resolve(self.config.label_stats_path)
        return self.ctx.run_dir / "synthesize" / "label_stats.json"

    def prepare(self, tables: Iterable[pa.Table]) -> Path:
        """Count label frequency and co-occurrence over the whole input once; returns the JSON path."""
        sample: list[dict] = []
        self._stats = label_stats_from_tables(tables, sample)
        fit_existence_weights(self._stats, sample, self.config, self._plan_rng)
        path = self._stats.save(self.ctx.run_dir / "synthesize" / "label_stats.json" if not self.config.label_stats_path else self.stats_path)
        st = self.ctx.stat(self.name)
        st["label_stats"] = "prepared"
        st["label_stats_images"] = self._stats.images
        return path

    def _label_stats(self, rows: list[dict]) -> LabelStats:
        if self._stats is None and self.stats_path.exists():
            self._stats = LabelStats.load(self.stats_path)
            self.ctx.stat(self.name).setdefault("label_stats", "prepared")
        if self._stats is not None:
            return self._stats
        if self.config.label_stats_path:
            raise FileNotFoundError(f"synthesize.label_stats_path: {self.stats_path} does not exist; run SynthesizeStep.prepare first")
        self.ctx.stat(self.name)["label_stats"] = "batch_fallback"
        self.ctx.warn("synthesize: no prepared label statistics; popular/adversarial negatives counted within each batch")
        sample: list[dict] = []
        stats = label_stats_from_tables([pa.Table.from_pylist([{k: r.get(k) for k in ("key", "width", "height", "objects", "captions", "ocr")} for r in rows])], sample)
        fit_existence_weights(stats, sample, self.config, self._plan_rng)
        return stats

    def _plan_rng(self, key: str):
        """The planner's random stream for one image (the same in prepare's fit and in process)."""
        return self.ctx.rng(self.name, self.config.seed, key, "plan")

    # ---------------------------------------------------------------------- process

    def process(self, table: pa.Table) -> StepOutput:
        cfg = self.config
        cols = [c for c in _COLUMNS if c in table.column_names]
        rows = table.select(cols).to_pylist()
        stats = self._label_stats(rows)
        out_rows, rejects = [], []
        usable: list[tuple[dict, ImageFacts]] = []
        counters: dict[str, Counter] = {k: Counter() for k in ("family", "polarity", "lang", "family_polarity", "lang_family_polarity",
                                                                "negative_mode", "reject", "ocr_dropped", "yes_no")}
        ocr_rules, geo = OcrRules.from_config(cfg), Geometry.from_config(cfg)
        for row in rows:
            if cfg.sources is not None and row.get("source") not in cfg.sources:
                rejects.append(reject(row, self.name, "source_not_selected", f"source {row.get('source')!r} not in {cfg.sources}"))
                continue
            try:
                facts = facts_from_row(row, ocr_rules, geo)
            except BadAnnotation as e:
                rejects.append(reject(row, self.name, e.reason, e.detail))
                continue
            if not facts.objects and not facts.captions and not facts.ocr_texts:
                rejects.append(reject(row, self.name, "no_annotations", "no objects, captions or OCR text to ask about"))
                continue
            planner = Planner(facts, cfg, stats, self._plan_rng(facts.key))
            items = planner.plan()
            convs = self.render_conversations(facts.key, items, counters)
            if not convs:
                rejects.append(reject(row, self.name, "nothing_to_ask", f"no template applies in languages {cfg.languages}"))
                continue
            counters["negative_mode"].update(planner.mode_counts)
            counters["ocr_dropped"].update(facts.ocr_dropped)
            for it in items:
                if is_yesno(it):  # one count per item, not per language
                    verdict = "yes" if it.polarity == "positive" else "no"
                    counters["yes_no"][f"family:{it.family}:{verdict}"] += 1
                    if it.family == "existence":
                        counters["yes_no"][f"label:{it.facts['label']}:{verdict}"] += 1
            out_rows.append({"key": facts.key, "source": row.get("source"), "images": [facts.key], "conversations": convs, "meta": to_json({"generator": "template", "items": len(items)})})
            usable.append((row, facts))
        if cfg.multi_image.enabled and usable:
            mm = compose_multi_image(usable, cfg, self.ctx, counters)
            out_rows.extend(mm)
        for r in rejects:
            counters["reject"][r["reason"]] += 1
        self._record(len(rows), len(out_rows), counters)
        return StepOutput(kept=conversations_table(out_rows), rejects=rejects_table(rejects))

    def check_output(self, pairs: pa.Table, conversations: pa.Table) -> None:
        """The independent checker re-derives every template answer of this batch from the annotations;
        the executor calls this after each batch, and the run warns when the summed count is not 0."""
        if not self.config.check or not conversations.num_rows:
            return
        from dataclasses import asdict

        from datagen.synth.checker import Checker

        found = Checker.from_config(self.config).check_tables(pairs, conversations)
        st = self.ctx.stat(self.name)
        st["checker_disagreements"] = st.get("checker_disagreements", 0) + len(found)
        st["checker_examples"] = (st.get("checker_examples", []) + [asdict(d) for d in found])[:5]

    def render_conversations(self, key: str, items: list[Item], counters: dict[str, Counter]) -> list[dict[str, Any]]:
        """Group items into conversations (refusals spread and capped) and render each language.

        A description drawn from English captions has no Chinese source when the image has no
        Chinese captions: it goes into its own English conversation (``<key>-d<n>-en``) whose turns
        are generated by ``template:caption``, so that a recipe can route exactly those to a
        machine translation backend (``translate.by_generator: {"template:caption": deepl}``)
        instead of rendering a poorer Chinese description from the object list alone."""
        cfg = self.config
        rng = self.ctx.rng(self.name, cfg.seed, key, "group")
        caption_only = [it for it in items if it.polarity == "neutral" and it.facts.get("captions") and not it.facts.get("zh_captions")
                        and "zh" in cfg.languages]
        rest = [it for it in items if not any(it is c for c in caption_only)]
        groups = [(f"c{ci}", g, cfg.languages, "template") for ci, g in
                  enumerate(group_items(rest, cfg.max_items_per_conversation, cfg.max_negatives_per_conversation, rng))]
        groups += [(f"d{di}", [it], [lang for lang in cfg.languages if lang != "zh"], "template:caption") for di, it in enumerate(caption_only)]
        style_rng = self.ctx.rng(self.name, cfg.seed, key, "style")
        full = {id(it): (cfg.answer_style == "full" or (cfg.answer_style == "mixed" and style_rng.random() < 0.5)) for it in items}
        convs = []
        for gid, group, langs, generator in groups:
            for lang in langs:
                rrng = self.ctx.rng(self.name, cfg.seed, key, "render", gid if gid[0] != "c" else int(gid[1:]), lang)
                turns = []
                for it in group:
                    qa = RENDERERS[lang](it, rrng, full[id(it)])
                    if qa is None:
                        continue
                    q, a = qa
                    if not turns:
                        q = IMAGE + q
                    turns.append({"role": "user", "content": q, "task": it.family, "polarity": it.polarity, "generator": generator})
                    turns.append({"role": "assistant", "content": a, "task": it.family, "polarity": it.polarity, "generator": generator})
                    counters["family"][it.family] += 1
                    counters["polarity"][it.polarity] += 1
                    counters["lang"][lang] += 1
                    counters["family_polarity"][f"{it.family}:{it.polarity}"] += 1
                    counters["lang_family_polarity"][f"{lang}:{it.family}:{it.polarity}"] += 1
                if turns:
                    convs.append({"id": f"{key}-{gid}-{lang}", "lang": lang, "parent_id": None, "turns": turns})
        return convs

    def _record(self, rows_in: int, rows_out: int, counters: dict[str, Counter]) -> None:
        """Add this batch's counts to ctx.stat('synthesize') (sums, so batches merge by addition)."""
        st = self.ctx.stat(self.name)
        st["rows_in"] = st.get("rows_in", 0) + rows_in
        st["rows_out"] = st.get("rows_out", 0) + rows_out
        for name, c in counters.items():
            acc = st.setdefault(name, {})
            for k, v in c.items():
                acc[k] = acc.get(k, 0) + v
        self.derive_stats(st)

    def derive_stats(self, st: dict[str, Any]) -> None:
        pol = st.get("polarity", {})
        polar = pol.get("positive", 0) + pol.get("negative", 0)
        st["negative_share"] = round(pol.get("negative", 0) / polar, 4) if polar else None
        st["negative_share_target"] = round(1 - self.config.positive_ratio, 4)
        if "checker_examples" in st:  # lists concatenate when parts merge
            st["checker_examples"] = st["checker_examples"][:5]
        st["yes_share"] = yes_shares(st.get("yes_no", {}))


def yes_shares(yes_no: dict[str, int], top_labels: int = 10) -> dict[str, dict[str, float]]:
    """Share of "yes" among yes/no questions, per family and for the ``top_labels`` labels asked
    about most in existence questions (from counters ``family:<f>:yes|no`` / ``label:<l>:yes|no``)."""
    out: dict[str, dict[str, float]] = {"family": {}, "label": {}}
    totals: dict[tuple[str, str], list[int]] = {}
    for k, v in yes_no.items():
        kind, name, verdict = k.rsplit(":", 2)[0].split(":", 1)[0], k.split(":", 1)[1].rsplit(":", 1)[0], k.rsplit(":", 1)[1]
        yn = totals.setdefault((kind, name), [0, 0])
        yn[0 if verdict == "yes" else 1] += v
    labels = sorted((n for kind, n in totals if kind == "label"), key=lambda n: -sum(totals[("label", n)]))[:top_labels]
    for (kind, name), (y, n) in sorted(totals.items()):
        if kind == "family" or name in labels:
            out[kind][name] = round(y / (y + n), 4)
    return out


def group_items(items: list[Item], max_items: int, max_neg: int, rng) -> list[list[Item]]:
    """Split one image's items into conversations: at most ``max_items`` each and at most
    ``max_neg`` negatives each, negatives dealt round-robin so none dominates."""
    if not items:
        return []
    neg = [it for it in items if it.polarity == "negative"]
    rest = [it for it in items if it.polarity != "negative"]
    rng.shuffle(neg)
    rng.shuffle(rest)
    n_conv = max(math.ceil(len(items) / max_items), math.ceil(len(neg) / max_neg), 1)
    groups: list[list[Item]] = [[] for _ in range(n_conv)]
    i = 0
    for it in neg + rest:
        while len(groups[i % n_conv]) >= max_items:
            i += 1
        groups[i % n_conv].append(it)
        i += 1
    for g in groups:
        rng.shuffle(g)
    return [g for g in groups if g]

