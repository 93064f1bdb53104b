"""LAION aesthetic score: the improved aesthetic predictor, an MLP over CLIP ViT-L/14 image embeddings.

The predictor (christophschuhmann/improved-aesthetic-predictor, the model behind
LAION-Aesthetics V2) maps the L2-normalised CLIP ViT-L/14 (OpenAI) image
embedding to a 1-10 rating through Linear 768-1024-128-64-16-1. It reads the
embedding the CLIP step already stored (``_clip_embedding``), so it costs a
few matrix products per batch; the CLIP filter must therefore run ViT-L/14
(``filters.clip.model: ViT-L-14``, ``pretrained: openai``): another model's
embedding has another size and meaning, and the run stops with that fix.

Weights: a local ``.pth`` path, or a Hugging Face file (default
``trl-lib/ddpo-aesthetic-predictor`` / ``aesthetic-model.pth``, the same
state dict). Whether they can be had is decided before any work; offline and
not cached, the run fails with what was checked and the fix, unless
``allow_skip`` (then the step is left out, with a run warning). ``mlp`` builds
a small MLP with random weights instead (tests: plumbing only).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from datagen.core.records import reject, rejects_table
from datagen.core.steps import Step, StepOutput

LAION_MLP = {"input_dim": 768, "hidden": [1024, 128, 64, 16]}


class AestheticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_score: float | None = Field(None, description="Reject rows whose aesthetic_score is below this "
                                    "(LAION-Aesthetics V2 subsets: 4.5, 5, 6); null: keep the score only.")
    weights: str | None = Field(None, description="A local .pth of the predictor (relative to the recipe); "
                                "null: hf_repo/hf_file from the Hugging Face hub (or its cache).")
    hf_repo: str = "trl-lib/ddpo-aesthetic-predictor"
    hf_file: str = "aesthetic-model.pth"
    mlp: dict | None = Field(None, description="{input_dim, hidden: [...]}: build this MLP with RANDOM weights "
                             "instead of loading the predictor (tests only).")
    allow_skip: bool = Field(False, description="If the weights cannot be had offline, leave the step out (a run "
                             "warning) instead of failing.")


class AestheticWeightsUnavailable(FileNotFoundError):
    pass


def resolve(cfg: AestheticConfig, resolve_path: Callable[[str], Path]) -> tuple[str, str | None, list[str]]:
    """(kind, path, checked): kind is random | file | download | unavailable."""
    from datagen.offline import host_reachable, hub_offline
    from datagen.weights import _hf_host, hf_cached

    checked: list[str] = []
    if cfg.mlp is not None:
        return "random", None, checked
    if cfg.weights:
        p = resolve_path(cfg.weights)
        checked.append(f"local file {p}: {'found' if p.is_file() else 'missing'}")
        return ("file", str(p), checked) if p.is_file() else ("unavailable", None, checked)
    cached = hf_cached(cfg.hf_repo, [cfg.hf_file], checked=checked)
    if cached:
        return "file", cached, checked
    if hub_offline():
        checked.append("HF_HUB_OFFLINE is set: no download attempted")
        return "unavailable", None, checked
    host, port = _hf_host()
    if host_reachable(host, port):
        return "download", None, checked
    checked.append(f"host {host}:{port} not reachable")
    return "unavailable", None, checked


def unavailable_message(cfg: AestheticConfig, checked: list[str]) -> str:
    return ("filters.aesthetic: the aesthetic predictor weights cannot be had here (" + "; ".join(checked) + "). "
            f"Fix: on a machine with network run huggingface-cli download {cfg.hf_repo} {cfg.hf_file} (then copy "
            "the HF cache), or set filters.aesthetic.weights to a local sac+logos+ava1-l14-linearMSE.pth, or set "
            "filters.aesthetic.allow_skip: true to run without it")


def build_mlp(input_dim: int, hidden: list[int]):
    """The predictor's layout (``layers.N`` keys match its state dict); dropout is inactive in eval."""
    import torch.nn as nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            dims = [input_dim, *hidden]
            mods: list = []
            drops = [0.2, 0.2, 0.1] + [0.0] * len(hidden)
            for i in range(len(hidden)):
                mods.append(nn.Linear(dims[i], dims[i + 1]))
                if i < len(hidden) - 1:
                    mods.append(nn.Dropout(drops[i]))
            mods.append(nn.Linear(dims[-1], 1))
            self.layers = nn.Sequential(*mods)

        def forward(self, x):
            return self.layers(x)

    return MLP()


