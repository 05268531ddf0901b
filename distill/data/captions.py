"""Captioned images for tiny LLaVA-style vision-language models: generated offline, deterministic from a seed.

Each image is one shape in one colour, small or large, in a corner or the centre of a dark noisy background; its
caption says so in English, from a few templates. The N image tokens after bos are where the model merges in its
vision tower's N patch features (LLaVA's "default" feature strategy drops CLS).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.base import DATASETS, SeededLoaders, check_at_least, check_fraction
from distill.data.text_rows import IGNORE
from distill.data.tokenizers import Tokenizer, make_tokenizer
from distill.errors import DistillError

SHAPES = ("square", "circle", "triangle", "cross")
COLOURS = {  # RGB
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 235),
    "yellow": (235, 220, 40), "white": (240, 240, 240), "purple": (160, 50, 210),
}  # fmt: skip
PLACES = ("top left corner", "top right corner", "bottom left corner", "bottom right corner", "centre")
SIZES = ("small", "large")
TEMPLATES = (
    "a {size} {colour} {shape} in the {place}.",
    "there is a {size} {colour} {shape} in the {place}.",
    "this image shows a {size} {colour} {shape} in the {place}.",
    "in the {place} there is a {size} {colour} {shape}.",
    "a {colour} {shape}, {size}, sits in the {place}.",
)
MAX_CAPTION = max(
    len(t.format(size=s, colour=c, shape=h, place=p).encode())
    for t in TEMPLATES for s in SIZES for c in COLOURS for h in SHAPES for p in PLACES
)  # fmt: skip
IMAGE_TOKEN_ID = 259  # after the byte tokenizer's 0-255, pad 256, bos 257, eos 258
BACKGROUND_MAX = 40  # background pixels are uniform noise in [0, BACKGROUND_MAX)


def place_centre(place: str, size: int) -> tuple[int, int]:
    """`(row, column)` of the centre of `place` in a `size` x `size` image."""
    if place == "centre":
        return size // 2, size // 2
    return (size // 4 if place.startswith("top") else 3 * size // 4), (size // 4 if "left" in place else 3 * size // 4)


def shape_mask(shape: str, size: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    """A boolean `[size, size]` mask of `shape` centred at `centre`, `radius` pixels from centre to edge."""
    dy, dx = np.ogrid[:size, :size]
    dy, dx = dy - centre[0], dx - centre[1]
    inside = (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2 + radius  # + radius: no single-pixel bumps at the poles
    if shape == "triangle":  # apex at the top
        return inside & (2 * np.abs(dx) <= dy + radius)
    if shape == "cross":
        bar = max(1, radius // 3)
        return inside & ((np.abs(dx) <= bar) | (np.abs(dy) <= bar))
    return inside


def draw_example(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """One uint8 `[3, size, size]` image and its caption."""
    shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
    place, big = PLACES[rng.integers(len(PLACES))], int(rng.integers(2))
    radius = max(2, 7 * size // 32) if big else max(1, size // 8)
    image = rng.integers(0, BACKGROUND_MAX, size=(3, size, size))
    mask = shape_mask(shape, size, place_centre(place, size), radius)
    image[:, mask] = np.asarray(COLOURS[colour])[:, None] - rng.integers(0, 20, size=(3, int(mask.sum())))
    words = {"shape": shape, "colour": colour, "place": place, "size": SIZES[big]}
    return image.astype(np.uint8), TEMPLATES[rng.integers(len(TEMPLATES))].format(**words)


class CaptionRows(Dataset):
    """Token rows with their images; items are dicts of `input_ids`, `attention_mask`, `labels` (long `[T]`) and
    `pixel_values` (float32 `[3, S, S]`); `captions[i]` is row i's text."""

    def __init__(self, tensors: dict[str, torch.Tensor], captions: list[str]) -> None:
        self.tensors = tensors
        self.captions = captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


