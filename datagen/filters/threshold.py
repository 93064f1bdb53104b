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
    """Rejects rows below the cutoff; with ``languages``, each language's rows (the scorer's ``clip_lang``)
    against that language's own min_score/top_fraction, the rest against the base settings."""

    name = "clip_threshold"
    kind = "barrier"
    columns = ("clip_score", "clip_lang")
    config: ClipConfig

    def decide(self, frame: pl.LazyFrame) -> pa.Table:
        cfg = self.config
        clip_stats = self.ctx.stats.get("clip", {})
        st = self.ctx.stat(self.name)
        langs = list(cfg.languages or {})
        if "clip_lang" in frame.collect_schema().names():
            lang = pl.when(pl.col("clip_lang").is_in(langs)).then(pl.col("clip_lang")).otherwise(None)
        else:  # scored without languages: every row is the base model's
            lang = pl.lit(None, dtype=pl.String)
        frame = frame.with_columns(lang.cast(pl.String).alias("_lang"))
        out, total, applied = [], 0, False
        for key in [None, *langs]:
            kcfg = cfg.for_language(key)
            group = frame.filter(pl.col("_lang").is_null() if key is None else pl.col("_lang") == key)
            scores = group.select("clip_score").collect()["clip_score"].to_numpy()
            fallback = (clip_stats if key is None else clip_stats.get("languages", {}).get(key, {})).get(
                "untrained_fallback")
            limit = None if fallback else cutoff(scores, kcfg.min_score, kcfg.top_fraction)
            info = dict(min_score=kcfg.min_score, top_fraction=kcfg.top_fraction, cutoff=limit,
                        applied=limit is not None, scored=int(len(scores)), rejected=0)
            total += len(scores)
            applied |= limit is not None
            if limit is not None:
                why = f"min_score {kcfg.min_score}" if limit == kcfg.min_score else f"top {kcfg.top_fraction:.0%} cutoff"
                if key is not None:
                    why += f", language {key}"
                below = group.filter(pl.col("clip_score") < limit).select("key", "source", "url", "clip_score").collect()
                info["rejected"] = below.height
                out.extend(reject(r, self.name, "clip_below_threshold",
                                  f"clip_score {r['clip_score']:.4f} < {limit:.4f} ({why})")
                           for r in below.iter_rows(named=True))
            if key is None:
                st.update(min_score=info["min_score"], top_fraction=info["top_fraction"], cutoff=limit)
                if langs:
                    st.setdefault("languages", {})["base"] = info
            else:
                st.setdefault("languages", {})[key] = info
        st.update(applied=applied, scored=total)
        return rejects_table(out)
