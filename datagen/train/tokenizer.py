"""Tokenizers: a real one by name, or a small byte-level BPE trained on the shard texts.

Why train one: this machine has no model hub, and tiny runs need a tokenizer whose
vocabulary matches a tiny LLaMA. A byte-level BPE (the ``tokenizers`` library)
covers English and Chinese with no unknown tokens and, trained on the shards,
keeps sequences short. It is saved with each checkpoint, so stage 2 and
``datagen eval`` use exactly the vocabulary stage 1 trained with.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# ChatML: prefix-stable (rendering the first k messages is a prefix of rendering all),
# which is what the label mask of the 'chat' template relies on.
CHATML_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_PLACEHOLDER = re.compile(r"<image(?:_\d+)?>")


def shard_texts(data_dir: str | Path) -> Iterator[str]:
    """Every caption and conversation turn in the shards under ``data_dir`` (placeholders removed)."""
    for tar_path in sorted(Path(data_dir).glob("*/*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                name = member.name
                if not (name.endswith(".txt") or name.endswith(".json")):
                    continue
                data = tar.extractfile(member).read().decode("utf-8")
                if name.endswith(".txt"):
                    yield data
                    continue
                row = json.loads(data)
                for conv in row.get("conversations") or []:
                    for turn in conv.get("turns") or []:
                        # as rendered: after "Human: " / "AI: ", so words start with a space
                        yield " " + _PLACEHOLDER.sub("", turn.get("content") or "").strip()


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with pad/bos/eos/unk and ChatML tokens, wrapped for ``transformers``."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """AutoTokenizer by hub id or folder; a pad token is added (= eos) when the model has none."""
    from datagen.train.hub import check_hf_model

    check_hf_model(name, "tokenizer.name")
    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(tok, "chat_template", None) is None:
        tok.chat_template = CHATML_TEMPLATE
    return tok
