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
import json
import os
from collections import deque
from contextlib import nullcontext
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datagen.filters.clip_config import TINY_UNTRAINED_CONFIG, ClipConfig, caption_language  # noqa: F401 - the step's config
from datagen.core.records import reject, rejects_table
from datagen.core.steps import RunContext, Step, StepOutput
from datagen.weights import ClipWeightsUnavailable, LoadedClip, WeightsPlan, load_clip, resolve_weights  # noqa: F401


# ------------------------------------------------------------------------------ scoring


def clip_scores(model, preprocess, tokenizer, images: list, texts: list[str], device,
                with_image_embeddings: bool = False):
    """Cosine similarity of each (image, text) pair: L2-normalised embeddings, row-wise dot product.

    ``images`` are PIL images, ``preprocess`` the open_clip eval transform. Returns float32 of len(images),
    or (scores, L2-normalised image embeddings [n, embed_dim]) with ``with_image_embeddings``."""
    if len(images) != len(texts):
        raise ValueError(f"clip_scores: {len(images)} images but {len(texts)} texts")
    return _scores(model, tokenizer, [preprocess(im) for im in images], texts, device, with_image_embeddings)


def _scores(model, tokenizer, tensors: list, texts: list[str], device, with_image_embeddings: bool = False):
    """``clip_scores`` on images already preprocessed into tensors [3, H, W]."""
    import torch
    import torch.nn.functional as F

    if not tensors:
        return np.zeros(0, dtype=np.float32)  # callers with embeddings never pass an empty batch
    with torch.inference_mode():
        pixels = _stack(model, tensors, device)
        tokens = tokenizer(texts).to(device)
        img = F.normalize(model.encode_image(pixels).float(), dim=-1)
        txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
        scores = (img * txt).sum(dim=-1).cpu().numpy().astype(np.float32)
        return (scores, img.cpu().numpy().astype(np.float32)) if with_image_embeddings else scores


def _stack(model, tensors: list, device):
    """The preprocessed batch in the dtype of the vision tower's weights. With precision fp16/bf16,
    open_clip converts only the conv/linear/attention weights to the low precision and leaves the
    class and position embeddings in fp32, so the first parameter's dtype is the wrong one to follow."""
    import torch

    layers = (torch.nn.Conv2d, torch.nn.Linear)
    dtype = next((m.weight.dtype for m in model.visual.modules() if isinstance(m, layers)), torch.float32)
    return torch.stack(tensors).to(device=device, dtype=dtype, non_blocking=True)


def preprocess_threads(cfg: ClipConfig, device) -> int:
    if cfg.preprocess_threads is not None:
        return cfg.preprocess_threads
    return min(8, os.cpu_count() or 1) if str(device).startswith("cuda") else 1


def _prepared(rows: list[int], batch_size: int, prepare: Callable[[int], object],
              pool: ThreadPoolExecutor | None) -> Iterator[list[tuple[int, Future]]]:
    """Batches of (row, future of prepare(row)); with a pool the next batch is being prepared while the
    caller encodes this one (one batch of look-ahead, so memory stays at two batches)."""
    def submit(i: int) -> Future:
        if pool is not None:
            return pool.submit(prepare, i)
        f: Future = Future()
        try:
            f.set_result(prepare(i))
        except Exception as e:  # noqa: BLE001 - handed to the caller, which rejects the row
            f.set_exception(e)
        return f

    starts = range(0, len(rows), batch_size)
    ahead: deque[list[tuple[int, Future]]] = deque()
    for n, start in enumerate(starts):
        if not ahead:
            ahead.append([(i, submit(i)) for i in rows[start:start + batch_size]])
        if n + 1 < len(starts) and pool is not None:
            nxt = starts[n + 1]
            ahead.append([(i, submit(i)) for i in rows[nxt:nxt + batch_size]])
        yield ahead.popleft()


def _decode(data: bytes):
    """Decode fully now, so a truncated file fails here (a reject) and not inside the batch."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert("RGB")


def _image_embeddings(lc: LoadedClip, images: list) -> np.ndarray:
    """L2-normalised image embeddings [n, embed_dim] of one model (the base one, for ``_clip_embedding``)."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        pixels = _stack(lc.model, [lc.preprocess(im) for im in images], lc.device)
        return F.normalize(lc.model.encode_image(pixels).float(), dim=-1).cpu().numpy().astype(np.float32)


def _meta_lang(meta: str | None) -> str | None:
    if not meta:
        return None
    try:
        v = json.loads(meta)
    except ValueError:
        return None
    lang = v.get("lang") if isinstance(v, dict) else None
    return lang if isinstance(lang, str) else None


def model_label(cfg: ClipConfig) -> str:
    """What ``clip_model`` says: the model and its weights as the recipe names them."""
    return f"{cfg.model}/{cfg.pretrained}" if cfg.pretrained is not None else cfg.model