def load_predictor(cfg: AestheticConfig, resolve_path: Callable[[str], Path], seed: int = 0):
    """(model, identity dict); raises AestheticWeightsUnavailable with the fix."""
    import torch

    kind, path, checked = resolve(cfg, resolve_path)
    if kind == "unavailable":
        raise AestheticWeightsUnavailable(unavailable_message(cfg, checked))
    if kind == "random":
        torch.manual_seed(seed)
        model = build_mlp(int(cfg.mlp["input_dim"]), list(cfg.mlp["hidden"]))
        ident = {"weights": "random", "scores_meaningful": False}
    else:
        if kind == "download":
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(cfg.hf_repo, cfg.hf_file)
        model = build_mlp(LAION_MLP["input_dim"], LAION_MLP["hidden"])
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        ident = {"weights": Path(path).name, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                 "scores_meaningful": True}
    return model.eval(), ident


class AestheticStep(Step):
    """Adds ``aesthetic_score`` from the stored ``_clip_embedding``; rejects below ``min_score``."""

    name = "aesthetic"
    kind = "filter"
    config: AestheticConfig

    def setup(self) -> None:
        try:
            self._model, self._ident = load_predictor(self.config, self.ctx.resolve, self.ctx.seed)
        except AestheticWeightsUnavailable as e:
            if not self.config.allow_skip:
                raise
            self._model, self._ident = None, {"weights": "unavailable", "skipped": True}
            self.ctx.warn(f"aesthetic step skipped (allow_skip): {e}")

    def fingerprint(self) -> str:
        kind, path, _ = resolve(self.config, self.ctx.resolve)
        return hashlib.sha256((super().fingerprint() + kind + str(path)).encode()).hexdigest()[:16]

    def derive_stats(self, st: dict) -> None:
        st["min_score"] = self.config.min_score  # a setting: merging parts would add it up
        st["mean_score"] = st["score_sum"] / st["scored"] if st.get("scored") else None

    def process(self, table: pa.Table) -> StepOutput:
        import torch

        if not hasattr(self, "_model"):
            self.setup()
        if self._model is None:  # skipped: rows pass, with no score
            self.ctx.stat(self.name).update(self._ident)
            return StepOutput(table.append_column("aesthetic_score", pa.nulls(table.num_rows, pa.float32()))
                              if "aesthetic_score" not in table.column_names else table)
        if "_clip_embedding" not in table.column_names:
            raise ValueError("aesthetic step: no _clip_embedding column; filters.clip must run before it")
        col = table.column("_clip_embedding").combine_chunks()
        dim = col.type.list_size
        want = self._model.layers[0].in_features
        if dim != want:
            raise ValueError(f"filters.aesthetic expects CLIP image embeddings of size {want} (ViT-L/14); the CLIP "
                             f"step stores size {dim}. Fix: filters.clip.model: ViT-L-14, pretrained: openai")
        emb = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), dim)
        with torch.inference_mode():
            scores = self._model(torch.tensor(emb, dtype=torch.float32)).squeeze(-1).numpy()
        st = self.ctx.stat(self.name)
        st.update(self._ident)
        keep, rejects = [], []
        meta = table.select([c for c in ("key", "source", "url") if c in table.column_names]).to_pylist()
        for i, s in enumerate(scores):
            if self.config.min_score is not None and s < self.config.min_score:
                rejects.append(reject(meta[i], self.name, "aesthetic_below_threshold",
                                      f"aesthetic_score {s:.3f} < {self.config.min_score}"))
            else:
                keep.append(i)
        st["scored"] = st.get("scored", 0) + len(scores)
        st["score_sum"] = st.get("score_sum", 0.0) + float(scores.sum(dtype=np.float64))
        self.derive_stats(st)
        kept = table.take(pa.array(keep, type=pa.int64()))
        if "aesthetic_score" in kept.column_names:
            kept = kept.drop_columns(["aesthetic_score"])
        return StepOutput(kept.append_column("aesthetic_score", pa.array(scores[keep], pa.float32())),
                          rejects_table(rejects))
