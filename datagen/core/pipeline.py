"""A recipe as shard tasks and barriers (DESIGN.md section 4).

    sources --(cut into input shards of executor.shard_rows rows)--> _run/sources/<name>/<fp>/shard-N.parquet
    each pair shard --(fused: [meta] -> [caption rules] -> fetch -> quality -> [nsfw] -> [watermark] -> [clip score]
                       -> [aesthetic] -> [phash] -> [ocr] -> [caption translation])-->
        _run/pairs/<fp>/<shard>/  (kept rows with image bytes, rejects, stats; once, atomically)
    all pair parts' metadata --(barriers: [clip_threshold], [dedup], [semantic_dedup])--> _run/barriers/*.parquet (key decisions)
    each pair shard minus decisions --([synthesize] + [llm_generate] -> [translate])--> _run/convs/<fp>/<shard>/
    text-only shards --([translate])--> _run/convs/<fp>/<shard>/
    parts + decisions --(sinks: hash-ordered buckets)--> stage1 / stage2 / stage2_text shards

Every pass folder is named by the fingerprint chain of what decides its output,
so a rerun skips finished parts (a killed run redoes only the shards that were
in flight) and editing a later step reuses everything before it. Only the pair
pass holds image bytes; everything after it reads metadata columns.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from datagen.config import Recipe
from datagen.core.executor import ShardTask, StepFactory, execute, merge_parts
from datagen.core.lock import RunLock
from datagen.core.parts import Part, chain, columns_except, file_fingerprint, remove_temporaries, tmp_name, write_json_atomic
from datagen.core.records import CONVERSATION_SCHEMA, PAIR_SCHEMA, REJECT_SCHEMA
from datagen.core.steps import RunContext

if TYPE_CHECKING:  # imported where used: a run's driver needs polars only after its first pass
    import polars as pl

log = logging.getLogger("datagen")

PASS_DIRS = ("sources", "pairs", "barriers", "convs", "retry")  # retry: `datagen retry-failed` scratch


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
class Shard:
    id: str  # "<source>-<n>"
    source: str
    path: Path  # the input rows
    rows: int


@dataclass
class RunState:
    recipe: Recipe
    out_dir: Path
    ctx: RunContext
    steps: list[StepRecord] = field(default_factory=list)
    reject_files: list[Path] = field(default_factory=list)
    pair_parts: list[tuple[Shard, Part]] = field(default_factory=list)  # images live here, once
    decisions: list[Path] = field(default_factory=list)  # barrier decisions: keys to drop
    conversation_inputs: list[tuple[Shard, Path]] = field(default_factory=list)
    used: set[Path] = field(default_factory=set)  # pass folders of this run (the rest is stale)
    text_sources: set[str] = field(default_factory=set)
    pairs_fp: str = ""
    retry: Any = None  # a datagen.fetch.retry.RetryPlan: `datagen retry-failed` re-fetches failed rows first
    stage1_facts: dict | None = None  # set by the stage-1 sink: what the report reads of its samples

    @property
    def run_dir(self) -> Path:
        return self.out_dir / "_run"

    def dropped(self) -> pl.LazyFrame | None:
        """Keys the barriers decided away (columns ``key``, ``_shard``)."""
        import polars as pl

        files = [p for p in self.decisions if pq.ParquetFile(p).metadata.num_rows]
        if not files:
            return None
        return pl.concat([pl.scan_parquet(p).select("key", "_shard") for p in files])


# ----------------------------------------------------------------------------- sources

# source kind -> its reader (module in datagen.sources, function); a reader's module is imported when a
# recipe uses it (COCO's and Visual Genome's pull in polars)
_READERS = {"coco": ("coco", "read_coco"), "laion": ("tables", "read_parquet"), "coyo": ("tables", "read_parquet"),
            "parquet": ("tables", "read_parquet"), "cc3m": ("tables", "read_tsv"), "cc12m": ("tables", "read_tsv"),
            "tsv": ("tables", "read_tsv"), "instructions": ("instructions", "read_instructions"),
            "wukong": ("tables", "read_parquet"), "visual_genome": ("visual_genome", "read_visual_genome")}


def _source_reader(cfg):
    module, name = _READERS[cfg.kind]
    return getattr(importlib.import_module(f"datagen.sources.{module}"), name)


def _source_files(cfg, ctx: RunContext) -> list[Path]:
    from datagen.sources.tables import source_files

    if cfg.kind == "coco":
        return [ctx.resolve(p) for p in (cfg.captions, cfg.instances, cfg.zh_captions) if p]
    if cfg.kind == "visual_genome":
        from datagen.sources.visual_genome import vg_files
        return vg_files(cfg, ctx)
    return source_files(cfg.path, ctx, cfg.name, remote=cfg.kind != "instructions")


def _rechunk(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Cut a stream of tables into tables of exactly ``rows`` rows (the last one shorter)."""
    pending: list[pa.Table] = []
    n = 0
    for t in tables:
        while t.num_rows:
            take = min(rows - n, t.num_rows)
            pending.append(t.slice(0, take))
            n += take
            t = t.slice(take)
            if n == rows:
                yield pa.concat_tables(pending)
                pending, n = [], 0
    if n:
        yield pa.concat_tables(pending)


