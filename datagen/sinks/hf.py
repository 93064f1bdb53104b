"""Hugging Face ``datasets`` interop: the features of our shards, declared in the dataset card.

Hugging Face's webdataset builder (``datasets/packaged_modules/webdataset/webdataset.py``) types a
dataset from its first samples unless features are given::

    NUM_EXAMPLES_FOR_FEATURES_INFERENCE = 5
    ...
    if not self.info.features:
        # Get one example to get the feature types
        pipeline = self._get_pipeline_from_tar(tar_paths[0], tar_iterators[0])
        first_examples = list(islice(pipeline, self.NUM_EXAMPLES_FOR_FEATURES_INFERENCE))
        if any(example.keys() != first_examples[0].keys() for example in first_examples):
            raise ValueError(...)

A member the first five samples lack is then dropped from every later sample (a stage-2 sample's
``1.jpg`` when the first five had one image each), and a field typed from a null or an empty
list fails to cast a later value. So the dataset card beside the shards declares one config per
split folder and its features in its YAML header: ``datasets.load_dataset(OUT, "stage2")`` reads
them instead of guessing, and returns every image of every sample (``0.jpg``, ``1.jpg``... up to
the largest image set in the split; the slots a sample does not use are None).
``load_dataset("webdataset", data_files=..., features=shard_features(...))`` does the same.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import yaml


# Plain arrow types -> the dtype names ``datasets`` writes (``features._arrow_to_datasets_dtype``).
_DTYPES = {
    pa.null(): "null", pa.bool_(): "bool",
    pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64",
    pa.uint8(): "uint8", pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64",
    pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64",
    pa.string(): "string", pa.large_string(): "large_string", pa.binary(): "binary", pa.large_binary(): "large_binary",
}


def yaml_feature(t: pa.DataType) -> dict[str, Any]:
    """One arrow type as a feature in the card's YAML, exactly as ``datasets`` writes it
    (``Features._to_yaml_list`` of ``Features.from_arrow_schema``) without importing ``datasets``
    (56 MB and 0.4 s in the driver, for a header). tests/test_hf_card.py compares the two."""
    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **yaml_feature(f.type)} for f in t]}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        key = "list" if pa.types.is_list(t) else "large_list"
        inner = yaml_feature(t.value_type)
        if list(inner) == ["dtype"]:
            return {key: inner["dtype"]}
        if list(inner) == ["struct"]:
            return {key: inner["struct"]}
        return {key: inner}
    if pa.types.is_dictionary(t):
        return yaml_feature(t.value_type)
    if t in _DTYPES:
        return {"dtype": _DTYPES[t]}
    raise ValueError(f"shard json field of arrow type {t}: no dataset card feature for it (add one to datagen.sinks.hf)")


def shard_features(json_schema: pa.Schema, image_members: list[str], caption: bool) -> list[dict[str, Any]]:
    """Features of one split's webdataset samples, in the card's YAML form: image members, ``txt``
    (stage 1), ``json`` typed by ``json_schema`` (the fields ``shards.shard_json`` writes), ``__key__``
    and ``__url__``."""
    feats: list[dict[str, Any]] = [{"name": name, "dtype": "image"} for name in image_members]
    if caption:
        feats.append({"name": "txt", "dtype": "string"})
    feats.append({"name": "json", **yaml_feature(pa.struct(list(json_schema)))})
    feats += [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
    return feats


def image_members(max_images: int, exts: tuple[str, ...]) -> list[str]:
    """Stage-2 image members a split can hold: ``0.jpg`` ... ``<max-1>.jpg`` (and other extensions)."""
    return [f"{i}.{ext}" for i in range(max_images) for ext in exts]


def card_header(configs: dict[str, tuple[list[str], list[dict[str, Any]]]], default: str | None = None) -> str:
    """The YAML front matter of a dataset card: ``configs`` maps a config name to (data file
    globs relative to the card, features in YAML form: ``shard_features``, or a ``datasets.Features``'
    ``_to_yaml_list()``). ``load_dataset(DIR, name)`` reads both. Laid out as ``datasets``'
    ``DatasetInfosDict.to_dataset_card_data`` lays it out: one config a mapping, several a list
    sorted by name, ``config_name`` first unless it is "default"."""
    header: dict[str, Any] = {"configs": [
        {"config_name": name, **({"default": True} if name == default else {}),
         "data_files": [{"split": "train", "path": globs}]}
        for name, (globs, _) in configs.items()
    ]}
    if len(configs) == 1:
        name, (_, feats) = next(iter(configs.items()))
        header["dataset_info"] = {"features": feats} if name == "default" else {"config_name": name, "features": feats}
    elif configs:
        header["dataset_info"] = [{"config_name": name, "features": feats} for name, (_, feats) in sorted(configs.items())]
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"
