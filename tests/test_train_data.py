"""The webdataset pipeline: layout, expansion, mixing, holdout, determinism, exact skip on resume."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import pytest
import torch
import webdataset as wds

from datagen.train.data import (
    DataSpec,
    StreamPosition,
    build_dataset,
    in_holdout,
    shard_urls,
    stage2_examples,
    training_batches,
)
from datagen.train.synthetic import write_synthetic_shards
from datagen.train.template import IMAGE_TOKEN_ID
from datagen.train.tokenizer import shard_texts, train_bpe_tokenizer

TPI = 3  # tokens per image


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), n_images=12, n_multi=3, n_text=6, per_shard=5)


@pytest.fixture(scope="module")
def tok(shards):
    return train_bpe_tokenizer(list(shard_texts(shards)), 400)


def spec(shards, tok, **kw):
    base = dict(data_dir=str(shards), stage=2, tokenizer=tok, template="mplug_owl", tokens_per_image=TPI,
                image_size=16, max_len=256, batch_size=4, shuffle_buffer=8, seed=3)
    base.update(kw)
    return DataSpec(**base)


def test_shard_urls_follow_sizes_json(shards):
    sizes = json.loads((shards / "sizes.json").read_text())
    urls = shard_urls(shards, "stage2")
    assert [u.split(str(shards) + "/")[1] for u in urls] == sorted(k for k in sizes if k.startswith("stage2/"))
    assert len(shard_urls(shards, "stage2_text")) == 2  # 6 text samples, 5 per shard


def test_stage2_sample_expands_into_every_conversation_in_both_languages(shards):
    src = wds.DataPipeline(wds.SimpleShardList(shard_urls(shards, "stage2")), wds.tarfile_to_samples())
    sample = next(iter(src))
    row = json.loads(sample["json"])
    exs = list(stage2_examples(sample))
    assert [e["conv_id"] for e in exs] == [c["id"] for c in row["conversations"]]
    assert {e["lang"] for e in exs} == {"en", "zh"}
    assert all(e["images"] == [sample["0.jpg"]] for e in exs)
    multi = next(s for s in src if b"synthmulti" in s["__key__"].encode())
    (ex,) = stage2_examples(multi)
    assert ex["images"] == [multi["0.jpg"], multi["1.jpg"]]


def test_missing_image_member_is_a_clear_error(shards, tmp_path):
    sample = {"__key__": "k1", "__url__": "x.tar", "jpg": b"..", "json": json.dumps({"images": ["a", "b"], "conversations": []}).encode()}
    with pytest.raises(ValueError, match=r"x.tar: sample k1 lists 2 images but holds 1"):
        list(stage2_examples(sample))


def test_batches_hold_one_image_span_per_image(shards, tok):
    batch = next(iter(build_dataset(spec(shards, tok, text_ratio=0.3))))
    ids, pix = batch["input_ids"], batch["pixel_values"]
    assert pix.shape[1:] == (3, 16, 16)
    assert int((ids == IMAGE_TOKEN_ID).sum()) == pix.shape[0] * TPI
    assert batch["attention_mask"].sum(1).tolist() == [int((r != tok.pad_token_id).sum()) for r in ids]
    assert (batch["labels"] != -100).sum() > 0


def test_text_ratio_mixes_text_only_examples(shards, tok):
    keys = [k for b in islice(build_dataset(spec(shards, tok, text_ratio=0.5, batch_size=10)), 20) for k in b["keys"]]
    share = sum(k.startswith("synthtext") for k in keys) / len(keys)
    assert 0.35 < share < 0.65
    keys0 = [k for b in islice(build_dataset(spec(shards, tok, text_ratio=0.0, batch_size=10)), 5) for k in b["keys"]]
    assert not any(k.startswith("synthtext") for k in keys0)


def test_holdout_splits_keys_disjointly(shards, tok):
    def keys(mode):
        s = spec(shards, tok, stage=1, resampled=False, shuffle_buffer=0, holdout_fraction=0.3, holdout=mode)
        return [k for b in build_dataset(s) for k in b["keys"]]

    train, held, everything = keys("exclude"), keys("only"), keys("all")
    assert held and train and not set(train) & set(held)
    assert sorted(train + held) == sorted(everything) and len(everything) == 12
    assert all(in_holdout(k, 0.3) for k in held)


def test_stream_is_deterministic_and_epochs_differ(shards, tok):
    s = spec(shards, tok)
    a = [b["keys"] for b in islice(build_dataset(s, epoch=0), 4)]
    b = [b["keys"] for b in islice(build_dataset(s, epoch=0), 4)]
    c = [b["keys"] for b in islice(build_dataset(s, epoch=1), 4)]
    assert a == b and a != c


@pytest.mark.parametrize("workers, group", [(0, 0), (2, 0), (0, 2), (2, 3)])
def test_resume_position_reproduces_the_rest_of_the_stream(shards, tok, workers, group):
    """Skipping k consumed batches (odd k, so worker roles rotate) and crossing an epoch boundary,
    with and without length grouping (a resume inside a window)."""
    torch.set_num_threads(1)
    s = spec(shards, tok, text_ratio=0.2, group_by_length=group)
    full_pos = StreamPosition()
    full = [(b["keys"], b["input_ids"]) for b in islice(training_batches(s, full_pos, num_workers=workers, epoch_batches=8), 11)]
    assert full_pos.epoch == 1 and full_pos.batch == 3
    pos = StreamPosition(epoch=0, batch=5)
    rest = [(b["keys"], b["input_ids"]) for b in islice(training_batches(s, pos, num_workers=workers, epoch_batches=8), 6)]
    assert [k for k, _ in rest] == [k for k, _ in full[5:]]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(rest, full[5:]))
    pos = StreamPosition(epoch=0, batch=3)
    rest = [(b["keys"], b["input_ids"]) for b in islice(training_batches(s, pos, num_workers=workers, epoch_batches=8), 4)]
    assert [k for k, _ in rest] == [k for k, _ in full[3:7]]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(rest, full[3:7]))
    assert Counter(k for keys, _ in full for k in keys)  # non-empty


def test_a_stream_with_every_key_held_out_fails_instead_of_spinning(shards, tok):
    s = spec(shards, tok, stage=1, holdout_fraction=0.9999999, holdout="exclude")
    with pytest.raises(ValueError, match="samples in a row gave no example"):
        next(iter(build_dataset(s)))


def test_missing_split_is_a_clear_error(shards, tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards for this split"):
        next(iter(build_dataset(spec(shards, tok, data_dir=str(tmp_path)))))


def test_chat_template_batches_train_on_replies_with_end_of_turn(shards, tok):
    batch = next(iter(build_dataset(spec(shards, tok, template="chat", shuffle_buffer=0, text_ratio=0.0))))
    row = batch["labels"][0]
    trained = tok.decode([t for t in row.tolist() if t != -100], skip_special_tokens=False)
    assert trained.count("<|im_end|>") == 2  # two assistant replies in the synthetic conversation
    full = tok.decode([t for t in batch["input_ids"][0].tolist() if t >= 0], skip_special_tokens=False)
    assert "<|im_start|>user" in full and "Human:" not in full


def test_multi_image_samples_with_a_held_out_image_stay_out_of_training(shards, tok):
    src = wds.DataPipeline(wds.SimpleShardList(shard_urls(shards, "stage2")), wds.tarfile_to_samples())
    multi = [json.loads(s["json"]) for s in src if s["__key__"].startswith("synthmulti")]
    frac = 0.4  # holds out synthmulti_00002's second image but not the sample key (see the assert)
    leaky = [m for m in multi if not in_holdout(m["key"], frac) and any(in_holdout(k, frac) for k in m["images"])]
    assert leaky, "fixture should hold a multi-image sample with a held-out image"
    s = spec(shards, tok, resampled=False, shuffle_buffer=0, holdout_fraction=frac, holdout="exclude")
    trained = {k for b in build_dataset(s) for k in b["keys"]}
    assert trained and not {m["key"] for m in leaky} & trained
    assert not any(in_holdout(k, frac) for k in trained)


def _wide_image_with_object_at_the_left_edge():
    """300x100 black picture, a red box in the leftmost 40 columns: a centre crop to a square
    (the middle 100 columns) would cut the object out entirely."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (300, 100), (0, 0, 0))
    ImageDraw.Draw(img).rectangle([0, 20, 39, 79], fill=(255, 0, 0))
    return img


