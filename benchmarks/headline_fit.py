"""The headline recipe (`distill fit --recipe plk_cifar100`) as a whole process for a few epochs, on generated
CIFAR-100 files in the official format and a randomly initialized resnet32x4 teacher saved as `{'model': state_dict}`
(no network needed): its wall time and per-epoch times. The accuracies mean nothing (random teacher, generated
images); the timings are the point.

An epoch's end is when the run's CSV log gains its validation metrics: the first epoch's time
counts from the process's start (start-up included), each later one from the previous save. Rows are printed as
they come. The process runs under `--process-timeout` (process_watch.py): when it stalls, a TIMED OUT row says
where each of its processes waited, and with `--fallback-workers N` the run is repeated with `data.num_workers=N`
so that the figures still come (the exit status is then 3).

    python benchmarks/headline_fit.py                                  # 10,000 images, 2 epochs, the recipe's devices
    python benchmarks/headline_fit.py --images 256 --test-images 64 trainer.accelerator=cpu
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `benchmarks.*` from any working directory

from benchmarks.fit_overhead import distill_command  # noqa: E402
from benchmarks.process_watch import run_watched  # noqa: E402


def prepare(work: Path, images: int, test_images: int) -> tuple[Path, Path]:
    import torch

    from distill.data.synthetic import write_fake_cifar100
    from distill.models import create_model

    root = work / "data"
    write_fake_cifar100(root, n_train=images, n_test=test_images, seed=0)
    torch.manual_seed(0)
    teacher = work / "resnet32x4_random.pth"
    torch.save({"model": create_model("resnet32x4", num_classes=100, in_chans=3).state_dict()}, teacher)
    return root, teacher


class EpochWatch:
    """Prints a row each time the run's CSV log gains an epoch's validation metrics (the logger writes its file at
    each logging call): that epoch's end, timed by the file's modification time."""

    def __init__(self, runs: Path, start: float) -> None:
        self.runs, self.start = runs, start
        self.ends: list[float] = []  # seconds since the start

    def __call__(self, elapsed: float = 0.0) -> None:
        found = sorted(self.runs.glob("version_*/logs/metrics.csv"))
        if not found:
            return
        try:
            mtime = found[-1].stat().st_mtime
            with open(found[-1], newline="") as file:
                rows = list(csv.DictReader(file))
        except (OSError, csv.Error):  # being rewritten
            return
        epochs = {row["epoch"] for row in rows if any(v for k, v in row.items() if k and k.startswith("val/"))}
        while len(self.ends) < len(epochs):
            end = mtime - self.start
            since = end - (self.ends[-1] if self.ends else 0.0)
            self.ends.append(end)
            first = " (from the process's start: start-up included)" if len(self.ends) == 1 else ""
            print(f"epoch {len(self.ends)} validated at {end:6.1f} s: {since:.2f} s{first}", flush=True)


def one_run(args: argparse.Namespace, work: Path, root: Path, teacher: Path, name: str, extra: list[str]) -> bool:
    command = [
        *distill_command(),
        "fit",
        "--recipe",
        args.recipe,
        f"data.root={root}",
        "data.download=false",
        f"teacher.checkpoint={teacher}",
        f"trainer.max_epochs={args.epochs}",
        f"run.root={work / 'runs'}",
        f"run.name={name}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *args.overrides,
        *extra,
    ]
    print(f"$ distill fit --recipe {args.recipe} {' '.join(command[4:])}", flush=True)
    watch = EpochWatch(work / "runs" / name, time.time())
    log = work / f"{name}.log"
    outcome = run_watched(command, log, args.process_timeout, cwd=work, on_poll=watch)
    watch()  # the last save, if it came in the final poll interval
    tail = log.read_text(errors="replace").strip().splitlines()
    if outcome.timed_out:
        print(f"{name}: TIMED OUT after {outcome.wall:.0f} s ({outcome.cpu:.1f} s CPU)", flush=True)
        print("\n".join(outcome.report), flush=True)
        print("\n".join(["  log, last lines:", *(f"    {t}" for t in tail[-8:])]), flush=True)
        return False
    if outcome.returncode != 0:
        print(f"{name}: FAILED (exit {outcome.returncode}) after {outcome.wall:.1f} s", flush=True)
        print("\n".join(f"    {t}" for t in tail[-12:]), flush=True)
        return False
    results = sorted((work / "runs" / name).glob("version_*/results.json"))
    metrics = json.loads(results[-1].read_text()) if results else {}
    flat = {k.rsplit("/", 1)[-1]: v for k, v in flatten(metrics).items()}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in flat.items() if k.endswith(("acc", "agreement")))
    epochs = [b - a for a, b in zip([0.0, *watch.ends], watch.ends, strict=False)]
    later = f"later epochs {', '.join(f'{e:.2f}' for e in epochs[1:])} s" if len(epochs) > 1 else "no later epoch"
    first = f"epoch 1 {epochs[0]:.1f} s (start-up included)" if epochs else "no epoch end seen"
    print(
        f"{name}: wall {outcome.wall:.1f} s ({outcome.cpu:.1f} s CPU), {first}, {later}; "
        f"test {shown or 'no results.json'} (random teacher, generated images: meaningless)",
        flush=True,
    )
    return True


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="plk_cifar100")
    parser.add_argument("--images", type=int, default=10_000, help="generated training images")
    parser.add_argument("--test-images", type=int, default=2_000, help="generated test images (validation, test)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--process-timeout", type=float, help="seconds after which the run is stopped")
    parser.add_argument("--fallback-workers", type=int, help="after a time-out, run again with this many workers")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more overrides of the run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="headline_fit_"))
    began = time.perf_counter()
    root, teacher = prepare(work, args.images, args.test_images)
    print(
        f"{args.recipe}, {args.epochs} epochs, {args.images} generated train / {args.test_images} test images, "
        f"random resnet32x4 teacher; prepared in {time.perf_counter() - began:.1f} s",
        flush=True,
    )
    status = 0
    if not one_run(args, work, root, teacher, "headline", []):
        status = 3
        if args.fallback_workers is not None:
            print(f"again with data.num_workers={args.fallback_workers}:", flush=True)
            one_run(
                args,
                work,
                root,
                teacher,
                f"headline_w{args.fallback_workers}",
                [f"data.num_workers={args.fallback_workers}"],
            )
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
