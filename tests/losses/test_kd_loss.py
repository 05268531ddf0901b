"""KDLoss (docs/methods.md, section 1) through the loss contract (tests/losses/contract.py)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from losses import zscore
from losses.kd import KDLoss, check_positive
from tests.losses import contract
from tests.losses.contract import logits


def reference_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Naive float64 KD written from the formula: T^2 * mean_B sum_C p_t (log p_t - log p_s), p = softmax(z / T)."""
    total = torch.zeros((), dtype=torch.float64)
    for s_row, t_row in zip(student.double(), teacher.double(), strict=True):
        s_exp = torch.exp(s_row / temperature - (s_row / temperature).max())
        t_exp = torch.exp(t_row / temperature - (t_row / temperature).max())
        p_s = s_exp / s_exp.sum()
        p_t = t_exp / t_exp.sum()
        total = total + sum(p_t[c] * (torch.log(p_t[c]) - torch.log(p_s[c])) for c in range(len(p_t)))
    return temperature**2 * total / max(len(student), 1)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_matches_float64_reference_in_value_and_gradient(temperature: float) -> None:
    reference = partial(reference_kd, temperature=temperature)
    student, teacher = contract.assert_matches_reference_in_value_and_gradient(KDLoss(temperature), reference, seed=0)
    # closed form of the same gradient: dL/ds = T * (p_s - p_t) / B
    p_s = torch.softmax(student.detach() / temperature, dim=-1)
    p_t = torch.softmax(teacher / temperature, dim=-1)
    torch.testing.assert_close(student.grad, contract.UPSTREAM * temperature * (p_s - p_t) / 5, rtol=1e-9, atol=1e-12)


def test_fp32_inputs_match_reference() -> None:
    student, teacher = logits(8, 10, seed=2), logits(8, 10, seed=3)
    loss = KDLoss(4.0)(student, teacher)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), reference_kd(student, teacher, 4.0), rtol=1e-5, atol=1e-6)


def test_pinned_golden_value() -> None:
    # T = 2, B = 2, C = 3, ln 4 = 2 ln 2.
    # Row 1: teacher [0, ln4, 0] / 2 = [0, ln2, 0] -> p_t = [1/4, 1/2, 1/4]; student 0 -> p_s = [1/3, 1/3, 1/3].
    #   KL = sum p_t log p_t + ln 3 = (-1/2 ln2 - 1/2 ln2 - 1/2 ln2) + ln3 = ln3 - 3/2 ln2.
    # Row 2: teacher 0 -> p_t uniform; student [0, ln4, 0] -> p_s = [1/4, 1/2, 1/4].
    #   KL = -ln3 - 1/3 (ln 1/4 + ln 1/2 + ln 1/4) = 5/3 ln2 - ln3.
    # mean over rows = (1/6 ln2) / 2 = ln2 / 12; times T^2 = 4 -> ln2 / 3 = 0.23104906018664842.
    ln4 = math.log(4.0)
    student = torch.tensor([[0.0, 0.0, 0.0], [0.0, ln4, 0.0]])
    teacher = torch.tensor([[0.0, ln4, 0.0], [0.0, 0.0, 0.0]])
    loss = KDLoss(temperature=2.0)(student, teacher)
    assert loss.item() == pytest.approx(0.23104906018664842, rel=1e-6)


def test_zero_when_student_equals_teacher_and_positive_otherwise() -> None:
    teacher = logits(6, 5, seed=4)
    loss_fn = KDLoss(3.0)
    assert loss_fn(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(logits(6, 5, seed=5), teacher).item() > 1e-3
    # softmax ignores a per-row constant: shifted student logits are the same distribution
    shift = torch.arange(6.0)[:, None]
    assert loss_fn(teacher + shift, teacher).item() == pytest.approx(0.0, abs=1e-5)


def test_empty_batch_gives_zero_and_finite_gradients() -> None:
    contract.assert_zero_with_finite_gradients(KDLoss(4.0))


def test_no_gradient_reaches_the_teacher() -> None:
    contract.assert_no_gradient_reaches_the_teacher(KDLoss(2.0), seed=6)


def test_bf16_inputs_give_fp32_result_of_the_rounded_values() -> None:
    contract.assert_bf16_inputs_give_fp32_result(KDLoss(2.0), lambda s, t: reference_kd(s, t, 2.0), seed=9)


def test_gradcheck_float64_wrt_student() -> None:
    contract.assert_gradcheck_wrt_student(KDLoss(1.5), seed=11)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_equals_t_squared_times_kl_at_temperature(temperature: float) -> None:
    student, teacher = logits(4, 9, seed=13, dtype=torch.float64), logits(4, 9, seed=14, dtype=torch.float64)
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    torch.testing.assert_close(KDLoss(temperature)(student, teacher), temperature**2 * kl)


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0, float("nan")])
def test_invalid_temperature_raises_value_error_naming_it(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature)


def test_check_positive() -> None:
    value = check_positive("width", 3)
    assert value == 3.0
    assert isinstance(value, float)
    with pytest.raises(ValueError, match="width must be > 0, got -2"):
        check_positive("width", -2)


@pytest.mark.parametrize("teacher_shape", [(2, 4), (3, 3), (2, 3, 1)])
def test_shape_mismatch_raises_value_error(teacher_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="student logits"):
        KDLoss()(torch.zeros(2, 3), torch.zeros(*teacher_shape))


def test_target_argument_is_optional_and_ignored() -> None:
    student, teacher = logits(4, 5, seed=15), logits(4, 5, seed=16)
    target = torch.tensor([0, 1, 2, 3])
    loss_fn = KDLoss(4.0)
    assert torch.equal(loss_fn(student, teacher), loss_fn(student, teacher, target))
    assert torch.equal(loss_fn(student, teacher), loss_fn(student, teacher, target=None))


def test_standardize_z_scores_both_logit_vectors_before_the_temperature() -> None:
    student, teacher = logits(6, 8, seed=17, dtype=torch.float64), logits(6, 8, seed=18, dtype=torch.float64)
    standardized = KDLoss(3.0, standardize=True)(student, teacher)
    torch.testing.assert_close(standardized, KDLoss(3.0)(zscore(student), zscore(teacher)), rtol=1e-12, atol=0)
    torch.testing.assert_close(standardized, reference_kd(zscore(student), zscore(teacher), 3.0), rtol=1e-10, atol=0)
    assert KDLoss().standardize is False
    assert not torch.allclose(standardized, KDLoss(3.0)(student, teacher))


@pytest.mark.parametrize("standardize", ["true", 1, None])
def test_invalid_standardize_raises_value_error_naming_it(standardize: object) -> None:
    with pytest.raises(ValueError, match="standardize"):
        KDLoss(standardize=standardize)


def test_constructor_arguments_are_annotated_defaulted_and_documented() -> None:
    contract.assert_constructor_annotated_and_documented(KDLoss, ["temperature", "standardize"])
