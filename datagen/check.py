"""``datagen check``: verify a run or an export before a trainer reads it.

Trainers drop samples without saying much: LLaVA prints ``WARNING: tokenization mismatch: X vs. Y.
(ignored)`` and trains on the sample with every label masked; a missing or truncated image stops a
run hours in. This module reads what a trainer would read and reports, per sample:

- ``image_missing`` / ``image_corrupt`` / ``image_sha256_mismatch``: every referenced image exists,
  decodes completely (Pillow ``load``) and matches its recorded sha256 (``SHA256SUMS`` beside an
  export; ``image_sha256`` of a stage-1 sample; the manifest's per-shard sha256 for the shards);
- ``placeholder_count_mismatch``: the ``<image>`` placeholders match the images, by the rule of the
  format's loader (LLaVA-1.5 moves every ``<image>`` of a turn to its front, so a single-image item
  needs exactly one turn with ``<image>``; the interleaved, ShareGPT and mPLUG-Owl layouts need one
  ``<image>`` per listed image; shards name images ``<image_N>`` once each);
- ``schema_invalid``: the fields and types of the target format;
- ``role_alternation``: user, assistant, user, assistant... ending with the assistant, as the
  templates need (LLaVA ``preprocess_v1`` asserts it, and drops a leading non-human turn);
- with ``--tokenizer``: the conversation rendered with ``--template`` and tokenised.
  ``label_mask_mismatch``: the trained tokens are not exactly the assistant replies (and their
  end-of-turn); ``too_long``: longer than ``--max-len`` with each image counted as
  ``--tokens-per-image``; ``tokenization_mismatch``: for ``llava_v1``/``vicuna_v1``, LLaVA's own
  round-boundary rule (``preprocess_v1``, reproduced in ``llava_v1_labels``) disagrees with the
  tokenised length, the case LLaVA ignores the sample in.

Every problem means a sample would be dropped or trained wrongly: ``check`` exits 1 on any.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from datagen.sinks.export import MPLUG_SYSTEM, SUMS, iter_samples, llava_layout, read_sums
from datagen.sinks.shards import IMAGE_EXTS, sample_images

FORMATS = ("wds", "llava", "mplug_owl", "sharegpt", "hf")

PROBLEMS = {
    "unreadable": "a file of the dataset cannot be read or parsed",
    "schema_invalid": "a sample does not have the fields and types of its format",
    "image_missing": "a referenced image file does not exist",
    "image_corrupt": "an image does not decode completely",
    "image_sha256_mismatch": "an image (or shard) differs from its recorded sha256",
    "placeholder_count_mismatch": "the <image> placeholders do not match the sample's images",
    "role_alternation": "turns do not alternate user/assistant, starting with the user and ending with the assistant",
    "empty_turn": "a turn has no text",
    "tokenization_mismatch": "LLaVA's round-boundary rule disagrees with the tokenised length: LLaVA masks the whole sample",
    "label_mask_mismatch": "the trained tokens are not exactly the assistant replies",
    "too_long": "the rendered conversation is longer than --max-len tokens",
}


# ------------------------------------------------------------------------------------ report

@dataclass
class Report:
    checked: Counter = field(default_factory=Counter)  # format -> samples checked
    problems: Counter = field(default_factory=Counter)  # code -> samples with that problem
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    max_examples: int = 3

    def add(self, code: str, where: str, detail: str) -> None:
        assert code in PROBLEMS, code
        self.problems[code] += 1
        ex = self.examples.setdefault(code, [])
        if len(ex) < self.max_examples:
            ex.append(f"{where}: {detail}")

    @property
    def ok(self) -> bool:
        return not self.problems and sum(self.checked.values()) > 0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": dict(self.checked), "problems": dict(self.problems),
                "examples": self.examples, "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Report":
        return cls(Counter(d["checked"]), Counter(d["problems"]), d["examples"], d["notes"])

    def text(self) -> str:
        lines = ["checked: " + (", ".join(f"{fmt} {n} samples" for fmt, n in self.checked.items()) or "nothing")]
        lines += [f"note: {n}" for n in self.notes]
        if not self.problems:
            lines.append("problems: none" if self.checked else "problems: no samples found")
        else:
            lines.append(f"problems: {sum(self.problems.values())}")
            for code, n in sorted(self.problems.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {code}: {n}  ({PROBLEMS[code]})")
                lines += [f"    e.g. {e}" for e in self.examples.get(code, [])]
        lines.append("result: " + ("OK" if self.ok else "FAIL"))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------- images

class ImageChecker:
    """Checks each image once (a picture shared by the EN and ZH conversations is read once) and
    reports its problems against every sample that refers to it."""

    def __init__(self, report: Report):
        self.report = report
        self._seen: dict[Any, list[tuple[str, str]]] = {}

    def _problems(self, data: bytes | None, path: Path | None, sha: str | None) -> list[tuple[str, str]]:
        if data is None:
            if path is None or not path.is_file():
                return [("image_missing", f"{path} does not exist")]
            data = path.read_bytes()
        out = []
        if sha is not None and hashlib.sha256(data).hexdigest() != sha:
            out.append(("image_sha256_mismatch", f"{path or 'image'}: sha256 {hashlib.sha256(data).hexdigest()[:16]}..."
                        f" but {sha[:16]}... recorded"))
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.width < 1 or im.height < 1:
                    raise ValueError("empty image")
        except Exception as e:  # noqa: BLE001 - any decoder error is the finding
            out.append(("image_corrupt", f"{path or 'image'} does not decode: {type(e).__name__}: {e}"))
        return out

    def check(self, where: str, *, path: Path | None = None, data: bytes | None = None, sha: str | None = None,
              memo: Any = None) -> None:
        key = memo if memo is not None else (str(path), sha)
        if key not in self._seen:
            self._seen[key] = self._problems(data, path, sha)
        for code, detail in self._seen[key]:
            self.report.add(code, where, detail)


# ------------------------------------------------------------------------------ conversations

@dataclass
class Sample:
    """One conversation as its trainer sees it: ``turns`` are (role, text) with role ``user`` or
    ``assistant`` and one ``<image>`` per image where the trainer puts it."""
    where: str
    turns: list[tuple[str, str]]
    n_images: int


_LLAVA_ROLES = {"human": "user", "gpt": "assistant"}


def check_roles(report: Report, s: Sample) -> bool:
    roles = [r for r, _ in s.turns]
    expected = ["user", "assistant"] * (len(roles) // 2)
    if not roles or roles != expected or len(roles) % 2:
        report.add("role_alternation", s.where, f"roles {roles}")
        return False
    empty = [i for i, (_, text) in enumerate(s.turns) if not text.replace("<image>", "").strip()]
    if empty:
        report.add("empty_turn", s.where, f"turn {empty[0]} is empty")
        return False
    return True


# ---------------------------------------------------------------------------------- templates

@dataclass(frozen=True)
class Template:
    """A conversation template as text: ``render`` gives the prompt and the character ranges of the
    assistant replies (with the end-of-turn text after each), the only text a loss may fall on."""
    name: str
    system: str
    user: str  # text before a user message
    assistant: str  # text before an assistant message
    user_end: str  # text after a user message
    assistant_end: str  # after an assistant message; "{eos}" is the tokenizer's eos token
    reply_prefix: str = ""  # text before a message that the model generates (LLaVA: the space after "ASSISTANT:")

    def render(self, turns: list[tuple[str, str]], eos: str) -> tuple[str, list[tuple[int, int]]]:
        text, targets = self.system, []
        for role, message in turns:
            if role == "user":
                if self.name == "mplug_owl":  # as the export writes it: one "Human: <image>" line per leading image
                    lines = message.split("\n")
                    while len(lines) > 1 and lines[0].strip() == "<image>":
                        text += self.user + lines.pop(0).strip()
                    message = "\n".join(lines)
                text += self.user + message + self.user_end
            else:
                text += self.assistant
                start = len(text)
                text += self.reply_prefix + message + self.assistant_end.replace("{eos}", eos)
                targets.append((start, len(text)))
        return text, targets


# LLaVA ``llava/conversation.py``: conv_llava_v1 / conv_vicuna_v1, SeparatorStyle.TWO with
# sep=" ", sep2="</s>": ``ret = system + sep``, then ``role + ": " + message + seps[i % 2]``. At
# inference the prompt ends "ASSISTANT:" (``role + ":"``), so the space after it is the model's to
# generate: a LLaMA tokenizer merges it into the reply's first piece ("▁The") or, before a piece
# that does not start a word (Chinese), keeps it as "▁", which preprocess_v1 trains on too.
_LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                     "The assistant gives helpful, detailed, and polite answers to the user's questions.")
TEMPLATES = {
    "llava_v1": Template("llava_v1", _LLAVA_V1_SYSTEM + " ", "USER: ", "ASSISTANT:", " ", "</s>", " "),
    "vicuna_v1": Template("vicuna_v1", _VICUNA_V1_SYSTEM + " ", "USER: ", "ASSISTANT:", " ", "</s>", " "),
    # mPLUG-Owl: system line, "Human: " / "AI: " lines; the reply and eos are trained on.
    "mplug_owl": Template("mplug_owl", MPLUG_SYSTEM, "\nHuman: ", "\nAI: ", "", "{eos}"),
    "chatml": Template("chatml", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
                       "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n", "<|im_end|>\n"),
}
LLAVA_RULE_TEMPLATES = ("llava_v1", "vicuna_v1")
IMAGE_TOKEN_INDEX = -200  # LLaVA's constants.IMAGE_TOKEN_INDEX
IGNORE_INDEX = -100


def load_tokenizer(name_or_path: str):
    """A tokenizer from a local folder (or the local Hugging Face cache): never the network."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"tokenizer {name_or_path!r}: not a local tokenizer folder or cached model ({e})") from e


