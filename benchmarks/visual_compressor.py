"""The draft's visual compressor, variant by variant, on the tiny VLM: what speculative decoding gains or loses.

`python benchmarks/visual_compressor.py [--store DIR] [--seeds 0 1 2] [--epochs 2] [--train-batches N] [--prompts 16]`

The target is `specvlm_draft_tiny_vlm`'s LLaVA-style VLM (trained once into the teacher store `--store`, a temporary
folder by default; a stored one is reused). Then, for each compressor choice (no compressor, each fixed primitive,
the gate, weighted, concat) and each seed, a draft is trained for `--epochs` epochs of that recipe
(`--train-batches` batches each), and its best checkpoint decodes `--prompts` held-out image prompts (bos and the
16 image tokens; the target captions the image) with greedy speculative decoding at the recipe's depth. Printed for
each variant, mean and spread (sample standard deviation) over the seeds: the accepted length (tokens per
verification round), the draft positions read for the prompt (after compression), the draft's time per round (its
forward passes and its compressor, in ms), the compressor's time per prompt (it reads each prompt once) and the
share of outputs equal to the target's greedy output (must be 100%); for the gate, how often it chose each
primitive in all. Each row is printed when its seeds are done. One torch thread throughout (steadier timings on a
shared machine).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from distill.analysis.draft_run import load_draft_run
from distill.config import bundled_recipes, from_dict
from distill.engine.pipeline import fit
from distill.generate.speculative import greedy_decode, speculative_decode

RECIPE = "specvlm_draft_tiny_vlm"
ALL = ["pool", "prune", "conv", "resampler", "text_only"]
VARIANTS: dict[str, dict[str, Any] | None] = {
    "none": None,  # the draft reads all 16 image positions
    **{name: {"mode": "fixed", "primitives": [name]} for name in ALL},
    "gate": {"mode": "gate", "primitives": ALL},
    "weighted": {"mode": "weighted", "primitives": ALL},
    "concat": {"mode": "concat", "primitives": ["pool", "prune", "conv", "resampler"]},
}


@dataclass
class Measured:
    accepted_length: float
    positions: float  # draft positions read for the prompt, mean over prompts
    round_ms: float  # the draft's time per verification round (its layer and its compressor)
    compress_ms: float  # the compressor's time per prompt (it reads each prompt once)
    lossless: float
    choices: Counter


class Clock:
    """The wall-clock time spent in some modules' forward passes, from their hooks (nested calls counted once)."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.seconds, self.started, self.depth = 0.0, 0.0, 0
        for module in modules:
            module.register_forward_pre_hook(self.start)
            module.register_forward_hook(self.stop)

    def start(self, *args: Any) -> None:
        if self.depth == 0:
            self.started = time.perf_counter()
        self.depth += 1

    def stop(self, *args: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.seconds += time.perf_counter() - self.started


def recipe_for(store: Path, runs: Path, compressor: dict | None, seed: int, epochs: int, batches: int | None) -> dict:
    """`specvlm_draft_tiny_vlm` with `compressor` in place of its pooling, the seed and the training budget."""
    recipe = yaml.safe_load(bundled_recipes()[RECIPE].read_text())
    recipe["seed"] = seed
    recipe["run"] = {"root": str(runs), "name": f"{'-'.join(compressor['primitives']) if compressor else 'none'}"}
    recipe["teacher"]["store"] = str(store)
    recipe["student"] = {"name": "eagle_draft", "intermediate_size": None, "compressor": compressor}
    recipe["speculative"]["prompts"] = 0  # measured here, after training
    recipe["trainer"] |= {"max_epochs": epochs, "limit_train_batches": batches, "limit_val_batches": 2}
    recipe["trainer"] |= {"enable_progress_bar": False, "enable_model_summary": False}
    return recipe


def measure(run_dir: Path, prompts: int, references: dict[int, list[int]]) -> Measured:
    run = load_draft_run(run_dir)
    draft, target, settings = run.trained.eval(), run.target.eval(), run.settings
    compressor = [draft.compressor] if draft.compressor is not None else []
    clock, compress_clock = Clock(draft, *compressor), Clock(*compressor)
    held_out = run.prompts(prompts)
    rounds = emitted = same = 0
    positions, choices = [], Counter()
    for i, prompt in enumerate(held_out):
        if i not in references:  # the target's own output: the same for every draft
            references[i] = greedy_decode(target, prompt, settings.max_new_tokens, run.eos_id)
        counted = clock.seconds, compress_clock.seconds
        rows = prompt_rows(target, draft, prompt)  # what decoding will read first (not timed)
        clock.seconds, compress_clock.seconds = counted
        positions.append(rows.features.shape[1])
        if rows.choice is not None:
            choices[draft.compressor.settings.primitives[int(rows.choice[0])]] += 1
        decoded = speculative_decode(target, draft, prompt, settings.max_new_tokens, settings.depth, run.eos_id)
        rounds, emitted = rounds + decoded.rounds, emitted + decoded.round_tokens
        same += decoded.tokens == references[i]
    return Measured(
        emitted / max(rounds, 1),
        statistics.mean(positions),
        1000 * clock.seconds / max(rounds, 1),
        1000 * compress_clock.seconds / len(held_out),
        same / len(held_out),
        choices,
    )


@torch.no_grad()
def prompt_rows(target: torch.nn.Module, draft: torch.nn.Module, prompt: dict[str, torch.Tensor]) -> Any:
    """What the draft reads of `prompt` when decoding starts (the target's features, the next embeddings up to the
    target's first token), compressed: as `speculative_decode` hands it over."""
    scored = target(**prompt, output_hidden_states=True)
    first = target.get_input_embeddings()(scored.logits[:, -1:].argmax(-1))
    next_embeddings = torch.cat([scored.hidden_states[0][:, 1:], first], dim=1)
    return draft.compress_rows(scored.hidden_states[-1], next_embeddings, prompt["input_ids"])


def spread(values: list[float], digits: int) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None, help="teacher store (default: a temporary folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="draft training epochs per run (the recipe's: 2)")
    parser.add_argument("--train-batches", type=int, default=None, help="batches per epoch (default: all, 169)")
    parser.add_argument("--prompts", type=int, default=16, help="held-out image prompts decoded per run")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(1)
    print("$ python benchmarks/visual_compressor.py " + shlex.join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as scratch:
        store = args.store or Path(scratch) / "teachers"
        references: dict[int, list[int]] = {}
        columns = ["variant", "accepted length", "draft positions read", "draft ms / round", "compressor ms / prompt"]
        columns += ["lossless", "seeds (s)"]
        print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for name in args.variants:
            results, started = [], time.perf_counter()
            for seed in args.seeds:
                runs = Path(scratch) / "runs" / name
                recipe = recipe_for(store, runs, VARIANTS[name], seed, args.epochs, args.train_batches)
                with contextlib.redirect_stdout(sys.stderr):  # the runs' (and the target's) output: not the table
                    result = fit(from_dict(recipe, f"{RECIPE} ({name}, seed {seed})"))
                results.append(measure(result.run_dir, args.prompts, references))
                print(f"  {name} seed {seed}: {results[-1]}", file=sys.stderr, flush=True)
            chosen = sum((r.choices for r in results), Counter())
            note = f" (gate chose: {', '.join(f'{k} {v}' for k, v in chosen.most_common())})" if chosen else ""
            print(
                f"| {name}{note} | {spread([r.accepted_length for r in results], 3)} "
                f"| {spread([r.positions for r in results], 1)} | {spread([r.round_ms for r in results], 2)} "
                f"| {spread([r.compress_ms for r in results], 2)} "
                f"| {100 * statistics.mean(r.lossless for r in results):.0f}% "
                f"| {len(results)} ({time.perf_counter() - started:.0f} s) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
