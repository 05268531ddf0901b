"""HintLoss, AttentionTransferLoss and SimilarityPreservingLoss (docs/methods.md, section 11): golden values by hand,
the spatial pooling of AT and argument checks. The shared contract is in test_feature_losses.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses.feature_maps import AttentionTransferLoss, HintLoss, SimilarityPreservingLoss
from tests.losses import contract
from tests.losses.contract import logits
from tests.losses.feature_reference import ref_at


def test_hint_of_a_student_one_above_the_teacher_is_one_per_pair() -> None:
    teacher = [logits(2, 3, 4, 4, seed=0), logits(2, 5, seed=1)]
    student = [t + 1 for t in teacher]
    assert HintLoss()(student[0], teacher[0]).item() == pytest.approx(1.0, abs=1e-6)
    assert HintLoss()(student, teacher).item() == pytest.approx(2.0, abs=1e-6)
    assert HintLoss()(teacher, teacher).item() == 0.0


def test_hint_refuses_features_of_different_shapes_naming_both() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\) != teacher feature \(2, 6, 4, 4\)"):
        HintLoss()(torch.zeros(2, 3, 4, 4), torch.zeros(2, 6, 4, 4))


def test_at_golden_values_by_hand() -> None:
    # B = 1, C = 1, a 1 x 2 map. Student [1, 0]: squares [1, 0], normalized [1, 0].
    # Teacher [0, 2]: [0, 4] -> [0, 1]; loss = ((1 - 0)^2 + (0 - 1)^2) / 2 = 1.
    # Teacher [3, 3]: [9, 9] -> [1/sqrt2, 1/sqrt2]; loss = ((1 - 1/sqrt2)^2 + 1/2) / 2 = 1 - 1/sqrt2.
    student = torch.tensor([[[[1.0, 0.0]]]])
    loss = AttentionTransferLoss()
    assert loss(student, torch.tensor([[[[0.0, 2.0]]]])).item() == pytest.approx(1.0, rel=1e-6)
    assert loss(student, torch.tensor([[[[3.0, 3.0]]]])).item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
    # the mean over channels and the per-sample normalization: scaling or repeating channels changes nothing
    teacher = logits(2, 3, 4, 4, seed=2)
    assert loss(5 * torch.cat([teacher, teacher]), torch.cat([teacher, teacher])).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(teacher.repeat(1, 4, 1, 1), teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_at_pools_the_taller_map_as_the_released_code_does_for_square_maps() -> None:
    student, teacher = logits(2, 3, 8, 8, seed=3), logits(2, 5, 4, 4, seed=4)
    loss = AttentionTransferLoss()
    pooled = loss(F.adaptive_avg_pool2d(student, (4, 4)), teacher)
    torch.testing.assert_close(loss(student, teacher), pooled, rtol=0, atol=0)
    torch.testing.assert_close(loss(teacher, student), pooled, rtol=0, atol=0)  # symmetric in which side is pooled
    assert pooled.item() > 0


def test_at_with_different_aspect_ratios_pools_each_dim_to_the_smaller() -> None:
    # student 8 x 4, teacher 4 x 8: the released code would pool the student to 4 x 4 and compare 16 with 32 entries
    student = logits(2, 3, 8, 4, seed=5, dtype=torch.float64).requires_grad_()
    teacher = logits(2, 2, 4, 8, seed=6, dtype=torch.float64)
    value = AttentionTransferLoss()(student, teacher)
    assert torch.isfinite(value) and value.item() > 0
    expected = AttentionTransferLoss()(F.adaptive_avg_pool2d(student, (4, 4)), F.adaptive_avg_pool2d(teacher, (4, 4)))
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(value, ref_at(student.detach(), teacher), rtol=1e-10, atol=0)
    value.backward()
    assert torch.isfinite(student.grad).all()


def test_at_with_a_fractional_power_on_positive_maps_matches_the_reference() -> None:
    student, teacher = logits(2, 3, 3, 3, seed=7, dtype=torch.float64).abs(), logits(2, 2, 3, 3, seed=8).abs()
    value = AttentionTransferLoss(p=1.5)(student, teacher)
    torch.testing.assert_close(value, ref_at(student, teacher, 1.5), rtol=1e-10, atol=0)
    assert not torch.allclose(value, AttentionTransferLoss()(student, teacher))


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 3, 4, 4, 1)])
def test_at_refuses_features_that_are_not_maps(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        AttentionTransferLoss()(torch.zeros(shape), torch.zeros(2, 3, 4, 4))


@pytest.mark.parametrize("p", [0, 0.0, -2.0, float("nan")])
def test_at_invalid_power_raises_value_error_naming_it(p: float) -> None:
    with pytest.raises(ValueError, match="p must be > 0"):
        AttentionTransferLoss(p)


def test_at_constructor_is_annotated_defaulted_and_documented() -> None:
    (param,) = contract.assert_constructor_annotated_and_documented(AttentionTransferLoss, ["p"])
    assert param.default == 2.0


def test_sp_golden_values_by_hand() -> None:
    # Student rows [1, 0], [0, 1]: G_s = I. Teacher rows [1], [1]: G_t = all ones, rows normalized to 1/sqrt2 each.
    # ||G_t - G_s||^2 = 2 ((1 - 1/sqrt2)^2 + 1/2) = 4 - 2 sqrt2; divided by B^2 = 4: 1 - sqrt2 / 2.
    student, teacher = torch.eye(2), torch.ones(2, 1)
    assert SimilarityPreservingLoss()(student, teacher).item() == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-6)
    features = logits(4, 3, 2, 2, seed=9)
    assert SimilarityPreservingLoss()(features, features.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # G only depends on inner products: a rotation of the feature space changes nothing
    rotation = torch.linalg.qr(logits(12, 12, seed=10, dtype=torch.float64))[0].float()
    rotated = (features.flatten(1) @ rotation).reshape(4, 12)
    assert SimilarityPreservingLoss()(rotated, features).item() == pytest.approx(0.0, abs=1e-6)


def test_sp_is_a_mean_over_b_squared_entries() -> None:
    # repeating the batch repeats every entry of G_t - G_s (up to the row norm, which grows by sqrt2 on both sides)
    student, teacher = logits(3, 4, seed=11, dtype=torch.float64), logits(3, 6, seed=12, dtype=torch.float64)
    once = SimilarityPreservingLoss()(student, teacher)
    twice = SimilarityPreservingLoss()(student.repeat(2, 1), teacher.repeat(2, 1))
    torch.testing.assert_close(twice, once / 2, rtol=1e-12, atol=0)
