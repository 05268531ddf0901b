"""Experiment loggers chosen in the recipe: the CSV log always, Weights & Biases in offline mode and MLflow with a
file store in the run folder receive the run's metrics; a logger whose package is missing is one line, exit 2."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from distill.cli import main
from tests.helpers import tiny_recipe, write_recipe


def run_with(tmp_path, monkeypatch, logger: dict) -> tuple[int, object]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = tiny_recipe(tmp_path / "runs", tmp_path / "teachers", teacher=None, logger=logger)
    recipe["loss"] = {"ce_weight": 1.0, "terms": {}}
    recipe["trainer"]["max_epochs"] = 1
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    return main(["fit", "--recipe", str(path)]), tmp_path / "runs" / "tiny" / "version_0"


def csv_metrics(run) -> set[str]:
    with open(run / "logs" / "metrics.csv") as file:
        return set(next(csv.reader(file)))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_weights_and_biases_offline_keeps_the_run_beside_the_csv_log(tmp_path, monkeypatch):
    code, run = run_with(tmp_path, monkeypatch, {"wandb": {"project": "tests", "mode": "offline"}})
    assert code == 0
    assert {"val/acc", "train/loss"} <= csv_metrics(run)
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb")) and (offline / "files").is_dir()


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_mlflow_writes_the_metrics_to_a_file_store_in_the_run_folder(tmp_path, monkeypatch):
    code, run = run_with(tmp_path, monkeypatch, {"mlflow": {"experiment": "tests"}})
    assert code == 0
    assert {"val/acc", "train/loss"} <= csv_metrics(run)
    stored = {path.name for path in (run / "mlruns").rglob("*") if path.parent.name in ("metrics", "val", "train")}
    assert {"acc", "loss"} <= stored, sorted(stored)


def test_a_logger_whose_package_is_missing_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code, run = run_with(tmp_path, monkeypatch, {"wandb": {"project": "tests"}})
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["distill: error: logger.wandb needs the wandb package: pip install wandb"]
    assert not run.exists()
