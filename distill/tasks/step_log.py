"""What a training step logs, kept on the device and written to the run's loggers only at Lightning's logging steps.

Each `LightningModule.log` call costs 250-500 us of host time on a 2-core CPU (Lightning's result collection walks
the whole entry it keeps for the value on every call), and every value logged once stays in that collection for the
rest of the epoch, read again at each step's end. On a GPU a logged value read for the progress bar also waits for
the device's queue. A step that logged its loss and each term that way was bound by the host, not the accelerator
(benchmarks/step_overhead.py). So:

- a step only keeps references to its scalars (no device work at all); every FOLD_EVERY steps they are folded into
  running sums (one stack), which bounds what is held when logging steps are far apart;
- at Lightning's logging steps (`trainer.log_every_n_steps`, the optimizer steps among them when gradients
  accumulate) and at the epoch's last batch, their means are read in one copy to the host and written to the
  trainer's loggers directly, in the row Lightning would write for that step (the same step number and `epoch`);
- at the epoch's last batch they also go to `trainer.callback_metrics` through `self.log(..., logger=False)`, which
  is what monitors and early stopping read: a few calls an epoch, not a few a step;
- the training accuracy keeps each step's logits (a reference; under CUDA graphs, which overwrite them, the
  predicted classes) and counts the hits every FOLD_EVERY steps and at the epoch's end.
"""

from __future__ import annotations

import lightning as L
import torch

FOLD_EVERY = 256  # steps kept as references before they are folded into sums (bounds what is held)
KEEP_ELEMENTS = 1 << 22  # logits kept for the training accuracy before their hits are counted (16 MiB in fp32)


class StepMeans:
    """Means of named scalars over the steps since the last `take`: each step's values kept as references (no
    operation), folded into sums every FOLD_EVERY steps; `take` reads the means (one copy to the host) and
    restarts."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.pending: list[torch.Tensor] = []  # each step's values in `names` order, one step after the other
        self.sums: torch.Tensor | None = None  # (len(names),) float32: what was folded since the last `take`
        self.count = 0  # steps added since the last `take`

    def add(self, values: dict[str, torch.Tensor]) -> None:
        names = tuple(values)
        if names != self.names:
            # the first step, or a step with other terms (a loss term that starts later): start over with these
            self.names, self.pending, self.sums, self.count = names, [], None, 0
        self.pending += [value.detach() for value in values.values()]
        self.count += 1
        if self.count % FOLD_EVERY == 0:
            self.fold()

    def fold(self) -> None:
        """Add the kept values into `sums` (one stack and one sum over steps)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        sums = torch.stack(pending).view(-1, len(self.names)).float().sum(dim=0)  # stack promotes mixed dtypes
        self.sums = sums if self.sums is None else self.sums + sums

    def take(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        self.fold()
        assert self.sums is not None
        means = (self.sums / self.count).tolist()
        self.sums, self.count = None, 0
        return dict(zip(self.names, means, strict=True))


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes this training step's values to the loggers (every `log_every_n_steps` batches that
    step the optimizer, counted as its logger connector counts them), or it is the epoch's last batch: the steps at
    which the running means are read. Called during training only, once a step: a few attribute reads rather than
    Lightning's own `should_update_logs`, which looks up the active loop (about 20 lines of Python a step)."""
    if trainer.is_last_batch:
        return True
    every = trainer.log_every_n_steps
    loop = trainer.fit_loop
    return bool(every) and (loop.epoch_loop._batches_that_stepped + 1) % every == 0 and not loop._should_accumulate()


def write_to_loggers(trainer: L.Trainer, values: dict[str, float]) -> None:
    """Write `values` to the trainer's loggers as the row Lightning writes for a training step's logged values: the
    step number it gives that row (the optimizer steps taken before this batch's) and the `epoch` column."""
    if not values:
        return
    row = {**values, "epoch": trainer.current_epoch}
    for logger in trainer.loggers:
        logger.log_metrics(row, step=trainer.global_step)


class TrainingAccuracy:
    """The share of a training epoch's samples whose top class is their label, with no operation and no copy to the
    host per step: each step's logits are kept as they are (a reference), and their hits are counted on the device
    every FOLD_EVERY steps (or KEEP_ELEMENTS logits) and at `take`.

    With `keep_logits=False` each step takes its classes at once (one argmax): where the student runs as CUDA
    graphs, its outputs are overwritten by its next replay and cannot be kept.
    """

    def __init__(self, keep_logits: bool = True) -> None:
        self.keep_logits = keep_logits
        self.kept: list[torch.Tensor] = []  # each step's logits (B, K), or its classes (B,)
        self.targets: list[torch.Tensor] = []
        self.kept_elements = 0
        self.hits: torch.Tensor | None = None
        self.seen = 0

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if self.keep_logits:
            self.kept.append(logits.detach())
            self.kept_elements += logits.numel()
        else:
            self.kept.append(logits.argmax(dim=-1))  # integer classes: never part of the autograd graph
        self.targets.append(target)
        if len(self.kept) == FOLD_EVERY or self.kept_elements > KEEP_ELEMENTS:
            self.fold()

    def fold(self) -> None:
        """Count the kept steps' hits into `hits`."""
        if not self.kept:
            return
        predicted = torch.cat([kept.argmax(dim=-1) if kept.dim() > 1 else kept for kept in self.kept])
        targets = torch.cat(self.targets)
        hits = (predicted == targets).sum(dtype=torch.float32)
        self.hits = hits if self.hits is None else self.hits + hits
        self.seen += targets.numel()
        self.kept, self.targets, self.kept_elements = [], [], 0

    def take(self) -> torch.Tensor:
        """The accuracy since the last `take` (a 0-dim tensor on the device), then restart."""
        self.fold()
        hits = self.hits if self.hits is not None else torch.zeros(())
        accuracy = hits / max(self.seen, 1)
        self.hits, self.seen = None, 0
        return accuracy
