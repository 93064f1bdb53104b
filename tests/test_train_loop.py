"""Training stages end to end on tiny shards: frozen/trainable, stage 1 -> 2, exact resume,
overfitting, gradient accumulation, DDP (torchrun, gloo, 2 processes), eval."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datagen.train.cli import eval_main, train_main
from datagen.train.config import load_config
from datagen.train.loop import build_for_stage, train
from datagen.train.synthetic import write_synthetic_shards

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "train"
FAST = ["data.num_workers=0", "data.batch_size=4", "data.max_seq_len=128", "log_every=100", "eval_every=null"]
# stage2_tiny trains the whole tiny LLM (so `make train` shows learning); these tests check mPLUG-Owl's LoRA
LORA = ["train_llm=false", "lora={r: 8, alpha: 32, dropout: 0.05, target_modules: [q_proj, v_proj]}"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), n_images=12, n_multi=3, n_text=6, per_shard=6)


def _state(ckpt) -> dict[str, torch.Tensor]:
    return torch.load(Path(ckpt) / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def stage1(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("s1")
    sets = [f"data.dir={shards}", f"out={out}", "max_steps=4", *FAST]
    cfg = load_config(RECIPES / "stage1_tiny.yaml", sets)
    torch.manual_seed(cfg.seed)  # what train() does first: the same initial weights
    init = {k: v.clone() for k, v in build_for_stage(cfg).model.state_dict().items()}
    argv = [str(RECIPES / "stage1_tiny.yaml")] + [x for s in sets for x in ("--set", s)]
    assert train_main(argv) == 0
    return out, init


@pytest.fixture(scope="module")
def stage2(shards, stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("s2")
    cfg = load_config(RECIPES / "stage2_tiny.yaml",
                      [f"data.dir={shards}", f"out={out}", f"init_from={stage1[0]}", "max_steps=4", *FAST, *LORA])
    result = train(cfg, quiet=True)
    return out, result


def test_stage1_freezes_the_llm_and_trains_vit_and_abstractor(stage1):
    out, init = stage1
    final = _state(Path(out) / (Path(out) / "latest.txt").read_text().strip())
    assert set(final) == set(init)  # a tiny run is random-init everywhere: everything is saved
    llm = [k for k in init if k.startswith("llm.")]
    trained = [k for k in init if k.startswith(("vision.", "abstractor."))]
    assert llm and trained
    assert all(torch.equal(final[k], init[k]) for k in llm), "frozen LLM changed"
    unchanged = [k for k in trained if torch.equal(final[k], init[k])]
    assert not unchanged, f"trainable tensors did not change: {unchanged[:5]}"
    log = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def _base_key(k1: str, sd2: dict) -> str:
    k2 = k1.replace("llm.", "llm.base_model.model.", 1)
    if k2 not in sd2:
        head, leaf = k2.rsplit(".", 1)
        k2 = f"{head}.base_layer.{leaf}"
    return k2


def test_stage1_checkpoint_loads_into_stage2_which_freezes_the_vit(stage1, stage2):
    s1 = _state(Path(stage1[0]) / (Path(stage1[0]) / "latest.txt").read_text().strip())
    out2, result = stage2
    s2 = _state(result["checkpoint"])
    model = result["model"]
    # the stage-2 run started from the stage-1 weights, and kept ViT and base LLM bit-identical
    for k, v in s1.items():
        if k.startswith("vision."):
            assert torch.equal(s2[k], v), k
        elif k.startswith("llm."):
            assert torch.equal(s2[_base_key(k, s2)], v), k
    changed = [k for k in s1 if k.startswith("abstractor.") and not torch.equal(s2[k], s1[k])]
    assert len(changed) == sum(1 for k in s1 if k.startswith("abstractor."))
    lora_b = [k for k in s2 if "lora_B" in k]
    assert lora_b and all(s2[k].abs().sum() > 0 for k in lora_b)  # LoRA B starts at zero
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("abstractor.") or "lora_" in n for n in trainable)
    meta = json.loads((Path(result["checkpoint"]) / "meta.json").read_text())
    assert meta["stage"] == 2 and meta["lora"]["r"] == 8 and "vision" in meta["full_parts"]


def test_exact_resume_n_steps_equals_half_resume_half(shards, stage1, tmp_path):
    """Stage 2 with LoRA dropout, text mixing, 2 loader workers, an odd resume point and an epoch
    boundary inside the second half: the weights must be bit-identical."""
    base = [f"data.dir={shards}", f"init_from={stage1[0]}", "max_steps=6", "data.epoch_batches=4",
            "data.num_workers=2", "data.batch_size=3", "data.max_seq_len=128", "data.text_ratio=0.3",
            "optim.warmup_steps=2", "log_every=100", "data.group_by_length=2",
            "eval_every=2", "eval_batches=1", "eval_pope_images=2", "data.holdout_fraction=0.3", *LORA]
    full = train(load_config(RECIPES / "stage2_tiny.yaml", base + [f"out={tmp_path / 'full'}"]), quiet=True)
    first = train(load_config(RECIPES / "stage2_tiny.yaml", base + [f"out={tmp_path / 'split'}", "stop_at_step=3"]),
                  quiet=True)
    second = train(load_config(RECIPES / "stage2_tiny.yaml", base + [f"out={tmp_path / 'split'}"]), quiet=True)
    assert first["step"] == 3 and second["step"] == 6 and len(second["losses"]) == 3
    assert first["losses"] + second["losses"] == full["losses"]
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in log if "eval" in r] == [2, 3, 4, 6]  # every 2 steps and at each stop
    a, b = _state(full["checkpoint"]), _state(second["checkpoint"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa = torch.load(Path(full["checkpoint"]) / "optim.pt", weights_only=False)["optimizer"]["state"]
    ob = torch.load(Path(second["checkpoint"]) / "optim.pt", weights_only=False)["optimizer"]["state"]
    assert all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)


def test_stage1_resume_matches_the_uninterrupted_run(shards, stage1, tmp_path):
    """Also checks that a resumed stage 1 reuses the checkpoint's tokenizer instead of retraining one."""
    sets = [f"data.dir={shards}", f"out={tmp_path}", "max_steps=4", *FAST]
    train(load_config(RECIPES / "stage1_tiny.yaml", sets + ["stop_at_step=2"]), quiet=True)
    (tmp_path / "tokenizer").rename(tmp_path / "tokenizer.moved")  # the run-level copy is not needed
    done = train(load_config(RECIPES / "stage1_tiny.yaml", sets), quiet=True)
    ref = _state(Path(stage1[0]) / (Path(stage1[0]) / "latest.txt").read_text().strip())
    got = _state(done["checkpoint"])
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_tiny_set_overfits(tmp_path):
    data = write_synthetic_shards(tmp_path / "data", n_images=2, n_multi=0, n_text=0)
    cfg = load_config(RECIPES / "stage1_tiny.yaml", [
        "stage=2", f"out={tmp_path / 'run'}", f"data.dir={data}", "data.num_workers=0", "data.shuffle_buffer=0",
        "data.batch_size=4", "data.holdout_fraction=0", "data.max_seq_len=128", "optim.lr=1e-2",
        "optim.warmup_steps=0", "optim.min_lr_ratio=1", "max_steps=25", "log_every=100",
        "model.tokenizer.bpe_vocab_size=400", "model.llm.config.initializer_range=0.3",
        "lora={r: 8, alpha: 32, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}",
    ])
    losses = train(cfg, quiet=True)["losses"]
    assert losses[-1] < 0.1 * losses[0], losses


