"""FeatureProjector, projector_for and can_project (FitNet's regressor rules, docs/methods.md, section 11)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from losses.projector import FeatureProjector, can_project, projector_for


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "layer", "kernel", "stride"),
    [
        ((8, 4, 4), (16, 4, 4), nn.Conv2d, (1, 1), (1, 1)),  # same size: 1x1
        ((8, 8, 8), (16, 4, 4), nn.Conv2d, (3, 3), (2, 2)),  # student twice as large: 3x3 stride 2
        ((8, 8, 6), (4, 4, 3), nn.Conv2d, (3, 3), (2, 2)),  # twice as large, not square
        ((8, 4, 4), (16, 8, 8), nn.ConvTranspose2d, (4, 4), (2, 2)),  # half as large: transposed conv
        ((8, 7, 7), (16, 4, 4), nn.Conv2d, (4, 4), (1, 1)),  # larger by 3 pixels: valid 4x4 conv
        ((8, 8, 5), (16, 4, 5), nn.Conv2d, (5, 1), (1, 1)),  # twice as tall only: valid conv, not stride 2
        ((8, 4, 4), (8, 4, 4), nn.Conv2d, (1, 1), (1, 1)),  # equal shapes: FitNet's 1x1 regressor
    ],
)
def test_map_rules_produce_the_teacher_shape(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], layer: type, kernel: tuple, stride: tuple
) -> None:
    assert can_project(student_shape, teacher_shape) is None
    projector = FeatureProjector(student_shape, teacher_shape)
    conv, norm, relu = projector.proj
    assert type(conv) is layer and conv.kernel_size == kernel and conv.stride == stride
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == teacher_shape[0] and isinstance(relu, nn.ReLU)
    student = torch.randn(3, *student_shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = projector(student)
    assert out.shape == (3, *teacher_shape)
    assert (out >= 0).all()  # after the ReLU
    out.square().mean().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"), [((12,), (20,)), ((5, 12), (5, 20)), ((2, 5, 3, 12), (2, 5, 3, 8))]
)
def test_vectors_and_tokens_get_a_linear_map_on_the_last_dim(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]
) -> None:
    projector = FeatureProjector(student_shape, teacher_shape)
    assert isinstance(projector.proj, nn.Linear)
    assert (projector.proj.in_features, projector.proj.out_features) == (student_shape[-1], teacher_shape[-1])
    student = torch.randn(4, *student_shape, generator=torch.Generator().manual_seed(1))
    out = projector(student)
    assert out.shape == (4, *teacher_shape)
    torch.testing.assert_close(out[1], projector.proj(student[1]))  # applied per position


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "reason"),
    [
        ((8, 4, 4), (8, 6, 6), "not by exactly half"),  # student smaller, not half
        ((8, 8, 4), (8, 4, 8), "larger in only one dim"),  # larger in H, smaller in W
        ((8, 4, 4), (8, 8, 4), "not by exactly half"),  # half only in H
        ((64,), (8, 8), "the ranks differ"),
        ((5, 12), (6, 12), "only the last dim may differ"),  # token counts differ
        ((8, 4, 4), (8, 4), "the ranks differ"),
        ((), (4,), "at least one dim"),
        ((0, 4), (3, 4), "positive integer"),
    ],
)
def test_impossible_projections_give_a_reason(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], reason: str
) -> None:
    assert reason in can_project(student_shape, teacher_shape)
    with pytest.raises(ValueError, match=rf"cannot project student shape .*{reason}") as info:
        projector_for(student_shape, teacher_shape)
    if student_shape != teacher_shape:
        assert f"{student_shape}" in str(info.value) and f"{teacher_shape}" in str(info.value)


def test_projector_for_returns_identity_for_equal_shapes() -> None:
    assert isinstance(projector_for((8, 4, 4), (8, 4, 4)), nn.Identity)
    assert isinstance(projector_for([16], (16,)), nn.Identity)
    assert isinstance(projector_for((8, 4, 4), (16, 4, 4)), FeatureProjector)
    assert can_project((8, 4, 4), (8, 4, 4)) is None


def test_forward_refuses_a_feature_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"expected a \(B, \*\(8, 4, 4\)\) feature, got \(2, 8, 5, 5\)"):
        FeatureProjector((8, 4, 4), (16, 4, 4))(torch.zeros(2, 8, 5, 5))
