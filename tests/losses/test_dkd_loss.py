"""DKDLoss (docs/methods.md, section 4) through the loss contract (tests/losses/contract.py)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from losses import DKDLoss, KDLoss, zscore
from tests.losses import contract
from tests.losses.contract import labels, logits


def reference_parts(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float):
    """Naive float64 TCKD and NCKD per sample, from probabilities, looping over samples and classes."""
    tckd, nckd = [], []
    for s_row, t_row, y in zip(student.double(), teacher.double().detach(), target.tolist(), strict=True):
        p_s = torch.softmax(s_row / temperature, dim=0)
        p_t = torch.softmax(t_row / temperature, dim=0)
        b_s, b_t = [p_s[y], 1 - p_s[y]], [p_t[y], 1 - p_t[y]]
        tckd.append(sum(b_t[i] * torch.log(b_t[i] / b_s[i]) for i in range(2)))
        others = [c for c in range(len(s_row)) if c != y]
        q_s = [p_s[c] / (1 - p_s[y]) for c in others]  # renormalized over the non-target classes
        q_t = [p_t[c] / (1 - p_t[y]) for c in others]
        nckd.append(sum(q_t[i] * torch.log(q_t[i] / q_s[i]) for i in range(len(others))))
    return tckd, nckd


def reference_dkd(student, teacher, target, alpha, beta, temperature, warmup=1.0) -> torch.Tensor:
    tckd, nckd = reference_parts(student, teacher, target, temperature)
    total = sum((alpha * a + beta * b for a, b in zip(tckd, nckd, strict=True)), torch.zeros((), dtype=torch.float64))
    return warmup * temperature**2 * total / max(len(tckd), 1)


def authors_formula(student, teacher, target, alpha, beta, temperature) -> torch.Tensor:
    """The DKD authors' computation, rewritten here: - 1000 masking, log of summed probabilities, T^2 on each part."""
    gt = F.one_hot(target, student.shape[1]).to(student.dtype)
    p_s, p_t = torch.softmax(student / temperature, 1), torch.softmax(teacher / temperature, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * temperature**2 / len(target)
    log_q_s = F.log_softmax(student / temperature - 1000.0 * gt, 1)
    q_t = torch.softmax(teacher / temperature - 1000.0 * gt, 1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * temperature**2 / len(target)
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (1.0, 1.0, 2.0), (0.5, 2.0, 1.0)])
def test_matches_float64_reference_in_value_and_gradient(alpha: float, beta: float, temperature: float) -> None:
    target = labels(5, 7, seed=2)
    loss_fn = DKDLoss(alpha, beta, temperature, warmup_epochs=20)
    contract.assert_matches_reference_in_value_and_gradient(
        lambda s, t: loss_fn(s, t, target, epoch=5),
        lambda s, t: reference_dkd(s, t, target, alpha, beta, temperature, warmup=5 / 20),
        seed=0,
    )


def test_matches_the_authors_formula_where_theirs_is_finite() -> None:
    student = logits(8, 10, seed=3, dtype=torch.float64)
    teacher = logits(8, 10, seed=4, dtype=torch.float64)
    target = labels(8, 10, seed=5)
    for alpha, beta, temperature in [(1.0, 8.0, 4.0), (1.0, 2.0, 1.0)]:
        ours = DKDLoss(alpha, beta, temperature, warmup_epochs=0)(student, teacher, target)
        torch.testing.assert_close(ours, authors_formula(student, teacher, target, alpha, beta, temperature))


def test_confident_student_stays_finite_where_the_log_of_summed_probabilities_does_not() -> None:
    # Student [120, 0, 0], label 0, T = 1: exp(-120) underflows fp32, so p_s,y sums to exactly 1 and the authors'
    # log(1 - p_s,y) is log(0) = -inf (loss inf, NaN gradients). Exactly: log p_s,y = -log(1 + 2 e^-120) ~ 0 and
    # log(1 - p_s,y) = ln2 - 120 - log(1 + 2 e^-120) ~ ln2 - 120; the non-target student part is uniform (1/2, 1/2).
    big = 120.0
    student = torch.tensor([[big, 0.0, 0.0], [0.0, 1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, 0.5], [0.0, 3.0, 1.0]])
    target = torch.tensor([0, 1])
    loss = DKDLoss(1.0, 8.0, temperature=1.0, warmup_epochs=0)(student, teacher, target)
    assert torch.isinf(authors_formula(student.detach(), teacher, target, 1.0, 8.0, 1.0))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all()

    p_t = [math.exp(v) / sum(math.exp(w) for w in (1.0, 0.0, 0.5)) for v in (1.0, 0.0, 0.5)]
    log_b_s = [-math.log1p(2 * math.exp(-big)), math.log(2) - big - math.log1p(2 * math.exp(-big))]
    b_t = [p_t[0], 1 - p_t[0]]
    tckd = sum(b_t[i] * (math.log(b_t[i]) - log_b_s[i]) for i in range(2))
    q_t = [p_t[1] / (1 - p_t[0]), p_t[2] / (1 - p_t[0])]
    nckd = sum(q * math.log(q / 0.5) for q in q_t)
    row2 = reference_dkd(student.detach()[1:].double(), teacher[1:], target[1:], 1.0, 8.0, 1.0).item()
    assert loss.item() == pytest.approx(((tckd + 8.0 * nckd) + row2) / 2, rel=1e-6)