def tokenizer_image_token(prompt: str, tok) -> tuple[list[int], list[tuple[int, int] | None]]:
    """LLaVA ``mm_utils.tokenizer_image_token``, with each id's character span in ``prompt``
    (None for an id the tokenizer added and for an image)::

        prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split('<image>')]
        ...
        if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
            offset = 1
            input_ids.append(prompt_chunks[0][0])
        for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
            input_ids.extend(x[offset:])
    """
    chunks, base = [], 0
    for text in prompt.split("<image>"):
        enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        spans = [None if special else (base + s, base + e)
                 for (s, e), special in zip(enc["offset_mapping"], enc["special_tokens_mask"])]
        chunks.append((list(enc["input_ids"]), spans))
        base += len(text) + len("<image>")
    ids: list[int] = []
    spans: list = []
    offset = 0
    if chunks and chunks[0][0] and chunks[0][0][0] == tok.bos_token_id:
        offset = 1
        ids.append(chunks[0][0][0])
        spans.append(None)
    for i, (x, sp) in enumerate(chunks):
        if i:
            ids += [IMAGE_TOKEN_INDEX] * (offset + 1)
            spans += [None] * (offset + 1)
        ids += x[offset:]
        spans += sp[offset:]
    return ids, spans


def _legacy(tok) -> bool:
    legacy = getattr(tok, "legacy", None)
    if legacy is None:
        legacy = getattr(tok, "init_kwargs", {}).get("legacy", True)
    return bool(legacy)


