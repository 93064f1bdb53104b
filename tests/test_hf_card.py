"""The dataset card's features are written without importing ``datasets`` (issue 10: 56 MB and 0.4 s
in the driver); they must stay byte for byte what ``datasets`` itself writes for the same schemas."""

from __future__ import annotations

import pyarrow as pa
import pytest
import yaml

from datagen.core.records import CONVERSATION_SCHEMA, PAIR_SCHEMA
from datagen.sinks.hf import card_header, image_members, shard_features
from datagen.sinks.manifest import SAMPLE_PROVENANCE
from datagen.sinks.shards import json_fields

datasets = pytest.importorskip("datasets")
from datasets.info import DatasetInfo, DatasetInfosDict  # noqa: E402

ODD = pa.schema([
    ("flag", pa.bool_()), ("i8", pa.int8()), ("u64", pa.uint64()), ("f16", pa.float16()), ("f32", pa.float32()),
    ("big", pa.large_string()), ("raw", pa.binary()), ("nothing", pa.null()),
    ("cat", pa.dictionary(pa.int32(), pa.string())),
    ("nested", pa.list_(pa.list_(pa.float32()))), ("big_list", pa.large_list(pa.int64())),
    ("list_of_lists_of_structs", pa.list_(pa.list_(pa.struct([("a", pa.int16())])))),
    ("deep", pa.struct([("inner", pa.struct([("xs", pa.list_(pa.string()))]))])),
])


def datasets_features(json_schema: pa.Schema, members: list[str], caption: bool):
    """What the card declared when it was built with ``datasets`` (the reference)."""
    feats = {name: datasets.Image() for name in members}
    if caption:
        feats["txt"] = datasets.Value("string")
    feats["json"] = dict(datasets.Features.from_arrow_schema(json_schema))
    feats["__key__"] = datasets.Value("string")
    feats["__url__"] = datasets.Value("string")
    return datasets.Features(feats)


def datasets_header(configs: dict, default) -> str:
    header = {"configs": [{"config_name": name, **({"default": True} if name == default else {}),
                           "data_files": [{"split": "train", "path": globs}]} for name, (globs, _) in configs.items()]}
    DatasetInfosDict({name: DatasetInfo(features=f, config_name=name) for name, (_, f) in configs.items()}
                     ).to_dataset_card_data(header)
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"


def stage_schemas() -> dict[str, pa.Schema]:
    pairs = json_fields(PAIR_SCHEMA.append(pa.field("original_width", pa.int32()))).append(SAMPLE_PROVENANCE)
    convs = json_fields(CONVERSATION_SCHEMA).append(SAMPLE_PROVENANCE)
    return {"pairs": pairs, "convs": convs, "odd": ODD}


@pytest.mark.parametrize("name", ["pairs", "convs", "odd"])
def test_features_are_what_datasets_writes(name):
    schema = stage_schemas()[name]
    for members, caption in ((["jpg"], True), (image_members(3, ("jpg", "png")), False), ([], False)):
        ours = shard_features(schema, members, caption)
        assert ours == datasets_features(schema, members, caption)._to_yaml_list()
        # and datasets reads them back as the same features
        assert datasets.Features._from_yaml_list(ours) == datasets_features(schema, members, caption)


@pytest.mark.parametrize("names,default", [(["stage1"], "stage1"), (["default"], "default"),
                                           (["stage2_text", "stage1", "stage2"], "stage2_text")])
def test_card_header_is_what_datasets_writes(names, default):
    s = stage_schemas()
    ours = {n: ([f"{n}/*.tar"], shard_features(s["pairs"] if n == "stage1" else s["convs"], ["jpg"], n == "stage1"))
            for n in names}
    ref = {n: ([f"{n}/*.tar"], datasets_features(s["pairs"] if n == "stage1" else s["convs"], ["jpg"], n == "stage1"))
           for n in names}
    assert card_header(ours, default) == datasets_header(ref, default)


def test_a_type_the_card_cannot_declare_is_a_clear_error():
    with pytest.raises(ValueError, match="time32.*datagen.sinks.hf"):
        shard_features(pa.schema([("t", pa.time32("s"))]), [], False)