def test_grad_accumulation_matches_one_big_batch(shards, tmp_path):
    """bs 4 x 1 and bs 2 x 2 see the same examples: same loss and the same (pre-clip) gradient norm."""
    def run(bs, accum, name, *extra):
        cfg = load_config(RECIPES / "stage1_tiny.yaml", [
            f"data.dir={shards}", f"out={tmp_path / name}", "data.num_workers=0", f"data.batch_size={bs}",
            f"optim.grad_accum={accum}", "max_steps=1", "data.max_seq_len=128", "log_every=100",
            "data.group_by_length=0", *extra])
        train(cfg, quiet=True)
        return json.loads((tmp_path / name / "log.jsonl").read_text().splitlines()[0])

    big, acc = run(4, 1, "big"), run(2, 2, "acc")
    assert big["tokens"] == acc["tokens"] > 0
    assert acc["loss"] == pytest.approx(big["loss"], rel=1e-5)
    assert acc["grad_norm"] == pytest.approx(big["grad_norm"], rel=1e-4)
    # gradient checkpointing recomputes activations: same loss and gradients
    ckpt = run(4, 1, "gc", "grad_checkpointing=true")
    assert ckpt["loss"] == pytest.approx(big["loss"], rel=1e-5)
    assert ckpt["grad_norm"] == pytest.approx(big["grad_norm"], rel=1e-4)
    # bf16 autocast (what CUDA runs use) stays close to fp32
    bf16 = run(4, 1, "bf16", "precision=bf16")
    assert bf16["loss"] == pytest.approx(big["loss"], rel=2e-2)


DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from datagen.train.config import load_config
from datagen.train.loop import train
import torch.distributed as dist, os
cfg = load_config(sys.argv[1], sys.argv[2:])
res = train(cfg)
rank = int(os.environ["RANK"])
torch.save({n: p.detach() for n, p in res["model"].named_parameters() if p.requires_grad},
           f"{cfg.out}/params-rank{rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo_keep_replicas_identical(shards, stage1, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), str(RECIPES / "stage2_tiny.yaml"),
           f"data.dir={shards}", f"out={out}", f"init_from={stage1[0]}", "max_steps=2", "data.num_workers=0",
           "data.batch_size=2", "data.max_seq_len=96", "optim.grad_accum=2", "data.text_ratio=0.3", "log_every=1",
           "eval_every=null", *LORA]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2" in proc.stdout
    p0, p1 = torch.load(out / "params-rank0.pt"), torch.load(out / "params-rank1.pt")
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
    start = _state(Path(stage1[0]) / (Path(stage1[0]) / "latest.txt").read_text().strip())
    assert all(not torch.equal(p0[k], start[k]) for k in p0 if k.startswith("abstractor."))  # it trained
    ckpt = Path(out) / (out / "latest.txt").read_text().strip()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["world_size"] == 2 and set(meta["position"]) == {"0", "1"}
    assert (ckpt / "rng-0.pt").exists() and (ckpt / "rng-1.pt").exists()
    # rank 0 alone would count half the tokens: the logged count is the global one
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(r["tokens"] > 0 for r in log)


def test_eval_reports_heldout_loss_and_pope(stage2, shards, tmp_path, capsys):
    out2, _ = stage2
    report_path = tmp_path / "report.json"
    rc = eval_main([str(out2), "--data", str(shards), "--max-batches", "2", "--batch-size", "4",
                    "--pope-per-image", "1", "--holdout-fraction", "0.5", "--max-new-tokens", "4",
                    "--out", str(report_path)])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert report["split"] == "stage2" and report["heldout"]["tokens"] > 0
    assert report["heldout"]["loss"] > 0
    for lang in ("en", "zh"):  # the synthetic labels are COCO names: both languages are asked
        pope = report["pope"][lang]
        assert pope["images"] > 0 and pope["n"] == 2 * pope["images"] and pope["skipped_no_translation"] == 0
        for k in ("accuracy", "f1", "yes_ratio"):
            assert 0.0 <= pope[k] <= 1.0
        gen = report["pope_generate"][lang]  # the same questions, answered by generation
        assert gen["n"] == pope["n"] and 0 <= gen["unparsed"] <= gen["n"] and gen["examples"]
    assert '"pope"' in capsys.readouterr().out


def test_train_cli_reports_config_errors(capsys):
    rc = train_main([str(RECIPES / "stage1_tiny.yaml"), "--set", "optim.lr=-1"])
    assert rc == 2
    assert "optim.lr" in capsys.readouterr().err


def test_pope_scoring_matches_next_token_probabilities(stage2, shards):
    """score_yes_no against a direct computation: one forward over the generation prompt plus the
    reply tokens "Yes" and "No" share, then compare p(Yes's next token) and p(No's next token)."""
    from datagen.train.data import DataSpec, Encoder
    from datagen.train.eval import _stage1_annotations, existence_question, score_yes_no
    from datagen.train.inference import load_model
    from datagen.train.template import IMAGE_TOKEN_ID, encode, render_mplug

    out2, _ = stage2
    loaded = load_model(out2, torch.device("cpu"))
    model, tok, pre, tpi = loaded.model, loaded.tokenizer, loaded.pre, loaded.tokens_per_image
    encoder = Encoder(DataSpec(data_dir=str(shards), stage=2, tokenizer=tok, template="mplug_owl",
                               tokens_per_image=tpi, image_size=pre["image_size"], max_len=10_000))
    images, _ = _stage1_annotations(str(shards), 0.0, 3)
    qs = [{"key": im["key"], "image": im["image"], "question": existence_question(lbl)}
          for im in images for lbl in sorted(im["labels"])[:1] + ["car"]]
    got = score_yes_no(model, encoder, qs, batch_size=3, device=torch.device("cpu"))

    def ids(turns, gen=False):
        return encode(render_mplug(turns, tok.eos_token, add_generation_prompt=gen), tok, num_images=1,
                      tokens_per_image=tpi, max_len=10_000).input_ids

    for q, decided in zip(qs, got):
        user = {"role": "user", "content": "<image>\n" + q["question"]}
        prompt = ids([user], gen=True)
        yes = ids([user, {"role": "assistant", "content": "Yes"}])[len(prompt):]
        no = ids([user, {"role": "assistant", "content": "No"}])[len(prompt):]
        c = next(i for i, (a, b) in enumerate(zip(yes, no)) if a != b)
        x = torch.tensor([prompt + yes[:c]])
        assert (x == IMAGE_TOKEN_ID).sum() == tpi
        pixels = encoder({"key": q["key"], "images": [q["image"]], "turns": [user, {"role": "assistant", "content": "Yes"}]})["pixel_values"]
        with torch.no_grad():
            probs = torch.softmax(model(x, torch.ones_like(x), pixels)[0, -1], -1)
        assert decided == bool(probs[yes[c]] > probs[no[c]])


