"""Host time per training step: a plain PyTorch loop, a bare LightningModule doing the same step under a Trainer
(Lightning's own floor), distill's task under that same bare Trainer, and `distill fit`'s whole pipeline, side by
side in one process.

The models are so small that compute hardly counts (by default an MLP student of 64-16-10 under a 64-64-10 MLP
teacher; `--models convnet` takes the quickstart's 2k-parameter CNN student under its 28k-parameter teacher), on
the 8x8 digits, batch 16, 0.1 CE + 0.9 KD at T 4, AdamW, augmentation off, no loader workers; so what is measured
is what each layer adds per step on the host: on a GPU that is the time a launch-bound step cannot hide.
A step's time is the gap between consecutive batch starts inside an epoch; an epoch's last batch runs to its end
(validation and checkpoints after it are left out). Three figures per setting (`summary`): the median step, the
mean step (what is paid only every few steps, a log every `log_every_n_steps`, spread over the steps) and what the
last batch takes beyond the median step (the epoch's values logged once; an epoch of N steps spreads it over N).
Rounds alternate the settings. The rows differ from run to run by more than the goal they are read against (about
10-20 us here), so distill's task is also measured paired: its own step in the even epochs of one Trainer, the bare
step in the odd ones, the difference taken pair by pair.
The clock is this thread's CPU time (torch runs on one thread here): other processes on the machine slow the wall
clock of every setting by 10-20 % from run to run, and hardly this one. Each row is printed the moment it is
measured.

    python benchmarks/step_overhead.py [--epochs 3] [--rounds 3] [--batch 16]
    python benchmarks/step_overhead.py --device cuda [--images 10000 --epochs 2]

With `--device cuda` it measures the CIFAR-100 step on the GPU instead (resnet32x4 -> resnet8x4, batch 64, KD with
the online teacher, generated images kept on the device, bf16-mixed, channels_last): milliseconds per step of a
plain PyTorch loop (fused SGD, autocast) and of `distill fit` eager, compiled, and compiled with CUDA graphs
(`speed.compile_mode: reduce-overhead`); each from the wall time of its last epoch, synchronised at both ends.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from distill.config import from_dict, load_recipe
from distill.data.digits import load_digits_arrays
from distill.data.synthetic import write_fake_cifar100
from distill.engine.pipeline import fit
from distill.engine.quiet import quiet_expected_messages
from distill.models import create_model
from distill.tasks.classification import ClassificationTask
from losses import KDLoss

# (teacher, student) as a recipe names them. mlp: so small that compute hardly counts and the host's part shows
# with little noise (a step of about 0.5 ms here); convnet: quickstart_digits.yaml's own (about 3.3 ms, mostly
# convolutions, the noise of which is larger than what is measured)
MODEL_SETS = {
    "mlp": ({"name": "mlp", "hidden": [64]}, {"name": "mlp", "hidden": [16]}),
    "convnet": (
        {"name": "convnet", "widths": [32, 64], "hidden": 128},
        {"name": "convnet", "widths": [8, 16], "hidden": 32},
    ),
}
MODELS = MODEL_SETS["mlp"]  # set from --models
CLOCK = time.thread_time  # see the module's docstring
WARMUP = 3  # steps of each epoch left out (first-call allocations, the loader's start)


def build(spec: dict) -> torch.nn.Module:
    name, kwargs = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    return create_model(name, num_classes=10, **({"in_chans": 1} if name == "convnet" else {}), **kwargs)


def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher_spec, student_spec = MODELS
    return build(teacher_spec).eval().requires_grad_(False), build(student_spec)


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=0.01, weight_decay=1e-4)


def digits_loader(batch: int) -> DataLoader:
    images, labels = load_digits_arrays()
    x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(labels, dtype=torch.long)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)


def epoch_gaps(starts: list[list[float]]) -> list[list[float]]:
    """Step times, one list per epoch: gaps between consecutive batch starts, each epoch's first WARMUP steps left
    out."""
    return [[b - a for a, b in zip(epoch[WARMUP:-1], epoch[WARMUP + 1 :], strict=True)] for epoch in starts]


def summary(epochs: list[list[float]]) -> tuple[float, float, float]:
    """`(median step, mean step, epoch's end)` in microseconds: the median over all steps; the mean step of an epoch
    but its last batch (median over epochs), which also carries what is paid only every few steps (a log every
    `log_every_n_steps`); and what the last batch takes beyond the median step (the epoch's values logged once),
    which an epoch of N steps spreads over N (782 in CIFAR-100 at batch 64)."""
    steps = [gap for epoch in epochs for gap in epoch[:-1]]
    means = [statistics.fmean(epoch[:-1]) for epoch in epochs]
    ends = [epoch[-1] for epoch in epochs]
    median = statistics.median(steps)
    return median * 1e6, statistics.median(means) * 1e6, (statistics.median(ends) - median) * 1e6


class BatchStarts(Callback):
    """The start time of every training batch, one list per epoch, closed by the end of the epoch's last batch
    (before validation and checkpoints: not a step's work)."""

    def __init__(self) -> None:
        self.starts: list[list[float]] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.starts.append([])

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts[-1].append(CLOCK())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.is_last_batch:
            self.starts[-1].append(CLOCK())


def plain_loop(loader: DataLoader, epochs: int) -> list[list[float]]:
    teacher, student = models()
    student.train()
    optimizer = adamw(student.parameters())
    kd = KDLoss(temperature=4.0)
    starts: list[list[float]] = []
    for _ in range(epochs):
        starts.append([])
        for images, labels in loader:
            starts[-1].append(CLOCK())
            with torch.no_grad():
                teacher_logits = teacher(images)
            logits = student(images)
            loss = 0.1 * F.cross_entropy(logits, labels) + 0.9 * kd(logits, teacher_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        starts[-1].append(CLOCK())
    return epoch_gaps(starts)


def bare_step(teacher: torch.nn.Module, student: torch.nn.Module, kd: KDLoss, batch) -> torch.Tensor:
    """The plain loop's loss, as a training step returns it."""
    images, labels = batch
    with torch.no_grad():
        teacher_logits = teacher(images)
    logits = student(images)
    return 0.1 * F.cross_entropy(logits, labels) + 0.9 * kd(logits, teacher_logits)


class BareModule(L.LightningModule):
    """The plain loop's step as a LightningModule: no logging, no metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.teacher, self.student = models()
        self.kd = KDLoss(temperature=4.0)

    def training_step(self, batch, batch_idx):
        return bare_step(self.teacher, self.student, self.kd, batch)

    def configure_optimizers(self):
        return adamw(self.student.parameters())


def distill_task() -> ClassificationTask:
    teacher, student = models()
    terms = {"kd": (0.9, KDLoss(temperature=4.0))}
    return ClassificationTask(student, teacher, num_classes=10, terms=terms, ce_weight=0.1, optimizer=adamw)


class AlternatingEpochs(ClassificationTask):
    """distill's task, whose odd epochs train by the bare module's step instead of its own: the two steps measured
    side by side in one process and one Trainer, an epoch apart, so that the machine's drift between settings (often
    larger than what is measured) falls on both alike. What the task adds around its step (its hooks) is in both."""

    def training_step(self, batch, batch_idx):
        if self.current_epoch % 2:
            return bare_step(self.teacher, self.student, self.terms["kd"], batch)
        return super().training_step(batch, batch_idx)


def alternating_task() -> AlternatingEpochs:
    teacher, student = models()
    terms = {"kd": (0.9, KDLoss(temperature=4.0))}
    return AlternatingEpochs(student, teacher, num_classes=10, terms=terms, ce_weight=0.1, optimizer=adamw)


def paired_differences(epochs: list[list[float]]) -> tuple[float, float, float]:
    """`summary`'s three figures as differences over pairs of epochs (distill's, then the bare step's): the median
    over pairs of each pair's difference."""
    pairs = [(summary([ours]), summary([bare])) for ours, bare in zip(epochs[0::2], epochs[1::2], strict=False)]
    return tuple(statistics.median(ours[i] - bare[i] for ours, bare in pairs) for i in range(3))  # type: ignore[return-value]


def under_bare_trainer(
    make: Callable[[], L.LightningModule], loader: DataLoader, epochs: int, logs: Path
) -> list[list[float]]:
    """Step times of `make()` trained on `loader` by a Trainer with checkpoints and bars off and a CSV log in `logs`
    (what the task writes at its logging steps is counted; the bare module writes nothing)."""
    starts = BatchStarts()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=CSVLogger(logs, name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[starts],
    )
    trainer.fit(make(), train_dataloaders=loader)
    return epoch_gaps(starts.starts)


def whole_pipeline(root: Path, batch: int, epochs: int, round_: int) -> list[list[float]]:
    """`distill fit --recipe quickstart_digits` in this process, on the same batch size, augmentation off, the
    teacher read from a file (its training is not what is timed)."""
    overrides = [
        f"run.root={root / 'runs'}",
        f"run.name=pipeline{round_}",
        f"data.batch_size={batch}",
        "data.augment=false",
        "data.num_workers=0",
        f"teacher.checkpoint={root / 'teacher.pt'}",
        "teacher.train=null",
        f"trainer.max_epochs={epochs}",
        f"student={flow(MODELS[1])}",
        f"teacher.model={flow(MODELS[0])}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    starts = BatchStarts()
    fit(load_recipe("quickstart_digits", overrides), callbacks=[starts])
    return epoch_gaps(starts.starts)


def flow(spec: dict) -> str:
    """`spec` as a command-line override's mapping: `{name: mlp, hidden: [16]}`."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class EpochWallTimes(Callback):
    """Each training epoch's wall time per step, the device synchronised at both ends."""

    def __init__(self) -> None:
        self.per_step: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        synchronize()
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        synchronize()
        self.per_step.append((time.perf_counter() - self.start) / trainer.num_training_batches)


def cifar_recipe(root: Path, name: str, epochs: int, compile_mode: str | None, device: str) -> dict:
    raw = {
        "seed": 0,
        "run": {"root": str(root / "runs"), "name": name},
        "data": {"name": "cifar100", "root": str(root / "data"), "batch_size": 64, "num_workers": 0, "on_device": True},
        "student": {"name": "resnet8x4"},
        "teacher": {"model": {"name": "resnet32x4"}, "checkpoint": str(root / "teacher.pt")},
        "speed": {"channels_last": True},
        "loss": {"ce_weight": 0.1, "terms": {"kd": {"weight": 0.9, "temperature": 4.0}}},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "scheduler": {"name": "multistep", "milestones": [150, 180, 210]},
        "trainer": {
            "max_epochs": epochs,
            "accelerator": "gpu" if device == "cuda" else "cpu",
            "devices": 1,
            "precision": "bf16-mixed",
            "limit_val_batches": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }
    if compile_mode is not None:
        raw["speed"].update(compile_student=True, compile_teacher=True, compile_mode=compile_mode)
    return raw


def plain_device_loop(images: torch.Tensor, labels: torch.Tensor, epochs: int) -> float:
    """ms per step of a plain loop over on-device batches: bf16 autocast, channels_last, fused SGD, no logging."""
    torch.manual_seed(0)
    device = images.device
    teacher = create_model("resnet32x4", num_classes=100, in_chans=3).to(device).eval().requires_grad_(False)
    student = create_model("resnet8x4", num_classes=100, in_chans=3).to(device)
    teacher.to(memory_format=torch.channels_last)
    student.to(memory_format=torch.channels_last)
    fused = device.type == "cuda"
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, fused=fused)
    kd = KDLoss(temperature=4.0)
    per_step = []
    for _ in range(epochs):
        order = torch.randperm(len(labels), device=device)
        synchronize()
        start = time.perf_counter()
        for batch in order.split(64):
            x, y = images[batch], labels[batch]
            with torch.autocast(device.type, dtype=torch.bfloat16):
                with torch.no_grad():
                    teacher_logits = teacher(x)
                logits = student(x)
                loss = 0.1 * F.cross_entropy(logits.float(), y) + 0.9 * kd(logits, teacher_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize()
        per_step.append((time.perf_counter() - start) / len(order.split(64)))
    return per_step[-1]


def cifar_steps(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="step_overhead_cuda_"))
    write_fake_cifar100(root / "data", n_train=args.images, n_test=64, seed=0)
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet32x4", num_classes=100, in_chans=3).state_dict()}, root / "teacher.pt")
    steps = -(-args.images // 64)
    print(
        f"resnet32x4 -> resnet8x4, KD, batch 64, {args.images} images ({steps} steps/epoch), on-device data, "
        f"bf16-mixed, channels_last; ms per step of the last of {args.epochs} epochs",
        flush=True,
    )
    device = "cuda" if args.device == "cuda" else "cpu"
    images = torch.randn(args.images, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 100, (args.images,), device=device)
    start = time.perf_counter()
    ms = plain_device_loop(images, labels, args.epochs) * 1e3
    print(
        f"plain loop (eager)            {ms:8.2f} ms/step  (240 x 50k: {ms * 240 * 782 / 6e4:5.1f} min; "
        f"{time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    settings = [("eager", None), ("compiled + CUDA graphs", "reduce-overhead")]
    if args.compile_default:
        settings.insert(1, ("compiled", "default"))
    for name, mode in settings:
        times = EpochWallTimes()
        start = time.perf_counter()
        fit(from_dict(cifar_recipe(root, name.split()[0], args.epochs, mode, device), "benchmark"), callbacks=[times])
        ms = times.per_step[-1] * 1e3
        print(
            f"distill {name:22} {ms:8.2f} ms/step  (240 x 50k: {ms * 240 * 782 / 6e4:5.1f} min; "
            f"{time.perf_counter() - start:.0f} s with start-up and compiling)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda", "cifar-cpu"),
        help="cuda: the CIFAR step on the GPU; cifar-cpu: the same settings on the CPU (a dry run)",
    )
    parser.add_argument("--compile-default", action="store_true", help="also torch.compile's default mode")
    parser.add_argument("--images", type=int, default=10_000, help="--device cuda: generated training images")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per setting and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the settings")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--models", default="mlp", choices=sorted(MODEL_SETS), help="teacher and student (CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the host's share, steady)")
    args = parser.parse_args()
    quiet_expected_messages()
    if args.device != "cpu":
        cifar_steps(args)
        return
    torch.set_num_threads(args.threads)
    global MODELS
    MODELS = MODEL_SETS[args.models]
    root = Path(tempfile.mkdtemp(prefix="step_overhead_"))
    teacher, _ = models()
    torch.save({"model": teacher.state_dict()}, root / "teacher.pt")
    loader = digits_loader(args.batch)
    logs = root / "logs"
    settings: dict[str, Callable[[int], list[list[float]]]] = {
        "plain loop": lambda r: plain_loop(loader, args.epochs),
        "bare LightningModule": lambda r: under_bare_trainer(BareModule, loader, args.epochs, logs),
        "distill task": lambda r: under_bare_trainer(distill_task, loader, args.epochs, logs),
        "distill fit": lambda r: whole_pipeline(root, args.batch, args.epochs, r),
    }
    sizes = [sum(p.numel() for p in model.parameters()) for model in models()]
    print(
        f"digits 8x8, batch {args.batch}, {args.models} {sizes[0]:,} -> {sizes[1]:,} parameters, CPU, "
        f"{args.threads} thread(s)",
        flush=True,
    )
    times: dict[str, list[list[float]]] = {name: [] for name in settings}
    alternating: list[list[float]] = []
    for round_ in range(args.rounds):
        for name, run in settings.items():
            epochs = run(round_)
            times[name] += epochs
            print(f"round {round_}  {name:22} " + figures(summary(epochs)), flush=True)
        epochs = under_bare_trainer(alternating_task, loader, 2 * args.epochs, logs)
        alternating += epochs
        print(f"round {round_}  {'task - bare, paired':22} " + figures(paired_differences(epochs)), flush=True)
    results = {name: summary(epochs) for name, epochs in times.items()}
    bare = results["bare LightningModule"]
    steps = sum(len(epoch) for epoch in times["plain loop"])
    print(f"{'us per step':22} {'median':>9} {'- bare':>9} {'mean':>9} {'- bare':>9} {'epoch end':>10} {'- bare':>9}")
    for name, result in results.items():
        cells = [f"{value:9.0f} {value - bare[i]:9.0f}" for i, value in enumerate(result)]
        print(f"{name:22} {cells[0]} {cells[1]} {cells[2]:>20}", flush=True)
    median, mean, end = paired_differences(alternating)
    print(f"{'distill task, paired':22} {'':9} {median:9.0f} {'':9} {mean:9.0f} {'':10} {end:9.0f}", flush=True)
    print(
        f"({steps}+ steps a setting; 'paired': distill's epochs against the bare step's in one Trainer, "
        f"{len(alternating) // 2} pairs)",
        flush=True,
    )


def figures(result: tuple[float, float, float]) -> str:
    median, mean, end = result
    return f"{median:9.0f} us/step median {mean:9.0f} mean {end:9.0f} at the epoch's end"


if __name__ == "__main__":
    main()
