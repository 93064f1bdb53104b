"""The demo's real outputs, read by the loaders trainers use: open_clip's ``get_dataset_size``,
Hugging Face ``datasets.load_dataset``, and the parsing rules of LLaVA's and mPLUG-Owl's loaders
(quoted in each test; those trainers are not installable here, so their rules are applied as written)."""

import json
import os
import re
import shutil
import tarfile

import pytest
from PIL import Image

from datagen.cli import main
from datagen.sinks.export import export

from conftest import ROOT

pytestmark = pytest.mark.slow
SPLITS = ("stage1", "stage2", "stage2_text")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["run", str(ROOT / "recipes" / "demo.yaml"), "--out", str(out)]) == 0
    export(out, out / "export", "hf")
    return out


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return str(tmp_path / "hf-cache")


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def tar_members(out, split):
    return [m for p in sorted((out / split).glob("*.tar")) for m in tarfile.open(p).getnames()]


def test_open_clip_get_dataset_size_reads_every_split_folder(demo):
    """open_clip_train/data.py: ``sizes_filename = os.path.join(dir_path, 'sizes.json')`` and
    ``sum([int(sizes[os.path.basename(shard)]) for shard in shards_list])``."""
    from open_clip_train.data import get_dataset_size

    counts = manifest(demo)["counts"]
    expected = {"stage1": counts["stage1_samples"], "stage2": counts["stage2_samples"],
                "stage2_text": counts["stage2_text_samples"]}
    for split in SPLITS:
        shards = sorted(str(p) for p in (demo / split).glob("*.tar"))
        assert get_dataset_size("::".join(shards)) == (expected[split], len(shards)) and expected[split] > 0
    # open_clip's own webdataset pipeline (its eval path: webdataset 1.x in this environment breaks
    # the training path's group_by_keys_nothrow, KeyError 'fname', whatever the shards hold).
    import argparse

    import open_clip
    from open_clip_train.data import get_wds_dataset
    from torchvision import transforms

    shards = "::".join(sorted(str(p) for p in (demo / "stage1").glob("*.tar")))
    args = argparse.Namespace(val_data=shards, val_num_samples=None, batch_size=8, workers=0, world_size=1)
    info = get_wds_dataset(args, transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()]),
                           is_train=False, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    batches = list(info.dataloader)
    assert sum(images.shape[0] for images, _ in batches) == expected["stage1"]
    assert all(texts.shape == (images.shape[0], 77) for images, texts in batches)
    # The run-level sizes.json the bundled trainer reads stays as it was.
    assert sum(json.loads((demo / "sizes.json").read_text()).values()) == sum(expected.values())


def test_hf_load_dataset_returns_every_sample_and_every_stage2_image(demo, hf_cache):
    import datasets

    counts = manifest(demo)["counts"]
    stage1 = datasets.load_dataset(str(demo), "stage1", split="train", cache_dir=hf_cache)
    assert len(stage1) == counts["stage1_samples"]
    assert all(isinstance(r["json"]["objects"], list) and isinstance(r["json"]["captions"], list) for r in stage1)
    assert sum(1 for r in stage1 if r["json"]["objects"]) > 0, "COCO boxes came through"
    assert all(r["jpg"].size == (r["json"]["width"], r["json"]["height"]) for r in stage1)

    stage2 = datasets.load_dataset(str(demo), "stage2", split="train", cache_dir=hf_cache)
    assert len(stage2) == counts["stage2_samples"]
    slots = sorted(k for k in stage2.features if isinstance(stage2.features[k], datasets.Image))
    returned = listed = 0
    for r in stage2:
        images = [r[k] for k in slots if r[k] is not None]
        assert len(images) == len(r["json"]["images"]) >= 1, r["__key__"]
        returned += len(images)
        listed += len(r["json"]["images"])
    in_tars = sum(1 for m in tar_members(demo, "stage2") if m.endswith(".jpg"))
    assert returned == listed == in_tars
    assert max(len(r["json"]["images"]) for r in stage2) >= 2, "the demo has multi-image samples"
    # The same through the plain webdataset builder given the card's features, and streamed.
    features = datasets.load_dataset_builder(str(demo), "stage2", cache_dir=hf_cache).info.features
    plain = datasets.load_dataset("webdataset", data_files={"train": str(demo / "stage2" / "*.tar")},
                                  features=features, split="train", cache_dir=hf_cache)
    streamed = datasets.load_dataset(str(demo), "stage2", split="train", streaming=True)
    for ds in (plain, streamed):
        assert sum(1 for r in ds for k in slots if r[k] is not None) == in_tars

    text = datasets.load_dataset(str(demo), "stage2_text", split="train", cache_dir=hf_cache)
    assert len(text) == counts["stage2_text_samples"] and all(r["json"]["images"] == [] for r in text)


