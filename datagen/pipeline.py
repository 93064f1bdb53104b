"""The local executor: runs a recipe's steps over persisted Arrow batches.

    pair sources -> fetch -> quality -> [clip score -> clip threshold] -> dedup -> [ocr] -> [caption translation] -> pairs
    pairs -> [synthesize] + [llm_generate] + text-only sources -> [translate] -> conversations
    pairs -> stage1 shards;  conversations + pairs -> stage2 shards;  manifest, rejects, exports

Every step's output is a checkpoint (``datagen.checkpoint``) keyed by the chain
of fingerprints up to it, so reruns reuse what did not change and a killed
run resumes. Steps never see files or other steps: the executor hands them
batches and collects (kept, rejects). With ``executor.workers > 1`` per-batch
steps run in a process pool, one step instance per worker.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from datagen import checkpoint as ckpt
from datagen.config import Recipe
from datagen.records import CONVERSATION_SCHEMA, PAIR_SCHEMA, REJECT_SCHEMA
from datagen.steps import RunContext, Step, StepOutput

log = logging.getLogger("datagen")


@dataclass
class StepRecord:
    name: str
    kind: str
    rows_in: int
    kept: int
    rejected: int
    seconds: float
    reused: bool
    checkpoint: str
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunState:
    recipe: Recipe
    out_dir: Path
    ctx: RunContext
    steps: list[StepRecord] = field(default_factory=list)
    reject_files: list[Path] = field(default_factory=list)
    pairs: Path | None = None  # the final pair rows
    conversations: list[Path] = field(default_factory=list)  # the final conversation rows


def merge_stats(dst: dict, src: dict) -> dict:
    """Add numbers, recurse into dicts, keep the latest of anything else (stats from several workers)."""
    for k, v in src.items():
        if isinstance(v, dict):
            merge_stats(dst.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(dst.get(k), (int, float)):
            dst[k] += v
        else:
            dst[k] = v
    return dst


# ----------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _worker_init(factory: Callable[[RunContext], Step], ctx: RunContext) -> None:
    _WORKER["step"] = factory(ctx)
    _WORKER["ctx"] = ctx


def _worker_run(table: pa.Table) -> tuple[StepOutput, dict, list[str]]:
    ctx: RunContext = _WORKER["ctx"]
    out = _WORKER["step"].process(table)
    stats, warnings = ctx.stats, list(ctx.warnings)
    ctx.stats, ctx.warnings = {}, []
    return out, stats, warnings


def map_batches(factory: Callable[[RunContext], Step], batches: Iterator[pa.Table], ctx: RunContext, workers: int
                ) -> Iterator[StepOutput]:
    """Run a per-batch step over ``batches`` in order, here or in a pool of ``workers`` processes."""
    if workers <= 1:
        step = factory(ctx)
        try:
            for b in batches:
                yield step.process(b)
        finally:
            step.close()
        return
    worker_ctx = RunContext(ctx.run_dir, ctx.recipe_dir, ctx.seed, ctx.dry_run)
    probe = factory(ctx)
    with mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(factory, worker_ctx)) as pool:
        for out, stats, warnings in pool.imap(_worker_run, batches):
            merge_stats(ctx.stats, stats)
            probe.derive_stats(ctx.stat(probe.name))  # sums of ratios are not ratios
            for w in warnings:
                ctx.warn(w)
            yield out


# ----------------------------------------------------------------------------- steps


class StepFactory:
    """Picklable recipe for building a step in any process."""

    def __init__(self, cls: type[Step], config: Any):
        self.cls, self.config = cls, config

    def __call__(self, ctx: RunContext) -> Step:
        return self.cls(self.config, ctx)


def _run_stage(state: RunState, index: int, name: str, fingerprint: str, empty: pa.Schema,
               produce: Callable[[], Iterator[StepOutput]], rows_in: int, kind: str) -> ckpt.Checkpoint:
    """Reuse the checkpoint for ``fingerprint`` or build it from ``produce()``."""
    folder = state.out_dir / "_run" / "steps" / f"{index:02d}-{name}"
    found = ckpt.load(folder, fingerprint)
    if found is not None:
        log.info("step %s: reusing checkpoint %s", name, folder)
        state.ctx.stats[name] = found.stats
        for w in found.warnings:
            state.ctx.warn(w)
    else:
        t0 = time.time()
        said_before = list(state.ctx.warnings)
        writer = ckpt.CheckpointWriter(folder, fingerprint)
        try:
            with tqdm(total=rows_in or None, desc=name, unit="row", leave=False) as bar:
                for out in produce():
                    writer.write(out.kept, out.rejects)
                    bar.update(out.kept.num_rows + out.rejects.num_rows if kind != "expand" else 1)
        except BaseException:
            writer.abort()
            raise
        counts = {"in": rows_in, "kept": writer.kept, "rejected": writer.rejected}
        said = [w for w in state.ctx.warnings if w not in said_before]
        found = writer.commit(counts, state.ctx.stats.get(name, {}), round(time.time() - t0, 3), empty, said)
    state.steps.append(StepRecord(name, kind, found.counts.get("in", rows_in), found.counts.get("kept", 0),
                                  found.counts.get("rejected", 0), found.seconds, found.reused, str(found.dir),
                                  found.stats))
    state.reject_files.append(found.rejects)
    return found


def _source_reader(cfg):
    from datagen.sources.coco import read_coco
    from datagen.sources.instructions import read_instructions
    from datagen.sources.tables import read_parquet, read_tsv
    from datagen.sources.visual_genome import read_visual_genome

    return {"coco": read_coco, "laion": read_parquet, "coyo": read_parquet, "parquet": read_parquet,
            "cc3m": read_tsv, "cc12m": read_tsv, "tsv": read_tsv, "instructions": read_instructions,
            "wukong": read_parquet, "visual_genome": read_visual_genome}[cfg.kind]


def _source_files(cfg, ctx: RunContext) -> list[Path]:
    from datagen.sources.tables import source_files

    if cfg.kind == "coco":
        return [ctx.resolve(p) for p in (cfg.captions, cfg.instances, cfg.zh_captions) if p]
    if cfg.kind == "visual_genome":
        from datagen.sources.visual_genome import vg_files
        return vg_files(cfg, ctx)
    return source_files(cfg.path, ctx, cfg.name)


def _clip_scorer(recipe: Recipe):
    """The CLIP config for scoring only: the threshold is its own global step (``ClipThresholdStep``),
    so editing it never recomputes scores."""
    return recipe.filters.clip.model_copy(update={"min_score": None, "top_fraction": None})


def _pair_steps(recipe: Recipe) -> list[StepFactory]:
    """The steps over pair rows, in order. Per-row steps run batch by batch; global ones
    (``kind == "global"``) see the whole persisted input."""
    from datagen.fetch.step import FetchStep
    from datagen.filters.quality import QualityFilterStep

    steps = [StepFactory(FetchStep, recipe.fetch), StepFactory(QualityFilterStep, recipe.filters.quality)]
    if recipe.filters.clip is not None:
        from datagen.filters.clip import ClipScoreStep
        from datagen.filters.threshold import ClipThresholdStep

        steps += [StepFactory(ClipScoreStep, _clip_scorer(recipe)), StepFactory(ClipThresholdStep, recipe.filters.clip)]
    if recipe.dedup is not None:
        from datagen.dedup import DedupStep

        steps.append(StepFactory(DedupStep, recipe.dedup))
    if recipe.ocr is not None:  # the costliest per-row step: only on rows that survived every filter
        from datagen.ocr import OcrStep

        steps.append(StepFactory(OcrStep, recipe.ocr))
    if recipe.translate is not None and recipe.translate.mode == "captions":  # adds caption_<lang>
        from datagen.translate.step import TranslateStep

        steps.append(StepFactory(TranslateStep, recipe.translate))
    return steps


def preflight(recipe: Recipe, ctx: RunContext) -> None:
    """Fail before any work on what is already knowable: CLIP weights that cannot be had
    (unless the recipe allows the untrained fallback)."""
    if recipe.filters.clip is not None:
        from datagen.filters.clip import ClipScoreStep

        ClipScoreStep(_clip_scorer(recipe), ctx).load()  # cached per process; the step reuses it


def run(recipe: Recipe, recipe_dir: Path, out_dir: Path, dry_run: bool = False) -> RunState:
    ctx = RunContext(run_dir=out_dir / "_run", recipe_dir=recipe_dir, seed=recipe.seed, dry_run=dry_run)
    preflight(recipe, ctx)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "_run").mkdir(exist_ok=True)
    state = RunState(recipe, out_dir, ctx)
    bs, workers = recipe.executor.batch_size, recipe.executor.workers
    idx = 0

    # 1. Sources, each its own checkpoint (fingerprint: config + file identity).
    pair_data, text_data = [], []
    for src in recipe.sources:
        fp = ckpt.chain("source", src.model_dump(mode="json"), ckpt.file_fingerprint(_source_files(src, ctx)))
        is_text = src.kind == "instructions"
        reader = _source_reader(src)
        c = _run_stage(state, idx, f"source-{src.name}", fp, CONVERSATION_SCHEMA if is_text else PAIR_SCHEMA,
                       lambda src=src, reader=reader: reader(src, ctx), 0, "source")
        state.steps[-1].rows_in = c.counts.get("kept", 0) + c.counts.get("rejected", 0)
        (text_data if is_text else pair_data).append((c.data, fp))
        idx += 1

    # 2. Pair steps over all pair sources together.
    inputs = [p for p, _ in pair_data]
    fp = ckpt.chain("pairs", [f for _, f in pair_data])
    for factory in _pair_steps(recipe):
        step = factory(ctx)
        fp = ckpt.chain(fp, step.fingerprint())  # a step may add what else decides its output
        if step.kind == "global":  # fetch, a per-row step, always comes first: one input file by now
            produce = lambda s=step, p=inputs[0]: s.process_dataset(p)  # noqa: E731
        else:
            produce = lambda f=factory, ins=inputs: map_batches(f, ckpt.iter_batches(ins, bs), ctx, workers)  # noqa: E731
        c = _run_stage(state, idx, step.name, fp, PAIR_SCHEMA, produce, ckpt.count_rows(inputs), step.kind)
        inputs = [c.data]
        idx += 1
    pairs = inputs[0]
    pairs_fp = fp

    # 3. Conversations: template synthesis and LLM generation expand pairs; text-only sources join.
    conversation_inputs: list[tuple[Path, str]] = []
    for attr, module, cls_name in (("synthesize", "datagen.synth.step", "SynthesizeStep"),
                                   ("llm_generate", "datagen.llm.step", "LLMGenerateStep")):
        cfg = getattr(recipe, attr)
        if cfg is None:
            continue
        cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
        factory = StepFactory(cls, cfg)
        # A dry run's output (prompts printed, nothing generated) must never be reused by a real run.
        step_fp = ckpt.chain(pairs_fp, factory(ctx).fingerprint(), "dry-run" if ctx.dry_run else "")
        c = _run_stage(state, idx, cls.name, step_fp, CONVERSATION_SCHEMA,
                       lambda f=factory: _expand(f, pairs, bs, ctx, workers),
                       _count_sources(pairs, getattr(cfg, "sources", None)), "expand")
        conversation_inputs.append((c.data, step_fp))
        idx += 1
        if attr == "synthesize" and cfg.check:
            _check_templates(cfg, pairs, c, ctx)
    conversation_inputs.extend(text_data)

    if recipe.translate is not None and recipe.translate.mode == "conversations" and conversation_inputs:
        from datagen.translate.step import TranslateStep

        factory = StepFactory(TranslateStep, recipe.translate)
        ins = [p for p, _ in conversation_inputs]
        tfp = ckpt.chain([f for _, f in conversation_inputs], factory(ctx).fingerprint(),
                         "dry-run" if ctx.dry_run else "")
        c = _run_stage(state, idx, "translate", tfp, CONVERSATION_SCHEMA,
                       lambda: map_batches(factory, ckpt.iter_batches(ins, bs), ctx, workers),
                       ckpt.count_rows(ins), "map")
        conversation_inputs = [(c.data, tfp)]
        idx += 1
    state.pairs = pairs
    state.conversations = [p for p, _ in conversation_inputs]
    return state


def _expand(factory: StepFactory, pairs: Path, bs: int, ctx: RunContext, workers: int) -> Iterator[StepOutput]:
    """Run an expand step over the pair rows of its selected sources. A step with a ``prepare``
    method first sees that whole input once (e.g. label co-occurrence for adversarial negatives)
    and persists what it learned under the run directory, where every worker finds it."""
    sources = getattr(factory.config, "sources", None)

    def batches() -> Iterator[pa.Table]:
        for t in ckpt.iter_batches([pairs], bs):
            yield t if sources is None else t.filter(pc.is_in(t.column("source"), value_set=pa.array(sources)))

    probe = factory(ctx)
    if hasattr(probe, "prepare"):
        probe.prepare(batches())
    probe.close()
    return map_batches(factory, batches(), ctx, workers)


def _check_templates(cfg, pairs: Path, stage: ckpt.Checkpoint, ctx: RunContext) -> None:
    """Re-derive every template answer from the annotations with the independent checker."""
    from datagen.synth.checker import PAIR_COLUMNS, Checker

    have = pq.ParquetFile(pairs).schema_arrow.names
    pair_table = pq.read_table(pairs, columns=[c for c in PAIR_COLUMNS if c in have])
    found = Checker.from_config(cfg).check_tables(pair_table, pq.read_table(stage.data))
    stats = ctx.stat("synthesize")
    stats["checker_disagreements"] = len(found)
    stats["checker_examples"] = [vars(d) for d in found[:5]]
    stage.stats.update(stats)
    if found:
        ctx.warn(f"synthesize: the independent checker disagrees with {len(found)} template answers;"
                 f" first: {found[0].key} {found[0].task}: {found[0].problem}")


def _count_sources(path: Path, sources: list[str] | None) -> int:
    if sources is None:
        return ckpt.count_rows([path])
    col = pq.read_table(path, columns=["source"]).column("source")
    return pc.sum(pc.is_in(col, value_set=pa.array(sources))).as_py() or 0


def collect_rejects(files: list[Path], dest: Path) -> pa.Table:
    tables = [pq.read_table(f) for f in files if f.exists()]
    table = pa.concat_tables(tables) if tables else REJECT_SCHEMA.empty_table()
    pq.write_table(table, dest)
    return table


def clean_run_dir(out_dir: Path) -> None:
    """Forget step checkpoints (``--fresh``) but keep the request cache: answers already paid for stay."""
    shutil.rmtree(out_dir / "_run" / "steps", ignore_errors=True)

