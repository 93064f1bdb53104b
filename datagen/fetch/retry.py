"""``datagen retry-failed OUT``: fetch again only the rows whose download failed for a reason that may pass.

img2dataset can only redo shards that never started (its #452, #358). Here a
finished run's pair parts (``_run/pairs/<fp>/<shard>/``) keep every reject
with its reason, so a retry:

1. picks, per finished part, the fetch rejects whose reason matches
   ``--reasons`` (default ``RETRYABLE``: timeouts, connection and DNS errors,
   5xx, 429, stragglers, host backoff; never 404, not an image, blocked or
   opted out unless named);
2. runs exactly those input rows through the shard's fused chain again (the
   same steps; the fetch step asks again what the request cache remembers as
   failed), as ordinary shard tasks on the run's executor;
3. merges each result into its part: kept rows in input order (so the part
   equals one a never-failed run would have written), the retried rows'
   old rejects replaced by their new outcome, and the counts and stats
   corrected (``merge_info``) so the reconciliation stays exact;
4. bumps the pair folder's retry generation (``retries.json``) BEFORE merging,
   which changes the fingerprint that barriers and the conversation pass are
   named by: they run again over the new parts, and so do the sinks, as in
   a resumed run. Shards of rows that now pass are byte-identical to a run
   that never failed (tests/test_retry_failed.py).

Steps before fetch (meta, caption rules) judge columns that did not change:
the retried rows passed them before and pass again; their counts are kept.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datagen.core.executor import ShardTask, StepFactory, merge_stats
from datagen.core.parts import Part, tmp_name
from datagen.core.records import REJECT_SCHEMA
from datagen.fetch.errors import RETRYABLE, reason_matches
from datagen.fetch.health import forget_failures
from datagen.fetch.step import FetchStep

GENERATION_FILE = "retries.json"


class RetryFetchStep(FetchStep):
    """The fetch step of a retry: same name and config; a cached failure is asked again."""

    refetch_cached_failures = True


@dataclass
class RetryPlan:
    reasons: tuple[str, ...] = RETRYABLE
    rows: int = 0  # rows fetched again
    recovered: int = 0  # of them, kept at the end of the chain
    by_reason: dict[str, int] = field(default_factory=dict)  # rows retried, by their old reason
    shards: list[str] = field(default_factory=list)
    unfinished: int = 0  # shards without a finished part (an edited recipe, a stopped run): they ran whole

    def report(self) -> str:
        whole = (f"; {self.unfinished} shards had no finished part (was the recipe edited, or the run stopped?) "
                 f"and were fetched whole" if self.unfinished else "")
        if not self.rows:
            return (f"retry-failed: no rows rejected by fetch with reasons {', '.join(self.reasons)}; "
                    f"nothing to retry{whole}")
        old = ", ".join(f"{r} {n}" for r, n in sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
        return (f"retry-failed: fetched {self.rows} rows again ({old}) in {len(self.shards)} shards: "
                f"{self.recovered} kept now, {self.rows - self.recovered} rejected again (see rejects.parquet){whole}")


def parse_reasons(text: Optional[str]) -> tuple[str, ...]:
    if not text:
        return RETRYABLE
    reasons = tuple(r.strip() for r in text.split(",") if r.strip())
    if not reasons:
        raise ValueError("--reasons: give reason codes separated by commas, e.g. timeout,http_5xx,dns_error")
    return reasons


def generation(folder: Path) -> int:
    path = folder / GENERATION_FILE
    return json.loads(path.read_text())["generation"] if path.is_file() else 0


def retry_pairs(items: list, factories: list[StepFactory], plan: RetryPlan, work: Path,
                execute: Callable[[list[ShardTask]], list[dict]]) -> None:
    """Re-fetch the matching rejects of every finished part in ``items`` ((shard, ShardTask) pairs of the pair
    pass) and merge the outcome into the parts; ``execute`` runs shard tasks on the run's executor."""
    names = [f.cls.name for f in factories]
    if "fetch" not in names:
        return
    at = names.index("fetch")
    chain = [StepFactory(RetryFetchStep, f.config) if i == at else f for i, f in enumerate(factories)]
    shutil.rmtree(work, ignore_errors=True)
    todo: list[tuple[object, ShardTask, ShardTask, pa.Table]] = []
    for shard, task in items:
        part = Part(task.out)
        if not part.done:
            plan.unfinished += 1  # never finished: the pass runs it whole
            continue
        rejects = pq.read_table(part.rejects)
        chosen = [i for i, (step, reason) in enumerate(zip(rejects.column("step").to_pylist(),
                                                           rejects.column("reason").to_pylist()))
                  if step == "fetch" and reason_matches(reason, plan.reasons)]
        if not chosen:
            continue
        old = rejects.take(pa.array(chosen, type=pa.int64()))
        source = pq.read_table(task.input)
        rows = source.filter(pc.is_in(source.column("key"), value_set=old.column("key")))
        folder = work / task.shard
        folder.mkdir(parents=True)
        pq.write_table(rows, folder / "input.parquet")
        todo.append((shard, task, ShardTask(task.shard, task.source, folder / "input.parquet", folder / "part", chain,
                                            task.empty_schema, rows.num_rows, batch_size=task.batch_size), old))
    if not todo:
        return
    for pass_folder in sorted({t.out.parent for _, t, _, _ in todo}):  # first: see the module's point 4
        (pass_folder / GENERATION_FILE).write_text(json.dumps({"generation": generation(pass_folder) + 1}))
    execute([r for _, _, r, _ in todo])
    for shard, task, retry_task, old in todo:
        retried = Part(retry_task.out)
        recovered = _merge_part(Part(task.out), retried, old, task.input)
        plan.rows += old.num_rows
        plan.recovered += recovered
        plan.shards.append(task.shard)
        for r in old.column("reason").to_pylist():
            plan.by_reason[r] = plan.by_reason.get(r, 0) + 1
    shutil.rmtree(work, ignore_errors=True)


