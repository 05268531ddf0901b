"""The offline DPO recipe: the reference (an LM trained first) and a policy started from it, on corpus pairs;
the reverse-DPO model is the same recipe with data.swap=true."""

from __future__ import annotations

import json

import torch

from distill.cli import main
from tests.helpers import check_evaluation

TINY = [
    "data.max_pairs=120",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "teacher.train.data.max_documents=120",
    "teacher.train.trainer.max_epochs=1",
    "teacher.train.trainer.limit_train_batches=3",
    "teacher.train.trainer.limit_val_batches=2",
    "teacher.train.trainer.enable_progress_bar=false",
]


def test_dpo_and_reverse_dpo_share_the_reference_and_report_preference_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--recipe", "dpo_tiny", *TINY]) == 0
    assert "preference accuracy, policy" in capsys.readouterr().out
    assert main(["fit", "--recipe", "dpo_tiny", "data.swap=true", *TINY]) == 0
    assert "training it first" not in capsys.readouterr().out  # the reference is reused
    runs = sorted((tmp_path / "runs" / "dpo_tiny").glob("version_*"))
    assert len(runs) == 2
    results = [json.loads((run / "results.json").read_text())["test"] for run in runs]
    for test in results:
        assert {"test/loss", "test/reward_acc", "test/margin", "test/pref_acc", "test/ref_pref_acc"} <= set(test)
        assert 0 <= test["test/pref_acc"] <= 1
    # swapping chosen and rejected turns the reference's preference accuracy into its complement (no ties)
    assert abs(results[0]["test/ref_pref_acc"] + results[1]["test/ref_pref_acc"] - 1.0) < 1e-6
    checkpoint = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(k.startswith("student.") for k in checkpoint["state_dict"])
    check_evaluation(runs[1], capsys)  # validate and test rebuild the run with its stored reference
