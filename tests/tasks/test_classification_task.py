"""The distillation module: teacher hygiene, student-only checkpoints, named loss parts, weights applied."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from distill.data import create_datamodule
from distill.models import create_model
from distill.tasks.classification import ClassificationTask
from losses import CLASS_LOGITS, TOKEN_LOGITS, Consumes, KDLoss, TokenDivergenceLoss


class ScaledKD(nn.Module):
    """A loss term with a trainable parameter, to check that such parameters are trained and checkpointed."""

    consumes = Consumes(CLASS_LOGITS)

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.kd = KDLoss(temperature=2.0)

    def forward(self, student_logits, teacher_logits, target=None):
        return self.kd(student_logits * self.log_scale.exp(), teacher_logits)


class TeacherWatch(Callback):
    """Records whether the teacher was ever in training mode or had gradients during a training step."""

    def __init__(self) -> None:
        self.teacher_training_seen = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.teacher_training_seen |= module.teacher.training
        assert all(p.grad is None for p in module.teacher.parameters())


def make_module(teacher: nn.Module | None = None, **kwargs) -> ClassificationTask:
    torch.manual_seed(0)
    student = create_model("convnet", num_classes=10, in_chans=1, widths=[4, 8], hidden=0)
    terms = {"kd": (0.9, KDLoss(temperature=4.0)), "scaled": (0.5, ScaledKD())} if teacher is not None else {}
    defaults = dict(
        student=student,
        teacher=teacher,
        num_classes=10,
        terms=terms,
        ce_weight=0.1,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        sources={"teacher": {"weights": "teacher.pt"}},
        recipe={"seed": 0},
    )
    return ClassificationTask(**{**defaults, **kwargs})


def make_teacher() -> nn.Module:
    torch.manual_seed(1)
    teacher = create_model("convnet", num_classes=10, in_chans=1, widths=[8, 16], hidden=16)
    # non-trivial BatchNorm statistics, so that a teacher left in train mode would change them
    with torch.no_grad():
        teacher(torch.randn(64, 1, 8, 8) * 3 + 1)
    return teacher


def fit(module: ClassificationTask, tmp_path, callbacks=(), max_epochs=1) -> L.Trainer:
    data = create_datamodule("digits", batch_size=32)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        limit_train_batches=6,
        limit_val_batches=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=data)
    return trainer


def test_teacher_weights_and_batchnorm_buffers_are_unchanged_after_fit(tmp_path):
    teacher = make_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = make_module(teacher)
    watch = TeacherWatch()
    trainer = fit(module, tmp_path, callbacks=[watch])
    after = teacher.state_dict()
    assert set(before) == set(after) and any("running_mean" in k for k in before)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert not watch.teacher_training_seen
    assert not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized.isdisjoint(id(p) for p in teacher.parameters())
    assert id(module.terms["scaled"].log_scale) in optimized  # trainable loss parameters are trained
    assert module.terms["scaled"].log_scale.item() != 0.0


def test_train_mode_keeps_the_teacher_in_eval_mode():
    module = make_module(make_teacher())
    module.train()
    assert module.student.training and not module.teacher.training


def test_checkpoint_holds_the_student_and_loss_parameters_but_no_teacher(tmp_path):
    module = make_module(make_teacher())
    trainer = fit(module, tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert keys and not any(k.startswith("teacher.") for k in keys)
    assert {k.split(".")[0] for k in keys} == {"student", "terms"}
    assert "terms.scaled.log_scale" in keys
    assert checkpoint["distill"] == {
        "sources": {"teacher": {"weights": "teacher.pt"}},
        "recipe": {"seed": 0},
        "data_record": None,  # built here without the engine, which passes what the models took from the data
    }

    fresh_teacher = make_teacher()
    restored = make_module(fresh_teacher)
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])  # strict: the teacher is supplied by the module itself
    for key, value in module.student.state_dict().items():
        assert torch.equal(value, restored.student.state_dict()[key])


def test_loss_parts_are_logged_by_name_and_weighted_explicitly(tmp_path):
    module = make_module(make_teacher())
    trainer = fit(module, tmp_path)
    for name in ("train/loss", "train/ce", "train/kd", "train/scaled", "train/acc", "val/acc", "val/agreement"):
        assert name in trainer.callback_metrics, name
    assert "val/teacher_acc" in trainer.callback_metrics  # logged in the first validation epoch

    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    student_logits, teacher_logits = module.student(x), module.teacher_logits(x)
    parts = module.loss_parts(student_logits, teacher_logits, y)
    expected_ce = F.cross_entropy(student_logits, y)
    expected_kd = KDLoss(temperature=4.0)(student_logits, teacher_logits)
    assert torch.allclose(parts["ce"], expected_ce) and torch.allclose(parts["kd"], expected_kd)
    expected = 0.1 * expected_ce + 0.9 * expected_kd + 0.5 * parts["scaled"]
    assert torch.allclose(module.total_loss(parts), expected)


def test_ce_weight_zero_drops_the_cross_entropy_term():
    module = make_module(make_teacher(), ce_weight=0.0)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    assert "ce" not in module.loss_parts(module.student(x), module.teacher_logits(x), y)


def test_student_alone_trains_on_cross_entropy_only(tmp_path):
    module = make_module(None, ce_weight=1.0)
    trainer = fit(module, tmp_path)
    assert "train/ce" in trainer.callback_metrics and "train/kd" not in trainer.callback_metrics
    assert "val/agreement" not in trainer.callback_metrics


def test_terms_without_a_teacher_are_refused():
    with pytest.raises(ValueError, match="need a teacher"):
        make_module(None, terms={"kd": (1.0, KDLoss())})


def test_loss_goes_down_on_a_fixed_batch():
    module = make_module(make_teacher())
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(40):
        loss = module.total_loss(module.loss_parts(module.student(x), module.teacher_logits(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


class EpochAwareTerm(nn.Module):
    """Records the epoch it is given (like DKD's warm-up), which it declares it takes."""

    consumes = Consumes(CLASS_LOGITS, extra=("epoch",))

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, student_logits, teacher_logits, target, epoch=None):
        self.seen.append(epoch)
        return student_logits.sum() * 0.0


