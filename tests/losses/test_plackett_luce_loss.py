"""PlackettLuceLoss (docs/methods.md, section 3) through the loss contract (tests/losses/contract.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import PlackettLuceLoss
from losses.plackett_luce import teacher_ranking
from tests.losses import contract
from tests.losses.contract import labels, logits

IGNORE = -100


def reference_ranking(teacher_row: torch.Tensor, label: int, ties_low_first: bool = True) -> list[int]:
    """The label, then the other classes by descending teacher logit; ties by class index (low first by default)."""
    others = [c for c in range(len(teacher_row)) if c != label]
    tie = 1 if ties_low_first else -1
    return [label, *sorted(others, key=lambda c: (-teacher_row[c].item(), tie * c))]


def reference_pld(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    tau: float,
    ignore_index: int = IGNORE,
    ties_low_first: bool = True,
) -> torch.Tensor:
    """Naive float64 PLD: per sample, per rank k, a_k * (log sum_{l >= k} exp(u_l) - u_k); mean over kept samples."""
    total, kept = torch.zeros((), dtype=torch.float64), 0
    for s_row, t_row, label in zip(student.double(), teacher.double().detach(), target.tolist(), strict=True):
        if label == ignore_index:
            continue
        kept += 1
        order = reference_ranking(t_row, label, ties_low_first)
        t_max = max(t_row.tolist())
        weights = [math.exp((t_row[c].item() - t_max) / tau) for c in range(len(t_row))]
        a = [weights[c] / sum(weights) for c in order]
        u = [s_row[c] for c in order]
        for k in range(len(u)):
            top = max(v.item() for v in u[k:])
            lse = top + torch.log(sum(torch.exp(v - top) for v in u[k:]))
            total = total + a[k] * (lse - u[k])
    return total / max(kept, 1)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_matches_float64_reference_in_value_and_gradient(tau: float) -> None:
    target = labels(6, 7, seed=2)
    target[2] = IGNORE  # an ignored sample leaves the mean
    loss_fn = PlackettLuceLoss(temperature=tau)
    student, _ = contract.assert_matches_reference_in_value_and_gradient(
        lambda s, t: loss_fn(s, t, target), lambda s, t: reference_pld(s, t, target, tau), seed=0, batch=6
    )
    assert torch.equal(student.grad[2], torch.zeros(7, dtype=torch.float64))


def test_gradcheck_float64_wrt_student() -> None:
    target = torch.tensor([0, 5, IGNORE])
    loss_fn = PlackettLuceLoss(2.0)
    contract.assert_gradcheck_wrt_student(lambda s, t: loss_fn(s, t, target), seed=3)


def test_pinned_golden_value() -> None:
    # tau = 1, C = 3.
    # Row 1: label 0, teacher [0, ln2, 0] -> softmax [1/4, 1/2, 1/4]; ranking 0, 1, 2 -> a = [1/4, 1/2, 1/4].
    #   student [ln2, 0, ln3] -> u = [ln2, 0, ln3], exp(u) = [2, 1, 3]; suffix lse = [ln6, ln4, ln3].
    #   L1 = 1/4 (ln6 - ln2) + 1/2 (ln4 - 0) + 1/4 (ln3 - ln3) = ln3 / 4 + ln2.
    # Row 2: label 2, teacher [ln3, 0, 0] -> softmax [3/5, 1/5, 1/5]; ranking 2, 0, 1 -> a = [1/5, 3/5, 1/5].
    #   student 0 -> suffix lse = [ln3, ln2, 0]; L2 = ln3 / 5 + 3/5 ln2.
    # Row 3: label -100, ignored.
    # mean over the 2 kept rows = 9/40 ln3 + 4/5 ln2 = 0.8017055093982809.
    ln2, ln3 = math.log(2.0), math.log(3.0)
    student = torch.tensor([[ln2, 0.0, ln3], [0.0, 0.0, 0.0], [5.0, -1.0, 2.0]])
    teacher = torch.tensor([[0.0, ln2, 0.0], [ln3, 0.0, 0.0], [1.0, 2.0, 3.0]])
    target = torch.tensor([0, 2, IGNORE])
    loss = PlackettLuceLoss(temperature=1.0)(student, teacher, target)
    assert loss.item() == pytest.approx(0.8017055093982809, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_hot_teacher_reduces_to_cross_entropy(dtype: torch.dtype) -> None:
    student = logits(8, 10, seed=5, dtype=dtype)
    target = labels(8, 10, seed=6)
    target[3] = IGNORE
    teacher = logits(8, 10, seed=7, dtype=dtype)
    teacher[torch.arange(8), target.clamp(min=0)] = 1000.0  # softmax is exactly (1, 0, ..., 0) at the label
    assert torch.equal(torch.softmax(teacher, -1).amax(-1), torch.ones(8, dtype=dtype))
    loss = PlackettLuceLoss(1.0)(student, teacher, target)
    ce = F.cross_entropy(student, target, ignore_index=IGNORE)
    tol = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 1e-15}
    torch.testing.assert_close(loss, ce, **tol)


def test_invariant_to_adding_a_constant_to_the_student() -> None:
    student = logits(5, 9, seed=8, dtype=torch.float64)
    teacher = logits(5, 9, seed=9, dtype=torch.float64)
    target = labels(5, 9, seed=10)
    loss_fn = PlackettLuceLoss(4.0)
    shift = 10.0 * torch.arange(-2.0, 3.0, dtype=torch.float64)[:, None]  # a different constant per row
    torch.testing.assert_close(loss_fn(student + shift, teacher, target), loss_fn(student, teacher, target))


def test_bf16_teacher_ties_resolve_lower_class_index_first() -> None:
    # 1.0, 1.001, 1.002 are distinct in fp32 but all round to 1.0 in bf16 (spacing 2^-7 near 1): a three-way tie.
    teacher_fp32 = torch.tensor([[0.0, 1.0, 1.001, 1.002, -1.0]])
    teacher = teacher_fp32.to(torch.bfloat16)
    assert teacher[0, 1] == teacher[0, 2] == teacher[0, 3]
    student = torch.tensor([[0.3, 2.0, -1.0, 0.5, 0.1]])
    target = torch.tensor([0])
    loss_fn = PlackettLuceLoss(1.0)

    loss = loss_fn(student, teacher, target)
    assert torch.equal(teacher_ranking(teacher.float(), target), torch.tensor([[0, 1, 2, 3, 4]]))
    low_first = reference_pld(student, teacher.float(), target, 1.0, ties_low_first=True)
    high_first = reference_pld(student, teacher.float(), target, 1.0, ties_low_first=False)
    torch.testing.assert_close(loss.double(), low_first, rtol=1e-6, atol=1e-7)
    assert abs(low_first - high_first) > 1e-2  # the tie order matters for this student
    # the fp32 teacher has no tie and ranks 3, 2, 1: a different loss
    assert abs(loss_fn(student, teacher_fp32, target) - loss) > 1e-2
    for _ in range(3):  # deterministic
        assert torch.equal(loss_fn(student, teacher, target), loss)


def test_ranking_puts_the_label_first_even_against_an_infinite_teacher_logit() -> None:
    teacher = torch.tensor([[0.0, float("inf"), 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    order = teacher_ranking(teacher, torch.tensor([2, 3]))
    assert torch.equal(order, torch.tensor([[2, 1, 3, 0], [3, 0, 1, 2]]))


def test_ignored_labels_leave_the_mean() -> None:
    student = logits(6, 5, seed=11)
    teacher = logits(6, 5, seed=12)
    target = labels(6, 5, seed=13)
    keep = torch.tensor([True, False, True, True, False, True])
    for ignore_index in (IGNORE, 7):
        masked = torch.where(keep, target, ignore_index)
        loss = PlackettLuceLoss(2.0, ignore_index=ignore_index)(student, teacher, masked)
        torch.testing.assert_close(loss, PlackettLuceLoss(2.0)(student[keep], teacher[keep], target[keep]))


@pytest.mark.parametrize("batch", [0, 4])
def test_empty_or_all_ignored_batch_gives_zero_and_finite_zero_gradients(batch: int) -> None:
    student = logits(batch, 5, seed=14).requires_grad_()
    teacher = logits(batch, 5, seed=15)
    target = torch.full((batch,), IGNORE)
    loss_fn = PlackettLuceLoss()
    grad = contract.assert_zero_with_finite_gradients(lambda s, t: loss_fn(s, t, target), student, teacher)
    assert grad.shape == (batch, 5)
    assert torch.equal(grad, torch.zeros_like(student))


def test_last_rank_term_is_zero() -> None:
    # C = 2 with the teacher's mass all on the non-label class: a = (0, 1) puts all weight on the last rank,
    # whose term lse_C - u_C = u_C - u_C is exactly 0 for any student.
    student = logits(4, 2, seed=16, scale=10.0).requires_grad_()
    teacher = torch.tensor([[-1000.0, 0.0]]).repeat(4, 1)
    loss = PlackettLuceLoss()(student, teacher, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_convex_in_the_student_logits() -> None:
    teacher = logits(4, 8, seed=17, dtype=torch.float64)
    target = labels(4, 8, seed=18)
    loss_fn = PlackettLuceLoss(2.0)
    for seed in range(20):
        s1 = logits(4, 8, seed=100 + seed, scale=4.0, dtype=torch.float64)
        s2 = logits(4, 8, seed=200 + seed, scale=4.0, dtype=torch.float64)
        for w in (0.5, 0.2):
            mixed = loss_fn(w * s1 + (1 - w) * s2, teacher, target)
            assert mixed <= w * loss_fn(s1, teacher, target) + (1 - w) * loss_fn(s2, teacher, target) + 1e-12


def test_no_gradient_reaches_the_teacher() -> None:
    target = torch.tensor([0, 3, 4])
    loss_fn = PlackettLuceLoss()
    contract.assert_no_gradient_reaches_the_teacher(lambda s, t: loss_fn(s, t, target), seed=19)


def test_bf16_inputs_give_fp32_result_of_the_rounded_values() -> None:
    target = labels(16, 100, seed=24)
    loss_fn = PlackettLuceLoss(4.0)
    # the reference is the same loss on the rounded values in float64
    contract.assert_bf16_inputs_give_fp32_result(
        lambda s, t: loss_fn(s, t, target), lambda s, t: loss_fn(s.double(), t.double(), target), seed=22
    )


def test_target_is_required_and_checked() -> None:
    student, teacher = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="target"):
        PlackettLuceLoss()(student, teacher)
    with pytest.raises(ValueError, match="target"):
        PlackettLuceLoss()(student, teacher, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        PlackettLuceLoss()(student, teacher, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="student logits"):
        PlackettLuceLoss()(student, torch.zeros(2, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"ignore_index": 1.5}, "ignore_index"),
        ({"ignore_index": True}, "ignore_index"),
    ],
)
def test_invalid_hyper_parameters_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PlackettLuceLoss(**kwargs)


def test_constructor_arguments_are_annotated_defaulted_and_documented() -> None:
    contract.assert_constructor_annotated_and_documented(PlackettLuceLoss, ["temperature", "ignore_index"])
