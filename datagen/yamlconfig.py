"""Reading YAML config files: recipes, training configs and LLM prompt files share this.

One place for the three things every config file needs: a mapping read from
YAML with errors that name the file, ``--set key.path=value`` overrides, and
pydantic validation errors written as ``key.path: what was expected``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import yaml

if TYPE_CHECKING:  # reading a file needs no pydantic (``datagen.recipe.read_recipe``)
    from pydantic import ValidationError


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and key path."""


def key_path(loc: Iterable) -> str:
    """``('sources', 1, 'limit')`` -> ``sources[1].limit``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def read_mapping(path: str | Path, what: str, error: type[ValueError] = ConfigError) -> dict:
    """The YAML mapping in ``path``; ``what`` ("recipe", "training config") goes into errors."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} is a mapping at the top level, got {type(data).__name__}")
    return data


def apply_override(data: dict, assignment: str, file: str, error: type[ValueError] = ConfigError) -> None:
    """``a.b.c=value`` (value parsed as YAML). In a list, a part is an index or a ``name`` of an item."""
    if "=" not in assignment:
        raise error(f"--set {assignment!r}: expected key.path=value")
    path, _, raw = assignment.partition("=")
    value = yaml.safe_load(raw) if raw.strip() else None
    parts = [p for p in path.strip().split(".") if p]
    if not parts:
        raise error(f"--set {assignment!r}: empty key path")
    set_path(data, parts, value, file, error)


def set_path(data: dict, parts: list[str], value: Any, file: str, error: type[ValueError] = ConfigError) -> None:
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
                    raise error(f"{file}: --set {where}: no list item with index or name {part!r} (names: {names})")
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
            raise error(f"{file}: --set {where}: cannot descend into a {type(node).__name__}")


def describe_validation_error(err: ValidationError, file: str, what: str, hide: frozenset = frozenset()) -> str:
    """One line per problem: ``key.path: message (got value)``. ``hide``: location parts users never
    wrote (the tag of a discriminated union)."""
    n = err.error_count()
    lines = [f"{file}: the {what} is not valid ({n} problem{'s' if n > 1 else ''}):"]
    for e in err.errors():
        loc = [p for i, p in enumerate(e["loc"]) if not (p in hide and i and isinstance(e["loc"][i - 1], int))]
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        lines.append(f"  {key_path(loc)}: {e['msg']}{shown}")
    return "\n".join(lines)
