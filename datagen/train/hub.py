"""Fail fast when the trainer's named weights are neither local, nor cached, nor downloadable.

Offline, open_clip and huggingface_hub retry a missing download for about 30
seconds before failing with a message that does not say what to do. The
decision is ``datagen.weights``'s, the same code the CLIP filter uses; this
module phrases it in the trainer's config keys.
"""

from __future__ import annotations

from pathlib import Path

from datagen.offline import hf_endpoint, hub_offline, url_reachable
from datagen.weights import WeightsUnavailable, hf_cached, resolve_weights

__all__ = ["WeightsUnavailable", "check_hf_model", "check_open_clip"]


def check_hf_model(name: str, what: str = "llm.name") -> None:
    """A causal LM / tokenizer by Hugging Face id or local folder."""
    if Path(name).expanduser().exists():
        return
    if hf_cached(name, ["config.json", "tokenizer_config.json"]):
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

    from datagen.filters.clip_config import ClipConfig

    if pretrained and not name.startswith(("hf-hub:", "local-dir:")) and name in open_clip.list_models() \
            and not open_clip.is_pretrained_cfg(name, pretrained) and not Path(pretrained).expanduser().is_file():
        raise ValueError(f"vision: open_clip has no pretrained tag {pretrained!r} for {name!r}; "
                         f"known: {open_clip.list_pretrained_tags_by_model(name)}")
    plan = resolve_weights(ClipConfig(model=name, pretrained=pretrained))
    if plan.kind == "unavailable":
        raise WeightsUnavailable(
            f"vision: open_clip {name!r} / {pretrained!r}: {plan.problem}. Checked:\n  - " + "\n  - ".join(plan.checked)
            + "\nFetch the weights where there is network and set vision.pretrained to the checkpoint file "
            "(or vision.name to local-dir:/path).")