def test_squash_keeps_every_object_and_matches_mplug_owl_preprocessing():
    import torchvision.transforms as T

    from datagen.train.data import ImageTransform

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    img = _wide_image_with_object_at_the_left_edge()
    x = ImageTransform(48, mean, std, "squash")(img)
    # mPLUG-Owl's own pipeline: Resize((224, 224), BICUBIC), ToTensor, Normalize
    ref = T.Compose([T.Resize((48, 48), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                     T.Normalize(mean, std)])(img)
    assert x.shape == (3, 48, 48)
    assert torch.allclose(x, ref, atol=1e-5)
    red = x[0] * std[0] + mean[0]  # back to [0, 1]
    assert red[16:32, :4].mean() > 0.9  # the box is still in the picture (left 40/300 of the width)
    assert red[:, 10:].max() < 0.2  # and squashed into the left columns only


def test_pad_keeps_the_aspect_ratio_with_mean_colour_bands():
    from datagen.train.data import ImageTransform

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    x = ImageTransform(30, mean, std, "pad")(_wide_image_with_object_at_the_left_edge())
    assert x.shape == (3, 30, 30)
    assert x[:, :8].abs().max() < 0.1 and x[:, -8:].abs().max() < 0.1  # mean colour -> 0 after normalising
    red = x[0] * std[0] + mean[0]
    assert red[13:17, :3].mean() > 0.9  # the object kept at the left edge, box 60/300 high -> rows 12..17
    with pytest.raises(ValueError, match="squash' or 'pad"):
        ImageTransform(30, mean, std, "crop")


def _padding(batches) -> float:
    cells = sum(b["attention_mask"].numel() for b in batches)
    return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / cells


def test_length_grouping_cuts_padding_and_keeps_every_example(shards, tok):
    """Same examples (a finite pass over the shards), batched plainly and length-grouped."""
    base = dict(resampled=False, shuffle_buffer=0, text_ratio=0.0, batch_size=3)
    plain = list(build_dataset(spec(shards, tok, **base)))
    grouped = list(build_dataset(spec(shards, tok, group_by_length=4, **base)))
    keys = lambda bs: Counter(k for b in bs for k in b["keys"])  # noqa: E731
    assert keys(grouped) == keys(plain) and sum(keys(plain).values()) > 20
    assert _padding(grouped) < 0.5 * _padding(plain)
    for b in grouped:  # padding stays consistent: labels never on a padded cell
        assert ((b["labels"] != -100) & (b["attention_mask"] == 0)).sum() == 0
