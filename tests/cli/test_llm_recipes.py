"""The offline language-model recipes end to end on tiny budgets: teacher trained first, then distilled."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.cli import main
from tests.helpers import check_evaluation

DISTILL = str(Path(sys.executable).parent / "distill")

TINY = [
    "data.max_documents=60",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "teacher.train.trainer.max_epochs=1",
    "teacher.train.trainer.limit_train_batches=3",
    "teacher.train.trainer.limit_val_batches=2",
    "teacher.train.trainer.enable_progress_bar=false",
]


@pytest.mark.parametrize("recipe", ["llm_kd_tiny", "gld_tiny"])
def test_llm_recipe_trains_teacher_then_student(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--recipe", recipe, *TINY]) == 0
    out = capsys.readouterr().out
    assert "student perplexity" in out
    (run,) = (tmp_path / "runs" / recipe).glob("version_0")
    test = json.loads((run / "results.json").read_text())["test"]
    assert test["test/loss"] > 0 and math.isclose(test["test/ppl"], math.exp(test["test/loss"]), rel_tol=1e-4)
    if recipe == "llm_kd_tiny":  # same tokenizer: teacher-side numbers are reported too
        assert test["test/kl"] >= 0 and 0 <= test["test/agreement"] <= 1 and test["test/teacher_loss"] > 0
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert all(k.startswith("student.") for k in checkpoint["state_dict"])
    assert list(tmp_path.glob("runs/teachers/llama-*/teacher.pt"))
    check_evaluation(run, capsys)  # validate and test rebuild the run exactly (causal_lm)
    if recipe == "llm_kd_tiny":  # as a user runs it: the table on stdout, nothing else (no device lines, warnings)
        best = json.loads((run / "results.json").read_text())["best_checkpoint"]
        done = subprocess.run([DISTILL, "test", "--checkpoint", best], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout.splitlines()[0].strip() == "test of best.ckpt" and "student perplexity" in done.stdout


def test_a_hidden_state_layer_map_trains_its_projections_and_evaluates_from_its_checkpoint(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--recipe", "hidden_state_tiny", *TINY]) == 0
    (run,) = (tmp_path / "runs" / "hidden_state_tiny").glob("version_0")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    projections = {k: v.shape for k, v in state.items() if k.startswith("terms.hidden_state.projectors.")}
    assert projections == {
        f"terms.hidden_state.projectors.{i}.proj.{p}": shape
        for i in (0, 1)
        for p, shape in (("weight", (128, 64)), ("bias", (128,)))
    }  # student width 64 -> teacher width 128, one per mapped pair
    check_evaluation(run, capsys)  # validate and test rebuild the projections from the checkpoint
