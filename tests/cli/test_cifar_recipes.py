"""The CIFAR-100 recipes: a clear error without data, a few real training steps on a small CIFAR-format folder."""

from __future__ import annotations

import json

import pytest
import torch

from distill.cli import main
from distill.config import load_recipe
from distill.data.synthetic import write_fake_cifar100
from distill.models import create_model
from distill.teachers.resolve import plan_frozen


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


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        (
            [],
            "unpack cifar_teachers.tar from the 'checkpoints' release of github.com/megvii-research/mdistiller and "
            "set teacher.checkpoint=cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth",
        ),
        (["teacher.model.name=resnet8x4"], "github.com/megvii-research/mdistiller has no resnet8x4"),
    ],
)
def test_missing_cifar_teacher_names_mdistillers_release_and_a_teacher_recipe_that_trains_it(
    tmp_path, monkeypatch, capsys, overrides, where
):
    monkeypatch.chdir(tmp_path)  # the recipe's teacher path (RepDistiller's layout) is relative: nothing is there
    write_fake_cifar100(tmp_path / "cifar", n_train=16, n_test=8, seed=0)
    given = [f"data.root={tmp_path / 'cifar'}", "data.num_workers=0", *overrides]
    assert main(["fit", "--recipe", "kd_cifar100", *given]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "teacher.checkpoint: file not found: save/models/resnet32x4_vanilla/ckpt_epoch_240.pth" in err
    assert where in err
    # the advice works as written: its overrides plan the teacher's training by a bundled teacher recipe
    advice = err.strip().split("or train it first: ")[1].split()
    assert "teacher.checkpoint=null" in advice and "teacher.recipe=teacher_resnet32x4_cifar100" in advice
    plan = plan_frozen(load_recipe("kd_cifar100", given + advice), "teacher", "classification")
    assert plan.needs_training and plan.run.name == "teacher_resnet32x4_cifar100"
    assert plan.run.recipe.student == load_recipe("kd_cifar100", given).recipe.teacher.model
    assert not list(tmp_path.glob("runs/*/version_*"))  # bad input leaves no run behind
