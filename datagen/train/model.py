"""The mPLUG-Owl model: open_clip ViT -> visual abstractor -> causal LM.

An image becomes ``num_queries + 1`` LLM input embeddings: the abstractor's
queries attend to [queries; ViT patch tokens] through a few layers, are mapped
to the LLM width, and a learned end token closes the span. The data pipeline
already reserved those positions (``IMAGE_TOKEN_ID``) in ``input_ids``; the
forward pass scatters the image embeddings into them in order.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from datagen.train.config import AbstractorConfig, LLMConfig, LoraSpec, VisionConfig
from datagen.train.hub import check_hf_model, check_open_clip
from datagen.train.template import IGNORE, IMAGE_TOKEN_ID

log = logging.getLogger("datagen.train")

# A tiny text tower: open_clip.CLIP always builds one; we drop it right after.
_TINY_TEXT_CFG = {"context_length": 4, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}


# ----------------------------------------------------------------------------- abstractor


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class AbstractorLayer(nn.Module):
    """Pre-norm block: queries attend to [queries; image features], then a SwiGLU MLP."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(self, queries: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        b, nq, d = queries.shape
        q_in = self.norm_q(queries)
        kv_in = torch.cat([q_in, self.norm_kv(feats)], dim=1)

        def heads(x):
            return x.view(b, -1, self.heads, d // self.heads).transpose(1, 2)

        attn = F.scaled_dot_product_attention(heads(self.q(q_in)), heads(self.k(kv_in)), heads(self.v(kv_in)))
        queries = queries + self.o(attn.transpose(1, 2).reshape(b, nq, d))
        return queries + self.mlp(self.norm_mlp(queries))


class VisualAbstractor(nn.Module):
    def __init__(self, cfg: AbstractorConfig, vision_width: int, llm_width: int):
        super().__init__()
        self.in_proj = nn.Linear(vision_width, cfg.hidden)
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, cfg.hidden) * 0.02)
        self.layers = nn.ModuleList(AbstractorLayer(cfg.hidden, cfg.heads, cfg.mlp_hidden) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.out_proj = nn.Linear(cfg.hidden, llm_width)
        self.end_token = nn.Parameter(torch.randn(1, llm_width) * 0.02)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """[n_images, patches, vision_width] -> [n_images, num_queries + 1, llm_width]."""
        feats = self.in_proj(feats)
        x = self.queries.unsqueeze(0).expand(feats.shape[0], -1, -1).to(feats.dtype)
        for layer in self.layers:
            x = layer(x, feats)
        x = self.out_proj(self.norm(x))
        return torch.cat([x, self.end_token.unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)], dim=1)


# --------------------------------------------------------------------------- components


def build_vision(cfg: VisionConfig) -> tuple[nn.Module, dict]:
    """The open_clip visual tower (projection head dropped) and its preprocessing numbers."""
    import open_clip

    if cfg.config is not None:
        vision_cfg = dict(cfg.config)
        model = open_clip.CLIP(embed_dim=vision_cfg.pop("embed_dim", 32), vision_cfg=vision_cfg, text_cfg=_TINY_TEXT_CFG)
        visual = model.visual
        pre = {"mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}
        quick = False
    else:
        check_open_clip(cfg.name, cfg.pretrained)
        tag = open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained) if cfg.pretrained else {}
        # OpenAI weights were trained with QuickGELU; the plain name builds nn.GELU
        quick = cfg.quick_gelu if cfg.quick_gelu is not None else bool((tag or {}).get("quick_gelu", False))
        model = open_clip.create_model(cfg.name, pretrained=cfg.pretrained, force_quick_gelu=quick)
        visual = model.visual
        pc = getattr(visual, "preprocess_cfg", {}) or {}
        pre = {"mean": tuple(pc.get("mean", open_clip.OPENAI_DATASET_MEAN)),
               "std": tuple(pc.get("std", open_clip.OPENAI_DATASET_STD))}
    if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer"):
        raise ValueError(f"vision tower {cfg.name or 'config'}: need an open_clip VisionTransformer (a ViT)")
    # Features are last-layer patch tokens; the pooled projection is unused, so drop it (DDP would
    # otherwise see trainable parameters that get no gradient).
    visual.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
    visual.attn_pool = None
    pre["image_size"] = int(visual.image_size[0])
    pre["resize"] = cfg.resize
    pre["quick_gelu"] = quick  # an export rebuilds the architecture without the pretrained tag
    pre["width"] = int(visual.conv1.out_channels)
    return visual, pre


