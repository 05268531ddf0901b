"""The Trainer a run gets: the progress bar shows the run's metrics without Lightning's `v_num` (the logger's
version, which is the run folder's `logs`, not news to the user)."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from distill.data import create_datamodule
from distill.engine.trainer import make_trainer
from distill.models import create_model
from distill.tasks.classification import ClassificationTask


class SeeBar(Callback):
    def __init__(self) -> None:
        self.shown: dict = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.shown = trainer.progress_bar_callback.get_metrics(trainer, module)


def test_the_progress_bar_has_no_v_num(tmp_path):
    see = SeeBar()
    args = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "accelerator": "cpu"}
    trainer = make_trainer(args, tmp_path, callbacks=[see])
    assert trainer.progress_bar_callback is not None
    student = create_model("convnet", num_classes=10, in_chans=1, widths=[4, 4], hidden=0)
    trainer.fit(ClassificationTask(student, None, num_classes=10), datamodule=create_datamodule("digits"))
    assert "train/loss" in see.shown and "v_num" not in see.shown
