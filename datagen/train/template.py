"""From a conversation to ``input_ids`` and ``labels``: templates and the label mask.

Two steps, kept apart so each can be checked on its own:

1. *render*: turns -> one string plus the character ranges of the assistant's
   replies (the only text the loss may fall on). ``render_mplug`` writes the
   mPLUG-Owl "Human:/AI:" text; ``render_chat`` uses the tokenizer's own chat
   template and finds the reply ranges by rendering growing prefixes.
2. *encode*: the string is cut at reply boundaries and at image placeholders;
   each text piece is tokenised on its own, so a token's label is exact by
   construction (no offset guessing), and each placeholder becomes a run of
   ``IMAGE_TOKEN_ID`` positions that the model fills with abstractor outputs.
"""

from __future__ import annotations

import re
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

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _check_roles(turns: Sequence[dict]) -> None:
    if not turns:
        raise TemplateError("conversation has no turns")
    for i, t in enumerate(turns):
        if t.get("role") not in ("user", "assistant"):
            raise TemplateError(f"turn {i}: role must be 'user' or 'assistant', got {t.get('role')!r}")
    if not any(t["role"] == "assistant" for t in turns):
        raise TemplateError("conversation has no assistant turn: nothing to train on")


def render_mplug(turns: Sequence[dict], eos_token: str) -> Rendered:
    """mPLUG-Owl text: system line, one ``Human: <image>`` line per leading placeholder line,
    ``Human: {q}``, ``AI: {a}``. The reply and the eos token after it are the targets."""
    _check_roles(turns)
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
    return Rendered(text, targets)


def render_chat(turns: Sequence[dict], tokenizer) -> Rendered:
    """The tokenizer's chat template. Reply i spans from the end of the prompt rendered with
    ``add_generation_prompt`` over turns[:i] to the end of turns[:i+1] (end-of-turn tokens
    included, so the model learns to stop). Templates that are not prefix-stable are refused."""
    _check_roles(turns)
    messages = [{"role": t["role"], "content": t.get("content") or ""} for t in turns]

    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    full = render(messages, False)
    targets = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(messages[:i], True) if i else ""
        upto = render(messages[: i + 1], False)
        if not (full.startswith(prompt) and full.startswith(upto) and upto.startswith(prompt)):
            raise TemplateError("the tokenizer's chat template is not prefix-stable; use template: mplug_owl")
        targets.append((len(prompt), len(upto)))
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


def encode(
    rendered: Rendered,
    tokenizer,
    *,
    num_images: int,
    tokens_per_image: int,
    max_len: int,
    add_bos: bool = True,
) -> Encoded:
    """Tokenise ``rendered`` piecewise. Truncation keeps whole image spans only: a span that
    would not fit ends the sequence there (its image is then not fed)."""
    text = rendered.text
    cuts = {0, len(text)}
    for s, e in rendered.targets:
        cuts.update((s, e))
    spans = [(m.start(), m.end(), m) for m in PLACEHOLDER.finditer(text)]
    if num_images and not spans:
        raise TemplateError(f"sample has {num_images} image(s) but the text has no <image> placeholder")
    if not num_images and spans:
        raise TemplateError(f"text has placeholder {spans[0][2].group(0)} but the sample has no image")
    for s, e, _ in spans:
        cuts.update((s, e))
    cuts = sorted(cuts)
    by_start = {s: _image_index(m, num_images) for s, _, m in spans}  # validates every placeholder up front

    ids: list[int] = []
    labels: list[int] = []
    order: list[int] = []
    if add_bos and tokenizer.bos_token_id is not None and not text.startswith(tokenizer.bos_token or "\0"):
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE)
    for a, b in zip(cuts, cuts[1:]):
        if len(ids) >= max_len:
            break
        if a in by_start:
            if len(ids) + tokens_per_image > max_len:
                break
            order.append(by_start[a])
            ids.extend([IMAGE_TOKEN_ID] * tokens_per_image)
            labels.extend([IGNORE] * tokens_per_image)
            continue
        piece_ids = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        is_target = any(s <= a and b <= e for s, e in rendered.targets)
        room = max_len - len(ids)
        piece_ids = piece_ids[:room]
        ids.extend(piece_ids)
        labels.extend(piece_ids if is_target else [IGNORE] * len(piece_ids))
    return Encoded(ids, labels, order)
