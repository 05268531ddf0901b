"""The framework's distillation training step against a plain PyTorch loop doing the same work, side by side.

Both run resnet32x4 (teacher, frozen, no autograd) -> resnet8x4 (student) with 0.1 * CE + 0.9 * KD (T = 4) and SGD
(lr 0.05, momentum 0.9, wd 5e-4) on the same 32x32 batches of 64 (random images: the data is not what is timed).
The framework side is `ClassificationTask` under a Lightning Trainer (no logger, checkpointing or progress bar,
which a real run adds once per epoch or per N steps); the step time is the time between consecutive batch starts,
so it includes everything Lightning does between batches. Rounds alternate between the two; the table gives the
median step time of each and their ratio.

    python benchmarks/training_step_overhead.py [--steps 12] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from distill.engine.quiet import quiet_expected_messages
from distill.models import create_model
from distill.tasks.classification import ClassificationTask
from losses import KDLoss

WARMUP = 2  # steps left out of the median (first-call allocations)


def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", num_classes=100, in_chans=3).eval().requires_grad_(False)
    return teacher, create_model("resnet8x4", num_classes=100, in_chans=3)


def gaps(starts: list[float]) -> list[float]:
    """Step times: the gaps between consecutive batch starts (the last ends at the loop's end), warm-up left out."""
    return [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)][WARMUP:]


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


def plain_loop(loader: DataLoader) -> list[float]:
    teacher, student = models()
    student.train()
    optimizer = sgd(student.parameters())
    kd = KDLoss(temperature=4.0)
    starts = []
    for images, labels in loader:
        starts.append(time.perf_counter())
        with torch.no_grad():
            teacher_logits = teacher(images)
        logits = student(images)
        loss = 0.1 * F.cross_entropy(logits, labels) + 0.9 * kd(logits, teacher_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    starts.append(time.perf_counter())
    return gaps(starts)


class BatchStarts(Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, module) -> None:
        self.starts.append(time.perf_counter())


def framework(loader: DataLoader) -> list[float]:
    teacher, student = models()
    module = ClassificationTask(
        student, teacher, num_classes=100, terms={"kd": (0.9, KDLoss(temperature=4.0))}, ce_weight=0.1, optimizer=sgd
    )
    return step_times(module, loader)


def step_times(module: L.LightningModule, loader: DataLoader) -> list[float]:
    """The step times of one epoch of `module` on `loader` under a bare Lightning Trainer (CPU, no logger,
    checkpoints or progress bar), warm-up left out."""
    starts = BatchStarts()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[starts],
    )
    trainer.fit(module, train_dataloaders=loader)
    return gaps(starts.starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="batches per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_expected_messages()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.steps * 64, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 100, (args.steps * 64,), generator=generator)
    loader = DataLoader(TensorDataset(images, labels), batch_size=64, shuffle=False)
    times: dict[str, list[float]] = {"plain loop": [], "framework": []}
    for _ in range(args.rounds):
        times["plain loop"] += plain_loop(loader)
        times["framework"] += framework(loader)
    plain, ours = (statistics.median(times[k]) for k in ("plain loop", "framework"))
    steps = len(times["framework"])
    print(f"resnet32x4 -> resnet8x4, batch 64, 32x32, CPU, {args.threads} threads, {steps} steps each")
    print(f"{'':12} {'median step (ms)':>18}")
    print(f"{'plain loop':12} {plain * 1e3:18.1f}")
    print(f"{'framework':12} {ours * 1e3:18.1f}")
    print(f"framework / plain loop: {ours / plain:.3f}")


if __name__ == "__main__":
    main()