def shard_source(state: RunState, src) -> tuple[str, list[Shard]]:
    """Read one source once into input shards of ``executor.shard_rows`` rows (metadata only: urls,
    captions, annotations). Shard ids are ``<source>-<n>``, stable for the same files and setting."""
    ctx, rows = state.ctx, state.recipe.executor.shard_rows
    is_text = src.kind == "instructions"
    fp = chain("source", src.model_dump(mode="json"), file_fingerprint(_source_files(src, ctx)), rows)
    folder = state.run_dir / "sources" / src.name / fp
    state.used.add(folder)
    done = folder / "done.json"
    if done.is_file():
        info = json.loads(done.read_text())
        reused, seconds = True, info["seconds"]
    else:
        t0 = time.time()
        tmp = tmp_name(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        schema = CONVERSATION_SCHEMA if is_text else PAIR_SCHEMA
        rejects_writer = pq.ParquetWriter(tmp / "rejects.parquet", REJECT_SCHEMA)
        counts = {"kept": 0, "rejected": 0}
        shards: list[int] = []

        def kept_tables() -> Iterator[pa.Table]:
            for out in _source_reader(src)(src, ctx):
                if out.rejects.num_rows:
                    rejects_writer.write_table(out.rejects.select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA))
                    counts["rejected"] += out.rejects.num_rows
                if out.kept.num_rows:
                    yield out.kept

        try:
            for i, table in enumerate(_rechunk(kept_tables(), rows)):
                pq.write_table(table, tmp / f"shard-{i:06d}.parquet")
                shards.append(table.num_rows)
                counts["kept"] += table.num_rows
        finally:
            rejects_writer.close()
        if not shards:  # an empty source still has one (empty) shard, so counts stay simple
            pq.write_table(schema.empty_table(), tmp / "shard-000000.parquet")
            shards.append(0)
        seconds = round(time.time() - t0, 3)
        info = {"fingerprint": fp, "shards": shards, **counts, "seconds": seconds}
        (tmp / "done.json").write_text(json.dumps(info))
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(folder)
        reused = False
    shards = [Shard(f"{src.name}-{i:06d}", src.name, folder / f"shard-{i:06d}.parquet", n)
              for i, n in enumerate(info["shards"])]
    state.steps.append(StepRecord(f"source-{src.name}", "source", info["kept"] + info["rejected"], info["kept"],
                                  info["rejected"], seconds, reused, str(folder), {"shards": len(shards)}))
    state.reject_files.append(folder / "rejects.parquet")
    return fp, shards


# ----------------------------------------------------------------------------- steps

def _clip_scorer(recipe: Recipe):
    """The CLIP config for scoring only: the threshold is its own barrier (``ClipThresholdStep``),
    so editing it never recomputes scores."""
    from datagen.filters.clip_config import scorer_config

    return scorer_config(recipe.filters.clip, keep_embedding=recipe.filters.semantic_dedup is not None
                         or recipe.filters.aesthetic is not None)


