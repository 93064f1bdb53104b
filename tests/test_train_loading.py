"""Real loading paths with no hub: local folders (HF and open_clip local-dir:), and a fast,
clear failure when named weights are neither local nor cached nor reachable."""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch

from datagen.train.config import LLMConfig, VisionConfig
from datagen.train.hub import WeightsUnavailable, check_hf_model, check_open_clip
from datagen.train.model import build_llm, build_vision
from datagen.train.tokenizer import load_tokenizer, train_bpe_tokenizer

from servers import LocalServer, Reply


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def test_unreachable_hub_fails_fast_with_a_fix(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # so the reachability check itself is exercised
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match=r"llm.name='no-such-org/no-such-model'.*local-dir DIR"):
        build_llm(LLMConfig(name="no-such-org/no-such-model"))
    with pytest.raises(WeightsUnavailable, match="laion2b_s34b_b79k"):
        check_open_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert time.perf_counter() - t < 20  # not the ~30 s retry loop per model
    with pytest.raises(ValueError, match="no pretrained tag"):
        check_open_clip("ViT-B-32", "no-such-tag")


def test_offline_mode_is_respected_even_when_reachable(monkeypatch):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=b"ok"))
        monkeypatch.setenv("HF_ENDPOINT", srv.url("/"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # tests/conftest.py turns it on
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        check_hf_model("some-org/some-model")  # reachable: the download may go ahead
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(WeightsUnavailable, match="offline"):
            check_hf_model("some-org/some-model")


def test_llm_and_tokenizer_load_from_a_local_folder(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    src = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1))
    src.save_pretrained(tmp_path / "llm")
    tok = train_bpe_tokenizer(["hello world"], 300)
    tok.save_pretrained(tmp_path / "llm")
    llm = build_llm(LLMConfig(name=str(tmp_path / "llm")))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), llm.state_dict().values()))
    loaded = load_tokenizer(str(tmp_path / "llm"))
    assert loaded("hello world")["input_ids"] == tok("hello world")["input_ids"]
    assert loaded.pad_token == "<pad>" and loaded.chat_template


def test_open_clip_local_dir_builds_the_same_vit(tmp_path):
    import open_clip

    vision_cfg = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16, "mlp_ratio": 2.0}
    text_cfg = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}
    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=16, vision_cfg=vision_cfg, text_cfg=text_cfg)
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 16, "vision_cfg": vision_cfg, "text_cfg": text_cfg}, "preprocess_cfg": {}}))
    torch.save(clip.state_dict(), folder / "open_clip_pytorch_model.bin")
    visual, pre = build_vision(VisionConfig(name=f"local-dir:{folder}"))
    assert pre["image_size"] == 32 and pre["width"] == 32
    x = torch.randn(1, 3, 32, 32)
    ref = clip.visual.forward_intermediates(x, indices=1, normalize_intermediates=True, intermediates_only=True,
                                            output_fmt="NLC")["image_intermediates"][-1]
    got = visual.forward_intermediates(x, indices=1, normalize_intermediates=True, intermediates_only=True,
                                       output_fmt="NLC")["image_intermediates"][-1]
    assert got.shape == (1, 16, 32)  # 4 x 4 patch tokens, no class token
    torch.testing.assert_close(got, ref)
    assert visual.proj is None  # the unused pooled projection is dropped
