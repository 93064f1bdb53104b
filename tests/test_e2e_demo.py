"""End to end: the bundled demo recipe, offline, checked against the schemas and read back with webdataset."""

import hashlib
import io
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from datagen.cli import main
from datagen.schemas import validator

from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["run", str(ROOT / "recipes" / "demo.yaml"), "--out", str(out)]) == 0
    return out


def shards(out, split):
    return sorted(str(p) for p in (out / split).glob(f"{split}-*.tar"))


def read_split(out, split):
    return list(wds.WebDataset(shards(out, split), shardshuffle=False, empty_check=False))


def test_manifest_reconciles_and_matches_schema(demo):
    manifest = json.loads((demo / "manifest.json").read_text())
    validator("manifest").validate(manifest)
    pairs = manifest["counts"]["pairs"]
    assert pairs["in"] == pairs["kept"] + pairs["rejected"] and pairs["reconciled"]
    rejects = pq.read_table(demo / "rejects.parquet")
    row_rejects = [r for r in rejects.to_pylist() if r["step"] not in ("synthesize", "llm_generate", "translate")]
    assert len(row_rejects) == pairs["rejected"]
    reasons = {r["reason"].split(":")[0] for r in row_rejects}
    # The demo's planted bad rows, each with its own reason.
    assert {"file_not_found", "image_truncated", "not_an_image", "caption_empty", "duplicate_of", "malformed_row",
            "image_too_small", "aspect_ratio"} <= reasons
    assert all(r["reason"] and r["step"] for r in rejects.to_pylist())
    # The demo opts in to its bundled files, and the manifest says which safety policy the run used.
    policy = next(s for s in manifest["steps"] if s["name"] == "fetch")["stats"]["policy"]
    assert policy["allow_local_files"] is True and policy["allow_loopback"] is False and policy["allow_networks"] == []
    # Rejects never quote what a "server" sent: the non-image's text is not in rejects.parquet.
    planted = (ROOT / "datagen/assets/demo/images/not_an_image.jpg").read_bytes()[:12].decode()
    assert not any(planted in (r["detail"] or "") for r in rejects.to_pylist())
    # Offline there are no CLIP weights: the run must say so in plain words.
    assert any("UNTRAINED" in w and "mean nothing" in w for w in manifest["warnings"])
    assert "mean nothing" in (demo / "README.md").read_text()