def test_hf_export_is_parquet_with_embedded_images(demo, hf_cache, tmp_path):
    import datasets

    folder = tmp_path / "moved"  # away from the shards and images: the pixels travel in the parquet
    shutil.copytree(demo / "export" / "hf", folder)
    assert sorted(p.suffix for p in (folder / "data").iterdir()) == [".parquet"]
    ds = datasets.load_dataset(str(folder), split="train", cache_dir=hf_cache)
    assert ds.features["images"] == datasets.List(datasets.Image())
    n_conv = sum(len(r["conversations"]) for r in ds)
    assert n_conv > 0 and len(ds) == sum(manifest(demo)["counts"]["conversations_by_lang"].values())
    with_images = [r for r in ds if r["images"]]
    assert with_images and all(im.size[0] > 0 for r in with_images for im in r["images"])
    assert {len(r["images"]) for r in ds} >= {0, 1, 2}


@pytest.fixture
def exports(demo):
    return demo / "export"  # llava and mplug_owl come from the recipe's output.exports


def _llava_preprocess_multimodal(conversations):
    """LLaVA-1.5 ``llava/train/train.py``, ``preprocess_multimodal``::

        for source in sources:
            for sentence in source:
                if DEFAULT_IMAGE_TOKEN in sentence['value']:
                    sentence['value'] = sentence['value'].replace(DEFAULT_IMAGE_TOKEN, '').strip()
                    sentence['value'] = DEFAULT_IMAGE_TOKEN + '\\n' + sentence['value']
                    sentence['value'] = sentence['value'].strip()
    """
    out = []
    for s in conversations:
        v = s["value"]
        if "<image>" in v:
            v = ("<image>" + "\n" + v.replace("<image>", "").strip()).strip()
        out.append({**s, "value": v})
    return out