@DATASETS.register("captions")
class CaptionsDataModule(SeededLoaders, L.LightningDataModule):
    """Generated captioned images for tiny LLaVA-style vision-language models; no download, same data per seed.

    Batches are dicts: `input_ids`, `attention_mask` (1 real, 0 padding) and `labels` (the input ids, not shifted;
    -100 on bos, the image tokens and padding), LongTensors `[B, seq_len]`, and `pixel_values` float32
    `[B, 3, image_size, image_size]` in [-1, 1]. Rows are `[bos] [image] * N caption [eos]`, right-padded, with
    N = (image_size // patch_size) ** 2 image tokens (id 259, after the byte tokenizer's 259 ids). The first
    `round(num_images * val_fraction)` images are the validation split (test uses it too), the rest train.

    Args:
        num_images: Images generated in all (train and validation).
        image_size: Height and width of the RGB images, in pixels.
        patch_size: The vision tower's patch size: each image has (image_size // patch_size) ** 2 image tokens.
        seq_len: Tokens per row (None: just enough for the longest caption the templates can make); never cut.
        batch_size: Rows per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        val_fraction: Fraction of the images held out for validation (and testing).
        split_seed: Seed of the images and captions: the same seed gives the same data.
    """

    def __init__(
        self,
        *,
        num_images: int = 2000,
        image_size: int = 32,
        patch_size: int = 8,
        seq_len: int | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        check_at_least("num_images", num_images, 2)
        check_at_least("image_size", image_size, 16)
        check_at_least("patch_size", patch_size, 1)
        check_at_least("batch_size", batch_size, 1)
        check_at_least("num_workers", num_workers, 0)
        check_fraction("val_fraction", val_fraction)
        if image_size % patch_size:
            raise DistillError(f"data.image_size ({image_size}) must be divisible by data.patch_size ({patch_size})")
        self.num_image_tokens = (image_size // patch_size) ** 2
        needed = self.num_image_tokens + MAX_CAPTION + 2
        if seq_len is not None and seq_len < needed:
            raise DistillError(
                f"data.seq_len must be >= {needed} (bos, {self.num_image_tokens} image tokens, the longest caption "
                f"of {MAX_CAPTION} bytes and eos), got {seq_len}"
            )
        self.val_count = min(num_images - 1, max(1, round(num_images * val_fraction)))
        self.num_images = num_images
        self.image_size = image_size
        self.patch_size = patch_size
        self.seq_len = seq_len if seq_len is not None else needed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.seed = 0  # shuffling seed: set from the recipe's `seed` by the framework
        self.tokenizer: Tokenizer = make_tokenizer("bytes")
        self.pad_id = self.tokenizer.pad_id
        self.has_teacher_tokenizer = False  # teacher and student read the same tokens
        self.image_token_id = IMAGE_TOKEN_ID
        self.vocab_size = IMAGE_TOKEN_ID + 1
        self._splits: tuple[CaptionRows, CaptionRows] | None = None

    def model_args(self, role: str) -> dict[str, int]:
        """What a model is sized by (the same for 'student' and 'teacher'): vocabulary, image token and image."""
        if role not in ("student", "teacher"):
            raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")
        return {key: getattr(self, key) for key in ("vocab_size", "image_token_id", "image_size", "patch_size")}

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            val = self._rows(range(self.val_count))
            self._splits = self._rows(range(self.val_count, self.num_images)), val

    def _rows(self, indices: range) -> CaptionRows:
        """Image i is drawn from its own generator, seeded by (split_seed, i)."""
        examples = [draw_example(np.random.default_rng([self.split_seed, i]), self.image_size) for i in indices]
        ids = torch.full((len(examples), self.seq_len), self.pad_id, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE)
        prefix = [self.tokenizer.bos_id] + [self.image_token_id] * self.num_image_tokens
        for row, (_, caption) in enumerate(examples):
            text = self.tokenizer.encode(caption) + [self.tokenizer.eos_id]
            ids[row, : len(prefix) + len(text)] = torch.tensor(prefix + text)
            labels[row, len(prefix) : len(prefix) + len(text)] = torch.tensor(text)
        images = torch.from_numpy(np.stack([image for image, _ in examples])).float()
        tensors = {
            "input_ids": ids,
            "attention_mask": (ids != self.pad_id).long(),
            "labels": labels,
            "pixel_values": (images / 255.0 - 0.5) / 0.5,
        }
        return CaptionRows(tensors, [caption for _, caption in examples])

    @property
    def train_set(self) -> CaptionRows:
        self.setup()
        return self._splits[0]  # type: ignore[index]

    @property
    def val_set(self) -> CaptionRows:
        self.setup()
        return self._splits[1]  # type: ignore[index]

    @property
    def test_set(self) -> CaptionRows:
        return self.val_set
