"""Using a trained model: generation, `datagen chat`, `datagen export-model`, generation-based POPE."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from datagen.train.cli import chat_main, eval_main, export_main
from datagen.train.config import load_config
from datagen.train.eval import parse_yes_no
from datagen.train.inference import generate_ids, load_model, prompt_inputs, reply
from datagen.train.loop import train
from datagen.train.synthetic import write_synthetic_shards
from datagen.train.template import IMAGE_TOKEN_ID

torch.set_num_threads(2)
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "train"
FAST = ["data.num_workers=0", "data.batch_size=4", "data.max_seq_len=128", "log_every=100", "max_steps=2",
        "eval_every=null"]
LORA = ["train_llm=false", "lora={r: 8, alpha: 32, dropout: 0.05, target_modules: [q_proj, v_proj]}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    shards = write_synthetic_shards(root / "shards", n_images=8, n_multi=2, n_text=4, per_shard=8)
    train(load_config(RECIPES / "stage1_tiny.yaml", [f"data.dir={shards}", f"out={root / 's1'}", *FAST]), quiet=True)
    res = train(load_config(RECIPES / "stage2_tiny.yaml", [f"data.dir={shards}", f"out={root / 's2'}",
                                                           f"init_from={root / 's1'}", *FAST, *LORA]), quiet=True)
    model = res["model"]
    with torch.no_grad():  # LoRA B starts at zero and two steps barely move it: make the adapter matter
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p))
    from datagen.train.checkpoint import resolve_checkpoint
    ckpt = resolve_checkpoint(root / "s2")
    sd = model.state_dict()
    saved = torch.load(ckpt / "model.pt", weights_only=True)
    torch.save({k: sd[k] for k in saved}, ckpt / "model.pt")
    img = root / "cat.png"
    Image.new("RGB", (60, 40), (40, 200, 40)).save(img)
    return {"root": root, "shards": shards, "ckpt": ckpt, "image": img}


def _inputs(loaded, image):
    turns = [{"role": "user", "content": "<image>\nIs there a cat in the image?"}]
    return prompt_inputs(loaded, turns, [Image.open(image)])


def test_generation_is_greedy_decoding_of_the_model(run):
    loaded = load_model(run["ckpt"])
    inputs = _inputs(loaded, run["image"])
    assert (inputs["input_ids"] == IMAGE_TOKEN_ID).sum() == loaded.tokens_per_image
    # the image goes through the training pipeline's transform (squash, the checkpoint's mean/std)
    from datagen.train.data import DataSpec, Encoder

    pre = loaded.pre
    encoder = Encoder(DataSpec(data_dir="", stage=2, tokenizer=loaded.tokenizer, template="mplug_owl",
                               tokens_per_image=loaded.tokens_per_image, image_size=pre["image_size"],
                               mean=tuple(pre["mean"]), std=tuple(pre["std"]), resize=pre["resize"]))
    trained = encoder({"key": "k", "images": [Path(run["image"]).read_bytes()],
                       "turns": [{"role": "user", "content": "<image>\nIs there a cat in the image?"},
                                 {"role": "assistant", "content": "Yes"}]})
    assert pre["resize"] == "squash" and torch.equal(trained["pixel_values"], inputs["pixel_values"])
    got = generate_ids(loaded, inputs, max_new_tokens=6)
    # reference: full recompute, argmax, stop at eos
    ids, pixels, ref = inputs["input_ids"], inputs["pixel_values"], []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(loaded.model(ids, torch.ones_like(ids), pixels)[0, -1].argmax())
            if nxt == loaded.tokenizer.eos_token_id:
                break
            ref.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert got == ref and len(got) > 0


@pytest.mark.parametrize("adapter", [False, True])
def test_export_loads_back_with_the_same_outputs(run, adapter):
    dest = run["root"] / f"export-{adapter}"
    assert export_main([str(run["ckpt"]), str(dest), *(["--adapter"] if adapter else [])]) == 0
    cfg = json.loads((dest / "mplug_owl.json").read_text())
    assert (dest / "vision_abstractor.safetensors").exists() and (dest / "tokenizer").is_dir()
    if adapter:
        assert (dest / "adapter" / "adapter_config.json").exists() and cfg["adapter"] == "adapter"
    else:  # a plain Hugging Face causal LM with the LoRA merged in
        from transformers import AutoModelForCausalLM

        llm = AutoModelForCausalLM.from_pretrained(dest / "llm")
        assert not any("lora" in n for n, _ in llm.named_parameters())
    a, b = load_model(run["ckpt"]), load_model(dest)
    inputs = _inputs(a, run["image"])
    with torch.no_grad():
        la = a.model(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])
        lb = b.model(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-4)
    assert generate_ids(a, inputs, max_new_tokens=5) == generate_ids(b, inputs, max_new_tokens=5)
    assert export_main([str(run["ckpt"]), str(dest)]) == 2  # refuses to overwrite


def test_chat_answers_one_question_and_runs_a_multi_turn_session(run, capsys):
    loaded = load_model(run["ckpt"])
    q = "Is there a cat in the image?"
    expected = reply(loaded, [{"role": "user", "content": "<image>\n" + q}], [Image.open(run["image"])],
                     max_new_tokens=8)
    assert chat_main([str(run["ckpt"]), "--image", str(run["image"]), "--max-new-tokens", "8", q]) == 0
    assert capsys.readouterr().out.strip() == expected
    out = io.StringIO()
    rc = chat_main([str(run["ckpt"]), "--image", str(run["image"]), "--max-new-tokens", "8"],
                   stdin=io.StringIO(q + "\nAnd a dog?\n\n"), stdout=out)
    assert rc == 0
    second = reply(loaded, [{"role": "user", "content": "<image>\n" + q}, {"role": "assistant", "content": expected},
                            {"role": "user", "content": "And a dog?"}], [Image.open(run["image"])], max_new_tokens=8)
    assert out.getvalue() == f"{expected}\n{second}\n"  # the second turn saw the first exchange


def test_chat_errors_are_clear(run, tmp_path, capsys):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not an image")
    assert chat_main([str(run["ckpt"]), "--image", str(bad), "hi"]) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert chat_main([str(tmp_path), "hi"]) == 2
    assert "neither a checkpoint" in capsys.readouterr().err


def test_eval_runs_on_an_exported_model(run, tmp_path):
    dest = run["root"] / "export-eval"
    assert export_main([str(run["ckpt"]), str(dest)]) == 0
    out = tmp_path / "r.json"
    assert eval_main([str(dest), "--data", str(run["shards"]), "--max-batches", "1", "--pope-per-image", "1",
                      "--max-images", "2", "--max-new-tokens", "3", "--lang", "en", "--holdout-fraction", "0",
                      "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["heldout"]["tokens"] > 0 and report["pope_generate"]["en"]["n"] == report["pope"]["en"]["n"] > 0


@pytest.mark.parametrize("text, lang, said", [
    ("Yes, there is a dog.", "en", True), ("No, there is no cat in the image.", "en", False),
    ("There isn't a car.", "en", False), ("There is a red apple. No doubt.", "en", True),
    ("A dog.", "en", None), ("有，图中有狗。", "zh", True), ("没有，图中没有猫。", "zh", False), ("狗", "zh", None),
])
def test_parse_yes_no(text, lang, said):
    assert parse_yes_no(text, lang) is said
