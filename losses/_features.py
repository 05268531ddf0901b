"""Pieces shared by the feature losses: one feature or a list of them -> paired lists, the fp32 compute dtype with a
detached teacher, per-sample flattening and a zero that stays in the student's graph."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from losses._common import compute_dtype

Features = torch.Tensor | Sequence[torch.Tensor]


def feature_pairs(student: Features, teacher: Features, loss: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pair the student's features with the teacher's; a single tensor is taken as a list of one.

    Args:
        student: a tensor `(B, ...)` or a non-empty list of them, one per paired layer.
        teacher: the same for the teacher, as many as the student's.
        loss: the loss's name, for the error messages.

    Returns:
        `(student_i, teacher_i)` per pair.
    """
    students = [student] if isinstance(student, torch.Tensor) else list(student)
    teachers = [teacher] if isinstance(teacher, torch.Tensor) else list(teacher)
    if len(students) != len(teachers):
        raise ValueError(f"{loss} got {len(students)} student features but {len(teachers)} teacher features")
    if not students:
        raise ValueError(f"{loss} needs at least one pair of features, got empty lists")
    for s, t in zip(students, teachers, strict=True):
        if not isinstance(s, torch.Tensor) or not isinstance(t, torch.Tensor):
            raise ValueError(f"{loss} features must be tensors, got {type(s).__name__} and {type(t).__name__}")
    return list(zip(students, teachers, strict=True))


def prepare_pair(student: torch.Tensor, teacher: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check both have the same batch size; return both in the student's compute dtype, the teacher detached.

    Args:
        student: (B, ...).
        teacher: (B, ...), any other dims.
        loss: the loss's name, for the error message.
    """
    if student.dim() == 0 or teacher.dim() == 0 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{loss}: student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)} "
            "must share the batch dim"
        )
    dtype = compute_dtype(student)
    return student.to(dtype), teacher.detach().to(dtype)


def flatten_per_sample(x: torch.Tensor) -> torch.Tensor:
    """`(B, ...)` -> `(B, prod(...))`; unlike `view(B, -1)`, works for an empty batch and a `(B,)` feature."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def graph_zero(student: torch.Tensor) -> torch.Tensor:
    """A scalar 0 in the student's compute dtype that stays in its graph: `backward()` gives a zero gradient."""
    return student.to(compute_dtype(student)).sum() * 0.0


def mean_all(values: torch.Tensor) -> torch.Tensor:
    """Mean over all entries, 0 (in the graph) when there are none."""
    return values.sum() / max(values.numel(), 1)


def sum_over_pairs(
    student: Features,
    teacher: Features,
    pair_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loss: str,
) -> torch.Tensor:
    """`sum_i pair_loss(s_i, t_i)` over the paired features, each pair prepared by `prepare_pair` first."""
    values = [pair_loss(*prepare_pair(s, t, loss)) for s, t in feature_pairs(student, teacher, loss)]
    return sum(values[1:], values[0])
