import pytest

from datagen.yamlconfig import ConfigError, apply_override, key_path, read_mapping


def test_read_mapping_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"x\.yaml: recipe file not found"):
        read_mapping(tmp_path / "x.yaml", "recipe")
    (tmp_path / "l.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"l\.yaml: a recipe is a mapping at the top level, got list"):
        read_mapping(tmp_path / "l.yaml", "recipe")
    (tmp_path / "b.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: not valid YAML"):
        read_mapping(tmp_path / "b.yaml", "recipe")


def test_overrides_create_nested_keys_and_address_lists():
    data = {"sources": [{"name": "a", "limit": 1}], "x": None}
    apply_override(data, "x.y.z=3", "f")
    apply_override(data, "sources.a.limit=[1, 2]", "f")
    apply_override(data, "sources.0.kind=laion", "f")
    assert data == {"sources": [{"name": "a", "limit": [1, 2], "kind": "laion"}], "x": {"y": {"z": 3}}}
    with pytest.raises(ConfigError, match="cannot descend into a int"):
        apply_override(data, "x.y.z.w=1", "f")


def test_key_path():
    assert key_path(("sources", 1, "limit")) == "sources[1].limit"
    assert key_path(()) == "(top level)"