def test_shards_match_manifest_and_sizes(demo):
    manifest = json.loads((demo / "manifest.json").read_text())
    sizes = json.loads((demo / "sizes.json").read_text())
    assert manifest["shards"], "no shards written"
    for sh in manifest["shards"]:
        data = (demo / sh["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sh["sha256"] and len(data) == sh["bytes"]
        assert sizes[sh["path"]] == sh["count"]
    assert not list(demo.rglob("*.partial")), "half-written shards left behind"
    for split, count_key in (("stage1", "stage1_samples"), ("stage2", "stage2_samples"),
                             ("stage2_text", "stage2_text_samples")):
        assert len(read_split(demo, split)) == manifest["counts"][count_key] > 0


def test_stage1_samples_are_img2dataset_layout(demo):
    check = validator("pair_row")
    keys = Counter()
    for s in read_split(demo, "stage1"):
        assert {"jpg", "txt", "json"} <= set(s), s.keys()
        row = json.loads(s["json"])
        check.validate(row)
        assert s["txt"].decode() == row["caption"]
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.mode == "RGB" and img.size == (row["width"], row["height"])
        assert hashlib.sha256(s["jpg"]).hexdigest() == row["image_sha256"]
        assert "." not in s["__key__"]
        keys[s["__key__"]] += 1
    assert max(keys.values()) == 1


def test_stage2_samples_hold_each_image_once_and_both_languages(demo):
    check = validator("conversation_row")
    langs, polarity, multi = Counter(), Counter(), 0
    for s in read_split(demo, "stage2"):
        row = json.loads(s["json"])
        check.validate(row)
        images = sorted(k for k in s if k.endswith("jpg"))
        if len(row["images"]) == 1:
            assert images == ["0.jpg"] and row["images"] == [s["__key__"]], "one image stored once per sample"
        else:
            multi += 1
            assert images == [f"{i}.jpg" for i in range(len(row["images"]))]
        for conv in row["conversations"]:
            langs[conv["lang"]] += 1
            text = " ".join(t["content"] for t in conv["turns"])
            if len(row["images"]) == 1:
                assert conv["turns"][0]["role"] == "user" and conv["turns"][0]["content"].startswith("<image>\n")
                assert text.count("<image>") == 1
            else:
                assert all(f"<image_{i}>" in text for i in range(len(row["images"])))
                assert "<image_%d>" % len(row["images"]) not in text
            for t in conv["turns"]:
                if t["role"] == "assistant":
                    polarity[t["polarity"]] += 1
    assert langs["en"] > 0 and langs["zh"] > 0
    assert polarity["positive"] > 0 and polarity["negative"] > 0
    assert multi > 0, "the demo composes multi-image samples"
    manifest = json.loads((demo / "manifest.json").read_text())
    synth = next(s for s in manifest["steps"] if s["name"] == "synthesize")["stats"]
    assert synth["checker_disagreements"] == 0
    text = read_split(demo, "stage2_text")
    for s in text:
        row = json.loads(s["json"])
        check.validate(row)
        assert row["images"] == [] and not any(k.endswith("jpg") for k in s)


def test_exports_llava_and_mplug_owl(demo):
    llava = json.loads((demo / "export" / "llava.json").read_text())
    multi = json.loads((demo / "export" / "llava_interleave.json").read_text())
    assert llava and all(i["conversations"][0]["from"] == "human" for i in llava + multi)
    single = [i for i in llava if "image" in i]
    assert all(isinstance(i["image"], str) for i in single) and multi
    assert all(isinstance(i["image"], list) for i in multi)
    assert single and all((demo / "export" / i["image"]).is_file() for i in single)
    assert all(i["conversations"][0]["value"].startswith("<image>\n") for i in single)
    for i in multi:
        assert all((demo / "export" / p).is_file() for p in i["image"])
        assert sum(t["value"].count("<image>") for t in i["conversations"]) == len(i["image"])
    lines = [json.loads(x) for x in (demo / "export" / "mplug_owl.jsonl").read_text().splitlines()]
    assert len(lines) == len(llava) + len(multi)
    one = next(x for x in lines if x["image"])
    assert one["text"].startswith("The following is a conversation between a curious human and AI assistant.")
    assert "\nHuman: <image>\nHuman: " in one["text"] and "\nAI: " in one["text"]
    assert one["text"].count("<image>") == len(one["image"])


def test_rerun_reuses_checkpoints_and_gives_identical_shards(demo, capsys):
    before = json.loads((demo / "manifest.json").read_text())
    assert main(["run", str(ROOT / "recipes" / "demo.yaml"), "--out", str(demo)]) == 0
    after = json.loads((demo / "manifest.json").read_text())
    assert all(s["reused"] for s in after["steps"])
    assert [s["sha256"] for s in before["shards"]] == [s["sha256"] for s in after["shards"]]
    out = capsys.readouterr().out
    assert "reconciled" in out and "(reused)" in out


def test_other_exports(demo, tmp_path):  # report.html and `datagen view`: tests/test_report.py, test_browser.py
    import datasets

    assert main(["export", str(demo), "--format", "sharegpt", "--dest", str(demo / "x")]) == 0
    sharegpt = json.loads((demo / "x" / "sharegpt.json").read_text())
    assert main(["export", str(demo), "--format", "hf", "--dest", str(demo / "x")]) == 0
    ds = datasets.load_dataset(str(demo / "x" / "hf"), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == len(sharegpt) > 0 and set(ds["lang"]) == {"en", "zh"}


def test_every_captioned_image_speaks_chinese_and_chinese_descriptions_are_as_rich(demo):
    import statistics

    rows = [json.loads(s["json"]) for s in read_split(demo, "stage2")]
    single = [r for r in rows if len(r["images"]) == 1]
    assert single and all(any(c["lang"] == "zh" for c in r["conversations"]) for r in single)
    detailed = {"en": [], "zh": []}
    for r in single:
        for c in r["conversations"]:
            for i in range(0, len(c["turns"]) - 1, 2):
                if c["turns"][i]["task"] == "detailed_description":
                    a = c["turns"][i + 1]["content"]
                    detailed[c["lang"]].append(len(a.split()) if c["lang"] == "en" else len(a))
    assert detailed["en"] and detailed["zh"]
    assert statistics.median(detailed["zh"]) >= statistics.median(detailed["en"])  # characters against words
    synth = next(s for s in json.loads((demo / "manifest.json").read_text())["steps"] if s["name"] == "synthesize")["stats"]
    assert set(synth["yes_share"]) == {"family", "label"} and "existence" in synth["yes_share"]["family"]


def test_demo_has_every_scene_family_in_both_polarities_and_languages(demo):
    """Visual Genome-style annotations give relation, universal and grounding items; Wukong feeds stage 1."""
    seen = Counter()
    for s in read_split(demo, "stage2"):
        for conv in json.loads(s["json"])["conversations"]:
            for t in conv["turns"]:
                if t["role"] == "assistant":
                    seen[(t["task"], t["polarity"], conv["lang"])] += 1
    for task in ("relation", "universal", "grounding"):
        for pol in ("positive", "negative"):
            for lang in ("en", "zh"):
                assert seen[(task, pol, lang)] > 0, (task, pol, lang)
    wukong = [json.loads(s["json"]) for s in read_split(demo, "stage1") if json.loads(s["json"])["source"] == "wukong"]
    assert len(wukong) >= 10 and all(json.loads(r["meta"])["lang"] == "zh" for r in wukong)  # meta is JSON text
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in r["caption"]) for r in wukong)
