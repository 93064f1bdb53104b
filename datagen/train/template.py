"""From a conversation to ``input_ids`` and ``labels``: templates and the label mask.

Two steps, kept apart so each can be checked on its own:

1. *render*: turns -> one string plus the character ranges of the assistant's
   replies (the only text the loss may fall on). ``render_mplug`` writes the
   mPLUG-Owl "Human:/AI:" text; ``render_chat`` uses the tokenizer's own chat
   template and finds the reply ranges by rendering growing prefixes.
2. *encode*: the whole string is tokenised ONCE, with character offsets; a token
   is trained on when it overlaps a reply (or the spaces just before it). Image
   placeholders are registered as special tokens of a private copy of the
   tokenizer, so they come out as single tokens at their exact offsets and become
   runs of ``IMAGE_TOKEN_ID`` positions that the model fills with abstractor outputs.

Why once: tokenising pieces separately makes a SentencePiece (LLaMA) tokenizer
start every piece with a word boundary, so "AI: " + "Yes." trains on
``AI:  Yes.`` (a double space) and ``</s> \\nHuman:`` (a stray one), text the model
never sees at inference. Tokenised whole, the ids decode to the rendered text.
"""

from __future__ import annotations

import bisect
import re
import weakref
from dataclasses import dataclass, field
from typing import Sequence

IMAGE_TOKEN_ID = -200  # never a real token id; the model swaps these positions for image embeddings
IGNORE = -100  # torch cross_entropy's ignore_index