def test_terms_that_take_the_epoch_receive_it_one_based(tmp_path):
    term = EpochAwareTerm()
    module = make_module(make_teacher(), terms={"kd": (1.0, KDLoss()), "aware": (1.0, term)})
    fit(module, tmp_path, max_epochs=2)
    assert sorted(set(term.seen)) == [1, 2]


def test_a_term_the_task_cannot_feed_is_refused_when_built():
    with pytest.raises(ValueError, match="token_kl consumes token_logits; ClassificationTask feeds"):
        make_module(make_teacher(), terms={"token_kl": (1.0, TokenDivergenceLoss())})


class Undeclared(nn.Module):
    def forward(self, student_logits, teacher_logits, target=None):
        return student_logits.sum() * 0.0


def test_a_term_that_does_not_declare_what_it_consumes_is_refused():
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="does not declare what it consumes"):
        make_module(make_teacher(), terms={"mine": (1.0, Undeclared())})


class TargetOnly(nn.Module):
    """Declares the class-logit kind without extras: it is called without the epoch."""

    consumes = Consumes(CLASS_LOGITS)

    def forward(self, student_logits, teacher_logits, target):
        assert target.dtype == torch.long
        return student_logits.sum() * 0.0


def test_inputs_follow_the_declared_kind_not_the_signature(tmp_path):
    module = make_module(make_teacher(), terms={"target_only": (1.0, TargetOnly())})
    trainer = fit(module, tmp_path)
    assert "train/target_only" in trainer.callback_metrics
    assert TOKEN_LOGITS not in {term.consumes.kind for term in module.terms.values()}