def test_rerun_resumes_or_starts_over(shards, tmp_path, capsys):
    argv = [str(RECIPES / "stage1_tiny.yaml"), "--data", str(shards), "--out", str(tmp_path),
            "--set", "max_steps=2", *[x for s in FAST for x in ("--set", s)]]
    assert train_main(argv) == 0
    assert train_main(argv) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert train_main(argv + ["--no-resume"]) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the fresh run replaced the old log


def test_evaluation_during_training_logs_heldout_loss_and_pope_to_tensorboard(shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(RECIPES / "stage1_tiny.yaml", [
        f"data.dir={shards}", f"out={tmp_path}", "max_steps=4", *FAST, "eval_every=2", "eval_batches=2",
        "eval_pope_images=3", "data.holdout_fraction=0.4"])
    train(cfg, quiet=True)
    evals = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert r["eval"]["heldout"]["tokens"] > 0 and r["eval"]["heldout"]["loss"] > 0
        assert r["eval"]["pope"]["en"]["n"] > 0 and r["eval"]["pope"]["en"]["sampling"] == "adversarial"
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/loss", "eval/pope_en_f1"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.value for e in acc.Scalars("eval/loss")] == pytest.approx([r["eval"]["heldout"]["loss"] for r in evals])
    with pytest.raises(ValueError, match="holdout_fraction"):
        load_config(RECIPES / "stage1_tiny.yaml", ["eval_every=2", "data.holdout_fraction=0"])


def _torchrun(script, args, out, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), str(RECIPES / "stage1_tiny.yaml"), *args, f"out={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_ddp_matches_one_process_with_the_same_global_batch_and_resumes(tmp_path):
    """Every example is the same picture and caption, so 2 processes x 2 examples and 1 process x 4
    examples see the same global batch: the logged loss, the (pre-clip) gradient norm and the weights
    must agree. Dropping the world-size factor halves DDP's gradients and fails here. The DDP run
    stops at step 2 and resumes (a new torchrun) to step 4."""
    data = write_synthetic_shards(tmp_path / "one", n_images=1, n_multi=0, n_text=0)
    common = [f"data.dir={data}", "data.num_workers=0", "data.holdout_fraction=0", "data.max_seq_len=64",
              "max_steps=4", "log_every=1", "optim.warmup_steps=0", "tensorboard=false"]
    single = train(load_config(RECIPES / "stage1_tiny.yaml", common + ["data.batch_size=4", f"out={tmp_path / 'one_proc'}"]),
                   quiet=True)
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    ddp_out = tmp_path / "ddp"
    first = _torchrun(script, common + ["data.batch_size=2", "stop_at_step=2"], ddp_out)
    assert "world 2" in first.stdout
    second = _torchrun(script, common + ["data.batch_size=2"], ddp_out)
    assert "resumed from" in second.stdout and "at step 2" in second.stdout
    log_1 = [json.loads(line) for line in (tmp_path / "one_proc" / "log.jsonl").read_text().splitlines()]
    log_2 = [json.loads(line) for line in (ddp_out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_2] == [1, 2, 3, 4]
    for a, b in zip(log_1, log_2):
        assert b["tokens"] == a["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    p0, p1 = torch.load(ddp_out / "params-rank0.pt"), torch.load(ddp_out / "params-rank1.pt")
    ref = {n: p.detach() for n, p in single["model"].named_parameters() if p.requires_grad}
    assert p0.keys() == ref.keys()
    for k in ref:
        assert torch.equal(p0[k], p1[k])
        # atol: coordinates whose gradient is ~0 take Adam steps of any sign; lr x steps = 8e-3
        torch.testing.assert_close(p0[k], ref[k], rtol=1e-4, atol=1e-4)
