"""The offline AlignDistil chain in one command, on tiny budgets: reference -> DPO and reverse DPO (run first and
stored) -> the student, off-policy and on-policy."""

from __future__ import annotations

import json

import pytest
import torch

from distill.cli import main
from tests.helpers import check_evaluation

RUN = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
TEACHER_RUN = ["teacher.train.trainer.max_epochs=1", "teacher.train.trainer.limit_train_batches=2"]
DPO = ",".join(["data.max_pairs=80", *RUN, *TEACHER_RUN, "teacher.train.trainer.limit_val_batches=1"])


@pytest.mark.parametrize("mode", ["off_policy", "on_policy"])
def test_align_distil_chain_runs_end_to_end(mode, tmp_path_factory, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.getbasetemp())  # both modes share the stored reference and DPO models
    models = [f"teacher.overrides=[{DPO}]", f"second_teacher.overrides=[data.swap=true,{DPO}]"]
    settings = [f"align_distil.mode={mode}", "align_distil.max_new_tokens=8", f"run.name=align_{mode}"]
    args = ["fit", "--recipe", "align_distil_tiny", "data.max_pairs=80", *RUN, *models, *settings]
    assert main(args) == 0
    assert "preference accuracy, student" in capsys.readouterr().out
    (run,) = (tmp_path_factory.getbasetemp() / "runs" / f"align_{mode}").glob("version_0")
    test = json.loads((run / "results.json").read_text())["test"]
    assert {"test/student_pref_acc", "test/dpo_pref_acc", "test/second_pref_acc"} <= set(test)
    # the student starts as the reference, which is kept beside it to report rewards relative to it
    assert {"test/reference_pref_acc", "test/student_reward_acc", "test/dpo_reward_margin"} <= set(test)
    assert "reference." not in " ".join(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert all(k.startswith("student.") for k in checkpoint["state_dict"])  # neither frozen model is saved
    stored = list((tmp_path_factory.getbasetemp() / "runs" / "teachers").glob("*/teacher.pt"))
    assert len(stored) == 3  # the reference, the DPO model and the reverse-DPO model
    if mode == "off_policy":  # validate and test: both frozen models and the reference as in training
        rows = check_evaluation(run, capsys)
        assert "preference accuracy, reference" in rows and "preference accuracy, second model" in rows
