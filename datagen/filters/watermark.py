"""LAION watermark detector on the fetched pictures.

LAION-AI/LAION-5B-WatermarkDetection (the model behind LAION-5B's ``pwatermark``):
timm ``efficientnet_b3a`` whose classifier is Linear 1536-625, ReLU,
Dropout 0.3, Linear 625-256, ReLU, Linear 256-2, on 256x256 ImageNet-normalised
pictures; softmax output 0 is the watermark probability. The state dict
(``watermark_model_v1.pt``) is published in that GitHub repository, not on a
model hub, so ``weights`` is a local path; a missing file fails before any work
with the fix, unless ``allow_skip``. ``arch`` with ``weights: null`` builds that
timm architecture with random weights (tests: plumbing only; timm's
``test_efficientnet`` is tiny). Keeps ``watermark_score``; rows at or above
``threshold`` reject as ``watermark_detected``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from datagen.core.records import reject, rejects_table
from datagen.core.steps import Step, StepOutput
from datagen.filters.images import decode_images

LAION_ARCH = "efficientnet_b3a"


class WatermarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(0.8, gt=0.0, le=1.0, description="Reject rows whose watermark_score is at "
                                    "least this; null: keep the score only.")
    weights: str | None = Field("models/watermark_model_v1.pt", description="LAION's watermark_model_v1.pt "
                                "(relative to the recipe); null: random weights (tests only).")
    arch: str = Field(LAION_ARCH, description="timm architecture; the LAION head is put on top.")
    batch_size: int = Field(16, ge=1)
    allow_skip: bool = Field(False, description="If the weights file is missing, leave the step out (a run "
                             "warning) instead of failing.")


class WatermarkWeightsUnavailable(FileNotFoundError):
    pass


def check_weights(cfg: WatermarkConfig, resolve) -> Path | None:
    """The weights path (None: random), or WatermarkWeightsUnavailable with the fix."""
    if cfg.weights is None:
        return None
    p = resolve(cfg.weights)
    if not p.is_file():
        raise WatermarkWeightsUnavailable(
            f"filters.watermark: no weights at {p}. Fix: download watermark_model_v1.pt from "
            "https://github.com/LAION-AI/LAION-5B-WatermarkDetection (models/) to that path, or set "
            "filters.watermark.weights, or filters.watermark.allow_skip: true to run without it")
    return p


def build_model(arch: str):
    import timm
    import torch.nn as nn

    model = timm.create_model(arch, pretrained=False, num_classes=2)
    model.classifier = nn.Sequential(nn.Linear(model.num_features, 625), nn.ReLU(), nn.Dropout(p=0.3),
                                     nn.Linear(625, 256), nn.ReLU(), nn.Linear(256, 2))
    return model


def _pixels(data: bytes):
    import torch
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    a = np.asarray(im.convert("RGB").resize((256, 256), Image.BILINEAR), dtype=np.float32) / 255.0
    a = (a - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


class WatermarkStep(Step):
    name = "watermark"
    kind = "filter"
    config: WatermarkConfig

    def setup(self) -> None:
        import torch

        try:
            path = check_weights(self.config, self.ctx.resolve)
        except WatermarkWeightsUnavailable as e:
            if not self.config.allow_skip:
                raise
            self._model, self._ident = None, {"weights": "unavailable", "skipped": True}
            self.ctx.warn(f"watermark step skipped (allow_skip): {e}")
            return
        torch.manual_seed(self.ctx.seed)
        model = build_model(self.config.arch)
        if path is not None:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self._ident = {"model": self.config.arch, "weights": path.name,
                           "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "scores_meaningful": True}
        else:
            self._ident = {"model": self.config.arch, "weights": "random", "scores_meaningful": False}
        self._model = model.eval()

    def fingerprint(self) -> str:
        p = self.ctx.resolve(self.config.weights) if self.config.weights else None
        mark = hashlib.sha256(p.read_bytes()).hexdigest() if p is not None and p.is_file() else "none"
        return hashlib.sha256((super().fingerprint() + mark).encode()).hexdigest()[:16]

    def derive_stats(self, st: dict) -> None:
        st["threshold"] = self.config.threshold  # a setting: merging parts would add it up

    def process(self, table: pa.Table) -> StepOutput:
        import torch

        if not hasattr(self, "_model"):
            self.setup()
        st = self.ctx.stat(self.name)
        st.update(self._ident)
        self.derive_stats(st)
        if self._model is None:
            return StepOutput(table.append_column("watermark_score", pa.nulls(table.num_rows, pa.float32())))
        decoded = decode_images(table, self.name, _pixels)
        meta, todo, tensors, rejects = decoded.meta, decoded.rows, decoded.images, decoded.rejects
        scores = np.zeros(table.num_rows, np.float32)
        bs = self.config.batch_size
        with torch.inference_mode():
            for s in range(0, len(todo), bs):
                probs = torch.softmax(self._model(torch.stack(tensors[s:s + bs])).float(), dim=1)
                scores[todo[s:s + bs]] = probs[:, 0].numpy()  # output 0: watermark
        keep = []
        for i in todo:
            if self.config.threshold is not None and scores[i] >= self.config.threshold:
                rejects.append(reject(meta[i], self.name, "watermark_detected",
                                      f"watermark_score {scores[i]:.3f} >= {self.config.threshold}"))
            else:
                keep.append(i)
        st["scored"] = st.get("scored", 0) + len(todo)
        kept = table.take(pa.array(keep, type=pa.int64()))
        return StepOutput(kept.append_column("watermark_score", pa.array(scores[keep], pa.float32())),
                          rejects_table(rejects))
