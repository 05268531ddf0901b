"""What a training step logs: the means written at Lightning's logging steps (the rows, their step numbers and
`epoch`, one per optimizer step when gradients accumulate), the epoch's training accuracy, and no tensor kept
beyond its step's need."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from distill.models import create_model
from distill.tasks import step_log
from distill.tasks.classification import ClassificationTask
from distill.tasks.step_log import StepMeans, TrainingAccuracy
from losses import KDLoss


def make_task(cls: type[ClassificationTask] = ClassificationTask) -> ClassificationTask:
    torch.manual_seed(0)
    teacher = create_model("mlp", num_classes=5, in_features=12, hidden=[16])
    student = create_model("mlp", num_classes=5, in_features=12, hidden=[8])
    return cls(
        student,
        teacher,
        num_classes=5,
        terms={"kd": (0.7, KDLoss(temperature=2.0))},
        ce_weight=0.3,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )


def loader(samples: int = 40, batch: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(samples, 12, generator=generator), torch.randint(0, 5, (samples,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def fit(task: ClassificationTask, tmp_path, **trainer_args) -> tuple[L.Trainer, list[dict[str, str]]]:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=trainer_args.pop("max_epochs", 2),
        logger=CSVLogger(tmp_path, name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_args,
    )
    trainer.fit(task, train_dataloaders=loader())
    return trainer, read_rows(tmp_path / "metrics.csv")


class Recording(ClassificationTask):
    """The task, recording each step's logged values and logging through Lightning, at every step, the batch's
    own number: Lightning's row for a step then carries the step number it gives that step."""

    recorded: list[dict[str, float]]

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.recorded.append(
            {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in self.last_parts.items()}}
        )
        self.log("ref/batch", float(len(self.recorded) - 1), on_step=True, on_epoch=False)
        return loss


def recording_task() -> Recording:
    task = make_task(Recording)
    task.recorded = []
    return task


def test_each_row_holds_the_means_of_the_steps_since_the_last_row_at_lightnings_step_number(tmp_path):
    task = recording_task()
    _, rows = fit(task, tmp_path, log_every_n_steps=3)  # 10 batches an epoch, 2 epochs
    ours = [row for row in rows if row.get("train/loss")]
    # logging steps 2, 5, 8 and the epoch's last batch 9; the same in the second epoch (steps 12, 15, 18, 19)
    assert [int(row["step"]) for row in ours] == [2, 5, 8, 9, 11, 14, 17, 19]
    assert [int(row["epoch"]) for row in ours] == [0, 0, 0, 0, 1, 1, 1, 1]
    bounds = [0, 3, 6, 9, 10, 12, 15, 18, 20]
    for row, start, end in zip(ours, bounds, bounds[1:], strict=False):
        steps = task.recorded[start:end]
        for name in ("loss", "ce", "kd"):
            expected = sum(step[name] for step in steps) / len(steps)
            assert float(row[f"train/{name}"]) == pytest.approx(expected, rel=1e-6), (row["step"], name)
    # Lightning's own rows for the same batches carry the same step numbers
    lightning_steps = {int(float(row["ref/batch"])): int(row["step"]) for row in rows if row.get("ref/batch")}
    for row, end in zip(ours, bounds[1:], strict=False):
        if end - 1 in lightning_steps:
            assert lightning_steps[end - 1] == int(row["step"])


def test_accumulated_gradients_give_one_row_per_optimizer_step(tmp_path):
    task = recording_task()
    _, rows = fit(task, tmp_path, log_every_n_steps=2, accumulate_grad_batches=2, max_epochs=1)
    ours = [row for row in rows if row.get("train/loss")]
    steps = [int(row["step"]) for row in ours]
    assert steps == sorted(set(steps)), steps  # no step written twice
    # optimizer steps 0..4 (two batches each): rows at the 2nd and 4th optimizer steps and the last batch
    assert steps == [1, 3, 4]
    first = task.recorded[:4]  # the four batches of the first two optimizer steps
    assert float(ours[0]["train/loss"]) == pytest.approx(sum(s["loss"] for s in first) / 4, rel=1e-6)