def test_gradcheck_float64_wrt_student() -> None:
    target = torch.tensor([0, 5, 2])
    for loss_fn in (DKDLoss(1.0, 8.0, 4.0), DKDLoss(2.0, 3.0, 1.5, standardize=True)):
        contract.assert_gradcheck_wrt_student(lambda s, t, f=loss_fn: f(s, t, target, epoch=3), seed=6)


def test_pinned_golden_value() -> None:
    # T = 2, alpha = 2, beta = 8, epoch 10 of a 20-epoch warm-up (factor 1/2); one sample, label 0.
    # teacher [0, 2 ln2, 0] / T = [0, ln2, 0] -> p_t = [1/4, 1/2, 1/4]; student 0 -> p_s = [1/3, 1/3, 1/3].
    # TCKD = KL([1/4, 3/4] || [1/3, 2/3]) = 1/4 ln(3/4) + 3/4 ln(9/8) = 7/4 ln3 - 11/4 ln2.
    # NCKD = KL([2/3, 1/3] || [1/2, 1/2]) = 2/3 ln(4/3) + 1/3 ln(2/3) = 5/3 ln2 - ln3.
    # L = 1/2 * T^2 * (2 TCKD + 8 NCKD) = 2 (7/2 ln3 - 11/2 ln2 + 40/3 ln2 - 8 ln3) = 47/3 ln2 - 9 ln3
    #   = 0.9717952307594881.
    ln2, ln3 = math.log(2.0), math.log(3.0)
    assert 47 / 3 * ln2 - 9 * ln3 == pytest.approx(0.9717952307594881, rel=1e-12)
    student = torch.zeros(1, 3)
    teacher = torch.tensor([[0.0, 2 * ln2, 0.0]])
    loss = DKDLoss(alpha=2.0, beta=8.0, temperature=2.0, warmup_epochs=20)(student, teacher, torch.tensor([0]), 10)
    assert loss.item() == pytest.approx(0.9717952307594881, rel=1e-6)


@pytest.mark.parametrize(("epoch", "factor"), [(1, 1 / 20), (10, 1 / 2), (20, 1.0), (40, 1.0), (2.5, 2.5 / 20)])
def test_warmup_factor_by_one_based_epoch(epoch: float, factor: float) -> None:
    loss_fn = DKDLoss(warmup_epochs=20)
    assert loss_fn.warmup(epoch) == factor
    student, teacher, target = logits(4, 6, seed=8), logits(4, 6, seed=9), labels(4, 6, seed=10)
    warmed = loss_fn(student, teacher, target, epoch=epoch)
    torch.testing.assert_close(warmed, factor * DKDLoss(warmup_epochs=0)(student, teacher, target))


def test_the_ramp_needs_a_one_based_epoch_unless_turned_off_explicitly() -> None:
    student, teacher, target = logits(4, 6, seed=11), logits(4, 6, seed=12), labels(4, 6, seed=13)
    # mdistiller always ramps: without an epoch the ramp is an error, not a silent factor of 1
    with pytest.raises(ValueError, match="DKDLoss ramps in over warmup_epochs=20 epochs: pass epoch"):
        DKDLoss(warmup_epochs=20)(student, teacher, target)
    for epoch in (0, 0.5, -1):  # epoch 0 would give exactly 0 (a 0-based counter): refused
        with pytest.raises(ValueError, match="epoch must be a number >= 1"):
            DKDLoss(warmup_epochs=20)(student, teacher, target, epoch=epoch)
        with pytest.raises(ValueError, match="epoch must be a number >= 1"):
            DKDLoss(warmup_epochs=0)(student, teacher, target, epoch=epoch)
    off = DKDLoss(warmup_epochs=0)  # the explicit opt-out: no ramp, the epoch optional
    assert off.warmup(None) == off.warmup(1) == 1.0
    assert torch.equal(off(student, teacher, target), DKDLoss(warmup_epochs=20)(student, teacher, target, epoch=20))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_decomposes_kd_into_tckd_and_nckd(temperature: float) -> None:
    student = logits(6, 9, seed=14, dtype=torch.float64)
    teacher = logits(6, 9, seed=15, dtype=torch.float64)
    target = labels(6, 9, seed=16)
    tckd, nckd = reference_parts(student, teacher, target, temperature)
    t2 = temperature**2

    both = DKDLoss(alpha=1.0, beta=1.0, temperature=temperature, warmup_epochs=0)(student, teacher, target)
    torch.testing.assert_close(both, t2 * (sum(tckd) + sum(nckd)) / 6, rtol=1e-10, atol=1e-12)
    only_tckd = DKDLoss(alpha=1.0, beta=0.0, temperature=temperature, warmup_epochs=0)(student, teacher, target)
    torch.testing.assert_close(only_tckd, t2 * sum(tckd) / 6, rtol=1e-10, atol=1e-12)

    # the DKD paper's identity, per sample: KD = TCKD + (1 - p_t,y) * NCKD
    p_t_y = torch.softmax(teacher / temperature, -1)[torch.arange(6), target]
    for i in range(6):
        kd = KDLoss(temperature)(student[i : i + 1], teacher[i : i + 1])
        tckd_i = DKDLoss(1.0, 0.0, temperature, 0)(student[i : i + 1], teacher[i : i + 1], target[i : i + 1])
        nckd_i = DKDLoss(0.0, 1.0, temperature, 0)(student[i : i + 1], teacher[i : i + 1], target[i : i + 1])
        torch.testing.assert_close(kd, tckd_i + (1 - p_t_y[i]) * nckd_i, rtol=1e-10, atol=1e-12)