def llava_v1_labels(conversation: str, tok, has_image: bool, model_max_length: int) -> tuple[list[int], int, int]:
    """LLaVA ``train.py`` ``preprocess_v1``'s masking of one rendered conversation: (labels, cur_len,
    total_len). ``cur_len != total_len`` (below ``model_max_length``) is its "tokenization mismatch",
    after which every label is IGNORE_INDEX::

        sep = conv.sep + conv.roles[1] + ": "
        total_len = int(target.ne(tokenizer.pad_token_id).sum())
        rounds = conversation.split(conv.sep2)
        cur_len = 1
        target[:cur_len] = IGNORE_INDEX
        for i, rou in enumerate(rounds):
            if rou == "": break
            parts = rou.split(sep)
            if len(parts) != 2: break
            parts[0] += sep
            if has_image:
                round_len = len(tokenizer_image_token(rou, tokenizer))
                instruction_len = len(tokenizer_image_token(parts[0], tokenizer)) - 2
            else:
                round_len = len(tokenizer(rou).input_ids)
                instruction_len = len(tokenizer(parts[0]).input_ids) - 2
            if i != 0 and not tokenizer.legacy and IS_TOKENIZER_GREATER_THAN_0_14:
                round_len -= 1
                instruction_len -= 1
            target[cur_len : cur_len + instruction_len] = IGNORE_INDEX
            cur_len += round_len
        target[cur_len:] = IGNORE_INDEX

    LLaVA sets ``pad_token = unk_token`` for the v1 templates; that is the id counted out here.
    """
    def length(text: str) -> int:
        return len(tokenizer_image_token(text, tok)[0]) if has_image else len(tok(text)["input_ids"])

    if has_image:
        ids = tokenizer_image_token(conversation, tok)[0]
    else:
        ids = tok(conversation, truncation=True, max_length=model_max_length)["input_ids"]
    pad = tok.unk_token_id if tok.unk_token_id is not None else tok.pad_token_id
    total_len = sum(1 for x in ids if x != pad)
    target = list(ids)
    sep = " ASSISTANT: "
    cur_len = 1
    target[:cur_len] = [IGNORE_INDEX] * min(cur_len, len(target))
    legacy = _legacy(tok)
    for i, rou in enumerate(conversation.split("</s>")):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len, instruction_len = length(rou), length(parts[0]) - 2
        if i != 0 and not legacy:
            round_len -= 1
            instruction_len -= 1
        target[cur_len:cur_len + instruction_len] = [IGNORE_INDEX] * len(target[cur_len:cur_len + instruction_len])
        cur_len += round_len
    target[cur_len:] = [IGNORE_INDEX] * len(target[cur_len:])
    if cur_len < model_max_length and cur_len != total_len:
        target = [IGNORE_INDEX] * len(target)
    return target, cur_len, total_len