def build_llm(cfg: LLMConfig) -> nn.Module:
    import importlib.util

    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if cfg.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError("llm.attn_implementation=flash_attention_2 needs the flash-attn package "
                         "(pip install flash-attn); use sdpa otherwise")
    dtype = getattr(torch, cfg.dtype)
    if cfg.config is not None:
        llm = LlamaForCausalLM(LlamaConfig(**cfg.config, attn_implementation=cfg.attn_implementation))
        return llm.to(dtype)
    check_hf_model(cfg.name)
    return AutoModelForCausalLM.from_pretrained(cfg.name, dtype=dtype, attn_implementation=cfg.attn_implementation)


# -------------------------------------------------------------------------------- model


class MplugOwl(nn.Module):
    def __init__(self, vision: nn.Module, abstractor: VisualAbstractor, llm: nn.Module):
        super().__init__()
        self.vision = vision
        self.abstractor = abstractor
        self.llm = llm

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision.forward_intermediates(
            pixel_values, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NLC"
        )
        feats = out["image_intermediates"][-1]
        return self.abstractor(feats)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        embed = self.llm.get_input_embeddings()
        is_image = input_ids == IMAGE_TOKEN_ID
        embeds = embed(input_ids.masked_fill(is_image, 0))
        n_img = int(pixel_values.shape[0])
        if n_img == 0:
            if is_image.any():
                raise ValueError("input_ids hold image positions but no pixel_values were given")
            return embeds
        img = self.encode_images(pixel_values.to(embeds.device))
        if int(is_image.sum()) != img.shape[0] * img.shape[1]:
            raise ValueError(
                f"{int(is_image.sum())} image positions in input_ids, but {n_img} images x {img.shape[1]} tokens"
            )
        return embeds.masked_scatter(is_image.unsqueeze(-1), img.to(embeds.dtype))

    def forward(self, input_ids, attention_mask, pixel_values, labels=None):
        """Without ``labels``: logits [batch, seq, vocab]. With ``labels``: (summed next-token loss,
        labelled positions), the LM head applied only where a label follows: a reply is a small
        part of a multimodal sequence, and full-vocabulary logits elsewhere are wasted work and memory."""
        embeds = self.embed(input_ids, pixel_values)
        if labels is None:
            return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).logits
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        backbone = getattr(base, base.base_model_prefix)
        hidden = backbone(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)[0]
        targets = labels[:, 1:]
        picked = targets != IGNORE
        logits = base.get_output_embeddings()(hidden[:, :-1][picked]).float()
        cap = getattr(base.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits, targets[picked], reduction="sum"), int(picked.sum())


def per_example_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label) per row over labelled positions (used to score yes/no replies)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tgt = labels[:, 1:]
    mask = tgt != IGNORE
    picked = lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=1)


def build_model(vision_cfg: VisionConfig, abstractor_cfg: AbstractorConfig, llm_cfg: LLMConfig,
                vocab_size: int | None = None) -> tuple[MplugOwl, dict]:
    """Build the three parts; ``vocab_size`` resizes a tiny LLM's embeddings to the tokenizer."""
    vision, pre = build_vision(vision_cfg)
    llm = build_llm(llm_cfg)
    n_embed = llm.get_input_embeddings().num_embeddings
    if vocab_size is not None and n_embed < vocab_size:
        if llm_cfg.config is None:
            # new rows would be random and, the LLM being frozen and loaded by name, never saved
            raise ValueError(f"tokenizer has {vocab_size} tokens but LLM {llm_cfg.name} embeds only {n_embed}")
        llm.resize_token_embeddings(vocab_size)
    abstractor = VisualAbstractor(abstractor_cfg, pre["width"], llm.config.hidden_size)
    return MplugOwl(vision, abstractor, llm), pre


def add_lora(model: MplugOwl, spec: LoraSpec) -> None:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), task_type="CAUSAL_LM")
    model.llm = get_peft_model(model.llm, config)


def set_trainable(model: MplugOwl, stage: int, train_llm: bool = False) -> None:
    """Stage 1: ViT + abstractor train, LLM frozen. Stage 2: abstractor + LoRA train, ViT frozen
    (``train_llm``: the whole LLM instead of LoRA)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.abstractor.parameters():
        p.requires_grad_(True)
    if stage == 1:
        for p in model.vision.parameters():
            p.requires_grad_(True)
    else:
        for name, p in model.llm.named_parameters():
            if "lora_" in name or train_llm:
                p.requires_grad_(True)


NO_DECAY_NAMES = ("queries", "end_token", "positional_embedding", "class_embedding")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms (every 1-d tensor), the abstractor's
    queries and end token, and the ViT's position/class embeddings (as HF Trainer and LLaVA)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or any(k in name for k in NO_DECAY_NAMES) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def count_params(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
