"""The recipe's `speed` section: channels_last models and batches, torch.compile in place."""

from __future__ import annotations

import pytest
import torch

from distill.config import from_dict
from distill.data.synthetic import write_fake_cifar100
from distill.engine.pipeline import fit
from distill.models import create_model
from tests.test_teacher_cache import cifar_recipe, train_losses


@pytest.fixture
def cifar(tmp_path):
    write_fake_cifar100(tmp_path / "data", n_train=96, n_test=32, seed=0)
    torch.manual_seed(0)
    teacher = create_model("convnet", num_classes=100, in_chans=3, widths=[8, 16], hidden=0)
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pt")
    return tmp_path


def test_channels_last_trains_like_the_default_layout(cifar):
    plain = fit(from_dict(cifar_recipe(cifar, cifar / "teacher.pt", "plain"), "test"))
    raw = cifar_recipe(cifar, cifar / "teacher.pt", "channels_last")
    raw["speed"] = {"channels_last": True}
    fast = fit(from_dict(raw, "test"))
    torch.testing.assert_close(train_losses(fast.run_dir), train_losses(plain.run_dir), rtol=1e-4, atol=1e-5)
    state = torch.load(fast.best_checkpoint, weights_only=True)["state_dict"]
    assert state["student.features.0.weight"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_compiled_student_and_teacher_train_like_eager_ones_and_keep_their_keys(cifar):
    eager = fit(from_dict(cifar_recipe(cifar, cifar / "teacher.pt", "eager"), "test"))
    raw = cifar_recipe(cifar, cifar / "teacher.pt", "compiled")
    raw["speed"] = {"compile_student": True, "compile_teacher": True}
    compiled = fit(from_dict(raw, "test"))
    torch.testing.assert_close(train_losses(compiled.run_dir), train_losses(eager.run_dir), rtol=1e-3, atol=1e-4)
    keys = set(torch.load(compiled.best_checkpoint, weights_only=True)["state_dict"])
    assert keys == set(torch.load(eager.best_checkpoint, weights_only=True)["state_dict"])
