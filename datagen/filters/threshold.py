"""The CLIP threshold, separate from the CLIP score.

Scoring is the expensive part; choosing the threshold is a recipe decision
people revisit. So the pipeline runs ``ClipScoreStep`` as a pure scorer (its
checkpoint does not depend on ``min_score`` or ``top_fraction``) and this
global step applies the threshold over the persisted scores: editing the
threshold reruns only this step. ``top_fraction`` (DataComp's top-30%
baseline) needs the whole dataset's score distribution, which is why this is a
global step.

With the untrained fallback model the scores mean nothing, and no row is
dropped for its score (the run already warns about it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from datagen.filters.clip import ClipConfig
from datagen.records import reject, rejects_table
from datagen.steps import Step, StepOutput


def cutoff(scores: np.ndarray, min_score: float | None, top_fraction: float | None) -> float | None:
    """The lowest score kept: the stricter of ``min_score`` and the top-fraction quantile."""
    bounds = []
    if min_score is not None:
        bounds.append(min_score)
    if top_fraction is not None and len(scores):
        keep = max(1, int(round(top_fraction * len(scores))))
        bounds.append(float(np.sort(scores)[::-1][keep - 1]))
    return max(bounds) if bounds else None


class ClipThresholdStep(Step):
    name = "clip_threshold"
    kind = "global"
    config: ClipConfig

    def process_dataset(self, path: Path) -> Iterator[StepOutput]:
        cfg = self.config
        clip_stats = self.ctx.stats.get("clip", {})
        st = self.ctx.stat(self.name)
        scores = pl.scan_parquet(path).select("clip_score").collect()["clip_score"].to_numpy()
        limit = None if clip_stats.get("untrained_fallback") else cutoff(scores, cfg.min_score, cfg.top_fraction)
        st.update(min_score=cfg.min_score, top_fraction=cfg.top_fraction, cutoff=limit,
                  applied=limit is not None, scored=int(len(scores)))
        pf = pq.ParquetFile(path)
        wrote = False
        for b in pf.iter_batches(batch_size=1024):
            t = pa.Table.from_batches([b])
            if limit is None:
                yield StepOutput(t)
                wrote = True
                continue
            s = t.column("clip_score").to_numpy(zero_copy_only=False)
            below = s < limit
            meta = t.select([c for c in ("key", "source", "url") if c in t.column_names]).to_pylist()
            why = f"min_score {cfg.min_score}" if limit == cfg.min_score else f"top {cfg.top_fraction:.0%} cutoff"
            rejects = [reject(meta[i], self.name, "clip_below_threshold", f"clip_score {s[i]:.4f} < {limit:.4f} ({why})")
                       for i in np.flatnonzero(below)]
            yield StepOutput(t.filter(pa.array(~below)), rejects_table(rejects))
            wrote = True
        if not wrote:
            yield StepOutput(pf.schema_arrow.empty_table())
