"""DraftDistillLoss (docs/methods.md, section 8, SpecVLM's draft loss) through the loss contract
(tests/losses/contract.py), plus its two parts, their weights and its indifference to what the masked-out
positions hold."""

from __future__ import annotations

import math

import pytest
import torch

from losses import DraftDistillLoss
from losses.draft_distill import MASK_EPS
from tests.losses import contract
from tests.losses.contract import UPSTREAM, logits

B, T, V, H = 3, 4, 7, 5


def partial_mask() -> torch.Tensor:
    """(B, T) bool: sequence 0 from position 1 on, sequence 1 positions 0 and 2, sequence 2 none."""
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 1:] = True
    mask[1, [0, 2]] = True
    return mask


def naive_parts(draft_logits, target_logits, draft_hidden, target_hidden, mask):
    """Float64 reference written from section 8, one position at a time: (CE, SmoothL1), each summed over the masked
    positions and divided by (their number + 1e-5)."""
    ce = feature = torch.zeros((), dtype=torch.float64)
    count = 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            s, z = draft_logits[b, t].double(), target_logits[b, t].double().detach()
            p = torch.exp(z - z.max()) / torch.exp(z - z.max()).sum()
            log_q = s - s.max() - torch.log(torch.exp(s - s.max()).sum())
            ce = ce - (p * log_q).sum()
            d = (draft_hidden[b, t].double() - target_hidden[b, t].double().detach()).abs()
            feature = feature + torch.where(d < 1.0, 0.5 * d**2, d - 0.5).mean()
            count += 1
    return ce / (count + 1e-5), feature / (count + 1e-5)


def naive_loss(*args, ce_weight: float = 0.1, feature_weight: float = 1.0):
    ce, feature = naive_parts(*args)
    return ce_weight * ce + feature_weight * feature


def inputs(seed: int, dtype: torch.dtype = torch.float64):
    """Draft logits, target logits (B, T, V) and draft, target hidden states (B, T, H); hidden at scale 1, so that
    the SmoothL1 differences fall on both sides of beta = 1."""
    return (
        logits(B, T, V, seed=seed, dtype=dtype),
        logits(B, T, V, seed=seed + 1, dtype=dtype),
        logits(B, T, H, seed=seed + 2, scale=1.0, dtype=dtype),
        logits(B, T, H, seed=seed + 3, scale=1.0, dtype=dtype),
    )


def pair(loss_fn, reference: bool = False):
    """The loss as a `contract` closure on (N, V) tensors: one sequence, all positions masked in, each tensor used as
    both the logits and the hidden states (so the gradient flows through both parts, and a leak reaches `t`)."""
    weights = {"ce_weight": loss_fn.ce_weight, "feature_weight": loss_fn.feature_weight}
    fn = (lambda *a: naive_loss(*a, **weights)) if reference else loss_fn
    return lambda s, t: fn(s[None], t[None], s[None], t[None], torch.ones(1, s.shape[0], dtype=torch.bool))


@pytest.mark.parametrize(("ce_weight", "feature_weight"), [(0.1, 1.0), (0.7, 0.3)])
def test_matches_float64_reference_in_value_and_gradient(ce_weight: float, feature_weight: float) -> None:
    draft_logits, target_logits, draft_hidden, target_hidden = inputs(seed=0)
    mask = partial_mask()
    loss_fn = DraftDistillLoss(ce_weight, feature_weight)
    results = []
    for fn in (loss_fn, lambda *a: naive_loss(*a, ce_weight=ce_weight, feature_weight=feature_weight)):
        s, h = draft_logits.clone().requires_grad_(), draft_hidden.clone().requires_grad_()
        value = fn(s, target_logits, h, target_hidden, mask)
        (UPSTREAM * value).backward()
        results.append((value.detach(), s.grad, h.grad))
    (value, grad_s, grad_h), (ref_value, ref_s, ref_h) = results
    assert value.dtype == torch.float64 and value > 0
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_s, ref_s, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_h, ref_h, rtol=1e-9, atol=1e-12)
    assert torch.all(grad_s[~mask] == 0) and torch.all(grad_h[~mask] == 0)  # masked out: no gradient
    args = (draft_logits, target_logits, draft_hidden, target_hidden, mask)
    torch.testing.assert_close(loss_fn.parts(*args), naive_parts(*args), rtol=1e-10, atol=1e-12)
    contract.assert_matches_reference_in_value_and_gradient(pair(loss_fn), pair(loss_fn, reference=True), seed=3)