def test_alpha_zero_leaves_nckd_only_and_it_ignores_the_target_logit() -> None:
    student = logits(5, 7, seed=17, dtype=torch.float64).requires_grad_()
    teacher = logits(5, 7, seed=18, dtype=torch.float64)
    target = labels(5, 7, seed=19)
    loss = DKDLoss(alpha=0.0, beta=6.0, temperature=4.0, warmup_epochs=0)(student, teacher, target)
    _, nckd = reference_parts(student.detach(), teacher, target, 4.0)
    torch.testing.assert_close(loss, 6.0 * 16.0 * sum(nckd) / 5, rtol=1e-10, atol=1e-12)
    loss.backward()
    assert torch.equal(student.grad[torch.arange(5), target], torch.zeros(5, dtype=torch.float64))
    assert student.grad.abs().sum() > 0


def test_standardize_equals_dkd_on_zscored_inputs() -> None:
    student, teacher, target = logits(6, 10, seed=20), logits(6, 10, seed=21), labels(6, 10, seed=22)
    standardized = DKDLoss(1.0, 8.0, 2.0, standardize=True)(student, teacher, target, epoch=7)
    plain = DKDLoss(1.0, 8.0, 2.0)(zscore(student), zscore(teacher), target, epoch=7)
    assert torch.equal(standardized, plain)
    assert not torch.allclose(standardized, DKDLoss(1.0, 8.0, 2.0)(student, teacher, target, epoch=7))


def test_empty_batch_gives_zero_and_finite_gradients() -> None:
    target = torch.zeros(0, dtype=torch.long)
    for loss_fn in (DKDLoss(), DKDLoss(standardize=True)):
        contract.assert_zero_with_finite_gradients(lambda s, t, f=loss_fn: f(s, t, target, epoch=3))


def test_no_gradient_reaches_the_teacher() -> None:
    target = torch.tensor([1, 0, 4])
    loss_fn = DKDLoss(standardize=True)
    contract.assert_no_gradient_reaches_the_teacher(lambda s, t: loss_fn(s, t, target, epoch=3), seed=23)


def test_bf16_inputs_give_fp32_result_of_the_rounded_values() -> None:
    target = labels(16, 100, seed=28)
    loss_fn = DKDLoss()
    contract.assert_bf16_inputs_give_fp32_result(
        lambda s, t: loss_fn(s, t, target, epoch=30), lambda s, t: reference_dkd(s, t, target, 1.0, 8.0, 4.0), seed=26
    )


def test_target_is_required_and_checked() -> None:
    student, teacher = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="target"):
        DKDLoss()(student, teacher)
    with pytest.raises(ValueError, match="target"):
        DKDLoss()(student, teacher, torch.tensor([0]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        DKDLoss()(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="student logits"):
        DKDLoss()(student, torch.zeros(2, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"beta": -0.5}, "beta"),
        ({"beta": float("inf")}, "beta"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -4.0}, "temperature"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"warmup_epochs": 2.5}, "warmup_epochs"),
        ({"standardize": "yes"}, "standardize"),
    ],
)
def test_invalid_hyper_parameters_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DKDLoss(**kwargs)


def test_constructor_arguments_are_annotated_defaulted_and_documented() -> None:
    params = contract.assert_constructor_annotated_and_documented(
        DKDLoss, ["alpha", "beta", "temperature", "warmup_epochs", "standardize"]
    )
    assert [p.default for p in params] == [1.0, 8.0, 4.0, 20, False]  # the CIFAR-100 protocol
    assert "epoch" in inspect.signature(DKDLoss.forward).parameters  # the framework passes the 1-based epoch
