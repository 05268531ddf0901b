"""Off-policy, on-policy (lambda 1), mixed (lambda 0.5) and sequence-level KD at the same budget, on the tiny offline
models: validation loss, KL(teacher || student) and next-token agreement on the data's own responses, mean and
spread over seeds, and the wall-clock time of each whole `distill fit`.

The data are prompt/response pairs cut from the standard library's docstrings (the prompt: a docstring's first
sentence; the response: the text after it), written once to a JSONL file. The teacher (llm_kd_tiny's, trained first
on the corpus and stored) is shared by every run; each mode then trains the same student for the same steps.

    python benchmarks/policy_modes.py [--seeds 0 1] [--batches 60] [--new-tokens 32] [--warm-start 0]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "off_policy": [],
    "on_policy": ["causal_lm.mode=on_policy"],
    "mixed": ["causal_lm.mode=mixed", "causal_lm.student_fraction=0.5"],
    "sequence": ["causal_lm.mode=sequence", "causal_lm.responses={work}/responses", "causal_lm.sampling.temperature=0"],
}
MODES_START: list[str] = []  # overrides every compared run gets (the warm start)
METRICS = (("test/loss", "val loss"), ("test/kl", "KL(t||s)"), ("test/agreement", "agreement"))


def write_pairs(path: Path, count: int) -> None:
    from distill.data.corpus import python_stdlib_corpus

    lines = []
    for text in python_stdlib_corpus():
        match = re.match(r"(.{20,100}?[.:])\s+(.{40,})", " ".join(text.split()))
        if match:
            lines.append(json.dumps({"prompt": match.group(1) + " ", "response": match.group(2)[:160]}))
        if len(lines) == count:
            break
    path.write_text("\n".join(lines) + "\n")


def run(work: Path, mode: str, seed: int, args: argparse.Namespace, name: str | None = None) -> tuple[dict, float]:
    name = name or f"{mode}_{seed}"
    overrides = [
        f"data.source={work / 'pairs.jsonl'}",
        "data.packing=false",
        "data.seq_len=128",
        f"seed={seed}",
        f"run.root={work / 'runs'}",
        f"run.name={name}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.batches}",
        "trainer.limit_val_batches=1.0",
        "trainer.enable_progress_bar=false",
        f"causal_lm.sampling.max_new_tokens={args.new_tokens}",
        "teacher.train.data.source=python_stdlib",
        f"teacher.train.trainer.limit_train_batches={args.teacher_batches}",
        "teacher.train.trainer.max_epochs=1",
        f"teacher.store={work / 'teachers'}",
        *[o.format(work=work) for o in MODES[mode]],
        *(MODES_START if name != "teacher" else []),
    ]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "distill", "fit", "--recipe", "llm_kd_tiny", *overrides],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{mode} seed {seed} failed:\n{done.stderr[-3000:]}")
    results = json.loads((work / "runs" / name / "version_0" / "results.json").read_text())["test"]
    return results, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batches", type=int, default=60, help="training batches of 16 rows per run")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens sampled per response")
    parser.add_argument("--teacher-batches", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=1200)
    parser.add_argument(
        "--warm-start",
        type=int,
        default=0,
        metavar="BATCHES",
        help="first train the student off-policy for BATCHES, and start every mode from it (GKD's setting: a "
        "student that already writes text samples useful responses)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        write_pairs(work / "pairs.jsonl", args.pairs)
        warm_up = argparse.Namespace(**{**vars(args), "batches": max(1, args.warm_start)})
        run(work, "off_policy", args.seeds[0], warm_up, name="teacher")  # trains and stores the shared teacher
        if args.warm_start:
            MODES_START.append(f"init={work / 'runs' / 'teacher' / 'version_0' / 'checkpoints' / 'best.ckpt'}")
        table: dict[str, list[tuple[dict, float]]] = {mode: [] for mode in MODES}
        for seed in args.seeds:
            for mode in MODES:
                table[mode].append(run(work, mode, seed, args))
                print(f"{mode} seed {seed}: {table[mode][-1]}", file=sys.stderr)
    start = f"from an off-policy student of {args.warm_start} steps" if args.warm_start else "from a fresh student"
    print(f"{args.batches} steps of 16 rows {start}, {args.new_tokens} sampled tokens, seeds {args.seeds}:")
    print("mean [min, max] on the data's validation responses\n")
    print("| mode | " + " | ".join(label for _, label in METRICS) + " | seconds per run |")
    print("|---" * (len(METRICS) + 2) + "|")
    for mode, runs in table.items():
        cells = []
        for key, _ in METRICS:
            values = [results[key] for results, _ in runs]
            cells.append(f"{statistics.mean(values):.4f} [{min(values):.4f}, {max(values):.4f}]")
        seconds = [s for _, s in runs]
        cells.append(f"{statistics.mean(seconds):.1f}")
        print(f"| {mode} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
