"""The captioned-image data for tiny vision-language models: rows, captions true to the pixels, splits, loaders."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from distill.data import CaptionsDataModule, create_datamodule
from distill.data.captions import COLOURS, MAX_CAPTION, PLACES, SHAPES, SIZES
from distill.errors import DistillError

BOS, EOS, PAD, IMAGE = 257, 258, 256, 259
KEYS = {"input_ids", "attention_mask", "labels", "pixel_values"}


def data(**kwargs) -> CaptionsDataModule:
    datamodule = create_datamodule("captions", **{"num_images": 100, **kwargs})
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def captions() -> CaptionsDataModule:
    return data(num_images=300)


def rows(datamodule: CaptionsDataModule) -> dict[str, torch.Tensor]:
    return datamodule.val_set.tensors


def test_rows_are_bos_image_tokens_caption_eos_then_padding(captions):
    n = captions.num_image_tokens
    assert n == 16 and captions.seq_len == 1 + n + MAX_CAPTION + 1
    for item in (captions.val_set[i] for i in range(len(captions.val_set))):
        ids, mask = item["input_ids"], item["attention_mask"]
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # right-padded
        assert ids[0] == BOS and (ids[1 : 1 + n] == IMAGE).all() and ids[length - 1] == EOS
        assert (ids[length:] == PAD).all()
        caption = ids[1 + n : length - 1]
        assert ((caption >= 0) & (caption < 256)).all()
        assert (ids[1 + n :] != IMAGE).all()  # image tokens only at positions 1..n


def test_labels_ignore_exactly_bos_image_tokens_and_padding(captions):
    tensors = rows(captions)
    ids, labels = tensors["input_ids"], tensors["labels"]
    ignored = (ids == BOS) | (ids == IMAGE) | (ids == PAD)
    assert (labels[ignored] == -100).all()
    assert torch.equal(labels[~ignored], ids[~ignored])  # not shifted
    assert labels.dtype == ids.dtype == tensors["attention_mask"].dtype == torch.long


def test_caption_decodes_to_a_templated_sentence(captions):
    texts = [captions.tokenizer.decode(row.tolist()) for row in rows(captions)["input_ids"]]
    assert texts == captions.val_set.captions
    assert all(t.endswith(".") and t.isascii() for t in texts)
    assert len({re.sub(r"(small|large|" + "|".join(COLOURS) + ")", "", t) for t in texts}) > 5  # several templates


def named(caption: str, names) -> str:
    found = [name for name in names if re.search(rf"\b{name}\b", caption)]
    assert len(found) == 1, (caption, found)
    return found[0]


def drawn(pixels: torch.Tensor) -> dict[str, str]:
    """What the image shows, read back from its pixels: the shape's colour, place, size and shape."""
    image = ((pixels * 0.5 + 0.5) * 255).round().numpy()  # [3, S, S] in 0..255
    size = image.shape[-1]
    bright = image.max(axis=0) > 100  # the background is < 40
    rows_, cols = np.nonzero(bright)
    mean = image[:, bright].mean(axis=1)
    colour = min(COLOURS, key=lambda c: np.linalg.norm(mean - np.asarray(COLOURS[c])))
    cy, cx = (rows_.min() + rows_.max()) / 2, (cols.min() + cols.max()) / 2
    if abs(cy - size / 2) <= size / 8 and abs(cx - size / 2) <= size / 8:
        place = "centre"
    else:
        place = f"{'top' if cy < size / 2 else 'bottom'} {'left' if cx < size / 2 else 'right'} corner"
    box = bright[rows_.min() : rows_.max() + 1, cols.min() : cols.max() + 1]
    top, bottom, fill = box[0].mean(), box[-1].mean(), box.mean()
    full_bottom = {True: "square" if top == 1.0 else "triangle", False: "circle" if fill > 0.7 else "cross"}
    shape = full_bottom[bool(bottom == 1.0)]
    size_word = "large" if box.shape[0] > 3 * size // 8 else "small"
    return {"colour": colour, "place": place, "size": size_word, "shape": shape}


