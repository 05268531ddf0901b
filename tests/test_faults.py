"""Faults: a NaN loss stops the run with a message naming the step and the term; checkpoints are written atomically;
a resume skips an unreadable checkpoint for the previous one; a run killed with SIGKILL mid-epoch resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from distill.config import load_recipe
from distill.engine.faults import AtomicCheckpointIO
from distill.engine.pipeline import fit
from distill.engine.runs import last_checkpoint
from distill.errors import DistillError

DISTILL = str(Path(sys.executable).parent / "distill")


class PoisonAt(Callback):
    """Fills the student's first parameter with NaN before training step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(module.student.parameters()).fill_(float("nan"))


def test_a_nan_loss_stops_the_run_naming_the_step_and_terms_and_keeps_the_last_good_checkpoint(recipe_file):
    loaded = load_recipe(str(recipe_file), ["trainer.max_epochs=3", "run.name=nan"])
    steps_per_epoch = -(-1078 // 32)  # digits' training split, batch 32
    with pytest.raises(DistillError) as caught:
        fit(loaded, callbacks=[PoisonAt(steps_per_epoch + 2)])
    message = str(caught.value)
    assert f"training step {steps_per_epoch + 2} (epoch 1): the loss is nan" in message
    assert "not finite: ce = nan, kd = nan" in message and "last good checkpoint is" in message
    assert "\n" not in message
    last = next((Path(loaded.recipe.run.root) / "nan").glob("version_*")) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] == steps_per_epoch  # the end of the last good epoch
    assert all(torch.isfinite(value).all() for value in saved["state_dict"].values())


