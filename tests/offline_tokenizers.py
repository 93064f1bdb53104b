"""Small tokenizers built offline with the ``tokenizers`` library, saved as local folders that
``AutoTokenizer.from_pretrained(DIR)`` loads: a LLaMA-style SentencePiece BPE (``▁`` word pieces,
byte fallback, ``<s>`` added in front) in its legacy and non-legacy forms, and a byte-level BPE
without a bos token (the GPT-2 / Qwen family)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CHAT_WORDS = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions. USER: ASSISTANT:")


def llama_style(texts: Iterable[str], dest: Path, legacy: bool = True, vocab_size: int = 1200) -> Path:
    """LLaMA's tokenizer in miniature. ``legacy=True`` is LLaMA-2's Hugging Face fast tokenizer
    (a normalizer that prepends ``▁`` to every section, also right after ``</s>``);
    ``legacy=False`` its newer form (a Metaspace pre-tokenizer that prepends only at the start)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=["▁"] + [f"<0x{i:02X}>" for i in range(256)], show_progress=False)
    tok.train_from_iterator(list(texts) + [CHAT_WORDS], trainer=trainer)  # pieces never cross a word start
    if legacy:
        tok.pre_tokenizer = None
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            legacy=legacy).save_pretrained(dest)
    return dest


def byte_level(texts: Iterable[str], dest: Path, vocab_size: int = 1200) -> Path:
    """A byte-level BPE with ``<|im_start|>``/``<|im_end|>`` and no bos token (GPT-2 / Qwen style)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + [CHAT_WORDS], trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            unk_token=None).save_pretrained(dest)
    return dest
