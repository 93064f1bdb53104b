"""CLIP score filter: cosine similarity of image and caption, then a threshold.

LAION kept pairs whose CLIP ViT-B/32 cosine similarity is at least 0.28 for
English (0.26 multilingual); this step computes the same number with open_clip
and stores it as ``clip_score`` so a later threshold change can reuse it.

Why the weight resolution is so careful: offline, open_clip and
huggingface_hub retry a missing download for about 30 s before failing, per
file and per process. :func:`resolve_weights` therefore decides up front, from
the pretrained config of the tag, the local Hugging Face cache, open_clip's URL
cache, ``HF_HUB_OFFLINE`` and a 2 s reachability check of the host, whether the
weights can be had. If not, it either raises an error that says what was
checked and how to fix it, or (``allow_untrained_fallback``) builds a small
untrained model so that an offline demo still runs end to end; that case is
loud (a run warning, ``scores_meaningful: false`` in the stats) and the
threshold is not applied, so meaningless scores never drop rows.

torch and open_clip are imported inside functions only: the recipe loader
imports :class:`ClipConfig` on every command and must stay fast.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from datagen.offline import REACH_TIMEOUT_S, hf_endpoint, hf_hub_cache, host_reachable, hub_offline, url_host_port
from datagen.records import reject, rejects_table
from datagen.steps import RunContext, Step, StepOutput

# A small CLIP that builds in well under a second on a CPU. Used only when the real
# weights cannot be had and the recipe allows it; the text side uses open_clip's
# bundled BPE vocabulary, which needs no download.
TINY_UNTRAINED_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

_HF_CONFIG_NAME = "open_clip_config.json"
_HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipWeightsUnavailable(RuntimeError):
    """The CLIP weights named in the recipe cannot be loaded here (and no fallback is allowed)."""


class ClipConfig(BaseModel):
    # The open_clip config field is called model_config in recipes; pydantic reserves that
    # attribute name, so it lives in model_config_ with an alias, also on dump.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), serialize_by_alias=True)

    model: str = Field(
        "ViT-B-32",
        description="open_clip architecture name (open_clip.list_models()) or 'hf-hub:org/name'. "
        "With model_config set this is only a label.",
    )
    pretrained: str | None = Field(
        "laion2b_s34b_b79k",
        description="open_clip pretrained tag (open_clip.list_pretrained()) or a local checkpoint path "
        "(relative to the recipe); null = random weights (tests only). Ignored for hf-hub models.",
    )
    model_config_: dict[str, Any] | None = Field(
        None,
        alias="model_config",
        description="An open_clip model config (embed_dim, vision_cfg, text_cfg) to build instead of a named "
        "architecture; random weights unless pretrained is a checkpoint path.",
    )
    min_score: float | None = Field(
        0.28, ge=-1.0, le=1.0, description="Reject rows below this cosine (LAION English: 0.28); null = score only."
    )
    top_fraction: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Keep only this top fraction by score over the whole dataset (DataComp's best simple "
        "baseline: 0.3 with ViT-L/14); combined with min_score, both must hold.",
    )
    batch_size: int = Field(64, ge=1, description="Image-text pairs encoded per forward pass.")
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="Model precision; fp16/bf16 want a GPU.")
    cache_dir: str | None = Field(
        None, description="Where weights are cached; null = the Hugging Face hub cache and ~/.cache/clip."
    )
    allow_untrained_fallback: bool = Field(
        False,
        description="If the weights cannot be had offline, score with a small UNTRAINED model (a loud warning; "
        "min_score is then not applied) instead of failing.",
    )

    @model_validator(mode="after")
    def _check(self) -> "ClipConfig":
        if self.model_config_ is not None:
            missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in self.model_config_]
            if missing:
                raise ValueError(f"clip.model_config lacks {missing}: an open_clip model config needs "
                                 "embed_dim, vision_cfg and text_cfg")
            if self.model.startswith(("hf-hub:", "local-dir:")):
                raise ValueError("clip.model_config cannot be combined with an hf-hub:/local-dir: model")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"clip.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        return self


# ------------------------------------------------------------------------ resolving weights


@dataclass
class WeightsPlan:
    """How to call open_clip for a config, decided without touching the network for long.

    ``kind``: ``file`` (a local checkpoint: a path given, or a cached download),
    ``local_dir`` (a cached hf-hub repo snapshot), ``download`` (not cached but
    the host answers: let open_clip download), ``random`` (no weights asked for)
    or ``unavailable`` (see ``problem`` and ``checked``)."""

    kind: str
    name: str  # what to pass to open_clip as the model name
    pretrained: str | None = None  # what to pass as pretrained (tag or path)
    cache_dir: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)  # image_mean/std/interpolation/resize_mode
    checked: list[str] = field(default_factory=list)
    problem: str = ""

    def identity(self) -> str:
        """What determines the weights: part of the step fingerprint, so a run that fell back to an
        untrained model is not reused once the real weights are there."""
        return json.dumps([self.kind, self.name, self.pretrained], sort_keys=True)


def _hf_hub_cache(cfg: ClipConfig) -> str:
    return hf_hub_cache(cfg.cache_dir)


def _clip_url_cache(cfg: ClipConfig) -> str:
    return os.path.expanduser(cfg.cache_dir) if cfg.cache_dir else os.path.expanduser("~/.cache/clip")


def _hf_host() -> tuple[str, int]:
    return url_host_port(hf_endpoint()) or ("huggingface.co", 443)


def _hf_cached(repo_id: str, filenames: list[str], hub_cache: str, checked: list[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for fn in filenames:
        p = try_to_load_from_cache(repo_id, fn, cache_dir=hub_cache)
        checked.append(f"HF cache {hub_cache}: {repo_id}/{fn} -> {'found' if isinstance(p, str) else 'missing'}")
        if isinstance(p, str):
            return p
    return None


def _network_check(host: str, port: int, checked: list[str]) -> bool:
    if hub_offline():
        checked.append("HF_HUB_OFFLINE is set: no download attempted")
        return False
    ok = host_reachable(host, port)
    checked.append(f"host {host}:{port} {'reachable' if ok else f'not reachable within {REACH_TIMEOUT_S:.0f} s'}")
    return ok


def _resolve_hf_hub(cfg: ClipConfig) -> WeightsPlan:
    repo_id = cfg.model[len("hf-hub:"):]
    hub_cache = _hf_hub_cache(cfg)
    checked: list[str] = []
    conf = _hf_cached(repo_id, [_HF_CONFIG_NAME], hub_cache, checked)
    weights = _hf_cached(repo_id, list(_HF_WEIGHT_NAMES), hub_cache, checked) if conf else None
    if conf and weights and Path(conf).parent == Path(weights).parent:
        # The snapshot folder holds config + weights: open_clip's local-dir: route loads it with no network.
        return WeightsPlan("local_dir", f"local-dir:{Path(conf).parent}", None, checked=checked)
    if _network_check(*_hf_host(), checked):
        return WeightsPlan("download", cfg.model, None, cache_dir=hub_cache, checked=checked)
    return WeightsPlan("unavailable", cfg.model, None, checked=checked, problem="the repo is not in the local cache and cannot be downloaded")


def _resolve_tag(cfg: ClipConfig, name: str, tag: str) -> WeightsPlan:
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(name, tag)
    preprocess = {
        k_out: pcfg[k_in]
        for k_in, k_out in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                            ("resize_mode", "image_resize_mode"))
        if pcfg.get(k_in) is not None
    }
    checked: list[str] = []
    if pcfg.get("file"):
        return WeightsPlan("file", name, pcfg["file"], preprocess=preprocess, checked=checked)
    hf_hub, url = pcfg.get("hf_hub", ""), pcfg.get("url", "")
    hosts: list[tuple[str, int]] = []
    if hf_hub:
        repo_id, filename = os.path.split(hf_hub)
        filename = filename or "open_clip_pytorch_model.bin"
        # open_clip tries a .safetensors twin first (open_clip.pretrained._get_safe_alternatives)
        if filename == "open_clip_pytorch_model.bin":
            candidates = ["open_clip_model.safetensors"]
        elif filename.endswith((".bin", ".pth")):
            candidates = [filename[:-4] + ".safetensors"]
        else:
            candidates = []
        hit = _hf_cached(repo_id, candidates + [filename], _hf_hub_cache(cfg), checked)
        if hit:
            return WeightsPlan("file", name, hit, preprocess=preprocess, checked=checked)
        hosts.append(_hf_host())
    if url:
        target = os.path.join(_clip_url_cache(cfg), os.path.basename(urlparse(url).path))
        found = os.path.isfile(target)
        checked.append(f"open_clip cache {target} -> {'found' if found else 'missing'}")
        if found:
            return WeightsPlan("file", name, target, preprocess=preprocess, checked=checked)
        u = urlparse(url)
        if not hf_hub:
            hosts.append((u.hostname or "", u.port or 443))
    for host, port in hosts[:1]:
        if _network_check(host, port, checked):
            cache = _hf_hub_cache(cfg) if hf_hub else _clip_url_cache(cfg)
            return WeightsPlan("download", name, tag, cache_dir=cache, checked=checked)
    return WeightsPlan("unavailable", name, tag, checked=checked,
                       problem="they are not cached and cannot be downloaded")


def resolve_weights(cfg: ClipConfig, ctx: RunContext) -> WeightsPlan:
    """Decide how to load the weights for ``cfg`` in at most a few seconds (never open_clip's 30 s retry)."""
    name = _registered_name(cfg.model, cfg.model_config_) if cfg.model_config_ is not None else cfg.model
    if cfg.model.startswith("hf-hub:"):
        return _resolve_hf_hub(cfg)
    if cfg.model.startswith("local-dir:"):
        folder = ctx.resolve(cfg.model[len("local-dir:"):])
        if not (folder / _HF_CONFIG_NAME).is_file():
            raise ValueError(f"clip.model {cfg.model!r}: {folder / _HF_CONFIG_NAME} does not exist "
                             "(a local-dir: model is a folder with open_clip_config.json and the weights)")
        return WeightsPlan("local_dir", f"local-dir:{folder}", None, checked=[f"local folder {folder} -> found"])
    if cfg.pretrained is None:
        return WeightsPlan("random", name, None)
    import open_clip

    if cfg.model_config_ is None and cfg.model not in open_clip.list_models():
        raise ValueError(f"clip.model {cfg.model!r} is not an open_clip architecture; see open_clip.list_models() "
                         "or use 'hf-hub:org/name' or a model_config")
    if cfg.model_config_ is None and open_clip.is_pretrained_cfg(cfg.model, cfg.pretrained):
        return _resolve_tag(cfg, cfg.model, cfg.pretrained)
    path = ctx.resolve(cfg.pretrained)
    if path.is_file():
        return WeightsPlan("file", name, str(path), checked=[f"local checkpoint {path} -> found"])
    if cfg.model_config_ is not None:
        raise ValueError(
            f"clip.pretrained {cfg.pretrained!r}: with clip.model_config set, pretrained must be null (random "
            f"weights) or an existing checkpoint file (looked at {path})"
        )
    raise ValueError(
        f"clip.pretrained {cfg.pretrained!r} is neither a known open_clip tag for {cfg.model!r} "
        f"(known: {open_clip.list_pretrained_tags_by_model(cfg.model)}) nor an existing checkpoint file "
        f"(looked at {path})"
    )


# ------------------------------------------------------------------------------ loading

_CONFIG_DIR: Path | None = None
_REGISTERED: set[str] = set()
_MODELS: dict[str, "LoadedClip"] = {}
_LOCK = threading.RLock()  # re-entered when a failed download falls back


def _registered_name(label: str, model_cfg: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in label)
    return f"datagen-{safe}-{digest}"


def _register_config(name: str, model_cfg: dict[str, Any]) -> None:
    """Make a config dict known to open_clip under ``name`` (open_clip's own add_model_config), so the
    ordinary create_model_and_transforms(name, pretrained=path) and get_tokenizer(name) paths apply."""
    global _CONFIG_DIR
    import open_clip

    if name in _REGISTERED and name in open_clip.list_models():
        return
    if _CONFIG_DIR is None:
        _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="datagen-open_clip-configs-"))
        atexit.register(shutil.rmtree, _CONFIG_DIR, True)  # open_clip keeps the parsed config in memory
    path = _CONFIG_DIR / f"{name}.json"
    path.write_text(json.dumps(model_cfg, sort_keys=True))
    open_clip.add_model_config(path)
    _REGISTERED.add(name)


