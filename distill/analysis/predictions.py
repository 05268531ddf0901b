"""What the notebooks (and users) look at after a run: predictions of a trained student, calibration, and how the
distillation losses respond as a student moves away from its teacher. No plotting here (see
distill.analysis.plots)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.engine.pipeline import restore
from distill.engine.run_folder import RunFolder
from losses import DKDLoss, KDLoss, PlackettLuceLoss, TokenDivergenceLoss, ZScoreKDLoss


@dataclass
class Predictions:
    """Softmax outputs `[N, C]` of the student (and of its teacher, when the run had one) on a split, and labels."""

    student: torch.Tensor
    labels: torch.Tensor
    teacher: torch.Tensor | None = None

    @property
    def accuracy(self) -> float:
        return (self.student.argmax(1) == self.labels).float().mean().item()

    @property
    def agreement(self) -> float | None:
        if self.teacher is None:
            return None
        return (self.student.argmax(1) == self.teacher.argmax(1)).float().mean().item()


@torch.no_grad()
def run_predictions(run_dir: str | Path, split: str = "test") -> Predictions:
    """The best student of a classification run (and the teacher it learned from) on the run's `split`, rebuilt
    from its folder."""
    restored = restore(RunFolder(run_dir).checkpoint("best"))
    module, data = restored.module.eval(), restored.data
    dataset = {"val": data.val_set, "test": data.test_set, "train": data.train_set}[split]
    samples = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([int(label) for _, label in samples])
    teacher = module.teacher(images).softmax(1) if module.teacher is not None else None
    return Predictions(module.student(images).softmax(1), labels, teacher)


@dataclass
class Reliability:
    """Per confidence bin: mean confidence, accuracy and sample count; `ece` the expected calibration error."""

    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor
    ece: float


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> Reliability:
    """Equal-width confidence bins over [0, 1] of the top-1 probability; empty bins get NaN confidence/accuracy."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).float()
    which = (confidence * bins).long().clamp(max=bins - 1)
    count = torch.bincount(which, minlength=bins).float()
    mean_conf = torch.zeros(bins).index_add_(0, which, confidence) / count
    mean_acc = torch.zeros(bins).index_add_(0, which, correct) / count
    ece = (count / len(labels) * (mean_conf - mean_acc).abs()).nan_to_num().sum().item()
    return Reliability(mean_conf, mean_acc, count.long(), ece)


def divergence_curves(
    teacher_logits: torch.Tensor,
    direction: torch.Tensor,
    steps: torch.Tensor,
    target: torch.Tensor,
    normalize: bool = False,
) -> dict[str, torch.Tensor]:
    """Each loss's value for students `teacher + s * direction` (s in `steps`), the teacher's own label `target`.

    Returns `{loss name: [len(steps)]}` for KD (T 4), Z-score KD (T 2), PLD, DKD (after warm-up), forward and
    reverse KL, JSD and TVD (token divergences at T 1); with `normalize`, each curve divided by its maximum (their
    scales differ by orders of magnitude: DKD's beta = 8 weighs its non-target part heavily)."""
    losses = {
        "KD (T=4)": lambda s, t: KDLoss(temperature=4.0)(s, t),
        "Z-score KD (T=2)": lambda s, t: ZScoreKDLoss(temperature=2.0)(s, t),
        "PLD": lambda s, t: PlackettLuceLoss(temperature=1.0)(s, t, target),
        "DKD": lambda s, t: DKDLoss(warmup_epochs=0)(s, t, target, epoch=1),
        **{
            name: (
                lambda s, t, d=divergence: TokenDivergenceLoss(divergence=d)(
                    s[:, None],
                    t[:, None],
                    torch.zeros(len(s), 1, dtype=torch.long),  # every position counted
                )
            )
            for name, divergence in (
                ("forward KL", "forward_kl"),
                ("reverse KL", "reverse_kl"),
                ("JSD", "jsd"),
                ("TVD", "tvd"),
            )
        },
    }
    curves: dict[str, list[float]] = {name: [] for name in losses}
    for step in steps.tolist():
        student = teacher_logits + step * direction
        for name, loss in losses.items():
            curves[name].append(float(loss(student, teacher_logits)))
    result = {name: torch.tensor(values) for name, values in curves.items()}
    return {name: v / v.max() for name, v in result.items()} if normalize else result


def plackett_luce_weights(teacher_logits: torch.Tensor, target: int, temperature: float = 1.0) -> dict[str, list]:
    """For one sample: the teacher's ranking (label first) and each rank's weight `softmax(t / T)` in that order."""
    from losses.plackett_luce import teacher_ranking

    ranking = teacher_ranking(teacher_logits[None], torch.tensor([target]))[0]
    weights = F.softmax(teacher_logits / temperature, dim=-1)[ranking]
    return {"ranking": ranking.tolist(), "weights": weights.tolist()}


def logged(run_dir: str | Path, metric: str, x: str = "epoch") -> tuple[list[int], list[float]]:
    """`(x values, metric values)` of a metric in a run's CSV log (`logs/metrics.csv`), in logging order; `x` is
    "epoch" or "step"."""
    import csv

    with open(Path(run_dir) / "logs" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get(metric)]
    return [int(row[x]) for row in rows], [float(row[metric]) for row in rows]
