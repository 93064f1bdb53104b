"""NSFW detection on the pixels with NudeNet (``pip install 'datagen[nsfw]'``).

NudeNet 3.x ships its detector (``320n.onnx``, a YOLOv8n trained on exposed and
covered body parts) inside the wheel and runs it with onnxruntime, so it works
offline. The score of a row, kept as the ``nsfw_score`` column, is the highest
detection score among the ``classes`` the recipe calls unsafe (0 when none is
found; NudeNet drops detections under 0.2); rows at or above ``threshold``
reject as ``nsfw_detected``. The model (package version, file, sha256) is
recorded in the step's statistics, so in ``manifest.json``.

Sources' own scores (LAION ``punsafe``, COYO ``nsfw_score_opennsfw2``) are
cheaper and apply before fetching (``filters.meta``); this step judges the
pictures actually downloaded, for sources without such scores.
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from datagen.core.records import reject, rejects_table
from datagen.core.steps import Step, StepOutput
from datagen.filters.images import decode_images

UNSAFE_DEFAULT = ["FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
                  "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"]


class NsfwConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(0.5, gt=0.0, le=1.0, description="Reject rows whose nsfw_score is at least "
                                    "this; null: keep the score only.")
    classes: list[str] = Field(default_factory=lambda: list(UNSAFE_DEFAULT),
                               description="NudeNet labels that count as unsafe (default: the EXPOSED genitalia, "
                               "breast, buttocks and anus labels).")
    model_path: str | None = Field(None, description="Another NudeNet ONNX file (relative to the recipe); "
                                   "null: the 320n model the package ships.")
    batch_size: int = Field(8, ge=1, description="Images per ONNX run.")


class NsfwUnavailable(RuntimeError):
    pass


def require_nudenet() -> None:
    """Fail before any work when the package is missing, with the fix."""
    try:
        import nudenet  # noqa: F401
    except ImportError as e:
        raise NsfwUnavailable(f"filters.nsfw needs the nudenet package ({e}); install it with "
                              "pip install 'datagen[nsfw]' (it ships its model), or set filters.nsfw: null") from None


@lru_cache(maxsize=4)
def _detector(model_path: str | None):
    from nudenet import NudeDetector

    return NudeDetector(model_path=model_path)


@lru_cache(maxsize=4)
def model_identity(model_path: str | None) -> dict:
    import importlib.metadata

    import nudenet

    path = Path(model_path) if model_path else Path(nudenet.__file__).parent / "320n.onnx"
    if not path.is_file():
        raise NsfwUnavailable(f"filters.nsfw.model_path: no file at {path}")
    return {"model": "nudenet", "version": importlib.metadata.version("nudenet"), "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _pixels(data: bytes) -> np.ndarray:
    """RGBA array: NudeNet converts its input with RGBA2BGR, whatever the file's mode."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return np.asarray(im.convert("RGBA"))


class NsfwStep(Step):
    """Adds ``nsfw_score`` (float32) and rejects rows at or above ``threshold`` as ``nsfw_detected``."""

    name = "nsfw"
    kind = "filter"
    config: NsfwConfig

    def _path(self) -> str | None:
        return str(self.ctx.resolve(self.config.model_path)) if self.config.model_path else None

    def fingerprint(self) -> str:
        require_nudenet()
        ident = model_identity(self._path())
        return hashlib.sha256((super().fingerprint() + ident["version"] + ident["sha256"]).encode()).hexdigest()[:16]

    def setup(self) -> None:
        require_nudenet()
        self._det = _detector(self._path())

    def detect(self, arrays: list[np.ndarray]) -> list[list[dict]]:
        return self._det.detect_batch(arrays, batch_size=self.config.batch_size)

    def derive_stats(self, st: dict) -> None:
        st["threshold"] = self.config.threshold  # a setting, not a count: merging parts would add it up

    def process(self, table: pa.Table) -> StepOutput:
        if not hasattr(self, "_det"):
            self.setup()
        cfg = self.config
        st = self.ctx.stat(self.name)
        st.update(model_identity(self._path()))
        decoded = decode_images(table, self.name, _pixels)
        meta, todo, arrays, rejects = decoded.meta, decoded.rows, decoded.images, decoded.rejects
        scores = np.zeros(table.num_rows, np.float32)
        top_class: dict[int, str] = {}
        unsafe = set(cfg.classes)
        for i, dets in zip(todo, self.detect(arrays) if arrays else []):
            hits = [d for d in dets if d["class"] in unsafe]
            if hits:
                best = max(hits, key=lambda d: d["score"])
                scores[i], top_class[i] = best["score"], best["class"]
        keep = []
        for i in todo:
            if cfg.threshold is not None and scores[i] >= cfg.threshold:
                rejects.append(reject(meta[i], self.name, "nsfw_detected",
                                      f"{top_class[i]} {scores[i]:.3f} >= {cfg.threshold}"))
            else:
                keep.append(i)
        st["scored"] = st.get("scored", 0) + len(todo)
        st["flagged"] = st.get("flagged", 0) + sum(1 for i in todo if i in top_class)
        by_reason = st.setdefault("rejected", {})
        for r in rejects:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        self.derive_stats(st)
        kept = table.take(pa.array(keep, type=pa.int64()))
        col = pa.array(scores[keep], type=pa.float32())
        if "nsfw_score" in kept.column_names:
            kept = kept.drop_columns(["nsfw_score"])
        return StepOutput(kept.append_column("nsfw_score", col), rejects_table(rejects))