def _merge_part(part: Part, retried: Part, old_rejects: pa.Table, source: Path) -> int:
    """Write ``part`` again with the retried rows' new outcome; returns how many of them are kept now."""
    kept_old, kept_new = pq.read_table(part.kept), pq.read_table(retried.kept)
    if kept_new.num_rows:
        if kept_old.num_rows:
            kept_new = kept_new.select(kept_old.schema.names).cast(kept_old.schema)
            kept = pa.concat_tables([kept_old, kept_new])
        else:
            kept = kept_new
        position = {k: i for i, k in enumerate(pq.read_table(source, columns=["key"]).column("key").to_pylist())}
        keys = kept.column("key").to_pylist()
        order = sorted(range(kept.num_rows), key=lambda i: position[keys[i]])
        kept = kept.take(pa.array(order, type=pa.int64()))
    else:
        kept = kept_old
    rejects = pq.read_table(part.rejects)
    gone = set(zip(old_rejects.column("key").to_pylist(), old_rejects.column("step").to_pylist()))
    stay = [i for i, kv in enumerate(zip(rejects.column("key").to_pylist(), rejects.column("step").to_pylist()))
            if kv not in gone]
    rejects = pa.concat_tables([rejects.take(pa.array(stay, type=pa.int64())).cast(REJECT_SCHEMA),
                                pq.read_table(retried.rejects).select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA)])
    info = merge_info(part.load_info(), retried.load_info(), old_rejects)
    info["kept"], info["rejected"] = kept.num_rows, rejects.num_rows
    tmp = tmp_name(part.dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pq.write_table(kept, tmp / "kept.parquet")
    pq.write_table(rejects, tmp / "rejects.parquet")
    (tmp / "stats.json").write_text(json.dumps(info, indent=1, ensure_ascii=False, default=str))
    shutil.rmtree(part.dir)  # a crash here leaves no part: the next run redoes the shard whole
    os.replace(tmp, part.dir)
    return kept_new.num_rows


def merge_info(old: dict, new: dict, old_rejects: pa.Table) -> dict:
    """A part's stats.json after a retry: steps before fetch unchanged (the rows passed them before), fetch's
    counts and stats with the retried rows' old failures taken out and their new outcome added, later
    steps plus what the retried rows did there."""
    info = copy.deepcopy(old)
    names = list(info["steps"])
    at = names.index("fetch")
    n = old_rejects.num_rows
    for name in names[:at]:
        if new["steps"].get(name, {}).get("rejected"):
            raise RuntimeError(f"retry-failed: step {name!r} rejected rows it had passed before; its result depends "
                               f"on more than the row, so a retry cannot be merged")
    for name in names[at:]:
        o, r = info["steps"][name], new["steps"].get(name, {})
        for k in ("in", "kept", "rejected", "seconds"):
            o[k] = o.get(k, 0) + r.get(k, 0)
        stats = merge_stats(o.setdefault("stats", {}), r.get("stats", {}))
        if name == "fetch":
            o["in"] -= n
            o["rejected"] -= n
            if "policy" in r.get("stats", {}):
                stats["policy"] = r["stats"]["policy"]  # the run's, not a concatenation
            stats["rows_in"] = stats.get("rows_in", 0) - n
            by_reason = stats.setdefault("rejects", {})
            pairs = list(zip(old_rejects.column("url").to_pylist(), old_rejects.column("reason").to_pylist()))
            for _url, reason in pairs:
                by_reason[reason] = by_reason.get(reason, 0) - 1
                if by_reason[reason] <= 0:
                    del by_reason[reason]
            forget_failures(stats.setdefault("errors_by_host", {}), pairs)
            stats["retried_rows"] = stats.get("retried_rows", 0) + n
    info["warnings"] = list(dict.fromkeys(info.get("warnings", []) + new.get("warnings", [])))
    return info
