"""Knowledge review, ReviewKD (Chen, Liu, Zhao, Jia, CVPR 2021): attention-based fusion of the student's maps, then
the hierarchical context loss against the teacher's.

Checked against the authors' code (dvlab-research/ReviewKD, `CIFAR-100/model/reviewkd.py` and `train.py`; its copy in
megvii-research/mdistiller, `mdistiller/distillers/ReviewKD.py`). Deliberate differences:
- Sizes. Their ABF nearest-resizes its fused map to a configured `out_shape` before the 3x3 conv (used for
  ShuffleNet/MobileNet students against larger teacher maps); here every fused map keeps its student level's size
  and must match its teacher's (a ValueError names the pair). The deeper map is resized to (H, W), not (H, H).
- `mid_channels` defaults to the authors' `min(512, student_channels[-1])` (256 for resnet8x4, 64 for resnet20).
- Warm-up: `min(epoch / warmup_epochs, 1)` with the 1-based epoch, as mdistiller; their own `train.py` passes the
  0-based epoch, so its first epoch has weight 0.
- fp32 compute with autocast off, a detached teacher, 0 for an empty batch (theirs: NaN from an empty mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from losses._common import check_int, compute_dtype, linear_warmup
from losses.consumes import FEATURES, Consumes

__all__ = ["ReviewKDLoss", "hierarchical_context_loss"]


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).sum() / max(a.numel(), 1)  # mean over all elements; 0 when there are none


def hierarchical_context_loss(
    student: torch.Tensor, teacher: torch.Tensor, pool_levels: Sequence[int] = (4, 2, 1)
) -> torch.Tensor:
    """HCL of one pair: MSE of the maps and of their average-pooled pyramids, weight 1 then halving per level.

    `(mse(s, t) + sum_k 2^-k mse(pool_l_k(s), pool_l_k(t))) / (1 + sum_k 2^-k)`, k = 1, 2, ... over the levels l of
    `pool_levels`, in their order, that are smaller than the map height H (`pool_l` = adaptive average pool to l x l).

    Args:
        student: (B, C, H, W).
        teacher: (B, C, H, W), the same shape.
        pool_levels: output sizes of the pooled levels.

    Returns:
        A scalar; 0 for B = 0.
    """
    total, weight, weights = _mse(student, teacher), 1.0, 1.0
    for level in pool_levels:
        if level >= student.shape[2]:
            continue
        weight /= 2
        pooled = _mse(F.adaptive_avg_pool2d(student, level), F.adaptive_avg_pool2d(teacher, level))
        total, weights = total + weight * pooled, weights + weight
    return total / weights


def _as_list(features: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [features] if isinstance(features, torch.Tensor) else list(features)


def _as_map(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, None, None] if x.dim() == 2 else x  # a pooled vector (B, C) is a (B, C, 1, 1) map


class _ABF(nn.Module):
    """Attention-based fusion of one student level (the authors' layer names and order)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, H, W) and the deeper level's (B, mid, h, w) -> output (B, C_out, H, W), mid (B, mid, H, W)."""
        x = self.conv1(x)
        if self.att_conv is not None and deeper is not None:
            deeper = F.interpolate(deeper, size=tuple(x.shape[-2:]), mode="nearest")
            attention = self.att_conv(torch.cat([x, deeper], dim=1))  # (B, 2, H, W)
            x = x * attention[:, 0:1] + deeper * attention[:, 1:2]
        return self.conv2(x), x


class ReviewKDLoss(nn.Module):
    """ReviewKD: the student's maps fused top-down by ABF modules, each compared with its teacher map by HCL.

    One ABF per student level. From the deepest level up, each reduces its map to `mid_channels` (1x1 conv + BN); every
    level but the deepest mixes in the deeper level's mid-channel result, nearest-resized to its size, with two
    sigmoid attention maps from a 1x1 conv on the concatenation; a 3x3 conv + BN gives the teacher's channel count
    (the output compared with the teacher), and the mixed mid-channel map goes on to the next shallower level.
    `L = min(epoch / warmup_epochs, 1) * sum_i hierarchical_context_loss(fused_i, teacher_i, pool_levels)`.
    Convs are kaiming-uniform (a = 1) initialised, as the authors'. The ABFs run in their parameters' dtype (fp32;
    `.double()` for float64) with autocast off, HCL in fp32 (fp64 stays fp64); the teacher is detached.

    Args:
        student_channels: channels of the student's maps, shallow to deep (resnet8x4: [64, 128, 256, 256]).
        teacher_channels: channels of the teacher's maps, one per student map.
        mid_channels: channels of the fused maps; None: the authors' `min(512, student_channels[-1])`.
        warmup_epochs: epochs of linear warm-up of the whole term (>= 0; 0 turns it off, and only then may `epoch`
            be left out).
        pool_levels: sizes l of the pooled levels of HCL, each used when smaller than the map height.

    Shapes:
        student_features / teacher_features: lists of (B, C_i, H_i, W_i) maps or (B, C_i) pooled vectors, shallow to
        deep, pair i with the same H_i, W_i. epoch: 1-based (>= 1), required unless `warmup_epochs` is 0. Returns a
        scalar, 0 for B = 0.
    """

    consumes = Consumes(FEATURES, extra=("epoch",))
    shape_arguments = ("student_channels", "teacher_channels")

    def __init__(
        self,
        student_channels: list[int],
        teacher_channels: list[int],
        mid_channels: int | None = None,
        warmup_epochs: int = 20,
        pool_levels: list[int] = [4, 2, 1],
    ) -> None:
        super().__init__()
        for name, channels in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
            if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
                raise ValueError(f"{name} must be a non-empty list of channel counts, got {channels!r}")
            for c in channels:
                check_int(name, c, minimum=1)
        if len(student_channels) != len(teacher_channels):
            raise ValueError(
                f"student_channels ({len(student_channels)} levels) and teacher_channels "
                f"({len(teacher_channels)}) must pair up one to one"
            )
        self.student_channels, self.teacher_channels = list(student_channels), list(teacher_channels)
        if mid_channels is None:
            mid_channels = min(512, self.student_channels[-1])
        self.mid_channels = check_int("mid_channels", mid_channels, minimum=1)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, minimum=0)
        if isinstance(pool_levels, (str, bytes)) or not isinstance(pool_levels, Sequence):
            raise ValueError(f"pool_levels must be a list of sizes >= 1, got {pool_levels!r}")
        self.pool_levels = tuple(check_int("pool_levels", level, minimum=1) for level in pool_levels)
        deepest = len(student_channels) - 1
        self.abfs = nn.ModuleList(
            _ABF(c_s, mid_channels, c_t, fuse=i < deepest)
            for i, (c_s, c_t) in enumerate(zip(student_channels, teacher_channels, strict=True))
        )

    @classmethod
    def from_shapes(
        cls, student_shapes: list[tuple[int, ...]], teacher_shapes: list[tuple[int, ...]], **kwargs
    ) -> ReviewKDLoss:
        """Build the loss from per-sample shapes (C, H, W) or (C,) (a (C, 1, 1) map), shallow to deep.

        Args:
            student_shapes: one shape per student level.
            teacher_shapes: one per teacher level, the same H, W as its student's.
            kwargs: the other constructor arguments.
        """
        if len(student_shapes) != len(teacher_shapes) or not student_shapes:
            raise ValueError(f"ReviewKD pairs levels one to one, got {len(student_shapes)} and {len(teacher_shapes)}")
        if given := sorted(set(kwargs) & set(cls.shape_arguments)):
            raise ValueError(f"{', '.join(given)} come from the feature shapes, do not pass them")
        for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes, strict=True)):
            if len(s) not in (1, 3) or len(t) not in (1, 3):
                raise ValueError(f"pair {i}: shapes must be (C, H, W) or (C,), got {tuple(s)} and {tuple(t)}")
            if (tuple(s[1:]) or (1, 1)) != (tuple(t[1:]) or (1, 1)):
                raise ValueError(f"pair {i}: student {tuple(s)} and teacher {tuple(t)} differ in spatial size")
        return cls([s[0] for s in student_shapes], [t[0] for t in teacher_shapes], **kwargs)

    def extra_repr(self) -> str:
        return f"warmup_epochs={self.warmup_epochs}, pool_levels={self.pool_levels}"

    def warmup(self, epoch: float | None) -> float:
        """`min(epoch / warmup_epochs, 1)` for the 1-based `epoch` (>= 1); 1 when warm-up is off. Without an epoch
        it raises unless warm-up is off."""
        return linear_warmup(epoch, self.warmup_epochs, "ReviewKDLoss")

    def fuse(self, student_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF outputs, shallow to deep: (B, C_s_i, H_i, W_i) maps -> (B, C_t_i, H_i, W_i), in the ABFs' dtype."""
        dtype = self.abfs[0].conv1[0].weight.dtype
        outputs, deeper = [], None
        for abf, x in zip(reversed(self.abfs), reversed(student_maps), strict=True):
            out, deeper = abf(x.to(dtype), deeper)
            outputs.append(out)
        return outputs[::-1]

    def forward(
        self,
        student_features: torch.Tensor | Sequence[torch.Tensor],
        teacher_features: torch.Tensor | Sequence[torch.Tensor],
        epoch: float | None = None,
    ) -> torch.Tensor:
        students = [_as_map(s) for s in _as_list(student_features)]
        teachers = [_as_map(t.detach()) for t in _as_list(teacher_features)]
        if not len(students) == len(teachers) == len(self.abfs):
            raise ValueError(
                f"ReviewKDLoss was built for {len(self.abfs)} pairs, got {len(students)} and {len(teachers)}"
            )
        for i, (s, t) in enumerate(zip(students, teachers, strict=True)):
            if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0]:
                raise ValueError(
                    f"pair {i}: need (B, C, H, W) or (B, C) with one B, got {tuple(s.shape)}, {tuple(t.shape)}"
                )
            if s.shape[-2:] != t.shape[-2:]:  # the fused map keeps the student's size
                raise ValueError(
                    f"pair {i}: student map {tuple(s.shape)} and teacher map {tuple(t.shape)} differ in size"
                )
            if s.shape[1] != self.student_channels[i] or t.shape[1] != self.teacher_channels[i]:
                raise ValueError(
                    f"pair {i}: the loss was built for {self.student_channels[i]} student and "
                    f"{self.teacher_channels[i]} teacher channels, got {tuple(s.shape)} and {tuple(t.shape)}"
                )
        factor = self.warmup(epoch)
        dtype = torch.promote_types(compute_dtype(students[0]), self.abfs[0].conv1[0].weight.dtype)
        if students[0].shape[0] == 0:  # exactly 0, connected to the student and to the ABFs' parameters
            return sum(s.to(dtype).sum() for s in students) + 0.0 * sum(p.to(dtype).sum() for p in self.parameters())
        with torch.autocast(students[0].device.type, enabled=False):
            fused = self.fuse(students)
            pairs = zip(fused, teachers, strict=True)
            losses = [hierarchical_context_loss(f.to(dtype), t.to(dtype), self.pool_levels) for f, t in pairs]
        return factor * sum(losses[1:], losses[0])
