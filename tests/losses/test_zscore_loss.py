"""zscore and ZScoreKDLoss (docs/methods.md, section 2) through the loss contract (tests/losses/contract.py)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from losses import KDLoss, ZScoreKDLoss, zscore
from tests.losses import contract
from tests.losses.contract import logits

EPS = 1e-7


def reference_zscore_row(row: torch.Tensor) -> list[torch.Tensor]:
    """Naive float64 z-score of one row: mean, unbiased variance (divide by C - 1), sqrt, eps added to the std."""
    c = len(row)
    mean = sum(row[i] for i in range(c)) / c
    var = sum((row[i] - mean) ** 2 for i in range(c)) / (c - 1)
    std = torch.sqrt(var)
    return [(row[i] - mean) / (std + EPS) for i in range(c)]


def reference_softmax(values: list[torch.Tensor]) -> list[torch.Tensor]:
    top = max(v.item() for v in values)
    exps = [torch.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def reference_zscore_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean_B KL(softmax(z(t) / T) || softmax(z(s) / T)), loops over samples and classes, float64."""
    total = torch.zeros((), dtype=torch.float64)
    for s_row, t_row in zip(student.double(), teacher.double().detach(), strict=True):
        p_s = reference_softmax([v / temperature for v in reference_zscore_row(s_row)])
        p_t = reference_softmax([v / temperature for v in reference_zscore_row(t_row)])
        total = total + sum(p_t[c] * (torch.log(p_t[c]) - torch.log(p_s[c])) for c in range(len(p_t)))
    return temperature**2 * total / max(len(student), 1)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_matches_float64_reference_in_value_and_gradient(temperature: float) -> None:
    reference = partial(reference_zscore_kd, temperature=temperature)
    contract.assert_matches_reference_in_value_and_gradient(ZScoreKDLoss(temperature), reference, seed=0)


def test_gradcheck_float64_wrt_student() -> None:
    contract.assert_gradcheck_wrt_student(ZScoreKDLoss(2.0), seed=2)
    assert torch.autograd.gradcheck(zscore, (logits(3, 6, seed=2, dtype=torch.float64).requires_grad_(),))


def test_pinned_golden_value() -> None:
    # T = 2, B = 2, C = 3.
    # Row 1: teacher [-7, 3, 13]: mean 3, unbiased var (100 + 0 + 100) / 2 = 100, std 10
    #   -> z = [-1, 0, 1] (times 10 / (10 + eps));
    #   student [5, 5, 5] is constant -> z = 0 -> p_s uniform. With x = z / T = [-1/2, 0, 1/2], S = 1 + 2 cosh(1/2):
    #   KL(p_t || uniform) = sum p_t x - ln S + ln 3 = sinh(1/2) / S - ln S + ln 3 = 0.07842095...
    # Row 2: teacher [2, 2, 2] constant -> uniform; student [0, 0, 3]: mean 1, deviations [-1, -1, 2],
    #   unbiased var (1 + 1 + 4) / 2 = 3 -> z = [-1, -1, 2] / sqrt(3) (population std would give / sqrt(2)).
    #   KL(uniform || p_s) = -ln 3 - mean(x) + ln S = ln S - ln 3, S = 2 exp(-1/(2 sqrt 3)) + exp(1/sqrt 3)
    #   = 0.08917727...
    # T^2 * mean = 2 * (0.0784209519 + 0.0891772665) = 0.3351964369 without eps; eps = 1e-7 on the std moves the
    # 7th digit: 0.33519641297131 (same formulas evaluated with eps in plain Python floats).
    student = torch.tensor([[5.0, 5.0, 5.0], [0.0, 0.0, 3.0]])
    teacher = torch.tensor([[-7.0, 3.0, 13.0], [2.0, 2.0, 2.0]])
    loss = ZScoreKDLoss(temperature=2.0)(student, teacher)
    assert loss.item() == pytest.approx(0.33519641297131036, rel=1e-6)
    s_half, ln_s1 = math.sinh(0.5), math.log(1 + 2 * math.cosh(0.5))
    s2 = 2 * math.exp(-1 / (2 * math.sqrt(3))) + math.exp(1 / math.sqrt(3))
    closed_form = 2 * ((s_half / (1 + 2 * math.cosh(0.5)) - ln_s1 + math.log(3)) + (math.log(s2) - math.log(3)))
    assert loss.item() == pytest.approx(closed_form, rel=1e-6)