def test_a_checkpoint_write_that_dies_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dies(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as a kill in the middle of the write

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_resume_skips_an_unreadable_last_checkpoint_for_the_previous_one(recipe_file, capsys):
    run = fit(load_recipe(str(recipe_file), ["trainer.max_epochs=2", "run.name=corrupt"]))
    folder = run.run_dir / "checkpoints"
    previous = torch.load(folder / "previous.ckpt", weights_only=True)
    assert previous["epoch"] == 0  # last.ckpt as it was one save earlier
    (folder / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes()[:1000])  # truncated
    assert last_checkpoint(run.run_dir) == folder / "previous.ckpt"
    assert "cannot read" in capsys.readouterr().out
    (folder / "previous.ckpt").write_bytes(b"junk")
    with pytest.raises(DistillError, match="no readable checkpoint"):
        last_checkpoint(run.run_dir)


# slow (~42 s on 2 cores): SIGKILL mid-epoch; exact resume is also shown by tests/test_resume.py
@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_final_metrics(recipe_file, tmp_path):
    args = [DISTILL, "fit", "--recipe", str(recipe_file), "trainer.max_epochs=5", "data.batch_size=8"]
    full = subprocess.run([*args, "run.name=full"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = subprocess.Popen(
        [*args, "run.name=killed"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    run_dir = Path(recipe_file).parent / "runs" / "killed" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and not (last.is_file() and torch.load(last, weights_only=True)["epoch"] >= 1):
        time.sleep(0.2)
    time.sleep(0.7)  # into the next epoch
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (run_dir / "results.json").exists()
    interrupted_at = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= interrupted_at < 4  # killed before the end

    resumed = subprocess.run([DISTILL, "fit", "--resume", str(run_dir)], capture_output=True, text=True, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = json.loads((Path(recipe_file).parent / "runs" / "full" / "version_0" / "results.json").read_text())
    assert json.loads((run_dir / "results.json").read_text())["test"] == expected["test"]
    final, reference = (
        torch.load(p, weights_only=True) for p in (last, Path(expected["best_checkpoint"]).parent / "last.ckpt")
    )
    for key, value in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key


def test_a_nan_in_amu_names_its_terms(tmp_path):
    from distill.config import from_dict
    from tests.tasks.test_amu_task import amu_recipe

    class PoisonHead(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if trainer.global_step == 2:
                with torch.no_grad():
                    module.student.weight.fill_(float("nan"))

    with pytest.raises(
        DistillError, match=r"training step 2 \(epoch 0\): the loss is nan \(not finite: fused_ce = nan"
    ):
        fit(from_dict(amu_recipe(tmp_path), "test"), callbacks=[PoisonHead()])


def stopped_message(module, loss: torch.Tensor) -> str:
    from types import SimpleNamespace

    from distill.engine.faults import StopOnNonFiniteLoss

    trainer = SimpleNamespace(global_step=5, current_epoch=1, default_root_dir="/nonexistent")
    with pytest.raises(DistillError) as stopped:
        StopOnNonFiniteLoss().on_before_backward(trainer, module, loss)
    assert module.last_parts == {}  # the tensors kept for the message are let go
    return str(stopped.value)


def poison(model: torch.nn.Module) -> None:
    with torch.no_grad():
        model.get_output_embeddings().weight.fill_(float("nan"))


def test_a_nan_in_dpo_names_the_model_whose_log_probabilities_went_bad():
    from distill.tasks.dpo import DPOTask
    from losses import DPOLoss
    from tests.tasks.test_align_distil_task import pair_batch, tiny_llama

    module = DPOTask(tiny_llama(0), tiny_llama(1), DPOLoss())
    poison(module.teacher)  # the reference model
    loss = module.step(pair_batch())["loss"]
    message = stopped_message(module, loss)
    assert "training step 5 (epoch 1): the loss is nan" in message
    assert "dpo = nan, reference_logps: 6 of 6 values" in message and "policy_logps" not in message


def test_a_nan_in_align_distil_names_the_model_whose_logits_went_bad():
    from tests.tasks.test_align_distil_task import batch, make_module

    module = make_module()
    module.logits_mode = "full"
    poison(module.second_teacher)
    loss = module.training_step(batch(), 0)
    message = stopped_message(module, loss)
    vocabulary = module.second_teacher.get_output_embeddings().weight.shape[0]
    assert f"align_distil = nan, second_logits: {2 * 9 * vocabulary} of {2 * 9 * vocabulary} values" in message
    assert "student_logits" not in message and "dpo_logits" not in message


def test_a_nan_in_chunked_align_distil_names_the_model_whose_head_went_bad():
    from tests.tasks.test_align_distil_task import batch, make_module

    module = make_module()
    assert module.chunked()
    poison(module.second_teacher)
    message = stopped_message(module, module.training_step(batch(), 0))
    weights = module.second_teacher.get_output_embeddings().weight.numel()
    assert f"align_distil = nan, second_head: {weights} of {weights} values" in message
    assert "student_" not in message and "dpo_" not in message and "second_hidden" not in message


class ReadsOfTheLoss(Callback):
    """Counts, per training step, the reads of a tensor's value to the host (each one a wait on an accelerator)."""

    def __init__(self) -> None:
        self.reads: list[int] = []  # of each step that ended
        self.started = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        from tests.op_count import OpCount

        self.started += 1
        self.count = OpCount().__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.count.__exit__(None, None, None)
        self.reads.append(self.count.reads)

    def on_exception(self, trainer, module, exception) -> None:
        self.count.__exit__(None, None, None)  # the step that raised never ended: leave no mode behind


def deferred_fit(tmp_path, poisoned_step: int | None, log_every: int = 4, callbacks=()):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from distill.engine.faults import StopOnNonFiniteLoss
    from tests.tasks.test_step_log import loader, make_task

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        log_every_n_steps=log_every,
        logger=CSVLogger(tmp_path, name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StopOnNonFiniteLoss(every_step=False), *callbacks]
        + ([PoisonAt(poisoned_step)] if poisoned_step is not None else []),
    )
    trainer.fit(make_task(), train_dataloaders=loader())  # 10 steps
    return trainer


def test_on_an_accelerator_a_nan_is_found_at_the_next_logging_step_naming_its_own_step(tmp_path):
    seen = ReadsOfTheLoss()
    with pytest.raises(DistillError) as caught:
        deferred_fit(tmp_path, poisoned_step=5, callbacks=[seen])
    assert "training step 5 (epoch 0): the loss is not finite (found at the next check" in str(caught.value)
    assert seen.started == 8  # stopped in step 7, the logging step after step 5 (log_every_n_steps 4)


def test_on_an_accelerator_the_loss_is_read_only_at_logging_steps(tmp_path):
    seen = ReadsOfTheLoss()
    deferred_fit(tmp_path, poisoned_step=None, callbacks=[seen])
    # steps 3 and 7 (every 4th) and 9 (the last): the task's means and the verdicts are read there, once each
    assert [step for step, reads in enumerate(seen.reads) if reads] == [3, 7, 9]
