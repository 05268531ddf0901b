"""The question-aware gate of the draft's visual compressor: a small MLP over the mean of an input's question
(text) positions and the mean of its image positions gives one logit per primitive."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """`x` `[B, T, D]` averaged over the positions where `where` `[B, T]` is true: `[B, D]` (zeros for none)."""
    weights = where.to(x.dtype)[..., None]
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class QuestionGate(nn.Module):
    """`logits([B, T, D] inputs, question [B, T], image [B, T]) -> [B, E]`; `choose` picks one primitive per row
    (Gumbel-softmax in training, the argmax in evaluation), `soft` weighs them all.

    Args:
        width: D, the width of an input position (the target's feature and the next embedding, side by side).
        experts: E, the primitives to choose from.
        hidden: width of the MLP's hidden layer.
        temperature: of the softmax over the logits (Gumbel noise added in training).
    """

    def __init__(self, width: int, experts: int, hidden: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.norm = nn.LayerNorm(2 * width, elementwise_affine=False)  # target features and image features differ
        self.mlp = nn.Sequential(nn.Linear(2 * width, hidden), nn.GELU(), nn.Linear(hidden, experts))

    def logits(self, inputs: torch.Tensor, question: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([masked_mean(inputs, question), masked_mean(inputs, image)], dim=-1)  # (B, 2D)
        return self.mlp(self.norm(pooled.float())).float()  # (B, E)

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The primitive of each row `[B]` and its weight `[B]`: exactly 1 in value, with the gradient of the chosen
        primitive's softmax weight (the straight-through estimator of hard Gumbel-softmax), so the gate learns
        from what the chosen primitive's tokens do to the loss. Random in training, the argmax in evaluation."""
        if self.training:
            soft = F.gumbel_softmax(logits, tau=self.temperature, hard=False)
        else:
            soft = torch.softmax(logits / self.temperature, dim=-1)
        index = soft.argmax(dim=-1)  # in evaluation, the argmax of the logits themselves
        chosen = soft.gather(1, index[:, None]).squeeze(1)
        return index, 1 + (chosen - chosen.detach())  # (1 + s) - s would round

    def soft(self, logits: torch.Tensor) -> torch.Tensor:
        """Every primitive's weight `[B, E]`, summing to 1 per row: the softmax at the temperature, without noise in
        training too, so that the scale the draft reads is the same in training and in decoding."""
        return torch.softmax(logits / self.temperature, dim=-1)
