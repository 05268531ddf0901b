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


def test_distills_checkpoint_callbacks_keep_lightnings_state_key_and_never_save_after_a_batch(tmp_path):
    import pytest
    from lightning.pytorch.callbacks import ModelCheckpoint

    from distill.engine.trainer import EpochCheckpoint

    settings = {"dirpath": tmp_path, "filename": "best", "monitor": "val/acc", "mode": "max"}
    # checkpoints store the callback's state under this key: a resume finds it only if it is Lightning's own
    assert EpochCheckpoint(**settings).state_key == ModelCheckpoint(**settings).state_key
    with pytest.raises(ValueError, match="epoch ends only"):
        EpochCheckpoint(**settings, every_n_train_steps=10)
    trainer = make_trainer({"max_epochs": 1, "accelerator": "cpu"}, tmp_path)
    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert len(checkpoints) == 2 and all(isinstance(c, EpochCheckpoint) for c in checkpoints)