def _alternates(conversations):
    """LLaVA ``preprocess_v1``: ``if roles[source[0]["from"]] != conv.roles[0]: source = source[1:]``
    then ``assert role == conv.roles[j % 2]`` for each sentence."""
    return [s["from"] for s in conversations] == ["human", "gpt"] * (len(conversations) // 2)


def test_llava_json_follows_llava15_loader_rules(exports):
    """LLaVA-1.5 ``LazySupervisedDataset.__getitem__``::

        if 'image' in sources[0]:
            image_file = self.list_data_dict[i]['image']
            image = Image.open(os.path.join(image_folder, image_file)).convert('RGB')

    ``image_file`` must be a string (a list raises TypeError in ``os.path.join``); after
    ``preprocess_multimodal`` the one image gets exactly one ``<image>``, at the front of the
    first human turn (the model replaces each ``<image>`` token with one image's features)."""
    items = json.loads((exports / "llava.json").read_text())
    assert items and any("image" in it for it in items) and any("image" not in it for it in items)
    for it in items:
        convs = it["conversations"]
        assert _alternates(convs), it["id"]
        if "image" in it:
            assert isinstance(it["image"], str)
            Image.open(os.path.join(exports, it["image"])).convert("RGB")
            after = _llava_preprocess_multimodal(convs)
            assert sum(s["value"].count("<image>") for s in after) == 1, it["id"]
            assert convs[0]["value"].startswith("<image>\n") and after == convs, "already in the loader's layout"
        else:
            assert not any("<image" in s["value"] for s in convs), it["id"]


def test_llava_interleave_json_follows_llava_next_loader_rules(exports):
    """LLaVA-NeXT ``llava/train/train.py`` (Interleave / OneVision)::

        if type(image_file) is list:
            image = [self.process_image(f) for f in image_file]

    with ``process_image`` opening ``os.path.join(image_folder, image_file)``, and in
    ``preprocess_multimodal`` only a turn with exactly one ``<image>`` is rewritten
    (``if num_im == 1 and DEFAULT_IMAGE_TOKEN in sentence["value"] and not
    sentence["value"].startswith(DEFAULT_IMAGE_TOKEN)``): each image needs its own ``<image>``."""
    items = json.loads((exports / "llava_interleave.json").read_text())
    assert items, "the demo has multi-image rows"
    single = {it["id"] for it in json.loads((exports / "llava.json").read_text())}
    for it in items:
        assert it["id"] not in single
        assert isinstance(it["image"], list) and len(it["image"]) >= 2
        for f in it["image"]:
            Image.open(os.path.join(exports, f)).convert("RGB")
        assert sum(s["value"].count("<image>") for s in it["conversations"]) == len(it["image"]), it["id"]
        assert not any(re.search(r"<image_\d+>", s["value"]) for s in it["conversations"])
        assert _alternates(it["conversations"])


def test_mplug_owl_jsonl_loads_under_the_official_config(exports):
    """mPLUG-Owl (v1) ``pipeline/data_utils/xgpt3_dataset.py``, ``MultiModalDataset.__getitem__``::

        task_type = data['task_type'].split('_')[-1]  # Get processor type
        ...
        image, text = self.processors[task_type](image=image, text=text)

    with processors from ``configs/v0.yaml``, which defines one: ``sft``. Its
    ``_extract_text_token_from_conversation`` splits the text on
    ``'|'.join(map(re.escape, list(self.media_tokens.keys()) + ['AI: ', '\\nHuman: ']))`` and fills
    each ``<image>`` with the next image, so the image count must equal the ``<image>`` count."""
    processors = {"sft": object()}  # configs/v0.yaml: processors: sft: ...
    lines = (exports / "mplug_owl.jsonl").read_text().splitlines()
    assert lines
    pattern = "|".join(map(re.escape, ["<image>", "AI: ", "\nHuman: "]))
    for line in lines:
        data = json.loads(line)
        assert data["task_type"].split("_")[-1] in processors, data["task_type"]
        assert data["task_type"].startswith("datagen_")
        assert len(data["image"]) == data["text"].count("<image>")
        for path in data["image"]:  # relative to the export folder, where training starts
            Image.open(os.path.join(exports, path)).convert("RGB")
        chunks = [c for c in re.split(f"({pattern})", data["text"]) if c]
        assert "AI: " in chunks and chunks[0].startswith("The following is a conversation")


def test_same_recipe_in_two_checkouts_gives_identical_shards(tmp_path):
    """Local image paths are stored relative to the recipe's folder, so where the checkout lives
    does not reach the shard bytes."""
    outs = []
    for where in ("a/repo", "bb/deeper/checkout"):
        repo = tmp_path / where
        shutil.copytree(ROOT / "datagen" / "assets" / "demo", repo / "datagen" / "assets" / "demo")
        (repo / "recipes").mkdir(parents=True)
        shutil.copy(ROOT / "recipes" / "demo.yaml", repo / "recipes" / "demo.yaml")
        out = tmp_path / f"out{len(outs)}"
        assert main(["run", str(repo / "recipes" / "demo.yaml"), "--out", str(out),
                     "--set", "ocr=null", "--set", "filters.clip=null"]) == 0
        outs.append(out)
    a, b = ([p.relative_to(o) for o in [out] for p in sorted(out.glob("stage*/*.tar"))] for out in outs)
    assert a == b and len(a) >= 3
    for rel in a:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    urls = [json.loads(tarfile.open(outs[0] / rel).extractfile(m).read())["url"]
            for rel in a if rel.parts[0] == "stage1"
            for m in tarfile.open(outs[0] / rel).getmembers() if m.name.endswith(".json")]
    assert urls and all(not u.startswith("/") and str(tmp_path) not in u for u in urls)
    assert any(u.startswith("../datagen/assets/demo/") for u in urls)
