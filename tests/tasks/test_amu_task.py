"""Task amu end to end on the digits: a tiny open_clip zero-shot branch, an auxiliary CNN trained first, the AMU
head trained on cached few-shot features."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from distill.config import from_dict
from distill.data.feature_cache import ViewOfEpoch
from distill.engine.pipeline import assemble, fit
from distill.engine.wiring import prepare_data
from distill.teachers.resolve import plan_frozen
from losses.amu import class_means
from tests.helpers import FAST_TRAINER


def amu_recipe(tmp_path, **changes) -> dict:
    recipe = {
        "task": "amu",
        "seed": 0,
        "run": {"root": str(tmp_path / "runs"), "name": "amu"},
        "data": {"name": "digits", "batch_size": 8, "shots": 2, "shot_seed": 1, "augment": True},
        "student": {"name": "amu_head", "alpha": 0.5, "uncertainty": "kurtosis"},
        "teacher": {"model": {"name": "open_clip:tiny", "templates": ["a photo of the number {}."]}},
        "second_teacher": {
            "model": {"name": "convnet", "widths": [4, 8], "hidden": 8},
            "store": str(tmp_path / "teachers"),
            "train": {"data": {"shots": None, "train_samples": 40}, "trainer": {**FAST_TRAINER, "max_epochs": 1}},
        },
        "amu": {"views": 3},
        "loss": {"ce_weight": 0.0, "terms": {"amu": {"weight": 1.0, "lam": 0.35}}},
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01, "eps": 1e-4},
        "scheduler": {"name": "cosine"},
        "trainer": {**FAST_TRAINER, "max_epochs": 3},
    }
    recipe.update(changes)
    return recipe


class FrozenWatch(Callback):
    """Counts the frozen models' forward passes inside training batches and checks where gradients go."""

    def __init__(self) -> None:
        self.frozen_calls, self.in_batch = 0, False

    def on_fit_start(self, trainer, module) -> None:
        def count(*_):
            self.frozen_calls += self.in_batch

        for model in (module.teacher, module.second_teacher):
            model.register_forward_hook(count)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.in_batch = True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.in_batch = False

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        assert module.student.weight.grad is not None and module.student.weight.grad.abs().sum() > 0
        for name in ("teacher", "second_teacher"):
            assert all(p.grad is None and not p.requires_grad for p in getattr(module, name).parameters()), name


def test_only_the_head_trains_on_cached_features_and_the_checkpoint_holds_only_it(tmp_path):
    watch = FrozenWatch()
    result = fit(from_dict(amu_recipe(tmp_path), "test"), callbacks=[watch])
    assert watch.frozen_calls == 0  # training epochs read the cache; only evaluation runs the frozen models
    metrics = result.metrics
    assert {"test/acc", "test/zero_shot_acc", "test/aux_acc", "test/loss"} <= set(metrics)
    state = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    assert list(state) == ["student.weight"] and state["student.weight"].shape == (10, 8)
    # the auxiliary model was trained first and stored under its own key, not the teacher's
    assert plan_frozen(from_dict(amu_recipe(tmp_path), "test"), "second_teacher", "classification").weights.is_file()


def test_the_head_starts_at_the_class_means_of_the_plain_few_shot_features(tmp_path):
    loaded = from_dict(amu_recipe(tmp_path), "test")
    data = prepare_data(loaded)
    module = assemble(loaded, data, training=True)
    clip = module.teacher
    features = module.features
    assert features.outputs["clip"].shape == (3, 20, 10) and features.outputs["aux"].shape == (3, 20, 8)
    torch.testing.assert_close(module.student.weight.data, class_means(features.outputs["aux"][0], features.labels, 10))
    # view 0 is the unaugmented pass: the frozen models' outputs on the plain shots (stored normalized)
    assert data.val_set.transform is None
    plain = torch.stack([data.train_set.dataset.images[i] for i in data.train_set.indices])
    with torch.no_grad():
        torch.testing.assert_close(features.outputs["clip"][0], clip(plain))
        torch.testing.assert_close(features.outputs["aux"][0], module.aux_features(plain))
    assert not torch.allclose(features.outputs["aux"][1], features.outputs["aux"][0])  # augmented views differ
    epoch = [0]
    samples = ViewOfEpoch(features, lambda: epoch[0])
    epoch[0] = 4  # epoch e reads view e % views
    torch.testing.assert_close(samples[5][1], features.outputs["aux"][1, 5])
