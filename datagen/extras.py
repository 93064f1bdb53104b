"""Optional extras: which feature needs which ``pip install 'datagen[EXTRA]'``, in one place.

The core install reads sources, downloads, filters by rules, deduplicates, synthesises and writes
shards. Models and paid services are extras (``pyproject.toml``)::

    clip   torch + open_clip      filters.clip, aesthetic, watermark, semantic_dedup
    train  clip + transformers... datagen train / eval / chat / export-model, check --tokenizer
    ocr    rapidocr-onnxruntime   ocr
    llm    openai, deepl          llm_generate, translate backends llm / deepl
    ray    ray                    executor.kind: ray
    nsfw   nudenet                filters.nsfw
    all    every one above but nsfw (see pyproject.toml)

:func:`recipe_needs` maps a recipe to what it needs; :func:`check_recipe` (called by the pipeline's
preflight, before any work) fails naming the feature, the extra and the pip command. Whether a
module is there is asked with ``importlib.util.find_spec``, which imports nothing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from datagen.recipe import RecipeError

# extra -> the modules it installs that our code imports
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "clip": ("torch", "open_clip"),
    "train": ("torch", "open_clip", "transformers", "peft", "safetensors", "tensorboard"),
    "ocr": ("rapidocr_onnxruntime",),
    "llm": ("openai", "deepl"),
    "ray": ("ray",),
    "nsfw": ("nudenet",),
}


@dataclass(frozen=True)
class Need:
    """``feature`` (a recipe key or a command) needs ``modules``, which come with ``extra``."""

    feature: str
    extra: str
    modules: tuple[str, ...]
    off: str = ""  # how to do without it, e.g. "--set filters.clip=null"

    @property
    def pip(self) -> str:
        return f"pip install 'datagen[{self.extra}]'"

    def missing(self) -> list[str]:
        return [m for m in self.modules if not _installed(m)]


class MissingExtra(RecipeError):
    """A feature is asked for whose optional packages are not installed."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or half-installed
        return False


def need(feature: str, extra: str, modules: tuple[str, ...] | None = None, off: str = "") -> Need:
    return Need(feature, extra, EXTRA_MODULES[extra] if modules is None else modules, off)


def recipe_needs(recipe) -> list[Need]:
    """Every optional feature ``recipe`` uses, with the extra and the modules it needs."""
    out: list[Need] = []
    f = recipe.filters
    if f.clip is not None:
        out.append(need("filters.clip", "clip", off="--set filters.clip=null"))
    if f.aesthetic is not None:
        out.append(need("filters.aesthetic", "clip", ("torch",), "--set filters.aesthetic=null"))
    if f.watermark is not None:
        out.append(need("filters.watermark", "clip", ("torch", "timm"), "--set filters.watermark=null"))
    if f.nsfw is not None:
        out.append(need("filters.nsfw", "nsfw", off="--set filters.nsfw=null"))
    if recipe.ocr is not None:
        out.append(need("ocr", "ocr", off="--set ocr=null"))
    if recipe.llm_generate is not None:
        out.append(need("llm_generate", "llm", ("openai",), "--set llm_generate=null"))
    t = recipe.translate
    if t is not None:
        used = {t.backend, *t.by_generator.values(), *t.by_source.values()}
        if "llm" in used:
            out.append(need("translate (backend llm)", "llm", ("openai",), "--set translate=null"))
        if "deepl" in used:
            out.append(need("translate (backend deepl)", "llm", ("deepl",), "--set translate=null"))
    if recipe.executor.kind == "ray":
        out.append(need("executor.kind: ray", "ray", off="--set executor.kind=local"))
    return out


def message(missing: list[tuple[Need, list[str]]]) -> str:
    lines = [f"{n.feature} needs the '{n.extra}' extra (missing: {', '.join(mods)}): {n.pip}"
             + (f"  (or run without it: {n.off})" if n.off else "") for n, mods in missing]
    extras = sorted({n.extra for n, _ in missing})
    if len(extras) > 1:
        lines.append(f"all at once: pip install 'datagen[{','.join(extras)}]'")
    return "\n".join(lines)


def check(needs: list[Need]) -> None:
    """Raise :class:`MissingExtra` naming every need whose modules are not installed."""
    missing = [(n, m) for n in needs if (m := n.missing())]
    if missing:
        raise MissingExtra(message(missing))


def check_recipe(recipe) -> None:
    check(recipe_needs(recipe))


def require(feature: str, extra: str, modules: tuple[str, ...] | None = None) -> None:
    """For commands: ``require("datagen train", "train")``."""
    check([need(feature, extra, modules)])
