"""Speculative decoding with a trained draft vs plain greedy decoding, side by side, on held-out prompts.

Run after `distill fit --recipe specvlm_draft_tiny` (from the same folder, so the run and its stored target are found):
`python benchmarks/speculative_decoding.py runs/specvlm_draft_tiny/version_0`. Prints, for each draft shape (a chain
of D tokens, `D`; an EAGLE-2 tree of D levels and top-k K, `DxK`, keeping its N best nodes, `DxKxN`), the accepted
length (tokens per verification round, accepted drafts + 1), the wall-clock time of greedy and speculative decoding
of the same prompts in this run and their ratio (the speedup), and whether every output equals greedy's.
Each prompt is decoded greedily, then speculatively, alternately, after one warm-up of each, so load changes on the
machine affect both. Also prints the same for the untrained draft (the run's `init`: fresh weights).
`--device cuda` decodes on the GPU (target, drafts and prompts moved there; each decoding step reads its token back
to the host, so the wall-clock times need no extra synchronization).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from distill.analysis.draft_run import load_draft_run, parse_shape
from distill.generate.speculative import evaluate_speculative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a draft_distill run folder (holds recipe.yaml and checkpoints/)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["1", "2", "3", "4", "5", "3x2", "4x4x16", "5x8x32"],
        help="D: a chain of D tokens; DxK: a tree of D levels, top-k K; DxKxN: keeping its N best nodes",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings)")
    parser.add_argument("--device", default="cpu", help="where to decode: cpu, cuda, cuda:1, ...")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # every row the moment it is measured, into a file too
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run = load_draft_run(args.run)
    settings, eos = run.settings, run.eos_id
    target, trained, untrained = (model.to(device) for model in (run.target, run.trained, run.untrained))
    prompts = [{k: v.to(device) for k, v in prompt.items()} for prompt in run.prompts(args.prompts)]
    print(
        f"{len(prompts)} held-out prompts of {settings.prompt_tokens} tokens, {settings.max_new_tokens} new tokens, "
        f"{device}"
    )
    print(f"{'draft':>9} {'shape':>8} {'accepted length':>15} {'speedup':>8} {'lossless':>8}")
    for name, draft in (("untrained", untrained), ("trained", trained)):
        for shape in args.shapes:
            tree = parse_shape(shape)
            report = evaluate_speculative(target, draft, prompts, settings.max_new_tokens, eos_id=eos, **tree)
            print(
                f"{name:>9} {shape:>8} {report.accepted_length:>15.3f} {report.speedup:>7.2f}x "
                f"{100 * report.lossless:>7.1f}%",
                flush=True,
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