def test_gradcheck_float64_wrt_draft_logits_and_hidden() -> None:
    draft_logits, target_logits, draft_hidden, target_hidden = inputs(seed=5)
    loss_fn = DraftDistillLoss(ce_weight=0.5)
    assert torch.autograd.gradcheck(
        lambda s, h: loss_fn(s, target_logits, h, target_hidden, partial_mask()),
        (draft_logits.requires_grad_(), draft_hidden.requires_grad_()),
    )
    contract.assert_gradcheck_wrt_student(pair(loss_fn), seed=9)


# One sequence, V = H = 2, positions 0 and 1 masked in, position 2 masked out (garbage there).
# t = 0: q = softmax([0, 0]) = [1/2, 1/2], p = softmax([ln 3, 0]) = [3/4, 1/4]: CE = -(3/4 + 1/4) ln(1/2) = ln 2;
#   d = [0, 0] - [0.5, 3] -> |d| = [0.5, 3]: SmoothL1 = mean(0.5 * 0.25, 3 - 0.5) = mean(0.125, 2.5) = 1.3125
# t = 1: q = [3/4, 1/4], p = [1/2, 1/2]: CE = -(ln(3/4) + ln(1/4)) / 2 = 2 ln 2 - ln(3) / 2;
#   |d| = |[1, -1] - [1, 1]| = [0, 2]: SmoothL1 = mean(0, 1.5) = 0.75
# CE = (3 ln 2 - ln(3) / 2) / (2 + 1e-5) = 1.530135397345781 / 2.00001 = 0.7650638733535237
# SmoothL1 = 2.0625 / 2.00001 = 1.031244843775781; loss = 0.1 * CE + SmoothL1 = 1.1077512311111335
GOLDEN_CE, GOLDEN_FEATURE, GOLDEN_LOSS = 0.7650638733535237, 1.031244843775781, 1.1077512311111335


def golden_inputs(garbage: float = 1e30):
    ln3 = math.log(3.0)
    draft_logits = torch.tensor([[[0.0, 0.0], [ln3, 0.0], [garbage, 1.0]]], dtype=torch.float64)
    target_logits = torch.tensor([[[ln3, 0.0], [0.0, 0.0], [garbage, -garbage]]], dtype=torch.float64)
    draft_hidden = torch.tensor([[[0.0, 0.0], [1.0, -1.0], [garbage, 0.0]]], dtype=torch.float64)
    target_hidden = torch.tensor([[[0.5, 3.0], [1.0, 1.0], [-garbage, garbage]]], dtype=torch.float64)
    return draft_logits, target_logits, draft_hidden, target_hidden, torch.tensor([[True, True, False]])


def test_pinned_golden_value() -> None:
    assert MASK_EPS == 1e-5
    loss_fn = DraftDistillLoss()
    ce, feature = loss_fn.parts(*golden_inputs())
    assert ce.item() == pytest.approx(GOLDEN_CE, rel=1e-12)
    assert feature.item() == pytest.approx(GOLDEN_FEATURE, rel=1e-12)
    assert loss_fn(*golden_inputs()).item() == pytest.approx(GOLDEN_LOSS, rel=1e-12)
    fp32 = [t.float() if t.is_floating_point() else t for t in golden_inputs()]
    assert loss_fn(*fp32).item() == pytest.approx(GOLDEN_LOSS, rel=1e-6)


@pytest.mark.parametrize("garbage", [1e30, -1e30, float("inf"), float("nan")])
def test_masked_out_positions_do_not_matter_whatever_they_hold(garbage: float) -> None:
    args = list(golden_inputs(garbage))
    args[0].requires_grad_()
    args[2].requires_grad_()
    value = DraftDistillLoss()(*args)
    assert value.item() == pytest.approx(GOLDEN_LOSS, rel=1e-12)
    value.backward()
    for grad in (args[0].grad, args[2].grad):
        assert torch.isfinite(grad).all() and torch.all(grad[0, 2] == 0)


