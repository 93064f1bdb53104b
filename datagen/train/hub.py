"""Fail fast when named weights are neither local, nor cached, nor downloadable.

Offline, open_clip and huggingface_hub retry a missing download for about 30
seconds before failing with a message that does not say what to do. We check up
front: a local path or a cached file is fine; otherwise one short TCP connect to
the hub decides, and the error names the model, the cache and the fix.
"""

from __future__ import annotations

from pathlib import Path

from datagen.offline import hf_endpoint, hub_offline, url_reachable


class WeightsUnavailable(FileNotFoundError):
    pass


def _hf_cached(repo_id: str, filenames: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in filenames)


def check_hf_model(name: str, what: str = "llm.name") -> None:
    """A causal LM / tokenizer by Hugging Face id or local folder."""
    if Path(name).expanduser().exists():
        return
    if _hf_cached(name, ("config.json", "tokenizer_config.json")):
        return
    if hub_offline() or not url_reachable(hf_endpoint()):
        from huggingface_hub.constants import HF_HUB_CACHE

        raise WeightsUnavailable(
            f"{what}={name!r}: not a local folder, not in the Hugging Face cache ({HF_HUB_CACHE}), and "
            f"{hf_endpoint()} is unreachable or offline mode is on. Download it where there is network "
            f"(huggingface-cli download {name} --local-dir DIR) and set {what} to DIR."
        )


def check_open_clip(name: str, pretrained: str | None) -> None:
    """An open_clip model name plus pretrained tag, hf-hub: id, or local-dir:/file."""
    import open_clip

    if name.startswith("local-dir:") or not pretrained and not name.startswith("hf-hub:"):
        return
    if pretrained and Path(pretrained).expanduser().is_file():
        return
    if name.startswith("hf-hub:"):
        repo, urls = name[len("hf-hub:"):], [hf_endpoint()]
    else:
        cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not cfg:
            raise ValueError(f"vision: open_clip has no pretrained tag {pretrained!r} for {name!r}; "
                             f"known: {open_clip.list_pretrained_tags_by_model(name)}")
        repo = cfg.get("hf_hub", "").strip("/")
        urls = [hf_endpoint()] if repo else [cfg.get("url", "")]
    files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_config.json")
    if repo and _hf_cached(repo, files):
        return
    if hub_offline() or not any(url_reachable(u) for u in urls if u):
        raise WeightsUnavailable(
            f"vision: open_clip {name!r} / {pretrained!r} is not cached and {urls[0] or 'its host'} is unreachable. "
            f"Fetch the weights where there is network and set vision.pretrained to the checkpoint file "
            f"(or vision.name to local-dir:/path)."
        )
