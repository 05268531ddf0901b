"""`distill fit --recipe kd_cifar100` as a whole process against a plain PyTorch script doing the same work
(benchmarks/plain_kd_cifar.py), on the same generated CIFAR-100 files and the same randomly initialized teacher.

Each side runs at two epoch counts E1 < E2, so that start-up (imports, building, the final test, exit) cancels out of
the marginal epoch time (t(E2) - t(E1)) / (E2 - E1); the intercept t(E1) - E1 * marginal is the fixed cost of a run.
Rounds alternate which side runs first; the tables give wall-clock and CPU seconds (the data-loader workers included),
the median over rounds and [min, max]. Other work on the machine widens the spread: the load average is printed.
At the defaults about 6 minutes on 2 CPU cores.

With several `--workers` counts the whole comparison runs at each; with one `--epochs` count only the rows are
printed (each process's seconds), no marginal epoch. `--process-timeout` stops a process that runs longer, prints
it as a TIMED OUT row with where each of its processes (data-loader workers included) was waiting (process_watch.py),
and goes on with the next one. Every row is printed the moment its process ends.

    python benchmarks/fit_overhead.py [--images 640] [--test-images 256] [--workers 2] [--epochs 1 3] [--rounds 3]
    python benchmarks/fit_overhead.py --images 10000 --workers 0 8 4 --epochs 1 --rounds 1 --process-timeout 60
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `benchmarks.*` from any working directory

from benchmarks.process_watch import Outcome, run_watched  # noqa: E402


def prepare(work: Path, images: int, test_images: int) -> tuple[Path, Path]:
    """The CIFAR-format files and a randomly initialized resnet32x4 saved once (both sides load the same)."""
    from benchmarks.plain_kd_cifar import cifar_resnet
    from distill.data.synthetic import write_fake_cifar100

    root = work / "data"
    write_fake_cifar100(root, n_train=images, n_test=test_images, seed=0)
    torch.manual_seed(0)
    teacher = cifar_resnet("resnet32x4")
    path = work / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    return root, path


def distill_command() -> list[str]:
    script = Path(sys.executable).with_name("distill")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "distill"]


def commands(
    args: argparse.Namespace, work: Path, root: Path, teacher: Path, epochs: int, workers: int, tag: str
) -> dict:
    distill = [
        *distill_command(),
        "fit",
        "--recipe",
        "kd_cifar100",
        f"data.root={root}",
        f"data.num_workers={workers}",
        f"data.batch_size={args.batch_size}",
        f"teacher.checkpoint={teacher}",
        f"trainer.max_epochs={epochs}",
        f"run.root={work / 'runs'}",
        f"run.name={tag}",
        *args.distill_overrides,
    ]
    plain = [
        sys.executable,
        str(HERE / "plain_kd_cifar.py"),
        f"--root={root}",
        f"--teacher={teacher}",
        f"--epochs={epochs}",
        f"--workers={workers}",
        f"--batch-size={args.batch_size}",
        f"--out={work / 'plain' / tag}",
    ]
    return {"distill": distill, "plain": plain}


def timed(command: list[str], log: Path, timeout: float | None) -> Outcome:
    """Wall-clock and CPU seconds (user + system, the data-loader workers included) of `command`, at most
    `timeout` seconds of it."""
    return run_watched(command, log, timeout, cwd=HERE.parent)


def spread(values: list[float], digits: int = 2) -> str:
    """`median [min, max]`."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def table(times: dict[str, dict[int, list[float]]], e1: int, e2: int, what: str) -> None:
    """Per side the two run times, the marginal epoch and the intercept; then distill against plain."""

    def marginal(side: str) -> list[float]:
        return [(b - a) / (e2 - e1) for a, b in zip(times[side][e1], times[side][e2], strict=True)]

    def intercept(side: str) -> list[float]:
        return [a - e1 * m for a, m in zip(times[side][e1], marginal(side), strict=True)]

    print(f"\n{what}: median [min, max] over rounds")
    print(f"| | {e1} epoch(s) | {e2} epochs | marginal epoch | intercept (fixed per run) |")
    print("|---|---|---|---|---|")
    for side in ("distill", "plain"):
        row = [spread(times[side][e1]), spread(times[side][e2]), spread(marginal(side)), spread(intercept(side))]
        print(f"| {side} | {' | '.join(row)} |")
    pairs = list(zip(marginal("distill"), marginal("plain"), strict=True))
    print(f"marginal-epoch ratio distill/plain: {spread([d / p for d, p in pairs], 3)} (target <= 1.05)")
    print(f"fixed cost per epoch (marginal difference): {spread([d - p for d, p in pairs])} s")
    per_run = [d - p for d, p in zip(intercept("distill"), intercept("plain"), strict=True)]
    print(f"fixed cost per run (intercept difference): {spread(per_run)} s")
    # Other processes only ever add time: the fastest run of each setting is the least disturbed estimate.
    fastest = {side: {e: min(times[side][e]) for e in (e1, e2)} for side in times}
    best = {side: (fastest[side][e2] - fastest[side][e1]) / (e2 - e1) for side in times}
    fixed = {side: fastest[side][e1] - e1 * best[side] for side in times}
    print(
        f"from the fastest run of each setting: marginal epoch distill {best['distill']:.2f}, plain "
        f"{best['plain']:.2f}, ratio {best['distill'] / best['plain']:.3f}; fixed cost per epoch "
        f"{best['distill'] - best['plain']:.2f} s, per run {fixed['distill'] - fixed['plain']:.2f} s"
    )


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # every row the moment it is measured, into a file too
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=640, help="training images (generated)")
    parser.add_argument("--test-images", type=int, default=256, help="test images (validation and the final test)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="data-loader workers of both sides")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3], metavar="E", help="one or two counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--process-timeout", type=float, help="seconds after which a process is stopped (a row)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (logs, runs), else a temporary one")
    parser.add_argument(
        "--distill-overrides", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides of the distill side"
    )
    args = parser.parse_args()
    counts = sorted(set(args.epochs))
    if len(args.epochs) > 2 or len(counts) != len(args.epochs):
        parser.error("--epochs takes one count, or two different counts")

    work = args.keep or Path(tempfile.mkdtemp(prefix="fit_overhead_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    root, teacher = prepare(work, args.images, args.test_images)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"{args.images} train / {args.test_images} test images, batch {args.batch_size}, {device}, "
        f"{os.cpu_count()} CPUs, workers {args.workers}, epochs {counts}, {args.rounds} round(s)",
        flush=True,
    )
    load_before = os.getloadavg()[0]  # other work on the machine shows in the spread: say how busy it was
    stopped = 0
    for workers in args.workers:
        wall: dict[str, dict[int, list[float]]] = {side: {e: [] for e in counts} for side in ("distill", "plain")}
        cpu: dict[str, dict[int, list[float]]] = {side: {e: [] for e in counts} for side in ("distill", "plain")}
        for r in range(args.rounds):
            sides = ["distill", "plain"] if r % 2 == 0 else ["plain", "distill"]
            for epochs in counts:
                for side in sides:
                    tag = f"w{workers}_r{r}_e{epochs}"
                    command = commands(args, work, root, teacher, epochs, workers, tag)[side]
                    log = work / "logs" / f"{side}_{tag}.log"
                    outcome = timed(command, log, args.process_timeout)
                    where = f"{workers} workers, round {r + 1}/{args.rounds}: {side:7s} {epochs} epoch(s)"
                    if outcome.returncode == 0:
                        wall[side][epochs].append(outcome.wall)
                        cpu[side][epochs].append(outcome.cpu)
                        print(f"{where} {outcome.wall:6.2f} s ({outcome.cpu:.2f} s CPU)", flush=True)
                        continue
                    stopped += 1
                    if outcome.timed_out:
                        print(f"{where} TIMED OUT after {outcome.wall:.0f} s ({outcome.cpu:.2f} s CPU)", flush=True)
                    else:
                        print(f"{where} FAILED (exit {outcome.returncode}) after {outcome.wall:.1f} s", flush=True)
                    tail = log.read_text(errors="replace").strip().splitlines()[-8:]
                    print("\n".join([*outcome.report, "  log, last lines:", *(f"    {t}" for t in tail)]), flush=True)
        complete = all(len(v) == args.rounds for side in wall.values() for v in side.values())
        if len(counts) == 2 and complete:
            print(f"\n{workers} data-loader workers:")
            table(wall, *counts, "whole-process wall-clock seconds")
            table(cpu, *counts, "whole-process CPU seconds (user + system, workers included)")
    print(f"\nload average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after", flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs and runs kept in {work}")
    if stopped:
        sys.exit(f"{stopped} process(es) timed out or failed")


if __name__ == "__main__":
    main()
