"""The dataset registry and the constructor contract the recipe loader relies on."""

import inspect
import re
import typing
from typing import Literal

import lightning as L
import pytest
import torch

from distill.data import DATASETS, DigitsDataModule, create_datamodule
from distill.errors import DistillError

ALLOWED_TYPES = {
    int,
    float,
    bool,
    str,
    int | None,
    float | None,
    str | None,
    list[float],
    list[int],
    list[str],
    dict[str, str] | None,
    str | dict[str, str | None],  # a source: a path, or a mapping of the source with its splits (null: not given)
    str | dict[str, str | None] | None,
    Literal["max_length", "longest"],  # data.padding
}


def test_registered_names():
    assert list(DATASETS) == ["captions", "cifar100", "digits", "image_text", "imagefolder", "preference", "text"]


def test_create_datamodule_passes_arguments():
    datamodule = create_datamodule("digits", batch_size=8, split_seed=3)
    assert isinstance(datamodule, DigitsDataModule)
    assert (datamodule.batch_size, datamodule.split_seed) == (8, 3)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(DistillError, match="unknown dataset 'digit'.*did you mean 'digits'"):
        create_datamodule("digit")


@pytest.mark.parametrize("name", list(DATASETS))
def test_constructor_is_typed_defaulted_and_documented(name):
    cls = DATASETS.get(name)
    assert issubclass(cls, L.LightningDataModule)
    hints = typing.get_type_hints(cls.__init__)
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    documented = dict(re.findall(r"^    (\w+): (.+)$", inspect.getdoc(cls).split("Args:")[1], flags=re.M))
    assert {"batch_size", "num_workers"} <= {p.name for p in parameters}
    for parameter in parameters:
        assert parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD), parameter.name
        assert parameter.default is not parameter.empty, parameter.name
        assert hints[parameter.name] in ALLOWED_TYPES, (parameter.name, hints[parameter.name])
        assert parameter.name in documented, f"{name}: '{parameter.name}' is missing from Args:"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.batch_size must be >= 1, got 0"),
        ({"num_workers": -1}, "data.num_workers must be >= 0, got -1"),
    ],
)
def test_common_arguments_are_checked(kwargs, message):
    with pytest.raises(DistillError, match=re.escape(message)):
        create_datamodule("digits", **kwargs)


def test_setup_builds_the_sets_once():
    datamodule = create_datamodule("digits")
    datamodule.setup("fit")
    train_set = datamodule.train_set
    datamodule.setup("test")
    assert datamodule.train_set is train_set


def test_loaders_batch_and_shuffle_only_training():
    datamodule = create_datamodule("digits", batch_size=100)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    train_labels = [torch.cat([y for _, y in loader]) for _ in range(2)]  # two epochs of one loader
    val_labels = [torch.cat([y for _, y in datamodule.val_dataloader()]) for _ in range(2)]
    assert len(train_labels[0]) == len(datamodule.train_set)  # drop_last=False
    assert not torch.equal(train_labels[0], train_labels[1])
    assert torch.equal(val_labels[0], val_labels[1])
    assert torch.equal(val_labels[0], torch.tensor([datamodule.val_set[i][1] for i in range(len(datamodule.val_set))]))


def epoch_orders(datamodule, epochs: int) -> list[torch.Tensor]:
    loader = datamodule.train_dataloader()
    return [torch.cat([y for _, y in loader]) for _ in range(epochs)]


def test_training_order_depends_only_on_seed_and_epoch():
    datamodule = create_datamodule("digits", batch_size=100, augment=True)
    datamodule.setup("fit")
    torch.manual_seed(1)
    first = epoch_orders(datamodule, 2)
    torch.manual_seed(2)  # the global RNG state before the loader does not matter
    again = epoch_orders(datamodule, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    datamodule.seed = 1
    assert not torch.equal(epoch_orders(datamodule, 1)[0], first[0])


def test_augmentation_is_replayed_for_the_same_epoch():
    datamodule = create_datamodule("digits", batch_size=2000, augment=True)
    datamodule.setup("fit")
    images = [next(iter(datamodule.train_dataloader()))[0] for _ in range(2)]
    assert torch.equal(images[0], images[1])


def test_loads_with_worker_processes():
    datamodule = create_datamodule("digits", batch_size=500, num_workers=1)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert loader.persistent_workers  # samples are seeded from (seed, epoch, index): workers need no restart
    assert datamodule.val_dataloader().persistent_workers
    assert sum(len(labels) for _, labels in loader) == len(datamodule.train_set)


def built(name: str, tmp_path):
    """Each registered dataset, built offline (small)."""
    from distill.data.synthetic import write_fake_cifar100, write_fake_imagefolder

    if name == "cifar100":
        write_fake_cifar100(tmp_path, n_train=20, n_test=10, seed=0)
        return create_datamodule("cifar100", root=str(tmp_path), num_workers=0)
    if name == "imagefolder":
        write_fake_imagefolder(tmp_path)
        return create_datamodule("imagefolder", root=str(tmp_path), num_workers=0)
    if name == "text":
        return create_datamodule("text", max_documents=20)
    if name == "captions":
        return create_datamodule("captions", num_images=20)
    return create_datamodule(name)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("digits", "ClassData"),
        ("cifar100", "ClassData"),
        ("imagefolder", "ClassData"),
        ("text", "TokenData"),
        ("preference", "TokenData"),
        ("captions", "TokenData"),
    ],  # image_text needs a processor: tests/data/test_image_text_data.py checks it
)
def test_every_dataset_meets_the_typed_interface_the_tasks_read(name, kind, tmp_path):
    from distill.data import interface

    data = built(name, tmp_path)
    assert isinstance(data, interface.DataSource)
    assert isinstance(data, getattr(interface, kind))
    other = {"ClassData": interface.TokenData, "TokenData": interface.ClassData}[kind]
    assert not isinstance(data, other)
