"""Loading recipes: YAML -> --set overrides -> ${ENV} interpolation -> validated Recipe.

Errors name the file, the key path and what was expected, and come before any
work starts. The manifest stores the recipe *before* interpolation, so a
secret passed as ``${DEEPL_AUTH_KEY}`` never reaches an output file.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datagen.yamlconfig import ConfigError, describe_validation_error, key_path, read_mapping
from datagen.yamlconfig import apply_override as _apply_override

if TYPE_CHECKING:
    from datagen.config import Recipe

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RecipeError(ConfigError):
    """A recipe that cannot run; the message names the file and key path."""


def apply_override(data: dict, assignment: str, file: str) -> None:
    """``a.b.c=value`` on the raw recipe; list items by index or ``name``."""
    _apply_override(data, assignment, file, RecipeError)


def interpolate(node: Any, file: str, loc: tuple = ()) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; an unset VAR without default is an error."""
    if isinstance(node, dict):
        return {k: interpolate(v, file, loc + (k,)) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, file, loc + (i,)) for i, v in enumerate(node)]
    if isinstance(node, str):
        def sub(m: re.Match) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                if m.group(2) is None:
                    raise RecipeError(f"{file}: {key_path(loc)}: environment variable {m.group(1)} is not set"
                                      f" (write ${{{m.group(1)}:-default}} to give a default)")
                return m.group(2)
            return value
        return _ENV.sub(sub, node)
    return node


def read_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[dict, dict]:
    """The recipe file with the ``--set`` overrides applied: (raw, interpolated), not validated yet. Light:
    it imports no step or model (``datagen run`` peeks at the executor here, before the 0.25 s that
    validation imports)."""
    file = str(path)
    raw = read_mapping(Path(path), "recipe", RecipeError)
    for assignment in overrides or []:
        apply_override(raw, assignment, file)
    return raw, interpolate(copy.deepcopy(raw), file)


def validate_recipe(resolved: dict, file: str | Path) -> Recipe:
    from pydantic import ValidationError

    from datagen.config import Recipe
    from datagen.sources.config import SOURCE_KINDS

    try:
        return Recipe.model_validate(resolved)
    except ValidationError as e:
        raise RecipeError(describe_validation_error(e, str(file), "recipe", SOURCE_KINDS)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, dict]:
    """The validated recipe and the raw (not interpolated) dict for the manifest."""
    raw, resolved = read_recipe(path, overrides)
    return validate_recipe(resolved, path), raw
