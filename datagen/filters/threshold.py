"""The CLIP threshold, separate from the CLIP score.

Scoring is the expensive part; choosing the threshold is a recipe decision
people revisit. So the pipeline runs ``ClipScoreStep`` as a pure scorer (its
pass does not depend on ``min_score`` or ``top_fraction``) and this
barrier applies the threshold over the scores in the finished parts: editing the
threshold reruns only this step. ``top_fraction`` (DataComp's top-30%
baseline) needs the whole dataset's score distribution, which is why this is a
barrier: it reads only the ``clip_score`` column and emits key decisions.

With the untrained fallback model the scores mean nothing, and no row is
dropped for its score (the run already warns about it).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from datagen.filters.clip_config import ClipConfig
from datagen.core.records import reject, rejects_table
from datagen.core.steps import Step


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
    kind = "barrier"
    columns = ("clip_score",)
    config: ClipConfig

    def decide(self, frame: pl.LazyFrame) -> pa.Table:
        cfg = self.config
        clip_stats = self.ctx.stats.get("clip", {})
        st = self.ctx.stat(self.name)
        scores = frame.select("clip_score").collect()["clip_score"].to_numpy()
        limit = None if clip_stats.get("untrained_fallback") else cutoff(scores, cfg.min_score, cfg.top_fraction)
        st.update(min_score=cfg.min_score, top_fraction=cfg.top_fraction, cutoff=limit,
                  applied=limit is not None, scored=int(len(scores)))
        if limit is None:
            return rejects_table([])
        why = f"min_score {cfg.min_score}" if limit == cfg.min_score else f"top {cfg.top_fraction:.0%} cutoff"
        below = frame.filter(pl.col("clip_score") < limit).select("key", "source", "url", "clip_score").collect()
        return rejects_table(
            reject(r, self.name, "clip_below_threshold", f"clip_score {r['clip_score']:.4f} < {limit:.4f} ({why})")
            for r in below.iter_rows(named=True))
