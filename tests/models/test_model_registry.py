"""`create_model`: registered models, any timm or torchvision model by prefix, and allowed `module:attr` models."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import distill.registry as registry
from distill.errors import DistillError
from distill.models import create_model

DIGITS = (1, 8, 8)  # (C, H, W) of the digits dataset


@pytest.fixture(autouse=True)
def no_allowed_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_ALLOWED_MODULES", set())


def first_conv_in_channels(model: nn.Module) -> int:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


@pytest.mark.parametrize(("name", "kwargs"), [("convnet", {"widths": [4, 8], "hidden": 0}), ("mlp", {})])
@pytest.mark.parametrize("num_classes", [3, 10])
def test_small_models_on_digits(name: str, kwargs: dict, num_classes: int) -> None:
    model = create_model(name, num_classes, DIGITS[0], **kwargs)
    assert model(torch.randn(5, *DIGITS)).shape == (5, num_classes)


def test_in_chans_is_passed_when_the_model_takes_it() -> None:
    model = create_model("convnet", 4, in_chans=3, widths=[4], hidden=0)
    assert first_conv_in_channels(model) == 3
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 1, 8, 8))
    mlp = create_model("mlp", 4, in_chans=3, in_features=12)  # takes no in_chans: not passed, no TypeError
    assert mlp(torch.randn(2, 3, 2, 2)).shape == (2, 4)


def test_model_arguments_are_passed() -> None:
    model = create_model("convnet", 2, 1, widths=[4, 6], hidden=5)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [4, 6]
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [5, 2]


def test_timm_test_model_builds_offline_with_classes_and_channels() -> None:
    assert "test_resnet" in timm.list_models("test_*")
    model = create_model("timm:test_resnet", 5, in_chans=1).eval()
    assert first_conv_in_channels(model) == 1
    assert model(torch.randn(2, *DIGITS)).shape == (2, 5)
    rgb = create_model("timm:test_resnet", 3, in_chans=3).eval()
    assert first_conv_in_channels(rgb) == 3


def test_torchvision_model_with_its_class_count() -> None:
    model = create_model("torchvision:resnet18", 7, in_chans=3, weights=None).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("name", ["timm:resnet_does_not_exist", "torchvision:resnet_does_not_exist"])
def test_unknown_library_model_is_named(name: str) -> None:
    library, _, model = name.partition(":")
    with pytest.raises(DistillError, match=f"unknown {library} model '{model}'"):
        create_model(name, 3)


@pytest.mark.parametrize(
    ("name", "kwargs", "named"),
    [
        ("timm:test_resnet", {"drop_rat": 0.1}, "drop_rat"),
        ("torchvision:resnet18", {"widht": 2}, "widht"),
        ("torchvision:resnet18", {"weights": "IMAGENET1K_V9"}, "IMAGENET1K_V9"),
    ],
)
def test_bad_library_model_arguments_give_a_one_line_error(name: str, kwargs: dict, named: str) -> None:
    """The recipe checker leaves library models' arguments to the library: its error must still be one line."""
    with pytest.raises(DistillError, match=f"model '{name.partition(':')[2]}'") as info:
        create_model(name, 7, **kwargs)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_unknown_registry_name_suggests_the_closest() -> None:
    with pytest.raises(DistillError, match=r"unknown model 'convnett' \(did you mean 'convnet'\?\)"):
        create_model("convnett", 3)


def tiny_linear(num_classes: int, in_features: int = 4) -> nn.Module:
    """A model builder outside the registry, referenced as `tests.models.test_model_registry:tiny_linear`."""
    return nn.Linear(in_features, num_classes)


def test_module_attribute_model_needs_allow_modules() -> None:
    reference = f"{__name__}:tiny_linear"
    with pytest.raises(DistillError, match="--allow-module tests"):
        create_model(reference, 3, in_chans=1, in_features=5)
    registry.allow_modules(["tests.models"])
    model = create_model(reference, 3, in_chans=1, in_features=5)  # tiny_linear takes no in_chans
    assert isinstance(model, nn.Linear) and (model.in_features, model.out_features) == (5, 3)


def test_module_attribute_model_gets_in_chans_when_it_takes_it() -> None:
    registry.allow_modules(["distill.models.small"])
    model = create_model("distill.models.small:ConvNet", 6, in_chans=2, widths=[4], hidden=0)
    assert first_conv_in_channels(model) == 2
    assert model(torch.randn(1, 2, 8, 8)).shape == (1, 6)


def test_torchvision_model_on_single_channel_data_is_refused_clearly():
    with pytest.raises(DistillError, match="takes 3-channel images but the dataset has 1"):
        create_model("torchvision:resnet18", num_classes=10, in_chans=1)