def _pair_steps(recipe: Recipe) -> list[StepFactory]:
    """The fused per-row chain over pair shards: everything that needs the image bytes."""
    from datagen.fetch.step import FetchStep
    from datagen.filters.quality import QualityFilterStep

    steps = [StepFactory(FetchStep, recipe.fetch), StepFactory(QualityFilterStep, recipe.filters.quality)]
    if recipe.filters.caption is not None:  # judges the caption only: before fetch too
        from datagen.filters.caption import CaptionRulesStep

        steps.insert(0, StepFactory(CaptionRulesStep, recipe.filters.caption))
    if recipe.filters.meta:  # first: rows the source's own scores reject are never fetched
        from datagen.filters.meta import MetaFilterConfig, MetaFilterStep

        steps.insert(0, StepFactory(MetaFilterStep, MetaFilterConfig(rules=recipe.filters.meta)))
    if recipe.filters.nsfw is not None:
        from datagen.filters.nsfw import NsfwStep

        steps.append(StepFactory(NsfwStep, recipe.filters.nsfw))
    if recipe.filters.watermark is not None:
        from datagen.filters.watermark import WatermarkStep

        steps.append(StepFactory(WatermarkStep, recipe.filters.watermark))
    if recipe.filters.clip is not None:
        from datagen.filters.clip import ClipScoreStep

        steps.append(StepFactory(ClipScoreStep, _clip_scorer(recipe)))
        if recipe.filters.aesthetic is not None:  # an MLP over the embedding the CLIP step just stored
            from datagen.filters.aesthetic import AestheticStep

            steps.append(StepFactory(AestheticStep, recipe.filters.aesthetic))
    if recipe.dedup is not None and "phash" in recipe.dedup.by:
        from datagen.dedup import PhashStep

        steps.append(StepFactory(PhashStep, None))
    if recipe.ocr is not None:
        from datagen.ocr import OcrStep

        steps.append(StepFactory(OcrStep, recipe.ocr))
    if recipe.translate is not None and recipe.translate.mode == "captions":  # adds caption_<lang>
        from datagen.translate.step import TranslateStep

        steps.append(StepFactory(TranslateStep, recipe.translate))
    return steps


def _barriers(recipe: Recipe) -> list[StepFactory]:
    out = []
    if recipe.filters.clip is not None:
        from datagen.filters.threshold import ClipThresholdStep

        out.append(StepFactory(ClipThresholdStep, recipe.filters.clip))
    if recipe.dedup is not None:
        from datagen.dedup import DedupStep

        out.append(StepFactory(DedupStep, recipe.dedup))
    if recipe.filters.semantic_dedup is not None:
        from datagen.filters.semdedup import SemDedupStep

        out.append(StepFactory(SemDedupStep, recipe.filters.semantic_dedup))
    return out


def _expand_steps(recipe: Recipe) -> list[StepFactory]:
    out = []
    if recipe.synthesize is not None:
        from datagen.synth.step import SynthesizeStep

        out.append(StepFactory(SynthesizeStep, recipe.synthesize))
    if recipe.llm_generate is not None:
        from datagen.llm.step import LLMGenerateStep

        out.append(StepFactory(LLMGenerateStep, recipe.llm_generate))
    return out


def _conversation_translate(recipe: Recipe) -> list[StepFactory]:
    if recipe.translate is not None and recipe.translate.mode == "conversations":
        from datagen.translate.step import TranslateStep

        return [StepFactory(TranslateStep, recipe.translate)]
    return []


def preflight(recipe: Recipe, ctx: RunContext) -> None:
    """Fail before any work on what is already knowable: CLIP weights that cannot be had
    (unless the recipe allows the untrained fallback), a missing NSFW detector, a Ray executor without ray."""
    from datagen.extras import check_recipe

    check_recipe(recipe)  # first: an optional package that is not installed, naming its extra
    if recipe.executor.kind == "ray":
        from datagen.core.ray_executor import _ray

        _ray()
    if recipe.filters.nsfw is not None:
        from datagen.filters.nsfw import require_nudenet

        require_nudenet()
    if recipe.filters.watermark is not None and not recipe.filters.watermark.allow_skip:
        from datagen.filters.watermark import check_weights

        check_weights(recipe.filters.watermark, ctx.resolve)
    if recipe.filters.aesthetic is not None and not recipe.filters.aesthetic.allow_skip:
        from datagen.filters.aesthetic import AestheticWeightsUnavailable, resolve, unavailable_message

        kind, _, checked = resolve(recipe.filters.aesthetic, ctx.resolve)
        if kind == "unavailable":
            raise AestheticWeightsUnavailable(unavailable_message(recipe.filters.aesthetic, checked))
    if recipe.filters.clip is not None:
        from datagen.filters.clip import ClipScoreStep

        ClipScoreStep(_clip_scorer(recipe), ctx).load()  # cached per process; the step reuses it