class ClipScoreStep(Step):
    """Adds ``clip_score`` (float32) and rejects rows below ``min_score`` with ``clip_below_threshold``.

    With ``languages`` set, each row is scored by its language's model (see ``ClipConfig.route``) and
    two more columns say how: ``clip_lang`` (the ``languages`` key, null for the base model) and
    ``clip_model``. ``_clip_embedding`` always comes from the base model, so semantic dedup and the
    aesthetic MLP see one embedding space."""

    name = "clip"
    kind = "filter"
    config: ClipConfig

    def __init__(self, config: ClipConfig, ctx: RunContext):
        super().__init__(config, ctx)
        self._configs: dict[str | None, ClipConfig] = {None: config.for_language(None)}
        for key in config.languages or {}:
            self._configs[key] = config.for_language(key)
        self._plans: dict[str | None, WeightsPlan] = {}
        self._loaded_by: dict[str | None, LoadedClip] = {}

    @property
    def _loaded(self) -> LoadedClip | None:
        return self._loaded_by.get(None)

    def plan(self, key: str | None = None) -> WeightsPlan:
        if key not in self._plans:
            self._plans[key] = resolve_weights(self._configs[key], self.ctx.resolve)
        return self._plans[key]

    def fingerprint(self) -> str:
        blob = super().fingerprint() + "".join(self.plan(k).identity() for k in self._configs)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def load(self, key: str | None = None) -> LoadedClip:
        """Resolve and load every model now (raises ClipWeightsUnavailable, naming the language) and return
        the one for ``key`` (None: the base model); process() calls it lazily."""
        if not self._loaded_by:
            for k, cfg in self._configs.items():
                try:
                    lc = load_clip(cfg, self.ctx.seed, self.plan(k), self.ctx.resolve)
                except ClipWeightsUnavailable as e:
                    if k is None:
                        raise
                    raise ClipWeightsUnavailable(f"clip.languages.{k}: {e}") from e
                self._loaded_by[k] = lc
                self._plans[k] = lc.plan  # a download that failed and fell back says so in the fingerprint
            self._record_model()
        return self._loaded_by[key]

    def setup(self) -> None:
        self.load()

    def threshold_for(self, key: str | None) -> float | None:
        """The min_score applied to rows routed to ``key``: None when unset or the model fell back."""
        cfg = self._configs[key]
        return None if cfg.min_score is None or self.load(key).untrained_fallback else cfg.min_score

    @property
    def applies_threshold(self) -> bool:
        return any(self.threshold_for(k) is not None for k in self._configs)

    def _record_model(self) -> None:
        cfg, lc = self._configs[None], self._loaded_by[None]
        st = self.ctx.stat(self.name)
        st.update(
            model=cfg.model, pretrained=cfg.pretrained, weights=lc.plan.kind,
            untrained_fallback=lc.untrained_fallback, scores_meaningful=lc.scores_meaningful,
            device=str(lc.device), precision=cfg.precision,
            min_score=cfg.min_score, threshold_applied=self.threshold_for(None) is not None,
        )
        for key, kcfg in self._configs.items():
            klc = self._loaded_by[key]
            if key is not None:  # strings and flags only: numbers are summed when parts merge
                st.setdefault("languages", {}).setdefault(key, {}).update(
                    model=model_label(kcfg), weights=klc.plan.kind, untrained_fallback=klc.untrained_fallback,
                    scores_meaningful=klc.scores_meaningful)
            what = f"CLIP weights {kcfg.model}/{kcfg.pretrained}" + (f" (language {key})" if key else "")
            if klc.untrained_fallback:
                self.ctx.warn(
                    f"{what} are not available offline; scores come from a small UNTRAINED model and mean nothing "
                    "(min_score is not applied, no row is dropped for its score)"
                )
            elif not klc.scores_meaningful:
                self.ctx.warn(f"CLIP model {kcfg.model}" + (f" (language {key})" if key else "")
                              + " has random weights (pretrained: null); scores mean nothing")

    def _routes(self, table: pa.Table) -> list[str | None]:
        """The ``languages`` key of each row (None: the base model)."""
        if not self.config.languages:
            return [None] * table.num_rows
        metas = table.column("meta").to_pylist() if "meta" in table.column_names else [None] * table.num_rows
        detected = (table.column("caption_lang").to_pylist() if "caption_lang" in table.column_names
                    else [None] * table.num_rows)
        return [self.config.route(caption_language(_meta_lang(m), d)) for m, d in zip(metas, detected)]

    def process(self, table: pa.Table) -> StepOutput:
        missing = [c for c in ("key", "caption", "image") if c not in table.column_names]
        if missing:
            raise ValueError(f"clip step: input table lacks column(s) {missing}; has {table.column_names}")
        base = self.load()
        if "model" not in self.ctx.stat(self.name):  # statistics are scoped per shard task
            self._record_model()
        meta = table.select([c for c in ("key", "source", "url") if c in table.column_names]).to_pylist()
        captions = table.column("caption").to_pylist()
        images = table.column("image")
        routes = self._routes(table)
        rejects: list[dict] = []
        scores = np.full(table.num_rows, np.nan, dtype=np.float32)
        scored = np.zeros(table.num_rows, dtype=bool)
        todo: dict[str | None, list[int]] = {}
        embeddings: list[np.ndarray | None] = [None] * table.num_rows  # only with keep_embedding
        n_bytes = pc.binary_length(images).to_pylist()
        for i, cap in enumerate(captions):
            if cap is None or not cap.strip():
                rejects.append(reject(meta[i], self.name, "no_caption", "caption is empty"))
            elif not n_bytes[i]:
                rejects.append(reject(meta[i], self.name, "no_image", "image bytes missing (not fetched?)"))
            else:
                todo.setdefault(routes[i], []).append(i)
        keep_emb = self.config.keep_embedding
        threads = preprocess_threads(self.config, base.device)
        with ThreadPoolExecutor(threads, thread_name_prefix="clip-prep") if threads > 1 else nullcontext() as pool:
            for key, rows in todo.items():
                lc, bs = self.load(key), self._configs[key].batch_size
                other_emb = keep_emb and lc is not base  # the embedding comes from the base model's transform

                def prepare(i: int, lc=lc, other_emb=other_emb):
                    im = _decode(images[i].as_py())
                    return lc.preprocess(im), (im if other_emb else None)

                for prepared in _prepared(rows, bs, prepare, pool):
                    batch, tensors, pil = [], [], []
                    for i, fut in prepared:
                        try:
                            tensor, im = fut.result()
                        except Exception as e:  # PIL raises many types for bad bytes; each is one row's problem
                            rejects.append(reject(meta[i], self.name, "image_decode_error",
                                                  f"{type(e).__name__}: {e}"[:200]))
                            continue
                        batch.append(i)
                        tensors.append(tensor)
                        pil.append(im)
                    if not batch:
                        continue
                    out = _scores(lc.model, lc.tokenizer, tensors, [captions[i] for i in batch], lc.device,
                                  with_image_embeddings=keep_emb and lc is base)
                    if keep_emb:
                        out, emb = out if lc is base else (out, _image_embeddings(base, pil))
                        for j, i in enumerate(batch):
                            embeddings[i] = emb[j]
                    scores[batch] = out
                    scored[batch] = True
        for i in np.flatnonzero(scored & ~np.isfinite(scores)):  # e.g. fp16 overflow: a reject, never a lost row
            rejects.append(reject(meta[i], self.name, "clip_score_invalid", f"clip_score is {scores[i]}"))
        scored &= np.isfinite(scores)
        keep = scored.copy()
        for i in np.flatnonzero(scored):
            limit = self.threshold_for(routes[i])
            if limit is not None and scores[i] < limit:
                where = f" (language {routes[i]})" if routes[i] else ""
                rejects.append(reject(meta[i], self.name, "clip_below_threshold",
                                      f"clip_score {scores[i]:.4f} < min_score {limit}{where}"))
                keep[i] = False
        idx = np.flatnonzero(keep)
        kept = table.take(pa.array(idx, type=pa.int64()))
        new_cols = {"clip_score": pa.array(scores[idx], type=pa.float32())}
        if self.config.languages:
            new_cols["clip_lang"] = pa.array([routes[i] for i in idx], type=pa.string())
            new_cols["clip_model"] = pa.array([model_label(self._configs[routes[i]]) for i in idx], type=pa.string())
        for name, col in new_cols.items():
            if name in kept.column_names:
                kept = kept.set_column(kept.column_names.index(name), name, col)
            else:
                kept = kept.append_column(name, col)
        if keep_emb:  # computed once here; semantic dedup reads it, never recomputes it
            dim = int(base.model.visual.output_dim)  # from the model: every batch's column has the same type
            flat = np.concatenate([embeddings[i] for i in idx]) if len(idx) else np.zeros(0, np.float32)
            emb_col = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim)
            if "_clip_embedding" in kept.column_names:
                kept = kept.drop_columns(["_clip_embedding"])
            kept = kept.append_column("_clip_embedding", emb_col)
        self._count(scores[scored], len(idx), rejects)
        if self.config.languages:
            langs = self.ctx.stat(self.name).setdefault("languages", {})
            for i in np.flatnonzero(scored):
                if routes[i] is not None:
                    d = langs.setdefault(routes[i], {})
                    d["scored"] = d.get("scored", 0) + 1
                    d["kept"] = d.get("kept", 0) + int(keep[i])
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
        # The models stay in the per-process cache: the next run in this process reuses them.
        self._loaded_by = {}
