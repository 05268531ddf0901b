"""`distill validate` and `distill test` on finished runs of the tasks with a second frozen model or a target the
draft reads (amu, draft_distill), on their tiny recipes with small budgets: evaluation builds the task as training
did, with the exact frozen weights. (Classification, causal_lm, dpo and align_distil are checked the same way beside
their own recipe tests.)"""

from __future__ import annotations

import pytest

from distill.cli import main
from tests.helpers import check_evaluation

AMU = [
    "trainer.max_epochs=3",
    "amu.views=2",
    "teacher.train.trainer.max_epochs=3",
    "second_teacher.train.trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
]
DRAFT = [
    "data.max_documents=80",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "speculative.prompts=2",
    "speculative.prompt_tokens=16",
    "speculative.max_new_tokens=8",
    "teacher.train.data.max_documents=80",
    "teacher.train.trainer.max_epochs=1",
    "teacher.train.trainer.limit_train_batches=4",
    "teacher.train.trainer.limit_val_batches=2",
    "teacher.train.trainer.enable_progress_bar=false",
]


@pytest.mark.parametrize(("recipe", "overrides"), [("amu_fewshot_tiny", AMU), ("specvlm_draft_tiny", DRAFT)])
def test_a_finished_run_validates_and_tests_as_it_was_trained(recipe, overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--recipe", recipe, *overrides]) == 0
    (run,) = (tmp_path / "runs" / recipe).glob("version_0")
    rows = check_evaluation(run, capsys)
    if recipe == "amu_fewshot_tiny":  # each branch the task measures is shown, not only the fused accuracy
        assert {"AMU accuracy (fused)", "zero-shot CLIP accuracy", "auxiliary head accuracy"} <= set(rows)
    else:
        assert rows["speculative decoding: lossless prompts"] == "100.00%"
