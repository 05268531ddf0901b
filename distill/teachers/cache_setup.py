"""Opening a run's teacher-output cache (`teacher.cache`): the meta that must match, taken from the recipe.

Image data caches the teacher's logits per (epoch, sample view) (`TeacherCache`); token data caches the teacher's
top-k per (row, position) (`TokenTeacherCache`): no views change between epochs, so one pass stores everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from distill.config.schema import Recipe
from distill.data.device_images import source_of
from distill.data.interface import ClassData, DataSource, TokenData
from distill.errors import DistillError
from distill.models.causal_lm import output_rows
from distill.teachers.output_cache import META_FILE, TeacherCache, file_sha256, tensor_sha256
from distill.teachers.token_cache import TokenTeacherCache

# data settings that do not change the rows (how they are batched, padded and loaded, where tokenizers are kept):
# a batch padded to its longest row reads each row's first positions of the same stored rows
LOADING_KEYS = ("batch_size", "num_workers", "tokenizer_cache", "padding", "pad_to_multiple_of")


def open_teacher_cache(
    recipe: Recipe, data: DataSource, teacher_source: dict[str, Any] | None, teacher_model: nn.Module | None = None
) -> TeacherCache | TokenTeacherCache | None:
    """The cache named by `teacher.cache`, checked against this run (teacher weights, data, views, precision).
    `teacher_model` sizes a language model's cache by its output vocabulary (which may be padded past its
    tokenizer's); without it (a complete cache, the teacher not loaded) the stored size is taken."""
    settings = recipe.teacher
    if settings is None or settings.cache is None:
        return None
    teacher = teacher_key(recipe, teacher_source)
    if isinstance(data, TokenData):
        vocab = output_rows(teacher_model) or (_stored_vocab(settings.cache) if teacher_model is None else None)
        return _token_cache(recipe, data, teacher, vocab)
    if not isinstance(data, ClassData) or not data.on_device:
        raise DistillError(
            "teacher.cache needs data whose views are replayable: set data.on_device=true (cifar100), so each "
            "training sample's view depends only on (data.augment_seed, epoch, index)"
        )
    images = source_of(data.train_set)
    meta = {
        "teacher": teacher,
        "data": {"name": recipe.data["name"], "train_sha256": tensor_sha256(images.images, images.labels)},
        "views": {**data.augmentation.describe(), "augment": data.augment, "augment_seed": data.augment_seed},
        "precision": str(recipe.trainer.get("precision")),
        "channels_last": data.channels_last,
    }
    return TeacherCache(settings.cache, meta, len(images), data.num_classes, settings.cache_top_k)


def teacher_key(recipe: Recipe, teacher_source: dict[str, Any] | None) -> dict[str, Any]:
    """What identifies the teacher's outputs in a store's meta: its model spec, the sha256 of its weights (or its
    hub name) and, when set, the precision it is held in (another precision gives other outputs)."""
    assert recipe.teacher is not None
    # the revision asked for is left out: the commit it resolved to is in the weights' id (and evaluation pins it)
    model = {k: v for k, v in (recipe.teacher.model or {}).items() if k != "revision"}
    key = {"model": model, "weights_sha256": _weights_id(teacher_source)}
    if recipe.teacher.dtype is not None:
        key["dtype"] = recipe.teacher.dtype
    return key


def complete_token_cache(
    recipe: Recipe, data: DataSource, teacher_source: dict[str, Any] | None
) -> TokenTeacherCache | None:
    """The language-model cache of `teacher.cache` when it already holds every row of both splits for this run
    (so the teacher need not even be loaded), else None. A cache of another setup is refused here, as always."""
    settings = recipe.teacher
    if settings is None or settings.cache is None or not isinstance(data, TokenData):
        return None
    if _stored_vocab(settings.cache) is None:
        return None  # no cache yet (or an unreadable one, which opening it later names)
    cache = open_teacher_cache(recipe, data, teacher_source)
    assert isinstance(cache, TokenTeacherCache)
    return cache if all(cache.complete(split) for split in cache.rows) else None


