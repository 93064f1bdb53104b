"""CLIP score filter: cosine similarity of image and caption, then a threshold.

LAION kept pairs whose CLIP ViT-B/32 cosine similarity is at least 0.28 for
English (0.26 multilingual); this step computes the same number with open_clip
and stores it as ``clip_score`` so a later threshold change can reuse it.

Weights are found and loaded by ``datagen.weights`` (shared with the trainer);
the recipe settings live in ``clip_config.py``. torch and open_clip are imported
inside functions only.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datagen.filters.clip_config import TINY_UNTRAINED_CONFIG, ClipConfig  # noqa: F401 - the step's config
from datagen.core.records import reject, rejects_table
from datagen.core.steps import RunContext, Step, StepOutput
from datagen.weights import ClipWeightsUnavailable, LoadedClip, WeightsPlan, load_clip, resolve_weights  # noqa: F401


# ------------------------------------------------------------------------------ scoring


def clip_scores(model, preprocess, tokenizer, images: list, texts: list[str], device,
                with_image_embeddings: bool = False):
    """Cosine similarity of each (image, text) pair: L2-normalised embeddings, row-wise dot product.

    ``images`` are PIL images, ``preprocess`` the open_clip eval transform. Returns float32 of len(images),
    or (scores, L2-normalised image embeddings [n, embed_dim]) with ``with_image_embeddings``."""
    import torch
    import torch.nn.functional as F

    if len(images) != len(texts):
        raise ValueError(f"clip_scores: {len(images)} images but {len(texts)} texts")
    if not images:
        return np.zeros(0, dtype=np.float32)  # callers with embeddings never pass an empty batch
    dtype = next(model.visual.parameters()).dtype
    with torch.inference_mode():
        pixels = torch.stack([preprocess(im) for im in images]).to(device=device, dtype=dtype)
        tokens = tokenizer(texts).to(device)
        img = F.normalize(model.encode_image(pixels).float(), dim=-1)
        txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
        scores = (img * txt).sum(dim=-1).cpu().numpy().astype(np.float32)
        return (scores, img.cpu().numpy().astype(np.float32)) if with_image_embeddings else scores


def _decode(data: bytes):
    """Decode fully now, so a truncated file fails here (a reject) and not inside the batch."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert("RGB")


