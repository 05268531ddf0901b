"""Opening a run's teacher-output cache (`teacher.cache`): the meta that must match, taken from the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.config.schema import Recipe
from distill.data.device_images import source_of
from distill.data.interface import ClassData, DataSource
from distill.errors import DistillError
from distill.teachers.output_cache import TeacherCache, file_sha256, tensor_sha256


def open_teacher_cache(recipe: Recipe, data: DataSource, teacher_source: dict[str, Any] | None) -> TeacherCache | None:
    """The cache named by `teacher.cache`, checked against this run (teacher weights, data, views, precision)."""
    settings = recipe.teacher
    if settings is None or settings.cache is None:
        return None
    if not isinstance(data, ClassData) or not data.on_device:
        raise DistillError(
            "teacher.cache needs data whose views are replayable: set data.on_device=true (cifar100), so each "
            "training sample's view depends only on (data.augment_seed, epoch, index)"
        )
    weights = (teacher_source or {}).get("weights")
    weights_id = file_sha256(weights) if weights and Path(weights).is_file() else str(weights)
    images = source_of(data.train_set)
    meta = {
        "teacher": {"model": dict(settings.model), "weights_sha256": weights_id},
        "data": {"name": recipe.data["name"], "train_sha256": tensor_sha256(images.images, images.labels)},
        "views": {**data.augmentation.describe(), "augment": data.augment, "augment_seed": data.augment_seed},
        "precision": str(recipe.trainer.get("precision")),
        "channels_last": data.channels_last,
    }
    return TeacherCache(settings.cache, meta, len(images), data.num_classes, settings.cache_top_k)
