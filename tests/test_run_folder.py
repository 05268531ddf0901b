"""Finished runs are read one way (RunFolder, RunCheckpoint): the recipe, best and last checkpoints, where each
frozen model came from, and the recipe pinned to the exact weights the student learned from. Evaluation never
trains a teacher again: if those weights are gone, it says so in one line."""

from __future__ import annotations

import shutil

import pytest
import torch

from distill.cli import main
from distill.config import from_dict
from distill.engine.pipeline import FitResult, fit
from distill.engine.run_folder import RunCheckpoint, RunFolder
from distill.errors import DistillError
from tests.helpers import tiny_recipe


@pytest.fixture(scope="module")
def finished(tmp_path_factory, teacher_store) -> FitResult:
    """One finished run shared by the tests here, which only read it."""
    return fit(from_dict(tiny_recipe(tmp_path_factory.mktemp("finished") / "runs", teacher_store), "test"))


def test_a_run_folder_gives_its_recipe_checkpoints_results_and_pinned_sources(finished, teacher_store):
    run = RunFolder(finished.run_dir)
    assert run.recipe().resolved == finished.resolved
    assert run.best == finished.best_checkpoint and run.last.is_file()
    assert run.results()["test"] == finished.metrics
    assert RunFolder.of(run.best).path == run.path

    checkpoint = run.checkpoint("best")
    stored = checkpoint.sources["teacher"]["weights"]
    assert stored.startswith(str(teacher_store.resolve())) and stored.endswith("teacher.pt")
    assert finished.resolved["teacher"]["train"] is not None  # the run got its teacher from the store's settings
    pinned = checkpoint.pinned()
    assert pinned["teacher"]["checkpoint"] == stored and pinned["teacher"]["train"] is None
    assert checkpoint.loaded().recipe.teacher.checkpoint == stored


def with_teacher_at(finished: FitResult, weights, path):
    """A copy of the run's best checkpoint that records its teacher at `weights`."""
    data = torch.load(finished.best_checkpoint, weights_only=True)
    data["distill"]["sources"]["teacher"]["weights"] = str(weights)
    torch.save(data, path)
    return path


def test_evaluation_reads_the_recorded_teacher_and_refuses_when_it_is_gone(finished, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "teacher.pt"
    moved.parent.mkdir()
    shutil.copy(RunCheckpoint.read(finished.best_checkpoint).sources["teacher"]["weights"], moved)
    copy = with_teacher_at(finished, moved, tmp_path / "copy.ckpt")
    assert main(["test", "--checkpoint", str(copy)]) == 0
    capsys.readouterr()

    moved.unlink()
    assert main(["test", "--checkpoint", str(copy)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"teacher: the weights the student in {copy} learned from are gone ({moved})" in line
    with pytest.raises(DistillError, match="are gone"):
        RunCheckpoint.read(copy).pinned()


def test_a_checkpoint_that_records_only_its_teacher_still_reads(finished, tmp_path):
    """Checkpoints written before the sources of every frozen model were kept recorded the teacher alone."""
    data = torch.load(finished.best_checkpoint, weights_only=True)
    teacher = data["distill"]["sources"]["teacher"]
    data["distill"] = {"teacher": teacher, "recipe": data["distill"]["recipe"]}
    torch.save(data, tmp_path / "old.ckpt")
    assert RunCheckpoint.read(tmp_path / "old.ckpt").sources == {"teacher": teacher}


def test_a_file_not_written_by_distill_fit_is_refused_in_one_line(tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    assert main(["validate", "--checkpoint", str(tmp_path / "other.ckpt")]) == 2
    assert "was not written by distill fit" in capsys.readouterr().err