MPLUG_SYSTEM = (
    "The following is a conversation between a curious human and AI assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

PLACEHOLDER = re.compile(r"<image(?:_(\d+))?>")


class TemplateError(ValueError):
    """A conversation that cannot be turned into a training example (the message says why)."""


@dataclass
class Rendered:
    text: str
    targets: list[tuple[int, int]] = field(default_factory=list)  # [start, end) char ranges trained on


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image_order: list[int]  # for each image span in input_ids, in order: the index into the example's images
    placeholders: list[str] = field(default_factory=list)  # the placeholder text of each image span
    added_bos: bool = False  # encode() put a bos in front of the text

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _check_roles(turns: Sequence[dict], generation: bool = False) -> None:
    if not turns:
        raise TemplateError("conversation has no turns")
    for i, t in enumerate(turns):
        if t.get("role") not in ("user", "assistant"):
            raise TemplateError(f"turn {i}: role must be 'user' or 'assistant', got {t.get('role')!r}")
    if generation:
        if turns[-1]["role"] != "user":
            raise TemplateError("a prompt for generation must end with a user turn")
    elif not any(t["role"] == "assistant" for t in turns):
        raise TemplateError("conversation has no assistant turn: nothing to train on")


def render_mplug(turns: Sequence[dict], eos_token: str, add_generation_prompt: bool = False) -> Rendered:
    """mPLUG-Owl text: system line, one ``Human: <image>`` line per leading placeholder line,
    ``Human: {q}``, ``AI: {a}``. The reply and the eos token after it are the targets.
    ``add_generation_prompt``: the turns end with a user turn, and the text ends with
    ``AI:`` (the space before the reply belongs to the reply's first token)."""
    _check_roles(turns, add_generation_prompt)
    text = MPLUG_SYSTEM
    targets: list[tuple[int, int]] = []
    for t in turns:
        content = t.get("content") or ""
        if t["role"] == "user":
            lines = content.split("\n")
            while lines and PLACEHOLDER.fullmatch(lines[0].strip()):
                text += f"\nHuman: {lines.pop(0).strip()}"
            rest = "\n".join(lines).strip()
            if rest:
                text += f"\nHuman: {rest}"
        else:
            text += "\nAI: "
            start = len(text)
            text += content.strip() + eos_token
            targets.append((start, len(text)))
    if add_generation_prompt:
        text += "\nAI:"
    return Rendered(text, targets)


def render_chat(turns: Sequence[dict], tokenizer, add_generation_prompt: bool = False) -> Rendered:
    """The tokenizer's chat template. Reply i spans from the end of the prompt rendered with
    ``add_generation_prompt`` over turns[:i] to the end of turns[:i+1] (end-of-turn tokens
    included, so the model learns to stop). Templates that are not prefix-stable are refused."""
    _check_roles(turns, add_generation_prompt)
    messages = [{"role": t["role"], "content": t.get("content") or ""} for t in turns]

    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    full = render(messages, add_generation_prompt)
    targets = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(messages[:i], True) if i else ""
        upto = render(messages[: i + 1], False)
        if not (full.startswith(prompt) and full.startswith(upto) and upto.startswith(prompt)):
            raise TemplateError("the tokenizer's chat template is not prefix-stable; use template: mplug_owl")
        targets.append((len(prompt), len(upto)))
    if add_generation_prompt:
        # the reply's first token carries its leading space (SentencePiece and byte-level BPE alike)
        full = full.rstrip(" ")
    return Rendered(full, targets)


def render_caption(caption: str, eos_token: str) -> Rendered:
    """Stage 1: the image, then its caption; the loss falls on the caption and eos."""
    text = "<image>"
    start = len(text)
    text += caption.strip() + eos_token
    return Rendered(text, [(start, len(text))])


def _image_index(match: re.Match, num_images: int) -> int:
    if match.group(1) is None:
        if num_images != 1:
            raise TemplateError(f"'<image>' used with {num_images} images; use <image_0>, <image_1>, ...")
        return 0
    idx = int(match.group(1))
    if idx >= num_images:
        raise TemplateError(f"placeholder {match.group(0)} but the sample has {num_images} image(s)")
    return idx


_BACKENDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> (backend, placeholders)


def _backend(tokenizer, placeholders: Sequence[str]):
    """A private copy of the tokenizer's Rust backend in which the placeholders are special tokens
    (the caller's tokenizer, which checkpoints save, is left as it is)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError(f"{type(tokenizer).__name__} is not a fast tokenizer: character offsets are needed "
                            "(load it with use_fast=True)")
    from tokenizers import AddedToken, Tokenizer

    if tokenizer not in _BACKENDS:
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        _BACKENDS[tokenizer] = (backend, set())
    backend, registered = _BACKENDS[tokenizer]
    new = [p for p in dict.fromkeys(placeholders) if p not in registered]
    if new:
        backend.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in new])
        registered.update(new)
    return backend


def encode(
    rendered: Rendered,
    tokenizer,
    *,
    num_images: int,
    tokens_per_image: int,
    max_len: int,
    add_bos: bool = True,
) -> Encoded:
    """Tokenise ``rendered`` in one pass. Truncation keeps whole image spans only: a span that
    would not fit ends the sequence there (its image is then not fed)."""
    text = rendered.text
    matches = list(PLACEHOLDER.finditer(text))
    if num_images and not matches:
        raise TemplateError(f"sample has {num_images} image(s) but the text has no <image> placeholder")
    if not num_images and matches:
        raise TemplateError(f"text has placeholder {matches[0].group(0)} but the sample has no image")
    by_start = {m.start(): (_image_index(m, num_images), m) for m in matches}  # validates every placeholder

    backend = _backend(tokenizer, [m.group(0) for m in matches])
    enc = backend.encode(text, add_special_tokens=False)
    # A reply's range starts at the spaces before it: a generation prompt ends before them (the
    # reply's first token carries the space, or is the space), so training must cover them too.
    spans = sorted((len(text[:s].rstrip(" ")), e) for s, e in rendered.targets)
    starts = [s for s, _ in spans]

    def trained(a: int, b: int) -> bool:  # does token [a, b) overlap a reply?
        i = bisect.bisect_left(starts, b) - 1
        return i >= 0 and spans[i][1] > a

    ids: list[int] = []
    labels: list[int] = []
    order: list[int] = []
    placeholders: list[str] = []
    added_bos = False
    if add_bos and tokenizer.bos_token_id is not None and not text.startswith(tokenizer.bos_token or "\0"):
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE)
        added_bos = True
    for tid, (a, b) in zip(enc.ids, enc.offsets):
        if len(ids) >= max_len:
            break
        if a in by_start and b == by_start[a][1].end():
            if len(ids) + tokens_per_image > max_len:
                break
            order.append(by_start[a][0])
            placeholders.append(by_start[a][1].group(0))
            ids.extend([IMAGE_TOKEN_ID] * tokens_per_image)
            labels.extend([IGNORE] * tokens_per_image)
            continue
        ids.append(tid)
        labels.append(tid if trained(a, b) else IGNORE)
    return Encoded(ids, labels, order, placeholders, added_bos)


def training_text(enc: Encoded, tokenizer) -> str:
    """The text the ids of ``enc`` stand for, each image span written as its placeholder (the
    bos this module added left out): what the model is trained on, for inspection and tests."""
    backend = _backend(tokenizer, enc.placeholders)
    ids, k, i = [], 0, 1 if enc.added_bos else 0
    while i < len(enc.input_ids):
        if enc.input_ids[i] == IMAGE_TOKEN_ID:
            ids.append(backend.token_to_id(enc.placeholders[k]))
            k += 1
            while i < len(enc.input_ids) and enc.input_ids[i] == IMAGE_TOKEN_ID:
                i += 1
            continue
        ids.append(enc.input_ids[i])
        i += 1
    return backend.decode(ids, skip_special_tokens=False)
