"""JSON Schemas: the recipe schema is generated from the config models; the row and
manifest schemas are written by hand in ``schemas/`` and tests check real outputs
against them."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.schema.json"


def recipe_schema_text() -> str:
    from datagen.config import Recipe

    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/datagen/datagen/schemas/recipe.schema.json"
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def load(name: str) -> dict:
    return json.loads(schema_path(name).read_text())


def validator(name: str):
    """A jsonschema validator for ``schemas/<name>.schema.json`` with local $refs resolved."""
    import jsonschema
    from referencing import Registry, Resource

    registry = Registry()
    for p in SCHEMA_DIR.glob("*.schema.json"):
        doc = json.loads(p.read_text())
        registry = registry.with_resource(p.name, Resource.from_contents(doc))
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=registry)
