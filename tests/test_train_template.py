"""Templates, the label mask (token by token) and training configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from datagen.train.config import load_config
from datagen.train.template import (
    IGNORE,
    IMAGE_TOKEN_ID,
    MPLUG_SYSTEM,
    TemplateError,
    encode,
    render_caption,
    render_chat,
    render_mplug,
    training_text,
)
from datagen.train.tokenizer import train_bpe_tokenizer

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "train"


@pytest.fixture(scope="module")
def byte_tok():
    """A byte-level tokenizer with no merges: one ASCII character = one token, so the expected
    label of every token follows from the characters alone."""
    tok = train_bpe_tokenizer(["abc"], vocab_size=300)
    assert len(tok) <= 262 + 3  # the 256 byte symbols, the specials and at most a couple of merges
    return tok


TURNS = [
    {"role": "user", "content": "<image>\nIs there a dog?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": "And a cat?"},
    {"role": "assistant", "content": "No."},
]


def test_mplug_text_matches_the_published_template():
    r = render_mplug(TURNS, "</s>")
    assert r.text == (
        MPLUG_SYSTEM + "\nHuman: <image>\nHuman: Is there a dog?\nAI: Yes.</s>\nHuman: And a cat?\nAI: No.</s>"
    )
    assert [r.text[s:e] for s, e in r.targets] == ["Yes.</s>", "No.</s>"]


def test_label_mask_token_by_token_on_a_known_example(byte_tok):
    tpi = 3
    enc = encode(render_mplug(TURNS, "</s>"), byte_tok, num_images=1, tokens_per_image=tpi, max_len=1000)
    eos, bos = byte_tok.eos_token_id, byte_tok.bos_token_id
    # Build the expectation independently: walk the characters of the known text.
    # the space before a reply is trained: a generation prompt ends at "AI:", so the model must emit it
    before, after = MPLUG_SYSTEM + "\nHuman: ", "\nHuman: Is there a dog?\nAI:"
    middle = "\nHuman: And a cat?\nAI:"

    def chars(text, trained):
        ids = [byte_tok.convert_tokens_to_ids(byte_tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(c)[0][0])
               for c in text]
        return ids, (ids if trained else [IGNORE] * len(ids))

    exp_ids, exp_labels = [bos], [IGNORE]
    for text, trained in [(before, False)]:
        i, l = chars(text, trained)
        exp_ids += i
        exp_labels += l
    exp_ids += [IMAGE_TOKEN_ID] * tpi
    exp_labels += [IGNORE] * tpi
    for text, trained in [(after, False), (" Yes.", True)]:
        i, l = chars(text, trained)
        exp_ids += i
        exp_labels += l
    exp_ids.append(eos)
    exp_labels.append(eos)
    for text, trained in [(middle, False), (" No.", True)]:
        i, l = chars(text, trained)
        exp_ids += i
        exp_labels += l
    exp_ids.append(eos)
    exp_labels.append(eos)
    assert enc.input_ids == exp_ids
    assert enc.labels == exp_labels
    assert enc.image_order == [0]
    assert byte_tok.decode([t for t in enc.labels if t != IGNORE]) == " Yes.</s> No.</s>"


def test_chat_template_trains_replies_and_end_of_turn_only(byte_tok):
    r = render_chat(TURNS, byte_tok)
    assert r.text.startswith("<s><|im_start|>user\n<image>\nIs there a dog?<|im_end|>\n<|im_start|>assistant\n")
    assert [r.text[s:e] for s, e in r.targets] == ["Yes.<|im_end|>\n", "No.<|im_end|>\n"]
    enc = encode(r, byte_tok, num_images=1, tokens_per_image=2, max_len=1000, add_bos=False)
    assert enc.input_ids[0] == byte_tok.bos_token_id  # the template's own bos, not a second one
    assert enc.input_ids.count(byte_tok.bos_token_id) == 1
    trained = byte_tok.decode([t for t in enc.labels if t != IGNORE], skip_special_tokens=False)
    assert trained == "Yes.<|im_end|>\nNo.<|im_end|>\n"
    assert enc.input_ids.count(IMAGE_TOKEN_ID) == 2


def test_multi_image_placeholders_follow_text_order(byte_tok):
    turns = [{"role": "user", "content": "<image_1> then <image_0>: same?"}, {"role": "assistant", "content": "No"}]
    enc = encode(render_mplug(turns, "</s>"), byte_tok, num_images=2, tokens_per_image=2, max_len=1000)
    assert enc.image_order == [1, 0]
    assert enc.input_ids.count(IMAGE_TOKEN_ID) == 4


def test_truncation_never_cuts_an_image_span(byte_tok):
    r = render_caption("a dog on a sofa", "</s>")
    full = encode(r, byte_tok, num_images=1, tokens_per_image=5, max_len=1000)
    assert byte_tok.decode([t for t in full.labels if t != IGNORE]) == "a dog on a sofa</s>"
    cut = encode(r, byte_tok, num_images=1, tokens_per_image=5, max_len=9)
    assert len(cut.input_ids) == 9 and cut.input_ids[1:6] == [IMAGE_TOKEN_ID] * 5
    none = encode(r, byte_tok, num_images=1, tokens_per_image=5, max_len=4)  # image does not fit: dropped
    assert IMAGE_TOKEN_ID not in none.input_ids and none.image_order == []


@pytest.mark.parametrize(
    "content, n_images, message",
    [
        ("no placeholder here", 1, "no <image> placeholder"),
        ("<image>\nhi", 0, "has no image"),
        ("<image>\nhi", 2, "use <image_0>"),
        ("<image_3>\nhi", 2, "has 2 image"),
    ],
)
def test_placeholder_mismatch_is_a_clear_error(byte_tok, content, n_images, message):
    turns = [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(TemplateError, match=message):
        encode(render_mplug(turns, "</s>"), byte_tok, num_images=n_images, tokens_per_image=1, max_len=100)


def test_conversation_without_assistant_is_refused():
    with pytest.raises(TemplateError, match="no assistant"):
        render_mplug([{"role": "user", "content": "hi"}], "</s>")


def test_recipes_load_and_overrides_keep_types():
    cfg = load_config(RECIPES / "stage1_tiny.yaml", ["optim.lr=3e-4", "data.num_workers=0", "max_steps=7"])
    assert cfg.optim.lr == 3e-4 and cfg.data.num_workers == 0 and cfg.max_steps == 7 and cfg.stage == 1
    cfg2 = load_config(RECIPES / "stage2_tiny.yaml")
    assert cfg2.stage == 2 and cfg2.train_llm and cfg2.lora is None  # the tiny LLM trains whole
    assert cfg2.init_from and cfg2.model is None
    with pytest.raises(ValueError, match="without 'lora'"):
        load_config(RECIPES / "stage2_tiny.yaml", ["lora={r: 8}"])
    real1 = load_config(RECIPES / "stage1_mplug_owl.yaml")
    assert real1.model.vision.name == "ViT-L-14" and real1.model.abstractor.tokens_per_image == 65
    real2 = load_config(RECIPES / "stage2_mplug_owl.yaml")
    assert real2.optim.lr == 2e-5 and real2.lora.r == 8 and real2.lora.alpha == 32
    assert real2.lora.target_modules == ["q_proj", "v_proj"] and not real2.train_llm
    assert load_config(RECIPES / "stage2_mplug_owl.yaml", ["lora.target_modules=[q_proj, k_proj]"]).lora.target_modules == [
        "q_proj", "k_proj"]
    assert real2.grad_checkpointing and not real1.grad_checkpointing  # stage 1's ~100-token sequences fit


def test_config_errors_name_file_and_key_path(tmp_path):
    with pytest.raises(ValueError, match=r"stage1_tiny.yaml.*\n.*optim.lerning_rate"):
        load_config(RECIPES / "stage1_tiny.yaml", ["optim.lerning_rate=1"])
    with pytest.raises(ValueError, match="stage 1 keeps the LLM frozen"):
        load_config(RECIPES / "stage1_tiny.yaml", ["lora={r: 4}"])
    bad = tmp_path / "x.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping at the top level"):
        load_config(bad)


@pytest.fixture(scope="module")
def llama_tok():
    """A LLaMA-style SentencePiece tokenizer built offline: BPE over Metaspace pre-tokens
    ('▁' marks a word start, prepended to the text's first word only), as LLaMA's fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [MPLUG_SYSTEM, "Human: Is there a dog?\nAI: Yes, there is a dog.", "And a cat? No. 图中有猫吗？没有。"] * 30
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                                      show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")


def test_the_llama_style_tokenizer_shows_the_piecewise_double_space(llama_tok):
    """Why encode() tokenises once: the same tokenizer, fed pieces, decodes to other text."""
    pieces = ["\nAI: ", "Yes.</s>", "\nHuman: And a cat?"]
    ids = [i for p in pieces for i in llama_tok(p, add_special_tokens=False)["input_ids"]]
    assert llama_tok.decode(ids) == "\nAI:  Yes.</s> \nHuman: And a cat?"
    whole = llama_tok("".join(pieces), add_special_tokens=False)["input_ids"]
    assert llama_tok.decode(whole) == "".join(pieces)


def test_sentencepiece_training_text_is_the_rendered_text_and_labels_cover_the_replies(llama_tok):
    turns = [*TURNS[:3], {"role": "assistant", "content": "没有。"}]
    r = render_mplug(turns, "</s>")
    enc = encode(r, llama_tok, num_images=1, tokens_per_image=4, max_len=1000)
    assert enc.input_ids[0] == llama_tok.bos_token_id and enc.input_ids.count(IMAGE_TOKEN_ID) == 4
    assert training_text(enc, llama_tok) == r.text  # no double space, no stray space, exactly the text
    # labelled tokens: contiguous runs, one per reply; their pieces spell the reply (with the
    # word-start mark SentencePiece puts on the reply's first word) and nothing else
    runs, cur = [], []
    for tid, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == tid
            cur.append(tid)
        elif cur:
            runs.append(cur)
            cur = []
    runs.append(cur) if cur else None
    spelled = ["".join(llama_tok.convert_ids_to_tokens(run)).replace("▁", " ") for run in runs]
    assert spelled == [" Yes.</s>", " 没有。</s>"]
    # the token before each reply ends with 'AI:': the prompt ends where the reply begins
    first = next(i for i, lab in enumerate(enc.labels) if lab != IGNORE)
    assert llama_tok.convert_ids_to_tokens(enc.input_ids[first - 1]).endswith("AI:")
    # and a generation prompt over the same history is exactly the training prefix
    prompt = encode(render_mplug(turns[:1], "</s>", add_generation_prompt=True), llama_tok, num_images=1,
                    tokens_per_image=4, max_len=1000)
    assert prompt.input_ids == enc.input_ids[:first]
    second = next(i for i in range(first + 1, len(enc.labels))
                  if enc.labels[i] != IGNORE and enc.labels[i - 1] == IGNORE)
    prompt2 = encode(render_mplug(turns[:3], "</s>", add_generation_prompt=True), llama_tok, num_images=1,
                     tokens_per_image=4, max_len=1000)
    assert prompt2.input_ids == enc.input_ids[:second]


def test_caption_and_chat_text_round_trip_with_sentencepiece(llama_tok):
    from datagen.train.tokenizer import CHATML_TEMPLATE

    cap = render_caption("a dog on a sofa", "</s>")
    enc = encode(cap, llama_tok, num_images=1, tokens_per_image=2, max_len=100)
    assert training_text(enc, llama_tok) == cap.text
    tok = llama_tok
    tok.chat_template = CHATML_TEMPLATE.replace("<|im_start|>", "").replace("<|im_end|>", "</s>")
    r = render_chat(TURNS, tok)
    enc = encode(r, tok, num_images=1, tokens_per_image=2, max_len=1000, add_bos=False)
    assert training_text(enc, tok) == r.text
