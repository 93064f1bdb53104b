"""Model plumbing and arithmetic against direct computations (random weights)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from datagen.train.config import AbstractorConfig, LLMConfig, LoraSpec, VisionConfig
from datagen.train.model import (
    AbstractorLayer,
    add_lora,
    build_model,
    per_example_logprob,
    param_groups,
    set_trainable,
)
from datagen.train.template import IGNORE, IMAGE_TOKEN_ID

torch.set_num_threads(2)

VISION = VisionConfig(config={"embed_dim": 16, "image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                              "head_width": 16, "mlp_ratio": 2.0})
ABSTRACTOR = AbstractorConfig(num_queries=4, layers=2, hidden=32, heads=4, mlp_hidden=48)
LLM = LLMConfig(config={"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                        "num_attention_heads": 4, "num_key_value_heads": 2})


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m, pre = build_model(VISION, ABSTRACTOR, LLM)
    assert pre["image_size"] == 32 and pre["width"] == 32
    return m.eval()


def test_abstractor_layer_matches_a_direct_computation():
    torch.manual_seed(1)
    layer = AbstractorLayer(dim=8, heads=2, mlp_hidden=12).eval()
    q, feats = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    got = layer(q, feats)
    # By hand: one batch element, loops over heads, keys/values from [queries; features].
    b = 1
    qn, fn = layer.norm_q(q[b]), layer.norm_kv(feats[b])
    kv = torch.cat([qn, fn])
    Q, K, V = layer.q(qn), layer.k(kv), layer.v(kv)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        att = torch.softmax(Q[:, sl] @ K[:, sl].T / math.sqrt(4), dim=-1)
        heads.append(att @ V[:, sl])
    x = q[b] + layer.o(torch.cat(heads, dim=-1))
    h = layer.norm_mlp(x)
    x = x + layer.mlp.down(F.silu(layer.mlp.gate(h)) * layer.mlp.up(h))
    torch.testing.assert_close(got[b], x, rtol=1e-5, atol=1e-5)


def test_image_embeddings_fill_the_image_positions_in_order(model):
    tpi = ABSTRACTOR.tokens_per_image
    pixels = torch.randn(3, 3, 32, 32)
    ids = torch.tensor([
        [5] + [IMAGE_TOKEN_ID] * tpi + [6, 7] + [IMAGE_TOKEN_ID] * tpi,
        [8, 9] + [IMAGE_TOKEN_ID] * tpi + [10] * tpi + [0],
    ])
    with torch.no_grad():
        emb = model.embed(ids, pixels)
        img = model.encode_images(pixels)
        table = model.llm.get_input_embeddings().weight
    assert img.shape == (3, tpi, 32)
    torch.testing.assert_close(img[:, -1], model.abstractor.end_token.expand(3, -1))  # the learned end token
    torch.testing.assert_close(emb[0, 1:1 + tpi], img[0])
    torch.testing.assert_close(emb[0, 3 + tpi:], img[1])
    torch.testing.assert_close(emb[1, 2:2 + tpi], img[2])
    torch.testing.assert_close(emb[0, 0], table[5])
    torch.testing.assert_close(emb[1, 2 + tpi], table[10])
    with pytest.raises(ValueError, match="image positions"):
        model.embed(ids, pixels[:2])


def test_per_example_logprob_matches_a_direct_formula():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[IGNORE, 3, 4, IGNORE, 1, 2], [IGNORE, IGNORE, IGNORE, 7, IGNORE, IGNORE]])
    lp = per_example_logprob(logits, labels)
    logsm = torch.log_softmax(logits, -1)
    row0 = logsm[0, 0, 3] + logsm[0, 1, 4] + logsm[0, 3, 1] + logsm[0, 4, 2]
    row1 = logsm[1, 2, 7]
    torch.testing.assert_close(lp, torch.stack([row0, row1]))


@pytest.mark.parametrize("lora", [False, True])
def test_loss_at_labelled_positions_equals_cross_entropy_over_full_logits(model, lora):
    """The training forward applies the LM head only where a label follows; its summed loss and
    its gradients must equal those of the full-logit computation."""
    if lora:
        add_lora(model, LoraSpec(r=2, alpha=8, dropout=0.0))
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p)  # B starts at zero: make the adapter matter
    torch.manual_seed(4)
    ids = torch.randint(3, 64, (2, 12))
    ids[0, 1:6] = IMAGE_TOKEN_ID
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    labels = ids.clone()
    labels[:, :7] = IGNORE
    labels[1, 10:] = IGNORE
    pixels = torch.randn(1, 3, 32, 32)
    set_trainable(model, 2)
    s, n = model(ids, mask, pixels, labels)
    (s / n).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    logits = model(ids, mask, pixels)
    full = F.cross_entropy(logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1), ignore_index=IGNORE,
                           reduction="sum")
    assert n == int((labels[:, 1:] != IGNORE).sum()) == 8
    torch.testing.assert_close(s, full)
    (full / n).backward()
    for k, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[k], rtol=1e-4, atol=1e-6)


def test_weight_decay_spares_biases_norms_queries_and_embeddings(model):
    set_trainable(model, 1)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {"abstractor.queries", "abstractor.end_token", "vision.positional_embedding",
            "vision.class_embedding", "abstractor.norm.weight", "abstractor.in_proj.bias"} <= nd
    assert {"abstractor.in_proj.weight", "abstractor.layers.0.q.weight", "vision.conv1.weight"} <= d
    assert not any(n.startswith("llm.") for n in d | nd)  # frozen in stage 1
    assert len(d) + len(nd) == sum(1 for p in model.parameters() if p.requires_grad)


def test_forward_runs_text_only_and_with_images(model):
    ids = torch.tensor([[1, 2, 3]])
    out = model(ids, torch.ones_like(ids), torch.zeros(0, 3, 32, 32))
    assert out.shape == (1, 3, 64)


def test_trainable_split_per_stage(model):
    set_trainable(model, 1)
    assert all(p.requires_grad for p in model.vision.parameters())
    assert all(p.requires_grad for p in model.abstractor.parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())
    add_lora(model, LoraSpec(r=2, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    set_trainable(model, 2)
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert all(p.requires_grad for p in model.abstractor.parameters())
    trainable_llm = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert trainable_llm and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable_llm)
    assert model.llm.peft_config["default"].r == 2
    set_trainable(model, 2, train_llm=True)
    assert all(p.requires_grad for p in model.llm.parameters())
    assert not any(p.requires_grad for p in model.vision.parameters())


def test_attention_implementation_is_configurable():
    import importlib.util

    from datagen.train.model import build_llm

    torch.manual_seed(0)
    sdpa = build_llm(LLM)
    torch.manual_seed(0)
    eager = build_llm(LLMConfig(config=LLM.config, attn_implementation="eager"))
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(sdpa(ids).logits, eager(ids).logits, rtol=1e-4, atol=1e-5)
    if importlib.util.find_spec("flash_attn") is None:  # the error names the package to install
        with pytest.raises(ValueError, match="flash-attn"):
            build_llm(LLMConfig(config=LLM.config, attn_implementation="flash_attention_2"))
