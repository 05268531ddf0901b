"""Accepted length against online training (SpecVLM's training-time scaling): a draft distilled online from the
tiny offline targets, measured before training and after every epoch with several draft shapes (chains and
EAGLE-2 trees), on the run's held-out prompts.

    python benchmarks/draft_scaling.py [--targets llm vlm] [--epochs 5] [--batches 100] [--shapes 4 5x4x16 6x8x32]
        [--root runs/draft_scaling]

`llm` is `specvlm_draft_tiny` (a byte-level Llama trained on Python's docstrings), `vlm` is `specvlm_draft_tiny_vlm`
(a LLaVA-style model captioning generated images). Each target is trained once into the store under `--root` and
reused by later runs. A shape is `D` (a chain of D tokens), `DxK` (a tree of D levels and top-k K, every node
verified) or `DxKxN` (its N best nodes). Each row is printed the moment it is measured, then one table per target:
accepted length by epoch and shape. The speedups measured on the CPU with these tiny targets are below 1 (their
decoding is not bound by reading weights): the accepted length is what this shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from distill.analysis.draft_run import AcceptedLengths
from distill.config import load_recipe
from distill.engine.pipeline import fit
from distill.engine.quiet import quiet_expected_messages

RECIPES = {"llm": "specvlm_draft_tiny", "vlm": "specvlm_draft_tiny_vlm"}


def scaling(target: str, args: argparse.Namespace) -> AcceptedLengths:
    lengths = AcceptedLengths(args.shapes, show=True)
    overrides = [
        f"run.root={args.root}",
        f"teacher.store={args.root / 'teachers'}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.limit_train_batches={args.batches}",
        f"speculative.prompts={args.prompts}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "teacher.train.trainer.enable_progress_bar=false",
        "teacher.train.trainer.enable_model_summary=false",
    ]
    print(f"{target}: {RECIPES[target]}, {args.epochs} epochs of {args.batches} batches", flush=True)
    fit(load_recipe(RECIPES[target], overrides + args.overrides), callbacks=[lengths])
    return lengths


def table(target: str, lengths: AcceptedLengths) -> None:
    curves = lengths.curves()
    epochs = sorted({epoch for xs, _ in curves.values() for epoch in xs})
    print(f"\n{target}: accepted length (tokens per round) after E epochs of online training")
    print(f"{'shape':>8} " + " ".join(f"{f'E={e}':>7}" for e in epochs))
    for shape, (xs, ys) in curves.items():
        by_epoch = dict(zip(xs, ys, strict=True))
        print(f"{shape:>8} " + " ".join(f"{by_epoch.get(e, float('nan')):7.3f}" for e in epochs), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["llm", "vlm"], choices=sorted(RECIPES))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=100, help="training batches per epoch")
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts decoded at each measurement")
    parser.add_argument("--shapes", nargs="+", default=["4", "5x4x16", "6x8x32"])
    parser.add_argument("--root", type=Path, default=Path("runs/draft_scaling"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="more recipe overrides, key=value")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(args.threads)
    quiet_expected_messages()
    print(" ".join(["python", "benchmarks/draft_scaling.py", *sys.argv[1:]]), flush=True)
    results = {target: scaling(target, args) for target in args.targets}
    for target, lengths in results.items():
        table(target, lengths)


if __name__ == "__main__":
    main()