class TokenCheck:
    def __init__(self, report: Report, tokenizer, template: str | Template, max_len: int, tokens_per_image: int):
        if isinstance(template, str) and template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}: expected one of {', '.join(TEMPLATES)}")
        self.report, self.tok = report, tokenizer
        self.template = TEMPLATES[template] if isinstance(template, str) else template
        self.max_len, self.tokens_per_image = max_len, tokens_per_image

    def _piece(self, text: str, span: tuple[int, int]) -> str:
        return repr(text[span[0]:span[1]])

    def __call__(self, s: Sample) -> None:
        text, targets = self.template.render(s.turns, self.tok.eos_token or "")
        ids, spans = tokenizer_image_token(text, self.tok)
        n_image_ids = sum(1 for x in ids if x == IMAGE_TOKEN_INDEX)
        length = len(ids) - n_image_ids + s.n_images * self.tokens_per_image
        if length > self.max_len:
            self.report.add("too_long", s.where, f"{length} tokens ({s.n_images} image(s) x {self.tokens_per_image})"
                            f" > --max-len {self.max_len}")
            return  # truncated: the trainer cuts the replies, so no mask can be right
        # The tokens a loss should fall on: those overlapping a reply. A token that also holds
        # instruction text (or text after the reply's end-of-turn) cannot be labelled right.
        expected = []
        for sp in spans:
            hit = sp is not None and any(sp[0] < e and sp[1] > b for b, e in targets)
            expected.append(hit)
            if not hit:
                continue
            for b, e in targets:
                if sp[0] < e and sp[1] > b and (text[sp[0]:b].strip() or text[e:sp[1]].strip()):
                    self.report.add("label_mask_mismatch", s.where, f"token {self._piece(text, sp)} spans a reply"
                                    f" boundary (reply {text[b:e][:30]!r})")
                    return
        if self.template.name in LLAVA_RULE_TEMPLATES:
            labels, cur_len, total_len = llava_v1_labels(text, self.tok, "<image>" in text, self.max_len)
            if cur_len < self.max_len and cur_len != total_len:
                self.report.add("tokenization_mismatch", s.where, f"LLaVA preprocess_v1: tokenization mismatch:"
                                f" {cur_len} vs. {total_len} (ignored: every label masked)")
                return
            trained = [lab != IGNORE_INDEX for lab in labels]
            if trained != expected:
                i = next(i for i, (a, b) in enumerate(zip(trained, expected)) if a != b)
                what = self._piece(text, spans[i]) if spans[i] else f"id {ids[i]}"
                self.report.add("label_mask_mismatch", s.where, f"LLaVA's mask {'trains' if trained[i] else 'masks'}"
                                f" token {i} {what}, which is {'' if expected[i] else 'not '}reply text")
                return
        if not any(expected) or any(not any(sp and sp[0] < e and sp[1] > b for sp in spans) for b, e in targets):
            self.report.add("label_mask_mismatch", s.where, "a reply has no token to train on")


