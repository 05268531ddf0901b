"""The CIFAR-100 recipes: a clear error without data, a few real training steps on a small CIFAR-format folder."""

from __future__ import annotations

import json

import pytest
import torch

from distill.cli import main
from distill.config import bundled_recipes, load_recipe
from distill.data.synthetic import write_fake_cifar100
from distill.models import create_model
from distill.teachers.hints import MDISTILLER_TEACHERS
from distill.teachers.resolve import plan_frozen


def test_plk_recipe_offline_without_data_exits_2_naming_the_folder_and_the_address(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipe's data.root (data/cifar100) is relative: nothing is there
    assert main(["fit", "--recipe", "plk_cifar100"]) == 2  # downloads are off in the tests (DISTILL_OFFLINE=1)
    root = tmp_path / "data" / "cifar100"
    assert capsys.readouterr().err == (
        f"distill: error: CIFAR-100 ({root / 'cifar-100-python'}): not found and downloads are off "
        f"(DISTILL_OFFLINE=1): download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it "
        f"into {root}\n"
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


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
    ("model", "where"),
    [
        ("resnet32x4", "teacher.checkpoint=published fetches the published one (mdistiller's cifar_teachers.tar)"),
        ("resnet8x4", "mdistiller's cifar_teachers.tar has no resnet8x4"),
    ],
)
def test_a_missing_teacher_file_names_the_published_teacher_and_a_teacher_recipe_that_trains_it(
    tmp_path, monkeypatch, capsys, model, where
):
    monkeypatch.chdir(tmp_path)  # RepDistiller's layout, relative: nothing is there
    write_fake_cifar100(tmp_path / "cifar", n_train=16, n_test=8, seed=0)
    missing = f"save/models/{model}_vanilla/ckpt_epoch_240.pth"
    given = [f"data.root={tmp_path / 'cifar'}", "data.num_workers=0", f"teacher.model.name={model}"]
    assert main(["fit", "--recipe", "kd_cifar100", *given, f"teacher.checkpoint={missing}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"distill: error: teacher.checkpoint: file not found: {missing}: {where}, or train it first: "
    )
    # the advice works as written: its overrides plan the teacher's training by a bundled teacher recipe
    advice = err.strip().split("or train it first: ")[1].split()
    assert "teacher.checkpoint=null" in advice and "teacher.recipe=teacher_resnet32x4_cifar100" in advice
    plan = plan_frozen(load_recipe("kd_cifar100", given + [f"teacher.checkpoint={missing}"] + advice), "teacher", "-")
    assert plan.needs_training and plan.run.name == "teacher_resnet32x4_cifar100"
    assert plan.run.recipe.student == load_recipe("kd_cifar100", given).recipe.teacher.model
    assert not list(tmp_path.glob("runs/*/version_*"))  # bad input leaves no run behind


def test_every_cifar100_recipe_downloads_its_data_and_names_a_published_teacher():
    names = [name for name in bundled_recipes() if "cifar100" in name]
    assert len(names) >= 20
    for name in names:
        recipe = load_recipe(name).recipe
        assert recipe.data["name"] == "cifar100" and recipe.data["download"] is True, name
        if recipe.teacher is not None:
            assert recipe.teacher.checkpoint == "published", name
            assert recipe.teacher.model["name"] in MDISTILLER_TEACHERS, name
