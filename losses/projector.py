"""Projectors that map a student feature to its teacher's shape, for losses that compare features element-wise
(FitNet's hint, hidden-state distillation); docs/methods.md, section 11."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FeatureProjector", "can_project", "projector_for"]


def _map_rule(student_hw: tuple[int, int], teacher_hw: tuple[int, int]) -> str | None:
    """The conv rule for (H, W) maps: "same", "half", "double", "valid", or None when none applies."""
    (s_h, s_w), (t_h, t_w) = student_hw, teacher_hw
    if (s_h, s_w) == (t_h, t_w):
        return "same"
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        return "half"  # the student map is twice as large: stride-2 conv halves it
    if (2 * s_h, 2 * s_w) == (t_h, t_w):
        return "double"  # the student map is half as large: transposed conv doubles it
    if s_h >= t_h and s_w >= t_w:
        return "valid"
    return None


def can_project(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> str | None:
    """None if a student feature of `student_shape` can be mapped to `teacher_shape`, else the reason it cannot.

    Both are per-sample shapes (no batch dim). Equal shapes can always be mapped (by `nn.Identity`).

    Args:
        student_shape: e.g. (C, H, W) for a map, (T, D) for tokens, (D,) for a vector.
        teacher_shape: the teacher's per-sample shape.

    Returns:
        None, or a short phrase such as "the student map is smaller than the teacher's but not by exactly half".
    """
    student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
    if not student_shape or not teacher_shape:
        return "a feature needs at least one dim besides the batch"
    if any(not isinstance(d, int) or d < 1 for d in student_shape + teacher_shape):
        return "every dim must be a positive integer"
    if student_shape == teacher_shape:
        return None
    if len(student_shape) != len(teacher_shape):
        return f"the ranks differ ({len(student_shape)} vs {len(teacher_shape)} dims)"
    if len(student_shape) == 3:  # (C, H, W) maps: a conv changes channels and spatial size
        if _map_rule(student_shape[1:], teacher_shape[1:]) is None:
            return "the student map is smaller than the teacher's but not by exactly half (or larger in only one dim)"
        return None
    if student_shape[:-1] != teacher_shape[:-1]:
        return "only the last dim may differ (a linear map on it)"
    return None


class FeatureProjector(nn.Module):
    """Maps a student feature of per-sample shape `student_shape` to the teacher's `teacher_shape`.

    - (C, H, W) maps: FitNet's regressor, `Conv2d -> BatchNorm2d -> ReLU`. The conv is 1x1 when the spatial sizes
      match; a 3x3 stride-2 conv (padding 1) when the student map is twice as large; a `ConvTranspose2d` (kernel 4,
      stride 2, padding 1) when it is half as large; else a valid conv of kernel `(1 + s_H - t_H, 1 + s_W - t_W)`
      (student larger or equal in both dims). The released code decides from the heights only; here both dims must
      fit the rule (a map twice as tall but equally wide gets the valid conv, not a stride-2 one).
    - any other rank where only the last dim differs ((D,) vectors, (T, D) tokens): `nn.Linear(D_s, D_t)` on it.

    Equal shapes are accepted (a 1x1 conv regressor resp. a square linear map, as FitNet's released code builds
    even when the shapes match); `projector_for` returns `nn.Identity()` for them instead.

    Args:
        student_shape: the student's per-sample feature shape (no batch dim).
        teacher_shape: the teacher's per-sample feature shape (no batch dim).

    Shapes:
        input: (B, *student_shape); returns (B, *teacher_shape).
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.student_shape, self.teacher_shape = tuple(student_shape), tuple(teacher_shape)
        reason = can_project(self.student_shape, self.teacher_shape)
        if reason is not None:
            raise ValueError(
                f"cannot project student shape {self.student_shape} to teacher {self.teacher_shape}: {reason}"
            )
        if len(self.student_shape) == 3:
            self.proj = _map_regressor(self.student_shape, self.teacher_shape)
        else:
            self.proj = nn.Linear(self.student_shape[-1], self.teacher_shape[-1])

    def extra_repr(self) -> str:
        return f"student_shape={self.student_shape}, teacher_shape={self.teacher_shape}"

    def forward(self, student_feature: torch.Tensor) -> torch.Tensor:
        if tuple(student_feature.shape[1:]) != self.student_shape:
            raise ValueError(f"expected a (B, *{self.student_shape}) feature, got {tuple(student_feature.shape)}")
        return self.proj(student_feature)


def _map_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Sequential:
    """FitNet's regressor for (C, H, W) maps: conv (chosen by `_map_rule`) -> BatchNorm2d -> ReLU."""
    (s_c, s_h, s_w), (t_c, t_h, t_w) = student_shape, teacher_shape
    rule = _map_rule((s_h, s_w), (t_h, t_w))
    if rule == "same":
        conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=1)
    elif rule == "half":
        conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif rule == "double":
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    else:  # "valid": (s - k + 1) = t in each dim
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), nn.ReLU())


def projector_for(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """`nn.Identity()` when the per-sample shapes are equal, else a `FeatureProjector` (ValueError if impossible).

    FitNet's released code puts its 1x1 regressor even between maps of equal shape; build `FeatureProjector`
    directly to reproduce that.

    Args:
        student_shape: the student's per-sample feature shape (no batch dim).
        teacher_shape: the teacher's per-sample feature shape (no batch dim).
    """
    if tuple(student_shape) == tuple(teacher_shape):
        reason = can_project(tuple(student_shape), tuple(teacher_shape))
        if reason is not None:
            raise ValueError(f"cannot project student shape {tuple(student_shape)}: {reason}")
        return nn.Identity()
    return FeatureProjector(student_shape, teacher_shape)