def test_all_masked_and_empty_batches_give_zero_and_finite_zero_gradients() -> None:
    draft_logits, target_logits, draft_hidden, target_hidden = inputs(seed=10, dtype=torch.float32)
    loss_fn = DraftDistillLoss()
    for mask in (torch.zeros(B, T, dtype=torch.bool), torch.zeros(B, T, dtype=torch.long)):
        s, h = draft_logits.clone().requires_grad_(), draft_hidden.clone().requires_grad_()
        parts = loss_fn.parts(s, target_logits, h, target_hidden, mask)
        assert [p.item() for p in parts] == [0.0, 0.0]
        grad = contract.assert_zero_with_finite_gradients(
            lambda s, t, m=mask, h=h: loss_fn(s, t, h, target_hidden, m), s, target_logits
        )
        assert torch.all(grad == 0) and torch.all(h.grad == 0)
    contract.assert_zero_with_finite_gradients(pair(loss_fn))  # (0, 5) tensors: a sequence of no positions


def test_no_gradient_reaches_the_target_tensors() -> None:
    loss_fn = DraftDistillLoss(ce_weight=0.5)
    contract.assert_no_gradient_reaches_the_teacher(pair(loss_fn), seed=12)
    draft_logits, target_logits, draft_hidden, target_hidden = (t.requires_grad_() for t in inputs(seed=13))
    loss_fn(draft_logits, target_logits, draft_hidden, target_hidden, partial_mask()).backward()
    assert target_logits.grad is None and target_hidden.grad is None
    assert draft_logits.grad.abs().sum() > 0 and draft_hidden.grad.abs().sum() > 0


def test_bf16_inputs_are_computed_in_fp32() -> None:
    loss_fn = DraftDistillLoss()
    contract.assert_bf16_inputs_give_fp32_result(pair(loss_fn), pair(loss_fn, reference=True), seed=14)
    args = [t.requires_grad_() for t in inputs(seed=15, dtype=torch.bfloat16)]
    value = loss_fn(*args, partial_mask())
    assert value.dtype == torch.float32 and all(p.dtype == torch.float32 for p in loss_fn.parts(*args, partial_mask()))
    torch.testing.assert_close(value, loss_fn(*(t.detach().float() for t in args), partial_mask()))
    value.backward()
    for t in (args[0], args[2]):
        assert t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad.float()).all()


def test_the_weights_scale_the_parts() -> None:
    args = (*inputs(seed=16), partial_mask())
    ce, feature = DraftDistillLoss().parts(*args)
    assert ce > 0 and feature > 0
    torch.testing.assert_close(DraftDistillLoss(0.3, 2.0)(*args), 0.3 * ce + 2.0 * feature, rtol=1e-14, atol=0)
    torch.testing.assert_close(DraftDistillLoss(0.0, 1.0)(*args), feature, rtol=0, atol=0)
    torch.testing.assert_close(DraftDistillLoss(1.0, 0.0)(*args), ce, rtol=0, atol=0)
    torch.testing.assert_close(DraftDistillLoss().combine(ce, feature), DraftDistillLoss()(*args), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ce_weight": -0.1}, "ce_weight"),
        ({"ce_weight": float("nan")}, "ce_weight"),
        ({"ce_weight": float("inf")}, "ce_weight"),
        ({"feature_weight": -1.0}, "feature_weight"),
        ({"feature_weight": float("inf")}, "feature_weight"),
        ({"feature_weight": "1"}, "feature_weight"),
        ({"ce_weight": 0.0, "feature_weight": 0.0}, "both 0"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DraftDistillLoss(**kwargs)


def test_shape_mismatches_raise_value_error_naming_the_shapes() -> None:
    loss_fn = DraftDistillLoss()
    z, h, mask = torch.zeros(2, 3, 5), torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    cases = [
        ((z, torch.zeros(2, 3, 6), h, h, mask), r"target logits \(2, 3, 6\) != draft logits \(2, 3, 5\)"),
        ((z, z, h, torch.zeros(2, 3, 3), mask), r"target hidden \(2, 3, 3\) != draft hidden \(2, 3, 4\)"),
        ((z, z, torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), mask), r"\(2, 4, 4\) and logits \(2, 3, 5\)"),
        ((z, z, h, h, torch.ones(2, 4, dtype=torch.bool)), r"mask \(2, 4\)"),
        ((z, z, h, h, torch.full((2, 3), 2.0)), "only 0 and 1"),
        ((z[0], z[0], h[0], h[0], mask[0]), r"\(B, T, V\)"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            loss_fn(*args)


def test_constructor_defaults_and_registry_name() -> None:
    params = contract.assert_constructor_annotated_and_documented(DraftDistillLoss, ["ce_weight", "feature_weight"])
    assert [p.default for p in params] == [0.1, 1.0]
    from distill.tasks.loss_terms import LOSSES

    assert LOSSES.get("draft_distill") is DraftDistillLoss