class ClipScoreStep(Step):
    """Adds ``clip_score`` (float32) and rejects rows below ``min_score`` with ``clip_below_threshold``."""

    name = "clip"
    kind = "filter"
    config: ClipConfig

    def __init__(self, config: ClipConfig, ctx: RunContext):
        super().__init__(config, ctx)
        self._plan: WeightsPlan | None = None
        self._loaded: LoadedClip | None = None

    def plan(self) -> WeightsPlan:
        if self._plan is None:
            self._plan = resolve_weights(self.config, self.ctx.resolve)
        return self._plan

    def fingerprint(self) -> str:
        blob = super().fingerprint() + self.plan().identity()
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def load(self) -> LoadedClip:
        """Resolve and load the model now (raises ClipWeightsUnavailable); process() calls it lazily."""
        if self._loaded is None:
            self._loaded = load_clip(self.config, self.ctx.seed, self.plan(), self.ctx.resolve)
            self._plan = self._loaded.plan  # a download that failed and fell back says so in the fingerprint
            self._record_model()
        return self._loaded

    def setup(self) -> None:
        self.load()

    @property
    def applies_threshold(self) -> bool:
        return self.config.min_score is not None and not self.load().untrained_fallback

    def _record_model(self) -> None:
        cfg, lc = self.config, self._loaded
        st = self.ctx.stat(self.name)
        st.update(
            model=cfg.model, pretrained=cfg.pretrained, weights=lc.plan.kind,
            untrained_fallback=lc.untrained_fallback, scores_meaningful=lc.scores_meaningful,
            device=str(lc.device), precision=cfg.precision,
            min_score=cfg.min_score, threshold_applied=cfg.min_score is not None and not lc.untrained_fallback,
        )
        if lc.untrained_fallback:
            self.ctx.warn(
                f"CLIP weights {cfg.model}/{cfg.pretrained} are not available offline; scores come from a small "
                "UNTRAINED model and mean nothing (min_score is not applied, no row is dropped for its score)"
            )
        elif not lc.scores_meaningful:
            self.ctx.warn(f"CLIP model {cfg.model} has random weights (pretrained: null); scores mean nothing")

    def process(self, table: pa.Table) -> StepOutput:
        missing = [c for c in ("key", "caption", "image") if c not in table.column_names]
        if missing:
            raise ValueError(f"clip step: input table lacks column(s) {missing}; has {table.column_names}")
        lc = self.load()
        if "model" not in self.ctx.stat(self.name):  # statistics are scoped per shard task
            self._record_model()
        meta = table.select([c for c in ("key", "source", "url") if c in table.column_names]).to_pylist()
        captions = table.column("caption").to_pylist()
        images = table.column("image")
        rejects: list[dict] = []
        scores = np.full(table.num_rows, np.nan, dtype=np.float32)
        scored = np.zeros(table.num_rows, dtype=bool)
        todo: list[int] = []
        embeddings: list[np.ndarray | None] = [None] * table.num_rows  # only with keep_embedding
        n_bytes = pc.binary_length(images).to_pylist()
        for i, cap in enumerate(captions):
            if cap is None or not cap.strip():
                rejects.append(reject(meta[i], self.name, "no_caption", "caption is empty"))
            elif not n_bytes[i]:
                rejects.append(reject(meta[i], self.name, "no_image", "image bytes missing (not fetched?)"))
            else:
                todo.append(i)
        bs = self.config.batch_size
        for start in range(0, len(todo), bs):
            batch, pil = [], []
            for i in todo[start:start + bs]:
                try:
                    pil.append(_decode(images[i].as_py()))
                    batch.append(i)
                except Exception as e:  # PIL raises many types for bad bytes; each is one row's problem
                    rejects.append(reject(meta[i], self.name, "image_decode_error", f"{type(e).__name__}: {e}"[:200]))
            if batch:
                out = clip_scores(lc.model, lc.preprocess, lc.tokenizer, pil, [captions[i] for i in batch],
                                  lc.device, with_image_embeddings=self.config.keep_embedding)
                if self.config.keep_embedding:
                    out, emb = out
                    for j, i in enumerate(batch):
                        embeddings[i] = emb[j]
                scores[batch] = out
                scored[batch] = True
        for i in np.flatnonzero(scored & ~np.isfinite(scores)):  # e.g. fp16 overflow: a reject, never a lost row
            rejects.append(reject(meta[i], self.name, "clip_score_invalid", f"clip_score is {scores[i]}"))
        scored &= np.isfinite(scores)
        keep = scored.copy()
        if self.applies_threshold:
            below = scored & (scores < self.config.min_score)
            for i in np.flatnonzero(below):
                rejects.append(reject(meta[i], self.name, "clip_below_threshold",
                                      f"clip_score {scores[i]:.4f} < min_score {self.config.min_score}"))
            keep &= ~below
        idx = np.flatnonzero(keep)
        kept = table.take(pa.array(idx, type=pa.int64()))
        col = pa.array(scores[idx], type=pa.float32())
        if "clip_score" in kept.column_names:
            kept = kept.set_column(kept.column_names.index("clip_score"), "clip_score", col)
        else:
            kept = kept.append_column("clip_score", col)
        if self.config.keep_embedding:  # computed once here; semantic dedup reads it, never recomputes it
            dim = int(lc.model.visual.output_dim)  # from the model: every batch's column has the same type
            flat = np.concatenate([embeddings[i] for i in idx]) if len(idx) else np.zeros(0, np.float32)
            emb_col = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim)
            if "_clip_embedding" in kept.column_names:
                kept = kept.drop_columns(["_clip_embedding"])
            kept = kept.append_column("_clip_embedding", emb_col)
        self._count(scores[scored], len(idx), rejects)
        return StepOutput(kept, rejects_table(rejects))

    def derive_stats(self, st: dict) -> None:
        st["mean_score"] = st["score_sum"] / st["scored"] if st.get("scored") else None

    def _count(self, batch_scores: np.ndarray, n_kept: int, rejects: list[dict]) -> None:
        st = self.ctx.stat(self.name)
        st["scored"] = st.get("scored", 0) + int(batch_scores.size)
        st["score_sum"] = st.get("score_sum", 0.0) + float(batch_scores.sum(dtype=np.float64))
        self.derive_stats(st)
        st["kept"] = st.get("kept", 0) + n_kept
        by_reason = st.setdefault("rejected", {})
        for r in rejects:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1

    def close(self) -> None:
        # The model stays in the per-process cache: the next run in this process reuses it.
        self._loaded = None