def test_the_epoch_end_values_reach_the_callback_metrics_and_the_progress_bar(tmp_path):
    task = recording_task()
    trainer, _ = fit(task, tmp_path, log_every_n_steps=50, max_epochs=1)
    expected = sum(step["loss"] for step in task.recorded) / len(task.recorded)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(expected, rel=1e-6)
    assert task.progress_values == {"train/loss": pytest.approx(expected, rel=1e-6)}
    assert {"train/ce", "train/kd", "train/acc"} <= set(trainer.callback_metrics)


def test_training_accuracy_counts_every_sample_once_whether_logits_or_classes_are_kept(monkeypatch):
    monkeypatch.setattr(step_log, "FOLD_EVERY", 3)  # folds inside the epoch as well as at its end
    generator = torch.Generator().manual_seed(0)
    sizes = (4, 4, 4, 4, 4, 4, 4, 3)
    batches = [(torch.randn(n, 5, generator=generator), torch.randint(0, 5, (n,), generator=generator)) for n in sizes]
    expected = sum(int((logits.argmax(-1) == y).sum()) for logits, y in batches) / 31
    for keep in (True, False):
        accuracy = TrainingAccuracy(keep_logits=keep)
        for logits, y in batches:
            accuracy.add(logits, y)
        assert float(accuracy.take()) == pytest.approx(expected)
        assert float(accuracy.take()) == 0.0  # restarted


def test_training_accuracy_bounds_the_logits_it_keeps(monkeypatch):
    monkeypatch.setattr(step_log, "KEEP_ELEMENTS", 50)
    accuracy = TrainingAccuracy()
    for _ in range(5):
        accuracy.add(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))  # 20 elements a step
        assert accuracy.kept_elements <= 50
    assert accuracy.seen == 12  # three steps folded so far


def test_step_means_fold_without_losing_a_step_and_keep_no_graph(monkeypatch):
    monkeypatch.setattr(step_log, "FOLD_EVERY", 4)
    means = StepMeans()
    weight = torch.ones((), requires_grad=True)
    values = [float(i) for i in range(10)]
    for value in values:
        means.add({"loss": weight * value, "part": torch.tensor(value, dtype=torch.bfloat16)})
        assert all(not kept.requires_grad for kept in means.pending)
        assert len(means.pending) <= 2 * 4
    assert means.take() == {"loss": pytest.approx(4.5), "part": pytest.approx(4.5)}
    assert means.take() == {}


def test_a_step_with_other_terms_starts_the_means_over():
    means = StepMeans()
    means.add({"loss": torch.tensor(1.0)})
    means.add({"loss": torch.tensor(3.0), "late": torch.tensor(5.0)})
    assert means.take() == {"loss": 3.0, "late": 5.0}


def test_evaluation_logs_each_metric_once_an_epoch_with_its_value_over_every_sample(tmp_path):
    import torch.nn.functional as F

    task = make_task()
    calls = []
    original = task.log
    task.log = lambda name, *args, **kwargs: calls.append(name) or original(name, *args, **kwargs)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    data = loader(samples=42, batch=8)  # the last batch has 2 samples: a mean of batch means would be off
    (metrics,) = trainer.validate(task, dataloaders=data, verbose=False)
    x, y = data.dataset.tensors
    with torch.no_grad():
        student, teacher = task.student(x), task.teacher(x)
    assert metrics["val/loss"] == pytest.approx(float(F.cross_entropy(student, y)), rel=1e-6)
    assert metrics["val/acc"] == pytest.approx(float((student.argmax(1) == y).float().mean()))
    assert metrics["val/agreement"] == pytest.approx(float((student.argmax(1) == teacher.argmax(1)).float().mean()))
    assert metrics["val/teacher_acc"] == pytest.approx(float((teacher.argmax(1) == y).float().mean()))
    assert sorted(calls) == ["val/acc", "val/agreement", "val/loss", "val/teacher_acc"]  # once each, not per batch
    calls.clear()
    (again,) = trainer.validate(task, dataloaders=data, verbose=False)  # another epoch, from a fresh start
    assert sorted(calls) == ["val/acc", "val/agreement", "val/loss"]  # the teacher's accuracy is measured once
    assert again["val/loss"] == pytest.approx(metrics["val/loss"], rel=1e-6)