def test_zscore_rows_have_mean_zero_and_unbiased_std_one() -> None:
    x = logits(8, 100, seed=4, scale=7.0, dtype=torch.float64) + 3.0
    z = zscore(x)
    torch.testing.assert_close(z.mean(dim=-1), torch.zeros(8, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(z.std(dim=-1), torch.ones(8, dtype=torch.float64), rtol=1e-7, atol=0)
    # the population std of the output is sqrt((C - 1) / C), not 1: the division is by C - 1
    torch.testing.assert_close(z.std(dim=-1, unbiased=False), torch.full((8,), math.sqrt(99 / 100), dtype=z.dtype))


def test_population_std_would_change_the_loss() -> None:
    # docs/methods.md, section 2: population std changes the loss by about 1% at C = 100; the loss must use the
    # unbiased one.
    student = logits(16, 100, seed=5, dtype=torch.float64)
    teacher = logits(16, 100, seed=6, scale=5.0, dtype=torch.float64)

    def population_zscore(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=False) + EPS)

    loss = ZScoreKDLoss(2.0)(student, teacher)
    unbiased = KDLoss(2.0)(zscore(student), zscore(teacher))
    population = KDLoss(2.0)(population_zscore(student), population_zscore(teacher))
    torch.testing.assert_close(loss, unbiased, rtol=1e-12, atol=0)
    assert abs(population / loss - 1) > 5e-3


@pytest.mark.parametrize(("scale", "shift"), [(0.25, -3.0), (3.0, 10.0), (1.0, 100.0)])
def test_invariant_to_positive_affine_maps_of_either_logit_vector(scale: float, shift: float) -> None:
    student = logits(6, 10, seed=7, dtype=torch.float64)
    teacher = logits(6, 10, seed=8, dtype=torch.float64)
    per_row_shift = shift * torch.arange(1.0, 7.0, dtype=torch.float64)[:, None]
    loss_fn = ZScoreKDLoss(3.0)
    base = loss_fn(student, teacher)
    torch.testing.assert_close(loss_fn(scale * student + per_row_shift, teacher), base, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loss_fn(student, scale * teacher + per_row_shift), base, rtol=1e-6, atol=1e-9)
    # plain KD is not invariant to scaling: the standardization is what removes it
    if scale != 1.0:
        assert not torch.allclose(KDLoss(3.0)(scale * student, teacher), KDLoss(3.0)(student, teacher), rtol=1e-3)


def test_constant_row_gives_finite_values_and_zero_not_nan_gradient() -> None:
    x = torch.full((2, 5), 3.5, dtype=torch.float64, requires_grad=True)
    z = zscore(x)
    assert torch.equal(z, torch.zeros_like(z))
    z.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # torch.std's backward is 0 (not NaN) at std = 0

    # with a general upstream gradient w only the mean-centering path remains: dz/dx^T w = (w - mean(w)) / eps
    x.grad = None
    w = logits(2, 5, seed=9, dtype=torch.float64)
    (zscore(x) * w).sum().backward()
    torch.testing.assert_close(x.grad, (w - w.mean(-1, keepdim=True)) / EPS)

    # a hand-written sqrt(var) would give NaN here: why zscore uses torch.std
    y = torch.full((1, 5), 3.5, dtype=torch.float64, requires_grad=True)
    hand = (y - y.mean(-1, keepdim=True)) / (((y - y.mean(-1, keepdim=True)) ** 2).sum(-1, keepdim=True) / 4).sqrt()
    (hand + EPS).sum().backward()
    assert torch.isnan(y.grad).all()

    # in the loss: a constant student row (e.g. a freshly zero-initialized head) stays finite
    student = torch.zeros(3, 5, requires_grad=True)
    loss = ZScoreKDLoss(2.0)(student, logits(3, 5, seed=10))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all()


def test_kd_with_standardize_equals_zscore_kd() -> None:
    student, teacher = logits(7, 11, seed=11), logits(7, 11, seed=12)
    for temperature in (1.0, 2.0, 4.0):
        kd_standardized = KDLoss(temperature=temperature, standardize=True)(student, teacher)
        assert torch.equal(kd_standardized, ZScoreKDLoss(temperature)(student, teacher))
    assert ZScoreKDLoss().temperature == 2.0  # the published default


def test_empty_batch_gives_zero_and_finite_gradients() -> None:
    contract.assert_zero_with_finite_gradients(ZScoreKDLoss(2.0))


def test_no_gradient_reaches_the_teacher() -> None:
    contract.assert_no_gradient_reaches_the_teacher(ZScoreKDLoss(), seed=13)


def test_bf16_inputs_give_fp32_result_of_the_rounded_values() -> None:
    contract.assert_bf16_inputs_give_fp32_result(
        ZScoreKDLoss(2.0), lambda s, t: reference_zscore_kd(s, t, 2.0), seed=16
    )
    assert zscore(logits(16, 100, seed=17, scale=5.0, dtype=torch.bfloat16)).dtype == torch.float32


def test_target_argument_is_accepted_and_ignored() -> None:
    # CE on the raw student logits is the framework's ce_weight term, not part of this loss
    student, teacher = logits(4, 5, seed=18), logits(4, 5, seed=19)
    loss_fn = ZScoreKDLoss()
    assert torch.equal(loss_fn(student, teacher), loss_fn(student, teacher, torch.tensor([0, 1, 2, 3])))


@pytest.mark.parametrize("temperature", [0, -2.0, float("nan")])
def test_invalid_temperature_raises_value_error_naming_it(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        ZScoreKDLoss(temperature)


def test_zscore_needs_two_classes_and_loss_checks_shapes() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        zscore(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="student logits"):
        ZScoreKDLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


def test_constructor_arguments_are_annotated_defaulted_and_documented() -> None:
    contract.assert_constructor_annotated_and_documented(ZScoreKDLoss, ["temperature"])
