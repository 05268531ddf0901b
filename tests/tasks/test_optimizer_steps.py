"""The per-step schedule counts the optimizer steps from the training loader's length and the Trainer's public
settings, instead of `Trainer.estimated_stepping_batches` (which builds Lightning's own loader and draws from it
before a resumed run restores its epoch). The two must agree: if a Lightning release changes its rules, this fails."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from distill.data import create_datamodule
from distill.tasks.base import DistillationTask, optimizer_steps


class Counting(DistillationTask):
    def __init__(self) -> None:
        super().__init__(nn.Linear(64, 10))
        self.counts: list[tuple[int, int]] = []

    def configure_optimizers(self):
        ours = optimizer_steps(self.trainer)
        self.counts.append((ours[1], int(self.trainer.estimated_stepping_batches)))
        self.counts.append(ours)
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.student(x.flatten(1)), y)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_epochs": 3},
        {"max_epochs": 2, "accumulate_grad_batches": 3},
        {"max_epochs": 2, "limit_train_batches": 5},
        {"max_epochs": 2, "limit_train_batches": 0.5, "accumulate_grad_batches": 2},
        {"max_epochs": 4, "max_steps": 7},
        {"max_epochs": -1, "max_steps": 5},
    ],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_our_count_equals_lightnings(settings, tmp_path):
    module = Counting()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        **settings,
    )
    trainer.fit(module, datamodule=create_datamodule("digits", batch_size=50))  # 1077 training digits: 22 batches
    (total, lightning), (per_epoch, _) = module.counts
    assert total == lightning
    expected_batches = {5: 5, 0.5: 11}.get(settings.get("limit_train_batches"), 22)
    assert per_epoch == -(-expected_batches // settings.get("accumulate_grad_batches", 1))
