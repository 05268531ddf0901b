"""`distill` end to end on digits with tiny budgets, in process (fast) and as the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.cli import main
from distill.config import load_recipe
from distill.teachers.resolve import plan_frozen
from tests.helpers import tiny_recipe, write_recipe

DISTILL = str(Path(sys.executable).parent / "distill")


def run_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("*/version_*"))


def test_fit_writes_a_run_folder_reports_and_reuses_the_teacher(recipe_file, tmp_path, teacher_store, capsys):
    assert main(["fit", "--recipe", str(recipe_file)]) == 0
    out = capsys.readouterr().out
    for row in ("teacher accuracy", "student accuracy", "agreement"):
        assert row in out
    (run,) = run_dirs(tmp_path / "runs")
    for name in ("recipe.yaml", "results.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (run / name).is_file(), name
    test = json.loads((run / "results.json").read_text())["test"]
    assert test["test/teacher_acc"] > 0.6 and test["test/acc"] > 0.3  # chance is 0.1
    assert 0.0 <= test["test/agreement"] <= 1.0
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["optimizer"]["weight_decay"] == 5e-4  # defaults are written out, not hidden
    teacher_file = plan_frozen(load_recipe(str(recipe_file)), "teacher", "classification").weights  # session store
    assert teacher_file.is_file()
    stamp = teacher_file.stat().st_mtime_ns
    first_results = (run / "results.json").read_text()

    assert main(["fit", "--recipe", str(recipe_file)]) == 0  # second run: new folder, stored teacher reused
    assert "training it first" not in capsys.readouterr().out
    assert [p.name for p in run_dirs(tmp_path / "runs")] == ["version_0", "version_1"]
    assert teacher_file.stat().st_mtime_ns == stamp
    assert (run / "results.json").read_text() == first_results  # the first run is left as it was


def test_test_command_reproduces_the_fit_metrics(recipe_file, tmp_path, capsys):
    assert main(["fit", "--recipe", str(recipe_file)]) == 0
    (run,) = run_dirs(tmp_path / "runs")
    results = json.loads((run / "results.json").read_text())
    capsys.readouterr()
    assert main(["test", "--checkpoint", results["best_checkpoint"]]) == 0
    printed = capsys.readouterr().out
    for label, key in (("student accuracy", "acc"), ("teacher accuracy", "teacher_acc"), ("agreement", "agreement")):
        row = next(line for line in printed.splitlines() if label in line)
        assert f"{100 * results['test'][f'test/{key}']:.2f}%" in row, row  # the same table as fit's
    assert main(["validate", "--checkpoint", results["best_checkpoint"]]) == 0
    assert "validation split" in capsys.readouterr().out


def test_print_shows_the_resolved_recipe_without_running(recipe_file, tmp_path, capsys):
    assert main(["fit", "--recipe", str(recipe_file), "--print", "optimizer.lr=0.5", "trainer.max_epochs=7"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["optimizer"]["lr"] == 0.5
    assert resolved["trainer"]["max_epochs"] == 7
    assert resolved["student"]["dropout"] == 0.0  # model defaults filled in from the model's signature
    assert resolved["data"]["split_seed"] == 0
    assert not (tmp_path / "runs").exists()


def test_recipes_and_losses_are_listed(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "quickstart_digits" in out and "KD" in out
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    assert "kd" in out and "temperature=4.0" in out and "losses.kd.KDLoss" in out
    for name, cls in (("zscore_kd", "ZScoreKDLoss"), ("pld", "PlackettLuceLoss"), ("dkd", "DKDLoss")):
        assert any(line.startswith(f"{name} ") and cls in line for line in out.splitlines())
    assert "warmup_epochs=20" in out and "ignore_index=-100" in out
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("at ") and "AttentionTransferLoss(p=2.0)" in line)
    assert "consumes features; tasks: classification" in lines[at + 2] and "`student:` and `teacher:`" in lines[at + 3]


def test_help_comes_from_docstrings(capsys):
    from distill.cli.main import cmd_fit

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert cmd_fit.__doc__.splitlines()[0] in capsys.readouterr().out


def edit(recipe: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = recipe
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return recipe


DELETE = object()
BAD_RECIPES = [
    ("optimiser", {"name": "sgd"}, "unknown key 'optimiser' (did you mean 'optimizer'?)"),
    ("optimizer.lr", "fast", "'optimizer.lr' must be a number, got 'fast'"),
    ("student.name", "convnett", "unknown model 'convnett' (did you mean 'convnet'?)"),
    ("student.widht", [4], "unknown key 'student.widht' (did you mean 'widths'?)"),
    ("teacher.train", None, "has neither 'checkpoint'"),
    ("teacher", None, "'teacher' is missing: loss.terms distill from a teacher"),
    ("loss.terms.kd.temperature", -1.0, "temperature must be > 0"),
    ("loss.terms.kd.weight", DELETE, "'loss.terms.kd.weight' is required"),
    ("trainer.max_epoch", 3, "unknown key 'trainer.max_epoch' (did you mean 'max_epochs'?)"),
    ("trainer.callbacks", [], "'trainer.callbacks' cannot be set in a recipe"),
    ("teacher.checkpoint", "/nonexistent/teacher.pth", "file not found: /nonexistent/teacher.pth"),
    ("data.name", "cifar10", "unknown dataset 'cifar10'"),
    ("trainer.strategy", "dddp", "'trainer.strategy' is 'dddp', which is no strategy (did you mean 'ddp'?)"),
    ("run.root", "/proc/no_such_dir", "run.root: cannot create run folder /proc/no_such_dir/tiny"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_RECIPES, ids=[case[0] for case in BAD_RECIPES])
def test_bad_recipes_exit_2_with_one_line_naming_the_problem(tmp_path, teacher_store, capsys, key, value, message):
    recipe = edit(tiny_recipe(tmp_path / "runs", teacher_store), key, value)
    path = write_recipe(tmp_path / "bad.yaml", recipe)
    assert main(["fit", "--recipe", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not run_dirs(tmp_path / "runs")  # nothing written


def test_bad_overrides_and_missing_recipe_exit_2(recipe_file, capsys):
    assert main(["fit", "--recipe", str(recipe_file), "trainer.max_epochs=ten"]) == 2
    assert "command-line overrides: 'trainer.max_epochs' must be" in capsys.readouterr().err
    assert main(["fit", "--recipe", str(recipe_file), "seed"]) == 2
    assert "override 'seed' is not of the form key=value" in capsys.readouterr().err
    assert main(["fit", "--recipe", "quickstart_digit"]) == 2
    assert "did you mean 'quickstart_digits'" in capsys.readouterr().err


def test_console_script_bad_key_is_one_line_exit_2_without_traceback(recipe_file, tmp_path):
    done = subprocess.run(
        [DISTILL, "fit", "--recipe", str(recipe_file), "loss.terms.kd.temprature=2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"distill: error: {recipe_file} with command-line overrides: unknown key 'loss.terms.kd.temprature' "
        "(did you mean 'temperature'?)"
    ]


def test_console_script_resolves_bundled_recipe_from_any_folder(tmp_path):
    done = subprocess.run(
        [DISTILL, "fit", "--recipe", "quickstart_digits", "--print"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["data"]["name"] == "digits"
