"""Direct preference optimization: the student is the policy, the frozen teacher is the reference model.

Trains the DPO and reverse-DPO models that AlignDistil distills from (docs/methods.md, section 7); the reverse
model is the same recipe with `data.swap=true`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.data.interface import TokenData
from distill.errors import DistillError
from distill.tasks.base import DistillationTask, mean_metrics
from distill.tasks.context import BuildContext
from distill.tasks.spec import FrozenRole, SummaryRow, TaskSpec, register_task
from losses import DPOLoss, implicit_rewards, sequence_logps

Batch = dict[str, torch.Tensor]


def pair_logps(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs `[B]` of the chosen and the rejected sequences, in one forward pass."""
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

    def padded(name: str, value: int) -> torch.Tensor:
        both = [batch[f"{side}_{name}"] for side in ("chosen", "rejected")]
        return torch.cat([nn.functional.pad(x, (0, width - x.shape[1]), value=value) for x in both])

    ids, mask, labels = padded("input_ids", 0), padded("attention_mask", 0), padded("labels", -100)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (2B, T-1, V)
    logps = sequence_logps(logits, labels[:, 1:])  # (2B,)
    return logps.chunk(2)


class DPOTask(DistillationTask):
    """Trains the policy (student, initialised from the reference) with `DPOLoss` against the frozen reference.

    Validation and test report, on held-out pairs: `loss`, `reward_acc` (share of pairs whose implicit reward
    margin `beta * ((pi_c - ref_c) - (pi_r - ref_r))` is positive), `margin` (its mean), `pref_acc` (share where the
    policy gives the chosen response a higher log-probability than the rejected one) and `ref_pref_acc` (the same
    for the reference model).

    Args:
        student: the policy.
        teacher: the frozen reference model.
        objective: the DPO loss.
        common: `optimizer`, `scheduler`, `sources`, `recipe` and `data_record`, as every task takes them
            (`DistillationTask`).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        objective: DPOLoss,
        **common: Any,
    ) -> None:
        if teacher is None:
            raise ValueError("DPO needs the reference model as its teacher")
        super().__init__(student, {"teacher": teacher}, **common)
        self.objective = objective
        names = ("loss", "reward_acc", "margin", "pref_acc", "ref_pref_acc")
        self.means = mean_metrics(names)

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        policy_c, policy_r = pair_logps(self.student, batch)
        with torch.no_grad():
            ref_c, ref_r = pair_logps(self.teacher, batch)
        margin = implicit_rewards(policy_c, ref_c, self.objective.beta) - implicit_rewards(
            policy_r, ref_r, self.objective.beta
        )
        loss = self.objective(policy_c, policy_r, ref_c, ref_r)
        # named if the loss is not finite: which model's log-probabilities went bad
        self.last_parts = {
            "dpo": loss,
            "policy_logps": torch.stack([policy_c, policy_r]).detach(),
            "reference_logps": torch.stack([ref_c, ref_r]),
        }
        return {
            "loss": loss,
            "reward_acc": (margin > 0).float(),
            "margin": margin.detach(),
            "pref_acc": (policy_c > policy_r).float(),
            "ref_pref_acc": (ref_c > ref_r).float(),
        }

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        values = self.step(batch)
        self.log_training({"loss": values["loss"], "reward_acc": values["reward_acc"].mean()})
        return values["loss"]

    def evaluate_batch(self, batch: Batch, batch_idx: int, stage: str) -> None:
        values = self.step(batch)
        pairs = values["margin"].numel()
        for name, value in values.items():
            self.log_mean(stage, name, value.mean(), pairs, prog_bar=name == "reward_acc")


def build(ctx: BuildContext) -> DPOTask:
    if not isinstance(ctx.data, TokenData):
        raise DistillError(f"data: task dpo reads preference pairs; {ctx.recipe.data['name']} has none")
    return DPOTask(ctx.student(), ctx.teacher, ctx.objective(), **ctx.common())


SPEC = register_task(
    TaskSpec(
        name="dpo",
        description="direct preference optimization of the student against the frozen reference (the teacher)",
        build=build,
        monitor=("loss", "min"),
        summary=(
            SummaryRow("DPO loss", "loss"),
            SummaryRow("preference accuracy, policy", "pref_acc", percent=True),
            SummaryRow("preference accuracy, reference", "ref_pref_acc", percent=True),
            SummaryRow("implicit reward accuracy", "reward_acc", percent=True),
            SummaryRow("mean implicit reward margin", "margin"),
        ),
        frozen={"teacher": FrozenRole("the reference model")},
        objective="dpo",
        teacher_task="causal_lm",  # a reference trained from `teacher.train` learns the text
    )
)
