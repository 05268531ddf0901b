"""A few training steps of the offline quickstart (digits, CNN teacher -> CNN student, KD) under each Lightning
strategy, on one device: which run, how long the fit took, and the one-line reason of those that cannot.

    python benchmarks/strategies_smoke.py --accelerator gpu     # on a GPU machine
    python benchmarks/strategies_smoke.py --accelerator cpu     # here: DeepSpeed needs CUDA and is not installed
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# fsdp is distill's FSDP2 strategy (distill.engine.fsdp); fsdp_cpu_offload is Lightning's FSDP1
STRATEGIES = ["auto", "ddp", "fsdp", "fsdp_cpu_offload", "deepspeed_stage_2", "deepspeed_stage_3"]


def run(strategy: str, args: argparse.Namespace, folder: Path) -> tuple[str, float, str]:
    distill = str(Path(sys.executable).parent / "distill")
    overrides = [
        f"run.root={folder / 'runs'}",
        f"run.name={strategy}",
        f"teacher.store={folder / 'teachers'}",
        f"trainer.accelerator={args.accelerator}",
        "trainer.devices=1",
        f"trainer.strategy={strategy}",
        f"trainer.precision={args.precision}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.steps}",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
    ]
    start = time.perf_counter()
    done = subprocess.run(
        [distill, "fit", "--recipe", "quickstart_digits", *overrides], capture_output=True, text=True, cwd=folder
    )
    seconds = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    reason = lines[-1] if done.returncode and lines else ""
    return ("ran" if done.returncode == 0 else f"exit {done.returncode}"), seconds, reason


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="strategies_"))
    try:
        print(f"{'strategy':20} {'result':8} {'seconds':>8}  reason")
        for strategy in STRATEGIES:
            result, seconds, reason = run(strategy, args, folder)
            print(f"{strategy:20} {result:8} {seconds:8.1f}  {reason[:150]}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
