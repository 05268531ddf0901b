"""What a training step logs, kept on the device and handed to Lightning only at its logging steps.

`LightningModule.log` costs about a millisecond of host time per call (Lightning's result collection moves every
value it holds), and on a GPU a logged value read for the progress bar waits for the device's queue. A step that
logs its loss and each loss term that way is bound by the host, not the accelerator
(benchmarks/step_overhead.py). So the step adds its scalars to running sums on their device (one small kernel),
and the mean since the last logging step is logged at Lightning's own logging steps (`trainer.log_every_n_steps`)
and at the last batch of each epoch.
"""

from __future__ import annotations

import lightning as L
import torch


class StepMeans:
    """Running sums of named scalars on their device; `take` reads the means (one copy to the host) and restarts."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.sums: torch.Tensor | None = None
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        names = tuple(values)
        with torch.no_grad():
            stacked = torch.stack(list(values.values()))
            if names != self.names:
                # the first step, or a step with other terms (a loss term that starts later): start over with these
                self.names, self.sums, self.count = names, torch.zeros_like(stacked, dtype=torch.float32), 0
            self.sums += stacked
        self.count += 1

    def take(self) -> dict[str, float]:
        if self.sums is None or self.count == 0:
            return {}
        means = (self.sums / self.count).tolist()
        self.sums.zero_()
        self.count = 0
        return dict(zip(self.names, means, strict=True))


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes the step's values to the loggers at this training step, or it is the epoch's last:
    the steps at which the running means are logged. (Lightning's own test, on its logger connector.)"""
    return trainer.is_last_batch or trainer._logger_connector.should_update_logs


class TrainingAccuracy:
    """The share of a training epoch's samples whose top class is their label, counted on the device (no copy to
    the host per step, unlike a torchmetrics metric logged every step)."""

    def __init__(self) -> None:
        self.hits: torch.Tensor | None = None
        self.seen = 0

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        with torch.no_grad():
            hits = (logits.argmax(dim=-1) == target).sum()
            if self.hits is None:
                self.hits = hits
            else:
                self.hits += hits
        self.seen += target.numel()

    def take(self) -> torch.Tensor:
        """The accuracy since the last `take` (a 0-dim tensor on the device), then restart."""
        accuracy = self.hits.float() / max(self.seen, 1)
        self.hits, self.seen = None, 0
        return accuracy