def _stored_vocab(folder: str | Path) -> int | None:
    """The vocabulary an existing language-model cache was written with, or None."""
    try:
        return int(json.loads((Path(folder).expanduser() / META_FILE).read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _weights_id(teacher_source: dict[str, Any] | None) -> str:
    """The teacher's weights: the sha256 of its file; for a Hugging Face model its Hub commit (`name@commit`), or
    the sha256 of its local folder's weights and config; else its name."""
    source = teacher_source or {}
    weights, hub = source.get("weights"), source.get("hub")
    if hub is not None and "folder" in hub:
        return _folder_id(Path(hub["folder"]))
    if hub is not None:
        return f"{hub['repo']}@{hub['commit']}"  # a None commit (never resolved) matches no stored key
    if not weights or not Path(weights).is_file():
        return str(weights)
    return _path_id(Path(weights))


def _path_id(path: Path) -> str:
    stat = path.stat()
    return _file_id(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


# what decides a Hugging Face model folder's outputs: its weights in any format, and its config
MODEL_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "config.json")


def _folder_id(folder: Path) -> str:
    """A local model folder's identity: the sha256 over its weights and config files (each hashed once per
    process), so that a folder rewritten in place keys another cache."""
    files = sorted({p for pattern in MODEL_FILES for p in folder.glob(pattern) if p.is_file()})
    if not files:
        return str(folder)
    return hashlib.sha256("".join(f"{p.name}:{_path_id(p)};" for p in files).encode()).hexdigest()


@lru_cache(maxsize=8)
def _file_id(path: str, size: int, mtime_ns: int) -> str:
    """A weights file's sha256, hashed once per process (a large teacher's file takes seconds to read); keyed by
    size and modification time so that a rewritten file is hashed again."""
    return file_sha256(path)


def _token_cache(recipe: Recipe, data: TokenData, teacher: dict[str, Any], vocab: int | None) -> TokenTeacherCache:
    """The language-model cache: keyed by the teacher, the tokenized rows of both splits (so the tokenizers, the
    packing and the source all count) and the data settings that made them."""
    splits = {"train": data.train_set, "val": data.val_set}
    prefix = "teacher_" if data.has_teacher_tokenizer else ""
    rows = {split: rows_of(dataset) for split, dataset in splits.items()}
    meta = {
        "teacher": teacher,
        "data": {k: v for k, v in recipe.data.items() if k not in LOADING_KEYS},
        "rows_sha256": {split: tensor_sha256(*tensors.values()) for split, tensors in rows.items()},
        "precision": str(recipe.trainer.get("precision")),
    }
    positions = rows["train"][f"{prefix}input_ids"].shape[1] - 1
    vocab = vocab or data.model_args("teacher")["vocab_size"]
    counts = {split: len(tensors[f"{prefix}input_ids"]) for split, tensors in rows.items()}
    assert recipe.teacher is not None and recipe.teacher.cache is not None
    return TokenTeacherCache(recipe.teacher.cache, meta, counts, positions, vocab, recipe.teacher.cache_top_k)


def rows_of(dataset: Any) -> dict[str, Any]:
    """The row tensors of a token split, by name, in a fixed order."""
    tensors = getattr(dataset, "tensors", None)
    if not isinstance(tensors, dict):
        raise DistillError("teacher.cache: this data has no stored token rows to key the cache by")
    return {name: tensors[name] for name in sorted(tensors)}


def open_response_store(recipe: Recipe, data: TokenData, teacher_source: dict[str, Any] | None, settings: Any) -> Any:
    """The stored teacher responses of sequence-level KD (`causal_lm.responses`), keyed like the teacher cache:
    the teacher, the tokenized rows, the data settings and precision, and the sampling that made them."""
    from distill.teachers.response_store import ResponseStore

    rows = rows_of(data.train_set)
    meta = {
        "teacher": teacher_key(recipe, teacher_source),
        "data": {k: v for k, v in recipe.data.items() if k not in LOADING_KEYS},
        "rows_sha256": tensor_sha256(*rows.values()),
        "precision": str(recipe.trainer.get("precision")),
        "sampling": dataclasses.asdict(settings.sampling),
    }
    if settings.sampling.temperature > 0:  # sampled responses depend on the run's seed; greedy ones do not
        meta["seed"] = recipe.seed
    count = len(next(iter(rows.values())))
    return ResponseStore(settings.responses, meta, count, settings.sampling.max_new_tokens)