def test_captions_name_what_the_pixels_show(captions):
    seen = {key: set() for key in ("colour", "place", "size", "shape")}
    for split in (captions.train_set, captions.val_set):
        for i in range(len(split)):
            caption, shows = split.captions[i], drawn(split[i]["pixel_values"])
            said = {
                "colour": named(caption, COLOURS),
                "place": named(caption, PLACES),
                "size": named(caption, SIZES),
                "shape": named(caption, SHAPES),
            }
            assert said == shows, caption
            for key, value in said.items():
                seen[key].add(value)
    assert seen == {"colour": set(COLOURS), "place": set(PLACES), "size": set(SIZES), "shape": set(SHAPES)}


def test_pixel_values_are_normalized_float_images(captions):
    pixels = rows(captions)["pixel_values"]
    assert pixels.shape == (len(captions.val_set), 3, 32, 32) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    assert (pixels < -0.7).float().mean() > 0.5  # mostly dark background


def test_the_same_split_seed_gives_the_same_data_and_another_seed_other_data():
    first, again, other = data(), data(), data(split_seed=1)
    for key in KEYS:
        assert torch.equal(rows(first)[key], rows(again)[key])
        assert torch.equal(first.train_set.tensors[key], again.train_set.tensors[key])
    assert not torch.equal(rows(first)["pixel_values"], rows(other)["pixel_values"])
    assert first.val_set.captions != other.val_set.captions


def test_splits_are_disjoint_and_test_uses_val(captions):
    assert (len(captions.train_set), len(captions.val_set)) == (270, 30)
    assert captions.test_set is captions.val_set
    val_images = {image.numpy().tobytes() for image in rows(captions)["pixel_values"]}
    assert not val_images & {image.numpy().tobytes() for image in captions.train_set.tensors["pixel_values"]}


def test_loaders_give_batches_of_every_key(captions):
    batch = next(iter(captions.train_dataloader()))
    assert set(batch) == KEYS
    assert batch["input_ids"].shape == batch["labels"].shape == (16, captions.seq_len)
    assert batch["pixel_values"].shape == (16, 3, 32, 32)
    val_batch = next(iter(captions.val_dataloader()))
    assert torch.equal(val_batch["input_ids"], rows(captions)["input_ids"][:16])  # unshuffled
    item = captions.val_set[0]  # a speculative-decoding prompt: the first k tokens and the image
    assert item["input_ids"][: captions.num_image_tokens + 3].shape == (19,)
    assert item["pixel_values"][None].shape == (1, 3, 32, 32)


def test_other_sizes_and_a_longer_seq_len():
    datamodule = data(image_size=16, patch_size=4, seq_len=120)
    item = datamodule.val_set[0]
    assert datamodule.num_image_tokens == 16 and item["input_ids"].shape == (120,)
    assert item["pixel_values"].shape == (3, 16, 16)
    assert datamodule.model_args("student")["image_size"] == 16


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_model_args(role):
    datamodule = create_datamodule("captions")
    assert datamodule.model_args(role) == {"vocab_size": 260, "image_token_id": 259, "image_size": 32, "patch_size": 8}
    assert (datamodule.vocab_size, datamodule.pad_id, datamodule.tokenizer.eos_id) == (260, PAD, EOS)


def test_model_args_refuse_an_unknown_role():
    with pytest.raises(ValueError, match="'draft'"):
        create_datamodule("captions").model_args("draft")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 30}, "data.image_size (30) must be divisible by data.patch_size (8)"),
        ({"image_size": 8}, "data.image_size must be >= 16, got 8"),
        ({"patch_size": 0}, "data.patch_size must be >= 1, got 0"),
        ({"seq_len": 40}, f"data.seq_len must be >= {18 + MAX_CAPTION} (bos, 16 image tokens"),
        ({"num_images": 1}, "data.num_images must be >= 2, got 1"),
        ({"val_fraction": 1.0}, "data.val_fraction must be in (0, 1), got 1.0"),
        ({"batch_size": 0}, "data.batch_size must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(DistillError, match=re.escape(message)):
        create_datamodule("captions", **kwargs)