# ----------------------------------------------------------------------------- passes

def _execute(state: RunState, tasks: list[ShardTask], name: str) -> list[dict]:
    """Run ``tasks`` on the recipe's executor, then merge the request-cache parts they wrote."""
    ex = state.recipe.executor
    if ex.kind == "ray":
        from datagen.core.ray_executor import execute_ray

        infos = execute_ray(tasks, state.ctx, ex.workers, name, ex.address, ex.cpus_per_worker, ex.gpus_per_worker)
    else:
        infos = execute(tasks, state.ctx, ex.workers, name)
    _merge_caches(state)
    return infos


def _run_pass(state: RunState, name: str, folder: Path, items: list[tuple[Shard, ShardTask]],
              factories: list[StepFactory], kinds: dict[str, str]) -> list[tuple[Shard, Part]]:
    """Run the tasks whose part is missing, then record per-step totals over all parts."""
    state.used.add(folder)
    pending = [t for _, t in items if not Part(t.out).done]
    reused = not pending
    t0 = time.time()
    _execute(state, pending, name)
    parts = [(shard, Part(t.out)) for shard, t in items]
    merged = merge_parts((p.load_info() for _, p in parts), factories, state.ctx)
    for f in factories:
        m = merged.get(f.cls.name)
        if m is None:
            continue
        state.ctx.stats[f.cls.name] = m["stats"]
        state.steps.append(StepRecord(f.cls.name, kinds.get(f.cls.name, f.cls.kind), m["in"], m["kept"],
                                      m["rejected"], round(m["seconds"], 3), reused, str(folder), m["stats"]))
    log.info("%s: %d parts, %d run now in %.1fs", name, len(parts), len(pending), time.time() - t0)
    state.reject_files.extend(p.rejects for _, p in parts)
    return parts


def _merge_caches(state: RunState) -> None:
    """The request caches' part files (written by the workers) into their snapshots, on the driver
    while no worker runs (``datagen.core.cache``)."""
    from datagen.core.cache import flush_all, merge_dir

    flush_all()  # what this process asked itself (workers: 1, barriers)
    tr = state.recipe.translate
    merge_dir(state.ctx.cache_dir, state.ctx.resolve(tr.cache_path) if tr is not None and tr.cache_path else None)


def _pair_pass(state: RunState, sources: list[tuple[Any, str, list[Shard]]]) -> None:
    recipe = state.recipe
    factories = _pair_steps(recipe)
    probe_ctx = state.ctx
    step_fps = [f(probe_ctx).fingerprint() for f in factories]
    items = []
    folders = []
    for src, src_fp, shards in sources:
        folder = state.run_dir / "pairs" / chain(src_fp, step_fps)
        folders.append(folder)
        for sh in shards:
            items.append((sh, ShardTask(sh.id, sh.source, sh.path, folder / sh.id, factories, PAIR_SCHEMA,
                                        sh.rows, batch_size=recipe.executor.batch_size)))
    state.used.update(folders)
    if state.retry is not None:
        from datagen.fetch.retry import retry_pairs

        retry_pairs(items, factories, state.retry, state.run_dir / "retry",
                    lambda tasks: _execute(state, tasks, "retry-failed"))
    state.pair_parts = _run_pass(state, "pairs", folders[0] if folders else state.run_dir / "pairs", items,
                                 factories, {})
    state.pairs_fp = _pairs_fingerprint(folders)


def _pairs_fingerprint(folders: list[Path]) -> str:
    """What barriers and the conversation pass are named by: the pair folders, and how many times
    ``datagen retry-failed`` added rows to their parts (each time, everything after them runs again)."""
    from datagen.fetch.retry import generation

    generations = [generation(f) for f in folders]
    names = [f.name for f in folders]
    return chain(names, generations) if any(generations) else chain(names)


