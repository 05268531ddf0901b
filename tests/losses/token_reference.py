"""The float64 reference and the inputs shared by the token-divergence tests."""

from __future__ import annotations

import torch

from tests.losses.contract import UPSTREAM

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "tvd"]
# (divergence, beta): every divergence, JSD at an inner beta and at both special-cased ends
CASES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("jsd", 0.0), ("jsd", 1.0), ("tvd", 0.5)]
B, T, V = 2, 5, 7


def token_labels(batch: int, steps: int, seed: int, masked: tuple[tuple[int, int], ...] = ((0, 1), (1, 3))):
    """Seeded (batch, steps) labels with the `masked` positions set to -100."""
    labels = torch.randint(0, V, (batch, steps), generator=torch.Generator().manual_seed(seed))
    for b, t in masked:
        labels[b, t] = -100
    return labels


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """`sum p log(p / q)` with `xlogy` (p log q, 0 where p = 0): the 0 log 0 = 0 convention of a KL."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum()


def naive_divergence(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    divergence: str,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Float64 reference written from the formulas, one token at a time, plain autograd; mean over valid tokens."""
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for s_seq, t_seq, y_seq in zip(student.double(), teacher.double(), labels, strict=True):
        for s_row, t_row, y in zip(s_seq, t_seq, y_seq, strict=True):
            if y == -100:
                continue
            count += 1
            s_exp = torch.exp(s_row / temperature - (s_row / temperature).max())
            t_exp = torch.exp(t_row / temperature - (t_row / temperature).max())
            p_s, p_t = s_exp / s_exp.sum(), t_exp / t_exp.sum()
            if divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0):
                value = kl(p_t, p_s)
            elif divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
                value = kl(p_s, p_t)
            elif divergence == "jsd":
                m = beta * p_t + (1 - beta) * p_s
                value = beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
            else:
                value = 0.5 * (p_t - p_s).abs().sum()
            total = total + value
    return total / max(count, 1)


def loss_and_grad(loss_fn, student, teacher, labels, upstream: float = UPSTREAM):
    """Loss value and the student's gradient of `upstream * loss`."""
    student = student.detach().clone().requires_grad_()
    value = loss_fn(student, teacher, labels)
    (upstream * value).backward()
    return value.detach(), student.grad