@dataclass
class LoadedClip:
    model: Any
    preprocess: Any
    tokenizer: Any
    device: Any
    plan: WeightsPlan
    untrained_fallback: bool = False
    scores_meaningful: bool = True


def _pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _create(name: str, pretrained: str | None, device, precision: str, seed: int, **kwargs):
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random/untrained weights are reproducible for a run seed
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, precision=precision, **kwargs
        )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


def _unavailable_message(cfg: ClipConfig, plan: WeightsPlan) -> str:
    what = cfg.model if cfg.model.startswith("hf-hub:") else f"{cfg.model}/{cfg.pretrained}"
    return (
        f"CLIP weights {what} are not available: {plan.problem}.\n"
        "Checked:\n  - " + "\n  - ".join(plan.checked or ["nothing"]) + "\n"
        "Fix one of:\n"
        f"  - pre-download them on a machine with network access (python -c \"import open_clip; "
        f"open_clip.create_model_and_transforms('{cfg.model}', pretrained='{cfg.pretrained}')\") and copy the "
        "Hugging Face cache (HF_HOME) here;\n"
        "  - set clip.pretrained to a local checkpoint path (a .bin/.pt/.safetensors state dict);\n"
        "  - set clip.allow_untrained_fallback: true to run with a small UNTRAINED model (scores mean nothing, "
        "min_score is not applied)."
    )


