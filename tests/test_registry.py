"""Name -> constructor registries, and the `module:attribute` escape hatch that only `--allow-module` opens."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import distill.registry as registry
from distill.errors import DistillError
from distill.models import MODELS, create_model
from distill.registry import Registry, allow_modules, import_allowed, is_allowed


@pytest.fixture(autouse=True)
def no_allowed_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing allowed; the process-wide set is restored afterwards."""
    monkeypatch.setattr(registry, "_ALLOWED_MODULES", set())


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh importable package `<name>` with a submodule `<name>.sub`, removed from sys.modules afterwards."""
    name = f"distill_test_pkg_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("TOP = 1\n")
    (root / "sub.py").write_text("class Thing:\n    pass\n\n\ndef build():\n    return 'built'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def test_register_and_get() -> None:
    widgets: Registry = Registry("widget")

    @widgets.register("beta")
    def beta() -> str:
        return "b"

    @widgets.register("alpha")
    class Alpha:
        pass

    assert widgets.get("alpha") is Alpha  # the decorator returns the entry unchanged
    assert widgets.get("beta") is beta
    assert "alpha" in widgets
    assert "gamma" not in widgets
    assert list(widgets) == ["alpha", "beta"]
    assert widgets.items() == [("alpha", Alpha), ("beta", beta)]


def test_double_registration_is_refused() -> None:
    widgets: Registry = Registry("widget")
    widgets.register("alpha")(int)
    with pytest.raises(ValueError, match="widget 'alpha' is registered twice"):
        widgets.register("alpha")(float)
    assert widgets.get("alpha") is int


def test_unknown_name_mentions_the_closest() -> None:
    widgets: Registry = Registry("widget")
    widgets.register("resnet20")(int)
    widgets.register("vgg8")(float)
    with pytest.raises(DistillError, match=r"unknown widget 'resnt20' \(did you mean 'resnet20'\?\)"):
        widgets.get("resnt20")


def test_unknown_name_with_nothing_close_lists_the_valid_names() -> None:
    widgets: Registry = Registry("widget")
    widgets.register("resnet20")(int)
    widgets.register("vgg8")(float)
    with pytest.raises(DistillError, match=r"unknown widget 'zzz' \(valid: resnet20, vgg8\)"):
        widgets.get("zzz")


def test_module_reference_is_refused_unless_allowed(package: str) -> None:
    widgets: Registry = Registry("widget")
    with pytest.raises(DistillError) as info:
        widgets.get(f"{package}.sub:Thing")
    message = str(info.value)
    assert f"--allow-module {package}" in message
    assert "may not import" in message
    assert package not in sys.modules  # refused before anything was imported


def test_allowed_module_and_its_submodules_are_imported(package: str) -> None:
    allow_modules([package])
    assert is_allowed(package)
    assert is_allowed(f"{package}.sub")
    assert import_allowed(f"{package}:TOP", "widget") == 1
    thing = Registry("widget").get(f"{package}.sub:Thing")
    assert thing is sys.modules[f"{package}.sub"].Thing
    assert thing.__name__ == "Thing"


def test_allowing_a_submodule_does_not_allow_its_parent_or_a_name_prefix(package: str) -> None:
    allow_modules([f"{package}.sub"])
    assert import_allowed(f"{package}.sub:build", "widget")() == "built"
    assert not is_allowed(package)
    assert not is_allowed(f"{package}.subx")
    with pytest.raises(DistillError, match="--allow-module"):
        import_allowed(f"{package}:TOP", "widget")
    allow_modules(["json"])
    assert not is_allowed("jsonschema_like")
    assert not is_allowed("js")


def test_allowed_but_missing_module_or_attribute(package: str) -> None:
    allow_modules([package])
    with pytest.raises(DistillError, match=f"cannot import module '{package}.missing'"):
        import_allowed(f"{package}.missing:Thing", "widget")
    with pytest.raises(DistillError, match=f"module '{package}.sub' has no attribute 'Nope'"):
        import_allowed(f"{package}.sub:Nope", "widget")


@pytest.mark.parametrize("reference", [":Thing", "module:", "module"])
def test_malformed_reference(reference: str) -> None:
    with pytest.raises(DistillError, match="not of the form 'module:attribute'"):
        import_allowed(reference, "widget")


def test_model_registry_suggests_the_closest_registered_model() -> None:
    assert "convnet" in MODELS
    with pytest.raises(DistillError, match=r"unknown model 'convnett' \(did you mean 'convnet'\?\)"):
        MODELS.get("convnett")


def test_create_model_injects_dataset_arguments() -> None:
    model = create_model("convnet", num_classes=3, in_chans=2, widths=[4], hidden=0)
    assert model(torch.zeros(5, 2, 8, 8)).shape == (5, 3)
    mlp = create_model("mlp", num_classes=4, in_chans=1, in_features=12)  # the mlp takes no in_chans
    assert mlp(torch.zeros(2, 3, 4)).shape == (2, 4)


def test_create_model_unknown_torchvision_name() -> None:
    with pytest.raises(DistillError, match="unknown torchvision model 'resnet_nope'"):
        create_model("torchvision:resnet_nope", num_classes=3)
