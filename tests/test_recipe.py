import json

import jsonschema
import pytest
import yaml

from datagen.cli import main
from datagen.recipe import RecipeError, apply_override, interpolate, load_recipe
from datagen.schemas import recipe_schema_text, schema_path

from conftest import ROOT

MINIMAL = {
    "name": "t",
    "sources": [{"name": "laion", "kind": "laion", "path": "x.parquet"},
                {"name": "cc", "kind": "cc3m", "path": "x.tsv"}],
}


def write(tmp_path, data, name="r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_schema_file_is_in_sync_with_config_models():
    assert schema_path("recipe").read_text() == recipe_schema_text(), "run `make schema`"


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_recipes_validate_against_json_schema_and_models(recipe):
    schema = json.loads(schema_path("recipe").read_text())
    jsonschema.validate(yaml.safe_load(recipe.read_text()), schema)
    load_recipe(recipe)


def test_invalid_recipe_names_file_key_path_and_expectation(tmp_path):
    bad = json.loads(json.dumps(MINIMAL))
    bad["sources"][1]["batch_size"] = "many"
    bad["fetch"] = {"timeout_s": -1}
    p = write(tmp_path, bad)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "sources[1].batch_size" in msg and "integer" in msg
    assert "fetch.timeout_s" in msg and "greater than 0" in msg


def test_unknown_key_and_unknown_kind_are_errors(tmp_path):
    bad = json.loads(json.dumps(MINIMAL))
    bad["filters"] = {"quality": {"min_sid": 3}}
    with pytest.raises(RecipeError, match=r"filters\.quality\.min_sid: Extra inputs are not permitted"):
        load_recipe(write(tmp_path, bad))
    bad = json.loads(json.dumps(MINIMAL))
    bad["sources"][0]["kind"] = "flickr"
    with pytest.raises(RecipeError, match=r"sources\[0\].*'coco', 'laion'"):
        load_recipe(write(tmp_path, bad))


def test_a_negative_mixing_weight_is_an_error_naming_the_source(tmp_path):
    bad = dict(MINIMAL, stage1={"weights": {"laion": 2.0, "cc": -0.5}})
    with pytest.raises(RecipeError, match=r"stage1\.weights\.cc: Input should be greater than or equal to 0"):
        load_recipe(write(tmp_path, bad))
    recipe, _ = load_recipe(write(tmp_path, dict(MINIMAL, stage1={"weights": {"laion": 2.0, "cc": 0}})))
    assert recipe.stage1.weights == {"laion": 2.0, "cc": 0.0}, "0 leaves a source out of the stage"


def test_stage_must_name_existing_sources(tmp_path):
    bad = dict(MINIMAL, stage1={"sources": ["coyo"]})
    with pytest.raises(RecipeError, match="stage1 names source 'coyo'"):
        load_recipe(write(tmp_path, bad))


def test_env_interpolation_and_missing_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DG_DATA", "/data/laion")
    monkeypatch.delenv("DG_MISSING", raising=False)
    data = dict(MINIMAL, out="${DG_DATA}/out", description="${DG_MISSING:-none}")
    recipe, raw = load_recipe(write(tmp_path, data))
    assert recipe.out == "/data/laion/out"
    assert recipe.description == "none"
    assert raw["out"] == "${DG_DATA}/out", "the raw recipe (for the manifest) keeps the reference, not the value"
    with pytest.raises(RecipeError, match=r"r\.yaml: description: environment variable DG_MISSING is not set"):
        interpolate({"description": "${DG_MISSING}"}, "r.yaml")


def test_set_overrides_parse_yaml_values_and_address_list_items_by_name(tmp_path):
    p = write(tmp_path, MINIMAL)
    recipe, raw = load_recipe(p, ["seed=7", "sources.cc.limit=5", "sources.0.batch_size=64",
                                  "filters.quality.min_side=null", "output.exports=[llava]"])
    assert recipe.seed == 7
    assert recipe.sources[1].limit == 5 and recipe.sources[0].batch_size == 64
    assert recipe.filters.quality.min_side is None
    assert recipe.output.exports == ["llava"]
    with pytest.raises(RecipeError, match="no list item with index or name 'coyo'"):
        apply_override(json.loads(json.dumps(MINIMAL)), "sources.coyo.limit=1", "r.yaml")
    with pytest.raises(RecipeError, match="expected key.path=value"):
        apply_override({}, "seed", "r.yaml")


def test_cli_validate_reports_errors_before_any_work(tmp_path, capsys):
    bad = dict(MINIMAL, seed="x")
    p = write(tmp_path, bad)
    assert main(["run", str(p), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "seed" in err and "integer" in err
    assert not (tmp_path / "out").exists(), "nothing may be created for an invalid recipe"
    assert main(["validate", str(write(tmp_path, MINIMAL, "ok.yaml"))]) == 0


def test_unavailable_clip_weights_fail_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data = dict(MINIMAL, filters={"clip": {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}})
    p = write(tmp_path, data)
    assert main(["run", str(p), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ViT-B-32" in err and "allow_untrained_fallback" in err
    assert not (tmp_path / "out").exists(), "nothing may be created when the weights cannot be had"