def _metadata(state: RunState, columns: set[str]) -> pl.LazyFrame | None:
    """Metadata columns of every pair part, in input order, with ``_shard``; never the images."""
    import polars as pl

    frames = []
    for shard, part in state.pair_parts:
        have = pq.ParquetFile(part.kept).schema_arrow.names
        cols = [c for c in ("key", "source", "url", *sorted(columns)) if c in have]
        frames.append(pl.scan_parquet(part.kept).select(cols).with_columns(pl.lit(shard.id).alias("_shard")))
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def _run_barriers(state: RunState) -> str:
    """Each barrier sees the pairs the earlier ones kept and writes its decisions (rejects + ``_shard``)."""
    import polars as pl

    fp = state.pairs_fp
    if not state.pair_parts:  # text-only recipes
        return fp
    for factory in _barriers(state.recipe):
        step = factory(state.ctx)
        fp = chain(fp, step.fingerprint())
        path = state.run_dir / "barriers" / f"{step.name}-{fp}.parquet"
        stats_path = path.with_suffix(".json")
        state.used.update({path, stats_path})
        if path.is_file() and stats_path.is_file():
            info = json.loads(stats_path.read_text())
            reused = True
        else:
            t0 = time.time()
            frame = _metadata(state, set(step.columns))
            dropped = state.dropped()
            if dropped is not None:
                frame = frame.join(dropped.select("key"), on="key", how="anti", maintain_order="left")
            n_in = frame.select(pl.len()).collect().item()
            rejects = step.decide(frame)
            shards = pl.from_arrow(rejects.select(["key"])).lazy().join(
                frame.select("key", "_shard"), on="key", how="left").collect()
            table = rejects.append_column("_shard", shards["_shard"].to_arrow().cast(pa.string()))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_name(path)
            pq.write_table(table, tmp)
            tmp.replace(path)
            info = {"in": n_in, "rejected": table.num_rows, "seconds": round(time.time() - t0, 3),
                    "stats": state.ctx.stats.get(step.name, {}), "warnings": []}
            write_json_atomic(stats_path, info)
            reused = False
        state.ctx.stats[step.name] = info["stats"]
        state.decisions.append(path)
        state.reject_files.append(path)
        state.steps.append(StepRecord(step.name, "barrier", info["in"], info["in"] - info["rejected"],
                                      info["rejected"], info["seconds"], reused, str(path), info["stats"]))
    return fp


def _drop_lists(state: RunState) -> dict[str, list[str]]:
    import polars as pl

    dropped = state.dropped()
    if dropped is None:
        return {}
    out: dict[str, list[str]] = {}
    for shard, keys in dropped.group_by("_shard").agg(pl.col("key")).collect().iter_rows():
        out[shard] = keys
    return out


def _prepare_labels(state: RunState, factory: StepFactory, drops: dict[str, list[str]]) -> None:
    """The label-statistics barrier for adversarial/popular negatives (and the per-label weights the
    step fits on a sample of images): reads the metadata columns, never the images."""
    import pyarrow.compute as pc

    sources = getattr(factory.config, "sources", None)

    def tables() -> Iterator[pa.Table]:
        for shard, part in state.pair_parts:
            if sources is not None and shard.source not in sources:
                continue
            drop = pa.array(drops.get(shard.id, []), type=pa.string())
            for b in pq.ParquetFile(part.kept).iter_batches(batch_size=4096, columns=columns_except(part.kept, "image")):
                t = pa.Table.from_batches([b])
                yield t.filter(pc.invert(pc.is_in(t.column("key"), value_set=drop))) if len(drop) else t

    probe = factory(state.ctx)
    probe.prepare(tables())