def load_clip(cfg: ClipConfig, ctx: RunContext, plan: WeightsPlan | None = None) -> LoadedClip:
    """One model per (weights, device, precision, seed) per process; later calls reuse it."""
    plan = plan or resolve_weights(cfg, ctx)
    if plan.kind == "unavailable" and not cfg.allow_untrained_fallback:
        raise ClipWeightsUnavailable(_unavailable_message(cfg, plan))
    key = json.dumps([plan.identity(), cfg.model_config_, cfg.device, cfg.precision, ctx.seed, plan.kind], sort_keys=True)
    with _LOCK:
        hit = _MODELS.get(key)
        if hit is not None:
            return hit
        device = _pick_device(cfg.device)
        if cfg.model_config_ is not None:
            _register_config(plan.name, cfg.model_config_)
        if plan.kind == "unavailable":
            name = _registered_name("untrained-fallback", TINY_UNTRAINED_CONFIG)
            _register_config(name, TINY_UNTRAINED_CONFIG)
            model, preprocess, tokenizer = _create(name, None, device, cfg.precision, ctx.seed)
            loaded = LoadedClip(model, preprocess, tokenizer, device, plan, untrained_fallback=True, scores_meaningful=False)
        else:
            try:
                model, preprocess, tokenizer = _create(
                    plan.name, plan.pretrained, device, cfg.precision, ctx.seed,
                    cache_dir=plan.cache_dir, **plan.preprocess,
                )
            except Exception as e:  # a download that failed after all
                if plan.kind != "download":
                    raise
                failed = WeightsPlan("unavailable", plan.name, plan.pretrained, checked=plan.checked + [f"download: {e}"],
                                     problem="the download failed")
                if not cfg.allow_untrained_fallback:
                    raise ClipWeightsUnavailable(_unavailable_message(cfg, failed)) from e
                return load_clip(cfg, ctx, failed)
            loaded = LoadedClip(model, preprocess, tokenizer, device, plan, scores_meaningful=plan.kind != "random")
        _MODELS[key] = loaded
        return loaded


