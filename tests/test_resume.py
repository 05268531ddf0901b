"""A run stopped after an epoch and resumed with `--resume` ends exactly where the uninterrupted run ends."""

from __future__ import annotations

import json

import torch
from lightning.pytorch.callbacks import Callback

from distill.cli import main
from distill.config import load_recipe
from distill.engine.pipeline import fit


class StopAfterEpochs(Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(recipe_file, tmp_path):
    overrides = ["trainer.max_epochs=3", "data.augment=true"]  # augmentation: resume must replay the randomness
    full = fit(load_recipe(str(recipe_file), [*overrides, "run.name=full"]))

    stopped = fit(load_recipe(str(recipe_file), [*overrides, "run.name=stopped"]), callbacks=[StopAfterEpochs(1)])
    saved = torch.load(stopped.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    final_full = torch.load(full.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0 and 0 < saved["global_step"] < final_full["global_step"]

    assert main(["fit", "--resume", str(stopped.run_dir)]) == 0
    resumed = torch.load(stopped.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == final_full["global_step"]
    for key, value in final_full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    full_metrics = json.loads((full.run_dir / "results.json").read_text())["test"]
    resumed_metrics = json.loads((stopped.run_dir / "results.json").read_text())["test"]
    assert resumed_metrics == full_metrics
    # the first session's log is kept; the resumed session logs beside it
    assert "epoch" in (stopped.run_dir / "logs" / "metrics.csv").read_text()
    assert (stopped.run_dir / "logs" / "resume_1" / "metrics.csv").is_file()


def test_resume_latest_run_by_recipe_name(recipe_file, tmp_path, capsys):
    first = fit(load_recipe(str(recipe_file)), callbacks=[StopAfterEpochs(1)])
    assert main(["fit", "--recipe", str(recipe_file), "--resume"]) == 0
    assert torch.load(first.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert main(["fit", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_a_resumed_run_keeps_the_teacher_it_learned_from(recipe_file, tmp_path, capsys):
    """The teacher's settings now point to an empty store (as after a store moved, or a store key changed in an
    upgrade): the resumed run reads the teacher its checkpoint recorded instead of training another one."""
    first = fit(load_recipe(str(recipe_file)), callbacks=[StopAfterEpochs(1)])
    learned_from = torch.load(first.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["distill"]["sources"]
    capsys.readouterr()
    assert main(["fit", "--resume", str(first.run_dir), f"teacher.store={tmp_path / 'empty_store'}"]) == 0
    assert "training it first" not in capsys.readouterr().out
    assert not (tmp_path / "empty_store").exists()
    resumed = torch.load(first.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["distill"]["sources"]["teacher"] == learned_from["teacher"]


def test_a_run_with_projectors_and_a_memory_bank_resumes_exactly(recipe_file, tmp_path):
    # FitNet's regressor (8 -> 16 channels) and CRD's embeddings, memory banks and sampled negatives all live in the
    # checkpoint or in the restored random state: the resumed run ends bit for bit where the uninterrupted one does
    terms = [
        "loss.terms.fitnet={weight: 1.0, student: features.6, teacher: features.6}",
        "loss.terms.crd={weight: 0.5, embed_dim: 8, negatives: 16, student: head.1, teacher: head.1}",
    ]
    overrides = ["trainer.max_epochs=2", "data.augment=true", *terms]
    full = fit(load_recipe(str(recipe_file), [*overrides, "run.name=full"]))
    stopped = fit(load_recipe(str(recipe_file), [*overrides, "run.name=stopped"]), callbacks=[StopAfterEpochs(1)])
    assert main(["fit", "--resume", str(stopped.run_dir)]) == 0
    final_full = torch.load(full.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(stopped.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(key.startswith("terms.fitnet.projectors.0.") for key in final_full["state_dict"])
    assert any(key.startswith("terms.crd.loss.memory_") for key in final_full["state_dict"])
    assert resumed["state_dict"].keys() == final_full["state_dict"].keys()
    for key, value in final_full["state_dict"].items():
        assert_same(value, resumed["state_dict"][key], key)


def assert_same(expected, got, key: str) -> None:
    """Bit-for-bit equal tensors, or equal nested extra states (a loss's own random generator)."""
    if isinstance(expected, dict):
        assert expected.keys() == got.keys(), key
        for name in expected:
            assert_same(expected[name], got[name], f"{key}.{name}")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(expected, got), key
    else:
        assert expected == got, key


class WorseEveryEpoch(Callback):
    """Makes the monitored validation accuracy fall every epoch (set before the checkpoint callbacks read it)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        trainer.callback_metrics["val/acc"] = torch.tensor(1.0 - 0.1 * trainer.current_epoch)


def test_last_checkpoint_follows_every_epoch_when_the_best_stops_improving(recipe_file):
    # what --resume continues from: a last.ckpt left at the best epoch would make a resume repeat epochs
    run = fit(load_recipe(str(recipe_file), ["trainer.max_epochs=3", "run.name=worse"]), callbacks=[WorseEveryEpoch()])
    best = torch.load(run.run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert best["epoch"] == 0
    assert last["epoch"] == 2 and last["global_step"] == 3 * best["global_step"]
