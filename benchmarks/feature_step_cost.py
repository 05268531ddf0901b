"""What each feature term costs per training step, against KD alone, side by side in one process.

Every variant trains resnet8x4 from resnet32x4 (frozen) with the loss section of its bundled CIFAR-100 recipe
(`kd_cifar100`, `fitnet_cifar100`, ..., `crd_cifar100`: the official weights, layers and CRD's 16384 negatives over a
memory of the 50,000 training images) and SGD, on the same 32x32 batches of 64 (random images: the data is not what
is timed). Each is a whole `ClassificationTask` training step under a Lightning Trainer (teacher forward with its
layers read, student forward, the terms, backward, optimizer step); the step time is the gap between consecutive
batch starts. Rounds run every variant in turn; the table gives each variant's median step, its ratio to KD's
median, and the spread of that ratio over the rounds (per-round medians), so the noise shows.

    python benchmarks/feature_step_cost.py [--steps 8] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.utils.data import DataLoader, TensorDataset
from training_step_overhead import WARMUP, step_times  # the same timed Trainer loop (run from benchmarks/)

from distill.config import load_recipe
from distill.engine.quiet import quiet_expected_messages
from distill.models import create_model
from distill.tasks.classification import ClassificationTask
from distill.tasks.feature_terms import build_feature_terms, reads_features
from distill.tasks.loss_terms import LOSSES, build_terms

VARIANTS = ("kd", "fitnet", "at", "sp", "rkd", "pkt", "crd", "reviewkd")
CIFAR_TRAIN = 50_000


def task(variant: str) -> ClassificationTask:
    """The variant's recipe terms on resnet32x4 -> resnet8x4, built as `distill fit` builds them."""
    recipe = load_recipe(f"{variant}_cifar100").recipe
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", num_classes=100, in_chans=3)
    student = create_model("resnet8x4", num_classes=100, in_chans=3)
    specs = recipe.loss.terms
    features = {name: spec for name, spec in specs.items() if reads_features(LOSSES.get(spec["loss"]))}
    terms = build_terms({name: spec for name, spec in specs.items() if name not in features})

    def probe(model, device, dtype):
        return model(torch.zeros(2, 3, 32, 32, device=device, dtype=dtype))

    terms |= build_feature_terms(features, LOSSES.get, student, teacher, probe, CIFAR_TRAIN)
    optimizer = lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)  # noqa: E731
    return ClassificationTask(
        student, teacher, num_classes=100, terms=terms, ce_weight=recipe.loss.ce_weight, optimizer=optimizer
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="batches per round and variant")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all variants")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; kd is always run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_expected_messages()
    variants = ["kd", *[v for v in args.variants.split(",") if v != "kd"]]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.steps * 64, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 100, (args.steps * 64,), generator=generator)
    indices = torch.arange(args.steps * 64)  # CRD's memory rows
    loader = DataLoader(TensorDataset(images, labels, indices), batch_size=64, shuffle=False)
    rounds: dict[str, list[list[float]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            rounds[variant].append(step_times(task(variant), loader))
    kd_all = statistics.median(t for r in rounds["kd"] for t in r)
    print(f"resnet32x4 -> resnet8x4, batch 64, 32x32, CPU, {args.threads} threads, {args.rounds} rounds x ", end="")
    print(f"{args.steps - WARMUP} steps per variant")
    print(f"{'variant':10} {'median step (ms)':>17} {'/ KD':>7} {'per-round / KD':>20}")
    for variant in variants:
        median = statistics.median(t for r in rounds[variant] for t in r)
        pairs = zip(rounds[variant], rounds["kd"], strict=True)
        per_round = [statistics.median(r) / statistics.median(k) for r, k in pairs]
        spread = f"{min(per_round):.2f} .. {max(per_round):.2f}"
        print(f"{variant:10} {median * 1e3:17.1f} {median / kd_all:7.2f} {spread:>20}")


if __name__ == "__main__":
    main()
