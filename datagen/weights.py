"""Model weights: where they are, whether they can be had, and one loaded copy per process.

The one place that decides about weights, for the CLIP filter and for the
trainer (``datagen.train.hub``), so the two checks can never disagree.

Why the resolution is so careful: offline, open_clip and huggingface_hub retry
a missing download for about 30 s before failing, per file and per process.
:func:`resolve_weights` therefore decides up front, from the pretrained config
of the tag, the local Hugging Face cache, open_clip's URL cache,
``HF_HUB_OFFLINE`` and a 2 s reachability check of the host, whether the
weights can be had. If not, it either raises an error that says what was
checked and how to fix it, or (``allow_untrained_fallback``) builds a small
untrained model so that an offline demo still runs end to end; that case is
loud (a run warning, ``scores_meaningful: false`` in the stats) and the
threshold is not applied, so meaningless scores never drop rows.

torch and open_clip are imported inside functions only.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from datagen.filters.clip_config import TINY_UNTRAINED_CONFIG, ClipConfig
from datagen.offline import REACH_TIMEOUT_S, hf_endpoint, hf_hub_cache, host_reachable, hub_offline, url_host_port

_HF_CONFIG_NAME = "open_clip_config.json"
_HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class WeightsUnavailable(FileNotFoundError):
    """Named weights are neither local, nor cached, nor downloadable here."""


class ClipWeightsUnavailable(WeightsUnavailable):
    """The CLIP weights named in the recipe cannot be loaded here (and no fallback is allowed)."""


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


def hf_cached(repo_id: str, filenames: list[str], hub_cache: str | None = None, checked: list[str] | None = None) -> str | None:
    """The cached path of the first of ``filenames`` in the Hugging Face cache, noting each look in ``checked``."""
    from huggingface_hub import try_to_load_from_cache

    for fn in filenames:
        p = try_to_load_from_cache(repo_id, fn, cache_dir=hub_cache)
        if checked is not None:
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
    conf = hf_cached(repo_id, [_HF_CONFIG_NAME], hub_cache, checked)
    weights = hf_cached(repo_id, list(_HF_WEIGHT_NAMES), hub_cache, checked) if conf else None
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
        hit = hf_cached(repo_id, candidates + [filename], _hf_hub_cache(cfg), checked)
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


_HF_TEXT_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model", "vocab.txt", "vocab.json")


def _check_hf_text(cfg: ClipConfig, plan: WeightsPlan) -> WeightsPlan:
    """A text tower from Hugging Face (xlm-roberta-base-ViT-B-32: hf_model_name / hf_tokenizer_name) needs
    that repo's config and tokenizer files besides the CLIP checkpoint: cached, or a reachable host."""
    if plan.kind not in ("file", "download"):
        return plan
    import open_clip

    model_cfg = cfg.model_config_ if cfg.model_config_ is not None else open_clip.get_model_config(cfg.model) or {}
    text_cfg = model_cfg.get("text_cfg") or {}
    repos = sorted({text_cfg.get("hf_model_name"), text_cfg.get("hf_tokenizer_name")} - {None, ""})
    hub_cache = _hf_hub_cache(cfg)
    missing = [r for r in repos if not (hf_cached(r, ["config.json"], hub_cache, plan.checked)
                                        and hf_cached(r, list(_HF_TEXT_FILES), hub_cache, plan.checked))]
    if not missing or plan.kind == "download" or _network_check(*_hf_host(), plan.checked):
        return plan
    return WeightsPlan("unavailable", plan.name, plan.pretrained, checked=plan.checked,
                       problem=f"the text tower's Hugging Face files ({', '.join(missing)}: config and tokenizer) "
                       "are not cached and cannot be downloaded")


def resolve_weights(cfg: ClipConfig, resolve: Callable[[str], Path] = lambda p: Path(p).expanduser()) -> WeightsPlan:
    """Decide how to load the weights for ``cfg`` in at most a few seconds (never open_clip's 30 s retry);
    ``resolve`` turns a relative path of the recipe into a file."""
    return _check_hf_text(cfg, _resolve_weights(cfg, resolve))


def _resolve_weights(cfg: ClipConfig, resolve: Callable[[str], Path]) -> WeightsPlan:
    name = _registered_name(cfg.model, cfg.model_config_) if cfg.model_config_ is not None else cfg.model
    if cfg.model.startswith("hf-hub:"):
        return _resolve_hf_hub(cfg)
    if cfg.model.startswith("local-dir:"):
        folder = resolve(cfg.model[len("local-dir:"):])
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
    path = resolve(cfg.pretrained)
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


def load_clip(cfg: ClipConfig, seed: int = 0, plan: WeightsPlan | None = None,
              resolve: Callable[[str], Path] = lambda p: Path(p).expanduser()) -> LoadedClip:
    """One model per (weights, device, precision, seed) per process; later calls reuse it."""
    plan = plan or resolve_weights(cfg, resolve)
    if plan.kind == "unavailable" and not cfg.allow_untrained_fallback:
        raise ClipWeightsUnavailable(_unavailable_message(cfg, plan))
    key = json.dumps([plan.identity(), cfg.model_config_, cfg.device, cfg.precision, seed, plan.kind], sort_keys=True)
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
            model, preprocess, tokenizer = _create(name, None, device, cfg.precision, seed)
            loaded = LoadedClip(model, preprocess, tokenizer, device, plan, untrained_fallback=True, scores_meaningful=False)
        else:
            try:
                model, preprocess, tokenizer = _create(
                    plan.name, plan.pretrained, device, cfg.precision, seed,
                    cache_dir=plan.cache_dir, **plan.preprocess,
                )
            except Exception as e:  # a download that failed after all
                if plan.kind != "download":
                    raise
                failed = WeightsPlan("unavailable", plan.name, plan.pretrained, checked=plan.checked + [f"download: {e}"],
                                     problem="the download failed")
                if not cfg.allow_untrained_fallback:
                    raise ClipWeightsUnavailable(_unavailable_message(cfg, failed)) from e
                return load_clip(cfg, seed, failed, resolve)
            loaded = LoadedClip(model, preprocess, tokenizer, device, plan, scores_meaningful=plan.kind != "random")
        _MODELS[key] = loaded
        return loaded


