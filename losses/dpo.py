"""Direct preference optimization (Rafailov et al., 2023), the loss that trains AlignDistil's DPO and reverse-DPO
teachers; docs/methods.md, section 7 (last paragraph).

Not a teacher-student logit term: the policy's and the frozen reference's summed response log-probabilities come in
(`sequence_logps` computes them from logits), one scalar comes out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from losses._common import batch_mean, check_int, check_positive, compute_dtype
from losses.consumes import OBJECTIVE, Consumes

__all__ = ["DPOLoss", "implicit_rewards", "sequence_logps"]


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Summed log-probabilities of the labelled tokens, one value per sequence.

    `sum_t log softmax(logits[b, t])[labels[b, t]]` over the positions whose label is not `ignore_index`; a sequence
    with no labelled position gets 0. Computed in fp32 (fp64 stays fp64) on the labelled rows only (a prompt's rows are
    never cast or softmaxed), with `F.cross_entropy`, which keeps one log-softmax of those rows for the backward pass.

    Args:
        logits: (B, T, V), any float dtype, ALIGNED with `labels` by the caller: for a causal LM `logits[:, :-1]` with
            `labels[:, 1:]`.
        labels: (B, T) integer token ids; `ignore_index` marks the positions left out (prompt, padding).
        ignore_index: the label of the positions left out.

    Returns:
        (B,) summed log-probabilities in the compute dtype.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"sequence_logps expects (B, T, V) logits and (B, T) labels, got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer token ids, got {labels.dtype}")
    ignore_index = check_int("ignore_index", ignore_index)
    dtype = compute_dtype(logits)
    valid = labels != ignore_index  # (B, T)
    batch_index = valid.nonzero()[:, 0]  # (N,) the sequence of each labelled token
    rows = logits[valid].to(dtype)  # (N, V)
    token_logps = -F.cross_entropy(rows, labels[valid], reduction="none")  # (N,)
    return torch.zeros(logits.shape[0], dtype=dtype, device=logits.device).index_add(0, batch_index, token_logps)


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward `beta * (log pi(y) - log ref(y))` per sequence, for metrics (reward accuracy, margins).

    The reference is detached; the policy is not (detach the result to log it). Computed in fp32 (fp64 stays fp64).

    Shapes: policy_logps (B,), ref_logps (B,) -> (B,).
    """
    if policy_logps.shape != ref_logps.shape:
        raise ValueError(f"policy log-probs {tuple(policy_logps.shape)} != reference {tuple(ref_logps.shape)}")
    dtype = compute_dtype(policy_logps)
    return beta * (policy_logps.to(dtype) - ref_logps.detach().to(dtype))


class DPOLoss(nn.Module):
    """The sigmoid DPO loss on summed response log-probabilities (docs/methods.md, section 7):

    `L = mean_B -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`

    with `pi_c`, `pi_r` the policy's summed log-probabilities of the chosen and the rejected response and `ref_c`,
    `ref_r` the frozen reference model's (`sequence_logps`). `F.logsigmoid` keeps large margins finite. The reference
    log-probabilities are detached; computed in fp32 (fp64 stays fp64). An empty batch gives 0 with zero (finite)
    gradients. At `pi = ref` the loss is `log 2`. The reverse-DPO model is this loss with chosen and rejected swapped.

    Args:
        beta: the KL-penalty strength of DPO (> 0); AlignDistil's DPO teachers use 0.1.

    Shapes:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: (B,) each.
        Returns a scalar, the mean over the pairs.
    """

    consumes = Consumes(OBJECTIVE)

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = check_positive("beta", beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
    ) -> torch.Tensor:
        shapes = {
            tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
        }
        if len(shapes) != 1 or policy_chosen_logps.dim() != 1:
            raise ValueError(f"DPOLoss expects four (B,) log-prob tensors of one shape, got {sorted(shapes)}")
        chosen = implicit_rewards(policy_chosen_logps, ref_chosen_logps, self.beta)  # (B,)
        rejected = implicit_rewards(policy_rejected_logps, ref_rejected_logps, self.beta)  # (B,)
        return batch_mean(-F.logsigmoid(chosen - rejected))