# ------------------------------------------------------------------------------ scoring


def clip_scores(model, preprocess, tokenizer, images: list, texts: list[str], device) -> np.ndarray:
    """Cosine similarity of each (image, text) pair: L2-normalised embeddings, row-wise dot product.

    ``images`` are PIL images, ``preprocess`` the open_clip eval transform. Returns float32 of len(images)."""
    import torch
    import torch.nn.functional as F

    if len(images) != len(texts):
        raise ValueError(f"clip_scores: {len(images)} images but {len(texts)} texts")
    if not images:
        return np.zeros(0, dtype=np.float32)
    dtype = next(model.visual.parameters()).dtype
    with torch.inference_mode():
        pixels = torch.stack([preprocess(im) for im in images]).to(device=device, dtype=dtype)
        tokens = tokenizer(texts).to(device)
        img = F.normalize(model.encode_image(pixels).float(), dim=-1)
        txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
        return (img * txt).sum(dim=-1).cpu().numpy().astype(np.float32)


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
            self._plan = resolve_weights(self.config, self.ctx)
        return self._plan

    def fingerprint(self) -> str:
        blob = super().fingerprint() + self.plan().identity()
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def load(self) -> LoadedClip:
        """Resolve and load the model now (raises ClipWeightsUnavailable); process() calls it lazily."""
        if self._loaded is None:
            self._loaded = load_clip(self.config, self.ctx, self.plan())
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
                scores[batch] = clip_scores(lc.model, lc.preprocess, lc.tokenizer, pil,
                                            [captions[i] for i in batch], lc.device)
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
