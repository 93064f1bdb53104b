"""``datagen check`` over the demo's real outputs and hand-corrupted copies of them, with tokenizers
built offline (tests/offline_tokenizers.py)."""

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from datagen.check import (IGNORE_INDEX, TEMPLATES, Report, Sample, Template, TokenCheck, check, llava_v1_labels,
                           load_tokenizer, parse_mplug_text)
from datagen.cli import main
from datagen.sinks.export import SUMS, export, read_sums

from conftest import ROOT
from offline_tokenizers import byte_level, llama_style

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["run", str(ROOT / "recipes" / "demo.yaml"), "--out", str(out), "--set", "ocr=null",
                 "--set", "output.check={}"]) == 0
    for fmt in ("sharegpt", "hf"):  # the recipe exports llava and mplug_owl
        export(out, out / "export", fmt)
    return out


def _texts(demo):
    return [c["value"] for name in ("llava.json", "llava_interleave.json")
            for it in json.loads((demo / "export" / name).read_text()) for c in it["conversations"]]


@pytest.fixture(scope="module")
def toks(demo, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = _texts(demo)
    return {"llama": str(llama_style(texts, d / "llama", legacy=True)),
            "llama_new": str(llama_style(texts, d / "llama_new", legacy=False)),
            "byte": str(byte_level(texts, d / "byte"))}


@pytest.fixture
def copy(demo, tmp_path):
    """A copy of the demo's export folder to break by hand."""
    dest = tmp_path / "export"
    shutil.copytree(demo / "export", dest, ignore=shutil.ignore_patterns("hf"))
    return dest


def n_conversations(demo):
    return sum(json.loads((demo / "manifest.json").read_text())["counts"]["conversations_by_lang"].values())


# ----------------------------------------------------------------------------- the demo passes

def test_demo_exports_pass_with_llama_tokenizer_and_llava_v1(demo, toks, capsys):
    report = check(demo, tokenizer=toks["llama"], template="llava_v1")
    assert report.ok, report.text()
    counts = json.loads((demo / "manifest.json").read_text())["counts"]
    n = n_conversations(demo)
    assert report.checked == {"wds:stage1": counts["stage1_samples"], "wds:stage2": counts["stage2_samples"],
                              "wds:stage2_text": counts["stage2_text_samples"],
                              "llava": n, "mplug_owl": n, "sharegpt": n, "hf": n}
    assert main(["check", str(demo), "--tokenizer", toks["llama"], "--template", "llava_v1"]) == 0
    out = capsys.readouterr().out
    assert "problems: none" in out and "result: OK" in out and "checksums not verified" not in out


@pytest.mark.parametrize("tok,template", [("llama_new", "llava_v1"), ("llama", "vicuna_v1"),
                                          ("llama", "mplug_owl"), ("byte", "chatml")])
def test_demo_passes_with_matching_template_and_tokenizer(demo, toks, tok, template):
    report = check(demo, ["llava", "mplug_owl"], toks[tok], template)
    assert report.ok, report.text()


def test_exports_record_image_sha256(demo):
    sums = read_sums(demo / "export")
    images = sorted((demo / "export" / "images").iterdir())
    assert len(sums) == len(images) > 0
    for p in images:
        assert sums[f"images/{p.name}"] == hashlib.sha256(p.read_bytes()).hexdigest()


def test_recipe_check_runs_at_the_end_and_fails_the_run(demo, toks, tmp_path, capsys):
    """``output.check`` checks the finished run (the demo fixture ran with it: shards, llava and
    mplug_owl exports, no problems); a template the data does not fit fails the run with exit 5."""
    report = json.loads((demo / "manifest.json").read_text())["check"]
    assert report["ok"] and report["problems"] == {} and report["checked"]["llava"] == n_conversations(demo)
    out = tmp_path / "run"
    shutil.copytree(demo, out)  # with _run/: the rerun reuses every step and rewrites the outputs
    rc = main(["run", str(ROOT / "recipes" / "demo.yaml"), "--out", str(out), "--set", "ocr=null",
               "--set", f"output.check.tokenizer={toks['byte']}"])
    assert rc == 5
    assert "tokenization_mismatch" in capsys.readouterr().out
    failed = json.loads((out / "manifest.json").read_text())["check"]
    assert not failed["ok"] and failed["problems"]["tokenization_mismatch"] > 0


# ------------------------------------------------------------------------ tokenisation problems

def test_byte_level_tokenizer_with_llava_v1_is_a_tokenization_mismatch(demo, toks, capsys):
    """No bos token: LLaVA's ``cur_len = 1`` and ``- 2`` assume one, so every round is off (LLaVA
    #1166, a Qwen/LLaMA-3 tokenizer under the v1 template). Every conversation is found."""
    report = check(demo, ["llava"], toks["byte"], "llava_v1")
    assert report.problems == {"tokenization_mismatch": n_conversations(demo)}
    assert main(["check", str(demo), "--format", "llava", "--tokenizer", toks["byte"]]) == 1
    assert "tokenization mismatch" in capsys.readouterr().out


def test_wrong_legacy_flag_is_a_tokenization_mismatch_on_later_rounds(demo, toks, tmp_path):
    """A non-legacy LLaMA tokenizer that says it is legacy: preprocess_v1 skips its ``round_len -= 1``
    and every round after the first is one token off (LLaVA #661)."""
    lying = tmp_path / "lying"
    shutil.copytree(toks["llama_new"], lying)
    cfg = json.loads((lying / "tokenizer_config.json").read_text())
    assert cfg["legacy"] is False
    (lying / "tokenizer_config.json").write_text(json.dumps(cfg | {"legacy": True}))
    report = check(demo, ["llava"], str(lying), "llava_v1")
    items = [it for name in ("llava.json", "llava_interleave.json")
             for it in json.loads((demo / "export" / name).read_text())]
    multi_round = sum(1 for it in items if len(it["conversations"]) > 2)
    assert multi_round > 0
    assert report.problems == {"tokenization_mismatch": multi_round}


def test_llava_rule_masks_exactly_the_replies(toks):
    tok = load_tokenizer(toks["llama"])
    text, targets = TEMPLATES["llava_v1"].render([("user", "<image>\nWhat is it?"), ("assistant", "A dog."),
                                                  ("user", "Is it red?"), ("assistant", "No.")], tok.eos_token)
    labels, cur_len, total_len = llava_v1_labels(text, tok, True, 2048)
    assert cur_len == total_len
    trained = tok.decode([x for x in labels if x != IGNORE_INDEX])
    assert trained.replace(" ", "") == "Adog.</s>No.</s>"
    assert [text[a:b] for a, b in targets] == [" A dog.</s>", " No.</s>"]


def test_token_across_a_reply_boundary_is_a_label_mask_mismatch(tmp_path):
    """A tokenizer whose token holds the end of the prompt and the start of the reply: no mask can
    train on exactly the reply."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[EOS]", "Q:", "hi", "A:yes", "A:", "yes"])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="[EOS]", unk_token="[UNK]")
    report = Report()
    tight = Template("tight", "", "Q: ", " A:", " ", " [EOS]")
    TokenCheck(report, tok, tight, 100, 1)(Sample("s1", [("user", "hi"), ("assistant", "yes")], 0))
    assert report.problems == {"label_mask_mismatch": 1} and "'A:yes'" in report.examples["label_mask_mismatch"][0]
    spaced = Template("spaced", "", "Q: ", " A: ", " ", " [EOS]")
    ok = Report()
    TokenCheck(ok, tok, spaced, 100, 1)(Sample("s1", [("user", "hi"), ("assistant", "yes")], 0))
    assert not ok.problems


def test_conversation_past_max_len_is_reported(copy, toks):
    items = json.loads((copy / "llava.json").read_text())
    text_only = [it for it in items if "image" not in it]
    long = dict(text_only[0], id="long", conversations=[
        {"from": "human", "value": "Describe the sea. " * 200}, {"from": "gpt", "value": "Blue."}])
    (copy / "llava.json").write_text(json.dumps(text_only[:3] + [long]))
    (copy / "llava_interleave.json").unlink()
    report = check(copy, ["llava"], toks["llama"], "llava_v1", max_len=512)
    assert report.problems == {"too_long": 1} and "id=long" in report.examples["too_long"][0]
    assert "> --max-len 512" in report.examples["too_long"][0]
    # images count as --tokens-per-image each
    with_image = [it for it in items if "image" in it][:2]
    (copy / "llava.json").write_text(json.dumps(with_image))
    assert check(copy, ["llava"], toks["llama"], "llava_v1", max_len=512, tokens_per_image=600).problems == {
        "too_long": 2}
    assert check(copy, ["llava"], toks["llama"], "llava_v1", max_len=2048, tokens_per_image=600).ok


# ------------------------------------------------------------------------------ image problems

def _first_image_item(copy):
    items = json.loads((copy / "llava.json").read_text())
    it = next(it for it in items if "image" in it)
    users = sum(1 for x in items if x.get("image") == it["image"])
    return it["image"], users


def test_missing_image_found(copy, capsys):
    ref, users = _first_image_item(copy)
    (copy / ref).unlink()
    report = check(copy, ["llava"])
    assert report.problems == {"image_missing": users}
    assert main(["check", str(copy), "--format", "llava"]) == 1
    out = capsys.readouterr().out
    assert "image_missing" in out and ref in out and "result: FAIL" in out


def test_corrupt_image_found(copy):
    ref, users = _first_image_item(copy)
    data = (copy / ref).read_bytes()
    (copy / ref).write_bytes(data[: len(data) // 2])  # truncated JPEG, the checksum updated to match
    sums = read_sums(copy) | {ref: hashlib.sha256(data[: len(data) // 2]).hexdigest()}
    (copy / SUMS).write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))
    assert check(copy, ["llava"]).problems == {"image_corrupt": users}


def test_sha256_mismatch_found(copy):
    ref, users = _first_image_item(copy)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")  # a valid picture, not the one recorded
    (copy / ref).write_bytes(buf.getvalue())
    report = check(copy, ["llava"])
    assert report.problems == {"image_sha256_mismatch": users}
    assert "recorded" in report.examples["image_sha256_mismatch"][0]


def test_export_without_sums_is_noted_not_failed(copy):
    (copy / SUMS).unlink()
    report = check(copy, ["llava"])
    assert report.ok and any("checksums not verified" in n for n in report.notes)


def test_stage1_sample_sha_and_shard_sha_found(demo, tmp_path):
    """A stage-1 sample whose image differs from its ``image_sha256``, and the shard then differs
    from the sha256 in manifest.json."""
    out = tmp_path / "run"
    shutil.copytree(demo, out, ignore=shutil.ignore_patterns("export", "_run"))
    shard = sorted((out / "stage1").glob("*.tar"))[0]
    with tarfile.open(shard) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    victim = next(m.name for m, _ in members if m.name.endswith(".jpg"))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, data in members:
            data = buf.getvalue() if m.name == victim else data
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    report = check(out, ["wds"])
    assert report.problems == {"image_sha256_mismatch": 2}
    examples = " ".join(report.examples["image_sha256_mismatch"])
    assert victim.split(".")[0] in examples and "manifest.json" in examples


# ------------------------------------------------------------------ placeholders, schema, roles

def test_placeholder_count_mismatch_found(copy):
    items = json.loads((copy / "llava_interleave.json").read_text())
    first = items[0]["conversations"][0]
    first["value"] = first["value"].replace("<image>", "", 1)
    (copy / "llava_interleave.json").write_text(json.dumps(items))
    lines = (copy / "mplug_owl.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["text"] += "\nHuman: <image>"
    (copy / "mplug_owl.jsonl").write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
    report = check(copy, ["llava", "mplug_owl"])
    assert report.problems == {"placeholder_count_mismatch": 2}
    assert any(items[0]["id"] in e for e in report.examples["placeholder_count_mismatch"])
    assert any("mplug_owl.jsonl:1" in e for e in report.examples["placeholder_count_mismatch"])


def test_llava15_single_image_needs_one_image_turn(copy):
    """LLaVA-1.5 puts one <image> at the front of EVERY turn that has one: an image mentioned in two
    turns becomes two placeholders for one picture."""
    items = json.loads((copy / "llava.json").read_text())
    it = next(x for x in items if "image" in x and len(x["conversations"]) >= 3)
    it["conversations"][2]["value"] += " <image>"
    (copy / "llava.json").write_text(json.dumps(items))
    assert check(copy, ["llava"]).problems == {"placeholder_count_mismatch": 1}


def test_broken_role_alternation_found(copy):
    items = json.loads((copy / "sharegpt.json").read_text())
    text = [it for it in items if not it["images"]]
    text[0]["conversations"][1]["from"] = "human"  # two human turns in a row
    text[1]["conversations"] = text[1]["conversations"][:-1]  # ends with the human
    text[2]["conversations"] = text[2]["conversations"][1:]  # starts with gpt
    (copy / "sharegpt.json").write_text(json.dumps(items))
    report = check(copy, ["sharegpt"])
    assert report.problems == {"role_alternation": 3}


def test_schema_problems_found(copy):
    items = json.loads((copy / "sharegpt.json").read_text())
    del items[0]["conversations"]
    items[1]["images"] = "images/x.jpg"  # sharegpt lists images
    items[2]["conversations"][0]["from"] = "system"
    (copy / "sharegpt.json").write_text(json.dumps(items))
    assert check(copy, ["sharegpt"]).problems == {"schema_invalid": 3}


def test_bad_shard_conversation_placeholders_found(demo, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(demo, out, ignore=shutil.ignore_patterns("export", "_run"))
    shard = sorted((out / "stage2").glob("*.tar"))[0]
    with tarfile.open(shard) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    name = next(m.name for m, _ in members if m.name.endswith(".json"))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, data in members:
            if m.name == name:
                body = json.loads(data)
                body["conversations"][0]["turns"][0]["content"] += " <image_7>"
                data = json.dumps(body).encode()
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    report = check(out, ["wds"])
    assert report.problems["placeholder_count_mismatch"] == 1
    assert set(report.problems) == {"placeholder_count_mismatch", "image_sha256_mismatch"}  # the shard's sha too


def test_parse_mplug_text_joins_image_lines_into_the_user_turn():
    from datagen.sinks.export import MPLUG_SYSTEM

    text = f"{MPLUG_SYSTEM}\nHuman: <image>\nHuman: What is it?\nAI: A cat.\nsecond line\nHuman: Sure?\nAI: Yes."
    assert parse_mplug_text(text) == [("user", "<image>\nWhat is it?"), ("assistant", "A cat.\nsecond line"),
                                      ("user", "Sure?"), ("assistant", "Yes.")]
    assert parse_mplug_text("Hello\nHuman: hi") is None


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nothing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["check", str(tmp_path / "empty")]) == 2
    assert "no dataset" in capsys.readouterr().err


def test_card_tells_releases_apart_and_lists_shard_checksums(demo):
    from datagen.sinks.manifest import dataset_card, release_id

    manifest = json.loads((demo / "manifest.json").read_text())
    card = (demo / "README.md").read_text()
    assert f"| datagen | {manifest['tools']['datagen']} |" in card and manifest["recipe_sha256"] in card
    assert f"| release id | `{release_id(manifest['shards'])}` |" in card
    for s in manifest["shards"]:
        assert f"| `{s['path']}` | {s['count']} | `{s['sha256']}` |" in card
    other = json.loads(json.dumps(manifest))  # the same recipe, one shard different
    other["shards"][0]["sha256"] = "0" * 64
    assert release_id(other["shards"]) != release_id(manifest["shards"])
    assert manifest["recipe_sha256"] in dataset_card(other) and release_id(manifest["shards"]) not in dataset_card(other)


def test_exported_samples_carry_provenance(demo):
    manifest = json.loads((demo / "manifest.json").read_text())
    items = [it for name in ("llava.json", "llava_interleave.json", "sharegpt.json")
             for it in json.loads((demo / "export" / name).read_text())]
    items += [json.loads(line) for line in (demo / "export" / "mplug_owl.jsonl").read_text().splitlines()]
    sources = {s["name"] for s in manifest["recipe"]["sources"]} | {"multi_image"}  # MMICL rows across sources
    for it in items:
        prov = it["provenance"]
        assert prov["recipe_sha256"] == manifest["recipe_sha256"] and prov["datagen"] == manifest["tools"]["datagen"]
        assert prov["source"] in sources and prov["source_ids"] and prov["generator"]
    assert {g for it in items for g in it["provenance"]["generator"]} >= {"template", "source"}
    stage1_keys = {k for split in ("stage1",) for k in _keys(demo, split)}
    image_ids = {i for it in items if it["provenance"]["source"] in ("coco", "multi_image") for i in it["provenance"]["source_ids"]}
    assert any(i.startswith("coco_") for i in image_ids) and image_ids <= stage1_keys, "source row ids lead to the stage-1 sample (its url)"


def test_shard_samples_carry_the_run_provenance(demo, tmp_path):
    manifest = json.loads((demo / "manifest.json").read_text())
    run = {"recipe_sha256": manifest["recipe_sha256"], "datagen": manifest["tools"]["datagen"]}
    bodies = [json.loads(t.extractfile(m).read()) for split in ("stage1", "stage2", "stage2_text")
              for p in sorted((demo / split).glob("*.tar")) for t in [tarfile.open(p)]
              for m in t.getmembers() if m.name.endswith(".json")]
    c = manifest["counts"]
    assert len(bodies) == c["stage1_samples"] + c["stage2_samples"] + c["stage2_text_samples"] > 0
    assert all(b["provenance"] == run for b in bodies)
    assert all(b["source"] and b["key"] for b in bodies)
    # A shard from another run (another recipe) among these is noted.
    out = tmp_path / "run"
    shutil.copytree(demo, out, ignore=shutil.ignore_patterns("export", "_run"))
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(m | {"recipe_sha256": "f" * 64}))
    report = check(out, ["wds"])
    assert report.ok and any("wds:stage1: " in n and "another recipe" in n for n in report.notes)


def _keys(out, split):
    return {m.split(".")[0] for p in (out / split).glob("*.tar") for m in tarfile.open(p).getnames()}


def test_export_without_provenance_is_noted(copy):
    items = json.loads((copy / "llava.json").read_text())
    for it in items:
        it.pop("provenance")
    (copy / "llava.json").write_text(json.dumps(items))
    report = check(copy, ["llava"])
    assert report.ok and any(f"llava: {len(items)} samples without provenance" in n for n in report.notes)


def test_recipe_hash_names_the_data_not_the_machinery():
    from datagen.recipe import load_recipe
    from datagen.sinks.manifest import recipe_hash

    demo = str(ROOT / "recipes" / "demo.yaml")
    base = recipe_hash(load_recipe(demo, [])[0])
    assert base == recipe_hash(load_recipe(demo, ["executor.workers=2", "output.exports=[]", "output.check={}",
                                                  "fetch.workers=3"])[0])
    assert base != recipe_hash(load_recipe(demo, ["seed=3"])[0])
    assert base != recipe_hash(load_recipe(demo, ["synthesize.positive_ratio=0.4"])[0])


def test_mplug_owl_template_renders_as_the_export_writes(demo):
    from datagen.sinks.export import MPLUG_SYSTEM

    line = (demo / "export" / "mplug_owl.jsonl").read_text().splitlines()[0]
    text = json.loads(line)["text"]
    turns = parse_mplug_text(text)
    rendered, targets = TEMPLATES["mplug_owl"].render(turns, "</s>")
    assert rendered.replace("</s>", "") == text and rendered.startswith(MPLUG_SYSTEM)
    assert all(rendered[b:e].endswith("</s>") for b, e in targets)


def test_tokenizer_that_is_not_a_local_folder_exits_2(demo, tmp_path, capsys):
    assert main(["check", str(demo), "--format", "llava", "--tokenizer", str(tmp_path / "no-such-tokenizer")]) == 2
    assert "not a local tokenizer folder" in capsys.readouterr().err
