"""The recipe's `speed` section: channels_last models and batches, torch.compile in place."""

from __future__ import annotations

import pytest
import torch

from distill.config import from_dict
from distill.data.synthetic import write_fake_cifar100
from distill.engine.pipeline import fit
from distill.engine.wiring import fast_path, prepare_data
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


def test_the_fast_path_holds_the_set_on_the_device_and_trains_like_asking_for_it(cifar):
    """`speed.fast_path: on` is the on-device data path with channels_last, as a recipe spelling them out gets it."""
    spelled = cifar_recipe(cifar, cifar / "teacher.pt", "spelled")
    spelled["speed"] = {"channels_last": True}
    preset = cifar_recipe(cifar, cifar / "teacher.pt", "preset")
    preset["data"] = {**preset["data"], "on_device": False, "num_workers": 2}
    preset["speed"] = {"fast_path": "on"}
    data = prepare_data(from_dict(preset, "test"))
    assert data.on_device and data.channels_last and data.num_workers == 0
    expected, got = fit(from_dict(spelled, "test")), fit(from_dict(preset, "test"))
    torch.testing.assert_close(train_losses(got.run_dir), train_losses(expected.run_dir))


@pytest.mark.parametrize(
    ("setting", "accelerator", "cuda", "on"),
    [
        ("auto", "cpu", True, False),
        ("auto", "gpu", False, True),  # the accelerator named: the run will be on a GPU (or refused)
        ("auto", "auto", True, True),
        ("auto", "auto", False, False),
        ("off", "gpu", True, False),
        ("on", "cpu", False, True),
    ],
)
def test_fast_path_auto_is_on_where_the_run_trains_on_a_cuda_gpu(monkeypatch, setting, accelerator, cuda, on):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    raw = {"data": {"name": "digits"}, "student": {"name": "convnet"}, "speed": {"fast_path": setting}}
    raw["trainer"] = {"accelerator": accelerator}
    assert fast_path(from_dict(raw, "test").recipe) is on


def test_data_that_cannot_live_on_the_device_is_left_as_it_is():
    raw = {"data": {"name": "digits"}, "student": {"name": "convnet"}, "speed": {"fast_path": "on"}}
    raw["trainer"] = {"accelerator": "cpu"}
    data = prepare_data(from_dict(raw, "test"))
    assert not data.on_device and data.channels_last
