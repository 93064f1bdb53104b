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


def shard_features(json_schema: pa.Schema, image_members: list[str], caption: bool):
    """Features of one split's webdataset samples: image members, ``txt`` (stage 1), ``json`` typed
    by ``json_schema`` (the fields ``shards.shard_json`` writes), ``__key__`` and ``__url__``."""
    import datasets

    feats: dict[str, Any] = {name: datasets.Image() for name in image_members}
    if caption:
        feats["txt"] = datasets.Value("string")
    feats["json"] = dict(datasets.Features.from_arrow_schema(json_schema))
    feats["__key__"] = datasets.Value("string")
    feats["__url__"] = datasets.Value("string")
    return datasets.Features(feats)


def image_members(max_images: int, exts: tuple[str, ...]) -> list[str]:
    """Stage-2 image members a split can hold: ``0.jpg`` ... ``<max-1>.jpg`` (and other extensions)."""
    return [f"{i}.{ext}" for i in range(max_images) for ext in exts]


def card_header(configs: dict[str, tuple[list[str], Any]], default: str | None = None) -> str:
    """The YAML front matter of a dataset card: ``configs`` maps a config name to (data file
    globs relative to the card, features). ``load_dataset(DIR, name)`` reads both."""
    from datasets.info import DatasetInfo, DatasetInfosDict

    header: dict[str, Any] = {"configs": [
        {"config_name": name, **({"default": True} if name == default else {}),
         "data_files": [{"split": "train", "path": globs}]}
        for name, (globs, _) in configs.items()
    ]}
    infos = DatasetInfosDict({name: DatasetInfo(features=feats, config_name=name)
                              for name, (_, feats) in configs.items()})
    infos.to_dataset_card_data(header)
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"
