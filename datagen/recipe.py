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
from typing import Any

import yaml
from pydantic import ValidationError

from datagen.config import Recipe
from datagen.sources.config import SOURCE_KINDS

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and key path."""


def _path_str(loc: tuple | list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


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
                    raise RecipeError(f"{file}: {_path_str(loc)}: environment variable {m.group(1)} is not set"
                                      f" (write ${{{m.group(1)}:-default}} to give a default)")
                return m.group(2)
            return value
        return _ENV.sub(sub, node)
    return node


def apply_override(data: dict, assignment: str, file: str) -> None:
    """``a.b.c=value`` (value parsed as YAML). In a list, a part is an index or a ``name`` of an item."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected key.path=value")
    path, _, raw = assignment.partition("=")
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = [p for p in path.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"--set {assignment!r}: empty key path")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if part.isdigit() and int(part) < len(node):
                idx = int(part)
            else:
                names = [x.get("name") for x in node if isinstance(x, dict)]
                if part not in names:
                    raise RecipeError(f"{file}: --set {where}: no list item with index or name {part!r}"
                                      f" (names: {names})")
                idx = names.index(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise RecipeError(f"{file}: --set {where}: cannot descend into a {type(node).__name__}")


def format_validation_error(err: ValidationError, file: str) -> str:
    lines = [f"{file}: the recipe is not valid ({err.error_count()} problem{'s' if err.error_count() > 1 else ''}):"]
    for e in err.errors():
        # Discriminated unions put the tag (the source kind) into the location; users never wrote it.
        loc = [p for i, p in enumerate(e["loc"]) if not (p in SOURCE_KINDS and i and isinstance(e["loc"][i - 1], int))]
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        lines.append(f"  {_path_str(loc)}: {e['msg']}{shown}")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, dict]:
    """The validated recipe and the raw (not interpolated) dict for the manifest."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise RecipeError(f"{file}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{file}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise RecipeError(f"{file}: a recipe is a mapping at the top level, got {type(raw).__name__}")
    for assignment in overrides or []:
        apply_override(raw, assignment, file)
    resolved = interpolate(copy.deepcopy(raw), file)
    try:
        recipe = Recipe.model_validate(resolved)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, file)) from None
    return recipe, raw