def _conversation_pass(state: RunState, barrier_fp: str, text: list[tuple[Any, str, list[Shard]]]) -> None:
    recipe, ctx = state.recipe, state.ctx
    expands, translate = _expand_steps(recipe), _conversation_translate(recipe)
    dry = "dry-run" if ctx.dry_run else ""  # a dry run's output must never be reused by a real run
    drops = _drop_lists(state)
    items: list[tuple[Shard, ShardTask]] = []
    conv_fp = chain(barrier_fp, [f(ctx).fingerprint() for f in expands + translate], dry)
    folder = state.run_dir / "convs" / conv_fp
    bs = recipe.executor.batch_size
    if expands:
        for shard, part in state.pair_parts:
            chosen = [f for f in expands
                      if getattr(f.config, "sources", None) is None or shard.source in f.config.sources]
            if not chosen:
                continue
            items.append((shard, ShardTask(shard.id, shard.source, part.kept, folder / shard.id, chosen + translate,
                                           CONVERSATION_SCHEMA, part.rows(), drop=drops.get(shard.id, []),
                                           columns=columns_except(part.kept, "image"), batch_size=bs)))
    for _src, src_fp, shards in text:
        tfolder = state.run_dir / "convs" / chain(src_fp, [f(ctx).fingerprint() for f in translate], dry)
        for sh in shards:
            if translate:
                items.append((sh, ShardTask(sh.id, sh.source, sh.path, tfolder / sh.id, translate,
                                            CONVERSATION_SCHEMA, sh.rows, batch_size=bs)))
                state.used.add(tfolder)
            else:
                state.conversation_inputs.append((sh, sh.path))
    if not items:
        return
    synth = next((f for f in expands if f.cls.name == "synthesize"), None)
    if synth is not None and any(not Part(t.out).done for _, t in items):
        _prepare_labels(state, synth, drops)
    parts = _run_pass(state, "conversations", folder, items, expands + translate,
                      {f.cls.name: "expand" for f in expands})
    if synth is not None and synth.config.check:
        st = ctx.stats.setdefault("synthesize", {})
        st.setdefault("checker_disagreements", 0)
        if st["checker_disagreements"]:
            ex = st.get("checker_examples", [{}])[0]
            ctx.warn(f"synthesize: the independent checker disagrees with {st['checker_disagreements']} template "
                     f"answers; first: {ex.get('key')} {ex.get('task')}: {ex.get('problem')}")
    state.conversation_inputs.extend((shard, part.kept) for shard, part in parts)


# ----------------------------------------------------------------------------- run

def run(recipe: Recipe, recipe_dir: Path, out_dir: Path, dry_run: bool = False, retry: Any = None) -> RunState:
    ctx = RunContext(run_dir=out_dir / "_run", recipe_dir=recipe_dir, seed=recipe.seed, dry_run=dry_run)
    preflight(recipe, ctx)
    with RunLock(out_dir):
        remove_temporaries(out_dir)  # what killed runs left half-written: shard folders, parts, spills
        (out_dir / "_run").mkdir(parents=True, exist_ok=True)
        state = RunState(recipe, out_dir, ctx)
        _merge_caches(state)  # answers a killed run paid for
        pair_sources, text_sources = [], []
        for src in recipe.sources:
            fp, shards = shard_source(state, src)
            (text_sources if src.kind == "instructions" else pair_sources).append((src, fp, shards))
        state.text_sources = {s.name for s, _, _ in text_sources}
        state.retry = retry
        _pair_pass(state, pair_sources)
        barrier_fp = _run_barriers(state)
        _conversation_pass(state, barrier_fp, text_sources)
    return state


def prune_stale(state: RunState) -> list[Path]:
    """Delete pass folders that this run did not use (older fingerprints), so ``_run/`` holds
    one copy of the images; call after a successful run."""
    gone = []
    for name in PASS_DIRS:
        root = state.run_dir / name
        if not root.exists():
            continue
        candidates = [p for p in root.iterdir()] if name != "sources" else [p for d in root.iterdir() for p in d.iterdir()]
        for p in candidates:
            if p not in state.used:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                gone.append(p)
    return gone


def drop_intermediate_images(state: RunState) -> None:
    """``output.keep_intermediate: false``: after a successful run, the pair parts (the only copy of
    the images in ``_run/``) go; a later run fetches again."""
    shutil.rmtree(state.run_dir / "pairs", ignore_errors=True)


def clean_run_dir(out_dir: Path) -> None:
    """Forget all passes (``--fresh``) but keep the request cache: answers already paid for stay."""
    with RunLock(out_dir):
        for name in (*PASS_DIRS, "steps", "sink"):
            shutil.rmtree(out_dir / "_run" / name, ignore_errors=True)
