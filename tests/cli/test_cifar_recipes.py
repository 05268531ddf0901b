"""The CIFAR-100 recipes: a clear error without data, a few real training steps on a small CIFAR-format folder."""

from __future__ import annotations

import json

import pytest
import torch

from distill.cli import main
from distill.data.synthetic import write_fake_cifar100
from distill.models import create_model


def test_plk_recipe_without_data_exits_2_and_says_where_to_put_the_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipe's data.root (data/cifar100) is relative: nothing is there
    assert main(["fit", "--recipe", "plk_cifar100"]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-100 not found" in err and "cifar-100-python" in err and "data.download=true" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("recipe", ["plk_cifar100", "dkd_cifar100"])
def test_cifar_recipe_trains_a_few_steps_on_a_cifar_format_folder(tmp_path, monkeypatch, capsys, recipe):
    monkeypatch.chdir(tmp_path)
    write_fake_cifar100(tmp_path / "cifar", n_train=64, n_test=32, seed=0)
    teacher = create_model("resnet32x4", num_classes=100)
    torch.save({"model": teacher.state_dict(), "epoch": 240}, tmp_path / "ckpt_epoch_240.pth")  # lineage format
    overrides = [
        f"data.root={tmp_path / 'cifar'}",
        "data.num_workers=0",
        "data.batch_size=16",
        f"teacher.checkpoint={tmp_path / 'ckpt_epoch_240.pth'}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
    ]
    assert main(["fit", "--recipe", recipe, *overrides]) == 0
    (run,) = (tmp_path / "runs" / recipe).glob("version_0")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    assert "test/agreement" in json.loads((run / "results.json").read_text())["test"]
