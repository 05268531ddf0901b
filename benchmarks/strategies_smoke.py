"""A few training steps of the offline quickstart (digits, CNN teacher -> CNN student, KD) under every name
`trainer.strategy` can take, on one device: which run, how long each run took, and the one-line reason of those
that cannot. Each row is printed as soon as it is measured.

    python benchmarks/strategies_smoke.py --accelerator gpu     # on a GPU machine
    python benchmarks/strategies_smoke.py --accelerator cpu     # here
    python benchmarks/strategies_smoke.py --names fsdp_cpu_offload ddp_spawn

The names distill refuses for this accelerator (config/strategies.py) are listed first, as the recipe check answers
them, without a run. The others each run `distill fit` (the first one also trains the quickstart's teacher, shortened
to 2 epochs: the rows measure strategies, not accuracy), most telling first, each under --timeout seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill.config.strategies import strategy_names, strategy_problem

# run first (a time cap on the whole script keeps these): the default, distill's sharded family, DDP, DeepSpeed
FIRST = ["auto", "fsdp_cpu_offload", "fsdp", "ddp", "ddp_spawn", "deepspeed_stage_2", "deepspeed_stage_3"]


def run(strategy: str, args: argparse.Namespace, folder: Path) -> tuple[str, float, str]:
    script = Path(sys.executable).parent / "distill"  # the console script, or the package where it is not installed
    distill = [str(script)] if script.is_file() else [sys.executable, "-m", "distill"]
    overrides = [
        f"run.root={folder / 'runs'}",
        f"run.name={strategy}",
        f"teacher.store={folder / 'teachers'}",
        "teacher.train.trainer.max_epochs=2",
        f"trainer.accelerator={args.accelerator}",
        "trainer.devices=1",
        f"trainer.strategy={strategy}",
        f"trainer.precision={args.precision}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.steps}",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.enable_progress_bar=false",
    ]
    command = [*distill, "fit", "--recipe", "quickstart_digits", *overrides]
    start = time.perf_counter()
    # a session of its own: a run past its time is stopped with the rank processes it started
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder,
                               start_new_session=True)  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return "timeout", time.perf_counter() - start, f"stopped after {args.timeout:.0f} s"
    seconds = time.perf_counter() - start
    lines = stderr.strip().splitlines()
    reason = lines[-1] if process.returncode and lines else ""
    return ("ran" if process.returncode == 0 else f"exit {process.returncode}"), seconds, reason


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one run may take")
    parser.add_argument("--names", nargs="*", help="these strategy names only (default: every name)")
    args = parser.parse_args()
    names = args.names or strategy_names()
    refused = {n: strategy_problem({"strategy": n, "accelerator": args.accelerator}) for n in names}
    print(f"{'strategy':42} {'result':8} {'seconds':>8}  reason", flush=True)
    for name, problem in refused.items():
        if problem is not None:
            print(f"{name:42} {'refused':8} {0.0:8.1f}  {problem[:150]}", flush=True)
    runnable = [n for n in names if refused[n] is None]
    runnable = [n for n in FIRST if n in runnable] + [n for n in runnable if n not in FIRST]
    folder = Path(tempfile.mkdtemp(prefix="strategies_"))
    try:
        for name in runnable:
            result, seconds, reason = run(name, args, folder)
            print(f"{name:42} {result:8} {seconds:8.1f}  {reason[:150]}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
