"""Epoch time of CIFAR-100 distillation (resnet32x4 -> resnet8x4, KD) with the teacher-output cache, against the
online teacher and against training the student alone, measured side by side through `distill`'s own pipeline.

The data is a generated CIFAR-100 in the official file format (n images, 32x32), kept on the device
(`data.on_device`). Each setting trains `--epochs` epochs without validation; an epoch's time runs from its start
to its end (callback), and the table gives the median over the epochs after the first, over `--rounds` rounds
that alternate the settings. The cache is filled once by a run of its own (reported too), then read.
On a GPU (`--accelerator gpu`) the table adds images/s and the projected time of the 240-epoch protocol on the
50,000 CIFAR-100 training images.

    python benchmarks/cifar_epoch_time.py                      # CPU, 640 images
    python benchmarks/cifar_epoch_time.py --accelerator gpu --images 50000 --precision bf16-mixed --channels-last
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from distill.config import from_dict
from distill.data.synthetic import write_fake_cifar100
from distill.engine.pipeline import fit
from distill.engine.quiet import quiet_expected_messages
from distill.models import create_model

PROTOCOL_EPOCHS, CIFAR_TRAIN = 240, 50_000


class EpochTimes(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)


def recipe(root: Path, args: argparse.Namespace, name: str, teacher: bool, cache: bool) -> dict:
    raw = {
        "seed": 0,
        "run": {"root": str(root / "runs"), "name": name},
        "data": {"name": "cifar100", "root": str(root / "data"), "batch_size": 64, "num_workers": 0, "on_device": True},
        "student": {"name": "resnet8x4"},
        "speed": {"channels_last": args.channels_last},
        "loss": {"ce_weight": 1.0, "terms": {}},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "scheduler": {"name": "constant"},
        "trainer": {
            "max_epochs": args.epochs,
            "accelerator": args.accelerator,
            "devices": 1,
            "precision": args.precision,
            "limit_val_batches": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 50,
        },
    }
    if teacher:
        raw["teacher"] = {"model": {"name": "resnet32x4"}, "checkpoint": str(root / "teacher.pt")}
        if cache:
            raw["teacher"]["cache"] = str(root / "cache")
        raw["loss"] = {"ce_weight": 0.1, "terms": {"kd": {"weight": 0.9, "temperature": 4.0}}}
    return raw


def timed(root: Path, args: argparse.Namespace, name: str, teacher: bool, cache: bool) -> list[float]:
    times = EpochTimes()
    fit(from_dict(recipe(root, args, name, teacher, cache), "benchmark"), callbacks=[times])
    return times.times[1:]  # the first epoch pays for start-up (and on a GPU, the copy of the data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--images", type=int, default=640, help="generated training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # every row the moment it is measured, into a file too
    quiet_expected_messages()
    root = Path(tempfile.mkdtemp(prefix="cifar_epoch_time_"))
    write_fake_cifar100(root / "data", n_train=args.images, n_test=64, seed=0)
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet32x4", num_classes=100, in_chans=3).state_dict()}, root / "teacher.pt")
    print(f"per run, the epochs after the first (s), {args.images} images/epoch, {args.accelerator}:")
    filling = timed(root, args, "filling", teacher=True, cache=True)
    print(f"filling the cache: {', '.join(f'{t:.2f}' for t in filling)}", flush=True)
    times: dict[str, list[float]] = {"student alone": [], "online teacher": [], "cached teacher": []}
    settings = (("student alone", "alone", False, False), ("online teacher", "online", True, False))
    for round_ in range(args.rounds):
        for name, tag, teacher, cache in (*settings, ("cached teacher", "cached", True, True)):
            epochs = timed(root, args, f"{tag}{round_}", teacher=teacher, cache=cache)
            times[name] += epochs
            print(f"round {round_ + 1}, {name}: {', '.join(f'{t:.2f}' for t in epochs)}", flush=True)
    print()
    medians = {k: statistics.median(v) for k, v in times.items()}
    medians["filling the cache"] = statistics.median(filling)
    alone = medians["student alone"]
    print(
        f"resnet32x4 -> resnet8x4, KD, {args.images} images/epoch, batch 64, {args.accelerator}, {args.precision}"
        f"{', channels_last' if args.channels_last else ''}"
    )
    header = f"{'':20} {'epoch (s)':>10} {'/ alone':>8} {'images/s':>10} {'240 epochs x 50k (h)':>22}"
    print(header)
    for name, seconds in medians.items():
        rate = args.images / seconds
        projected = PROTOCOL_EPOCHS * CIFAR_TRAIN / rate / 3600
        print(f"{name:20} {seconds:10.2f} {seconds / alone:8.3f} {rate:10.0f} {projected:22.2f}")
    print(
        f"cached / student alone: {medians['cached teacher'] / alone:.3f}; "
        f"online / cached: {medians['online teacher'] / medians['cached teacher']:.3f}"
    )


if __name__ == "__main__":
    main()