# ------------------------------------------------------------------------------------ formats

def _placeholders(turns: list[tuple[str, str]]) -> int:
    return sum(text.count("<image>") for _, text in turns)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _llava_turns(report: Report, where: str, convs: Any) -> list[tuple[str, str]] | None:
    if not isinstance(convs, list) or not convs or not all(
            isinstance(c, dict) and c.get("from") in _LLAVA_ROLES and isinstance(c.get("value"), str) for c in convs):
        report.add("schema_invalid", where, "conversations must be a non-empty list of"
                   " {'from': 'human'|'gpt', 'value': str}")
        return None
    return [(_LLAVA_ROLES[c["from"]], c["value"]) for c in convs]


def _load_json(report: Report, path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        report.add("unreadable", str(path), str(e))
        return None


PROVENANCE = ("source", "source_ids", "generator", "recipe_sha256", "datagen")


class Checker:
    def __init__(self, report: Report, token_check: TokenCheck | None):
        self.report, self.images, self.token_check = report, ImageChecker(report), token_check
        self.no_provenance: Counter = Counter()  # format -> exported samples without a complete provenance
        self.run: dict = {}  # the run's provenance from manifest.json, which every shard sample should carry

    def provenance(self, fmt: str, item: dict) -> None:
        prov = item.get("provenance")
        if not isinstance(prov, dict) or any(not prov.get(k) for k in PROVENANCE):
            self.no_provenance[fmt] += 1

    def conversation(self, s: Sample) -> None:
        if check_roles(self.report, s) and self.token_check is not None:
            self.token_check(s)

    def _file_image(self, where: str, folder: Path, ref: str, sums: dict | None) -> None:
        path = Path(ref) if Path(ref).is_absolute() else folder / ref
        rel = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else None
        self.images.check(where, path=path, sha=(sums or {}).get(rel) if rel else None)

    # -- llava.json / llava_interleave.json / sharegpt.json
    def llava(self, folder: Path) -> None:
        sums = read_sums(folder)
        for name in ("llava.json", "llava_interleave.json"):
            if (folder / name).exists():
                self._llava_file(folder, folder / name, sums, "llava")

    def sharegpt(self, folder: Path) -> None:
        self._llava_file(folder, folder / "sharegpt.json", read_sums(folder), "sharegpt")

    def _llava_file(self, folder: Path, path: Path, sums: dict | None, fmt: str) -> None:
        items = _load_json(self.report, path)
        if items is None:
            return
        if not isinstance(items, list):
            self.report.add("schema_invalid", str(path), "expected a JSON list of items")
            return
        for n, it in enumerate(items):
            self.report.checked[fmt] += 1
            where = f"{path.name}[{n}] id={it.get('id') if isinstance(it, dict) else None}"
            if not isinstance(it, dict) or not isinstance(it.get("id"), str):
                self.report.add("schema_invalid", where, "item must be an object with a string 'id'")
                continue
            image_key = "images" if fmt == "sharegpt" else "image"
            images = it.get(image_key, [] if fmt == "sharegpt" else None)
            single = isinstance(images, str)
            if fmt == "sharegpt" and not _is_str_list(images) or fmt == "llava" and not (
                    images is None or single or _is_str_list(images) and len(images) >= 2):
                self.report.add("schema_invalid", where, f"'{image_key}' must be "
                                + ("a list of paths" if fmt == "sharegpt" else "a path, or a list of 2+ paths"))
                continue
            refs = [images] if single else list(images or [])
            self.provenance(fmt, it)
            turns = _llava_turns(self.report, where, it.get("conversations"))
            if turns is None:
                continue
            for ref in refs:
                self._file_image(where, folder, ref, sums)
            if single:
                # LLaVA-1.5 preprocess_multimodal: each turn containing <image> gets exactly one, at its front.
                found = sum(1 for _, t in turns if "<image>" in t)
            else:
                found = _placeholders(turns)
            if found != len(refs):
                self.report.add("placeholder_count_mismatch", where, f"{len(refs)} image(s), {found} <image>"
                                + (" turn(s) (LLaVA-1.5 puts one <image> per turn that has any)" if single else ""))
                continue
            self.conversation(Sample(where, turns, len(refs)))

    # -- mplug_owl.jsonl
    def mplug_owl(self, folder: Path) -> None:
        path, sums = folder / "mplug_owl.jsonl", read_sums(folder)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            self.report.add("unreadable", str(path), str(e))
            return
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            self.report.checked["mplug_owl"] += 1
            where = f"{path.name}:{n}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                self.report.add("schema_invalid", where, f"not JSON: {e}")
                continue
            if not (isinstance(data, dict) and _is_str_list(data.get("image")) and isinstance(data.get("text"), str)
                    and isinstance(data.get("task_type"), str) and data["task_type"].endswith("_sft")):
                self.report.add("schema_invalid", where, "expected {'image': [paths], 'text': str, 'task_type':"
                                " '..._sft'} (mPLUG-Owl picks its processor by the part after the last '_')")
                continue
            self.provenance("mplug_owl", data)
            for ref in data["image"]:
                self._file_image(where, folder, ref, sums)
            if data["text"].count("<image>") != len(data["image"]):
                self.report.add("placeholder_count_mismatch", where,
                                f"{len(data['image'])} image(s), {data['text'].count('<image>')} <image>")
                continue
            turns = parse_mplug_text(data["text"])
            if turns is None:
                self.report.add("schema_invalid", where, "text must start with the system line, then"
                                " 'Human: '/'AI: ' lines")
                continue
            self.conversation(Sample(where, turns, len(data["image"])))

    # -- shards
    def wds(self, out: Path) -> None:
        manifest = _load_json(self.report, out / "manifest.json")
        self.run = {"recipe_sha256": (manifest or {}).get("recipe_sha256"),
                    "datagen": (manifest or {}).get("tools", {}).get("datagen")}
        recorded = {s["path"]: s["sha256"] for s in (manifest or {}).get("shards", [])}
        for rel, sha in recorded.items():
            path = out / rel
            if not path.exists():
                self.report.add("image_missing", rel, "shard listed in manifest.json does not exist")
            elif _file_sha256(path) != sha:
                self.report.add("image_sha256_mismatch", rel, "shard differs from the sha256 in manifest.json")
        for split in ("stage1", "stage2", "stage2_text"):
            try:
                for sample in iter_samples(out, split):
                    self.report.checked[f"wds:{split}"] += 1
                    self._wds_sample(split, sample)
            except Exception as e:  # noqa: BLE001 - a tar that cannot be read is the finding
                self.report.add("unreadable", f"{out / split}", f"{type(e).__name__}: {e}")

    def _wds_sample(self, split: str, sample: dict) -> None:
        key = sample["__key__"]
        where = f"{Path(sample.get('__url__', '')).name}:{key}"
        body = sample.get("json")
        if not isinstance(body, dict):
            self.report.add("schema_invalid", where, "no <key>.json")
            return
        if body.get("provenance") != self.run:  # absent, or written by another run than manifest.json's
            self.no_provenance[f"wds:{split}"] += 1
        if split == "stage1":
            data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
            if data is None:
                self.report.add("image_missing", where, "stage-1 sample has no image member")
            else:
                self.images.check(where, data=data, sha=body.get("image_sha256"), memo=(where, "stage1"))
            if not isinstance(sample.get("txt"), str) or not sample["txt"].strip():
                self.report.add("schema_invalid", where, "stage-1 sample has no caption (<key>.txt)")
            return
        try:
            images = sample_images(sample)
        except ValueError as e:
            self.report.add("image_missing", where, str(e))
            return
        if not _is_str_list(body.get("images")) or not isinstance(body.get("conversations"), list):
            self.report.add("schema_invalid", where, "json needs 'images' (list of keys) and 'conversations' (list)")
            return
        if len(body["images"]) != len(images):
            self.report.add("image_missing" if len(images) < len(body["images"]) else "schema_invalid", where,
                            f"json lists {len(body['images'])} image(s), the sample holds {len(images)}")
            return
        for n, data in enumerate(images):
            self.images.check(where, data=data, memo=(where, n))
        for conv in body["conversations"]:
            cwhere = f"{where} conversation {conv.get('id') if isinstance(conv, dict) else '?'}"
            if not (isinstance(conv, dict) and isinstance(conv.get("turns"), list) and all(
                    isinstance(t, dict) and t.get("role") in ("user", "assistant") and isinstance(t.get("content"), str)
                    for t in conv["turns"])):
                self.report.add("schema_invalid", cwhere, "turns must be {'role': 'user'|'assistant', 'content': str}")
                continue
            self._datagen_conversation(cwhere, conv, len(images))

    def _datagen_conversation(self, where: str, conv: dict, n_images: int) -> None:
        """A conversation in datagen's own layout (shards, hf export): placeholders by the export rules."""
        texts = [t["content"] for t in conv["turns"]]
        named = [m for t in texts for m in re.findall(r"<image_(\d+)>", t)]
        plain = sum(t.count("<image>") for t in texts)
        if named and (plain or sorted(map(int, named)) != list(range(n_images))):
            self.report.add("placeholder_count_mismatch", where, f"placeholders name images {named} (and {plain}"
                            f" plain <image>): each of 0..{n_images - 1} must be named once")
            return
        if not named and plain not in (0, n_images) or not n_images and (named or plain):
            self.report.add("placeholder_count_mismatch", where, f"{n_images} image(s), {plain} <image>")
            return
        paths = [f"{n}" for n in range(n_images)]
        try:
            _, turns = llava_layout(conv, paths, where)
        except ValueError as e:
            self.report.add("placeholder_count_mismatch", where, str(e))
            return
        self.conversation(Sample(where, [(_LLAVA_ROLES[t["from"]], t["value"]) for t in turns], n_images))

    # -- hf export (parquet with embedded images)
    def hf(self, folder: Path) -> None:
        import pyarrow.parquet as pq

        files = sorted((folder / "data").glob("*.parquet"))
        if not files:
            self.report.add("unreadable", str(folder), "no data/*.parquet")
            return
        for f in files:
            try:
                rows = pq.read_table(f).to_pylist()
            except Exception as e:  # noqa: BLE001
                self.report.add("unreadable", str(f), f"{type(e).__name__}: {e}")
                continue
            for n, row in enumerate(rows):
                self.report.checked["hf"] += 1
                where = f"{f.name}[{n}] id={row.get('id')}"
                self.provenance("hf", row)
                images = row.get("images")
                if not isinstance(images, list) or not isinstance(row.get("conversations"), list):
                    self.report.add("schema_invalid", where, "needs 'images' and 'conversations' lists")
                    continue
                for i, im in enumerate(images):
                    if not isinstance(im, dict) or not im.get("bytes"):
                        self.report.add("image_missing", where, f"image {i} has no bytes")
                    else:
                        self.images.check(where, data=im["bytes"], memo=(f.name, n, i))
                conv = {"id": row.get("id"), "turns": [{"role": t.get("role"), "content": t.get("content") or ""}
                                                       for t in row["conversations"]]}
                if any(t["role"] not in ("user", "assistant") for t in conv["turns"]):
                    self.report.add("schema_invalid", where, "turn roles must be 'user' or 'assistant'")
                    continue
                self._datagen_conversation(where, conv, len(images))


def parse_mplug_text(text: str) -> list[tuple[str, str]] | None:
    """mPLUG-Owl text -> turns: the system line, then "Human: "/"AI: " lines; consecutive Human
    lines (the "Human: <image>" lines before a question) are one user turn."""
    if not text.startswith(MPLUG_SYSTEM):
        return None
    parts = re.split(r"\n(Human|AI): ", text[len(MPLUG_SYSTEM):])
    if parts[0].strip():
        return None
    turns: list[tuple[str, str]] = []
    for who, body in zip(parts[1::2], parts[2::2]):
        role = "user" if who == "Human" else "assistant"
        if turns and turns[-1][0] == role == "user":
            turns[-1] = (role, turns[-1][1] + "\n" + body)
        else:
            turns.append((role, body))
    return turns


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def detect(out: Path) -> list[tuple[str, Path]]:
    """(format, folder) pairs found in ``out``: a run folder (shards and its ``export/``) or an export folder."""
    found: list[tuple[str, Path]] = []
    if (out / "manifest.json").exists():
        found.append(("wds", out))
    for folder in (out, out / "export"):
        if (folder / "llava.json").exists() or (folder / "llava_interleave.json").exists():
            found.append(("llava", folder))
        for fmt, name in (("mplug_owl", "mplug_owl.jsonl"), ("sharegpt", "sharegpt.json")):
            if (folder / name).exists():
                found.append((fmt, folder))
        if (folder / "data").is_dir() and list((folder / "data").glob("*.parquet")):
            found.append(("hf", folder))
        if (folder / "hf" / "data").is_dir():
            found.append(("hf", folder / "hf"))
    return found


def check(out: Path, formats: list[str] | None = None, tokenizer: str | Any | None = None,
          template: str = "llava_v1", max_len: int = 2048, tokens_per_image: int = 576,
          max_examples: int = 3) -> Report:
    """Check every dataset found in ``out`` (or only ``formats``); see the module docstring."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no such folder")
    report = Report(max_examples=max_examples)
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}: expected one of {', '.join(TEMPLATES)}")
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    checker = Checker(report, TokenCheck(report, tok, template, max_len, tokens_per_image) if tok is not None else None)
    targets = [(f, p) for f, p in detect(out) if not formats or f in formats]
    if not targets:
        raise FileNotFoundError(f"{out}: no dataset of format(s) {', '.join(formats or FORMATS)} found")
    for fmt, folder in targets:
        getattr(checker, fmt)(folder)
        if fmt in ("llava", "sharegpt", "mplug_owl") and read_sums(folder) is None:
            report.notes.append(f"{folder}: no {SUMS}, image checksums not verified")
    for fmt, n in checker.no_provenance.items():
        report.notes.append(f"{fmt}: {n} samples without provenance (source, source_ids, generator, recipe_sha256,"
                            " datagen) or with another recipe's: written by an older datagen or another run?")
    if tok is None:
        report.notes.append("no --tokenizer: templates and label masks not checked")
    return report


def check_run(out: Path, config, recipe_dir: Path) -> Report:
    """The recipe's ``output.check`` (``datagen.check_config.CheckConfig``) over a finished run."""
    tokenizer = config.tokenizer
    if tokenizer and not Path(tokenizer).is_absolute() and (recipe_dir / tokenizer).exists():
        tokenizer = str(recipe_dir / tokenizer)
    return check(out, None, tokenizer, config.template, config.max_len, config.tokens_per_image)
