"""RKDLoss and PKTLoss (docs/methods.md, section 11): golden values by hand, the degenerate batches the released code
turns into NaN, and argument checks. The shared contract is in test_feature_losses.py."""

from __future__ import annotations

import math

import pytest
import torch

from losses.relational import PKTLoss, RKDLoss, pairwise_distances, unit_differences
from tests.losses import contract
from tests.losses.contract import logits
from tests.losses.feature_reference import ref_rkd


def test_rkd_golden_value_by_hand() -> None:
    # Student: 0, 1, 2 on a line; teacher: an equilateral triangle of side 1.
    # Distances: student (1, 1, 2) twice, mean 4/3 -> 3/4, 3/4, 3/2; teacher all 1. Smooth-L1 of -1/4 (4 entries)
    #   and 1/2 (2 entries): 4/32 + 2/8 = 3/8 over 9 entries = 1/24.
    # Angles: the student's are +-1, the teacher's 1 on j = k and 1/2 off it; the six off-diagonal entries differ by
    #   1/2 (four times, smooth-L1 1/8) or -3/2 (twice, smooth-L1 1): 5/2 over 27 entries = 5/54.
    student = torch.tensor([[0.0], [1.0], [2.0]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert RKDLoss(1.0, 0.0)(student, teacher).item() == pytest.approx(1 / 24, rel=1e-6)
    assert RKDLoss(0.0, 1.0)(student, teacher).item() == pytest.approx(5 / 54, rel=1e-6)
    assert RKDLoss()(student, teacher).item() == pytest.approx(25 / 24 + 50 * 5 / 54, rel=1e-6)


def test_rkd_is_zero_for_two_samples_and_invariant_to_similarity_transforms() -> None:
    # two points relate in one way only: the normalized distance is 1, the angles are 1 or 0
    assert RKDLoss()(logits(2, 5, seed=0), logits(2, 3, seed=1)).item() == pytest.approx(0.0, abs=1e-6)
    teacher = logits(5, 4, seed=2, dtype=torch.float64)
    rotation = torch.linalg.qr(logits(4, 4, seed=3, dtype=torch.float64))[0]
    student = 3.0 * teacher @ rotation + 1.5  # scaled, rotated, shifted
    assert RKDLoss()(student, teacher).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rkd_at_batch_one_is_zero_in_the_graph(dtype: torch.dtype) -> None:
    student = logits(1, 6, seed=4, dtype=dtype).requires_grad_()
    grad = contract.assert_zero_with_finite_gradients(RKDLoss(), student, logits(1, 4, seed=5, dtype=dtype))
    assert torch.equal(grad, torch.zeros_like(grad))


def test_rkd_with_coinciding_rows_is_finite_with_a_finite_gradient() -> None:
    student = logits(4, 6, seed=6, dtype=torch.float64)
    student[2] = student[0]
    student.requires_grad_()
    teacher = logits(4, 5, seed=7, dtype=torch.float64)
    teacher[3] = teacher[1]
    value = RKDLoss()(student, teacher)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().max() < 1e3  # no 1e12-scaled gradient through the zero difference x_2 - x_0
    # the coinciding pair has distance 1e-6 (the clamp) and counts as a positive entry, as in the released code
    d = pairwise_distances(student.detach())
    assert d[0, 2].item() == pytest.approx(1e-6) and d[0, 0].item() == 0.0


def test_rkd_on_distinct_rows_matches_the_reference_for_maps_flattened_per_sample() -> None:
    student, teacher = logits(3, 2, 2, 2, seed=8, dtype=torch.float64), logits(3, 4, 3, seed=9, dtype=torch.float64)
    torch.testing.assert_close(RKDLoss()(student, teacher), ref_rkd(student, teacher), rtol=1e-10, atol=0)


def test_unit_differences_hold_the_normalized_differences() -> None:
    x = logits(3, 4, seed=10, dtype=torch.float64)
    u = unit_differences(x)
    assert u.shape == (3, 3, 4)
    torch.testing.assert_close(u[0, 2], (x[2] - x[0]) / (x[2] - x[0]).norm())
    assert torch.equal(u[1, 1], torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"distance_weight": -1.0}, "distance_weight"),
        ({"angle_weight": -0.5}, "angle_weight"),
        ({"angle_weight": float("nan")}, "angle_weight"),
        ({"distance_weight": float("inf")}, "distance_weight"),
        ({"distance_weight": "25"}, "distance_weight"),
    ],
)
def test_rkd_invalid_weights_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RKDLoss(**kwargs)


def test_rkd_constructor_is_annotated_defaulted_and_documented() -> None:
    params = contract.assert_constructor_annotated_and_documented(RKDLoss, ["distance_weight", "angle_weight"])
    assert [p.default for p in params] == [25.0, 50.0]


def test_pkt_golden_value_by_hand() -> None:
    # Teacher rows orthogonal: S = [[1, 1/2], [1/2, 1]] -> P rows (2/3, 1/3). Student rows parallel: S = 1 -> Q = 1/2.
    # mean over 4 entries of P log(P / Q) = (2/3 ln(4/3) + 1/3 ln(2/3)) / 2.
    teacher = torch.eye(2)
    student = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    expected = (2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)) / 2
    assert PKTLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert PKTLoss()(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    # only directions count: a positive scale per sample changes nothing
    features = logits(5, 6, seed=11)
    scaled = features * torch.arange(1.0, 6.0)[:, None]
    assert PKTLoss()(scaled, features).item() == pytest.approx(0.0, abs=1e-6)


def test_pkt_with_a_zero_row_has_a_finite_gradient() -> None:
    student = logits(4, 6, seed=12, dtype=torch.float64)
    student[1] = 0.0
    student.requires_grad_()
    value = PKTLoss()(student, logits(4, 3, seed=13, dtype=torch.float64))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("eps", [0.0, -1e-7, float("nan")])
def test_pkt_invalid_eps_raises_value_error_naming_it(eps: float) -> None:
    with pytest.raises(ValueError, match="eps"):
        PKTLoss(eps)


def test_pkt_constructor_is_annotated_defaulted_and_documented() -> None:
    (param,) = contract.assert_constructor_annotated_and_documented(PKTLoss, ["eps"])
    assert param.default == 1e-7
