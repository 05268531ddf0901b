"""DPOLoss, sequence_logps and implicit_rewards (docs/methods.md, section 7, last paragraph) through the loss contract
(tests/losses/contract.py), adapted to a loss on per-sequence log-probabilities: the "teacher" is the frozen reference
model."""

from __future__ import annotations

import math

import pytest
import torch

from losses import DPOLoss, implicit_rewards, sequence_logps
from tests.losses import contract
from tests.losses.contract import UPSTREAM, logits


def four_logps(batch: int, seed: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Seeded (batch,) summed log-probs: policy chosen, policy rejected, reference chosen, reference rejected."""
    return [-(logits(batch, seed=seed + i, scale=5.0, dtype=dtype).abs() + 10.0) for i in range(4)]


def naive_dpo(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> torch.Tensor:
    """Float64 reference, one pair at a time: `log(1 + exp(-x))`, `x = beta ((pc - rc) - (pr - rr))`."""
    total = torch.zeros((), dtype=torch.float64)
    for c, r, c_ref, r_ref in zip(pc.double(), pr.double(), rc.double(), rr.double(), strict=True):
        x = beta * ((c - c_ref.detach()) - (r - r_ref.detach()))
        total = total + torch.log1p(torch.exp(-x))
    return total / max(pc.numel(), 1)


def test_matches_float64_reference_in_value_and_gradient() -> None:
    pc, pr, rc, rr = four_logps(6, seed=0)
    pc.requires_grad_()
    pr.requires_grad_()
    ref_pc, ref_pr = pc.detach().clone().requires_grad_(), pr.detach().clone().requires_grad_()
    value = DPOLoss(beta=0.3)(pc, pr, rc, rr)
    expected = naive_dpo(ref_pc, ref_pr, rc, rr, beta=0.3)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    (UPSTREAM * value).backward()
    (UPSTREAM * expected).backward()
    torch.testing.assert_close(pc.grad, ref_pc.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(pr.grad, ref_pr.grad, rtol=1e-10, atol=1e-14)


def test_gradcheck_float64() -> None:
    pc, pr, rc, rr = four_logps(4, seed=4)
    loss_fn = DPOLoss(beta=0.5)
    assert torch.autograd.gradcheck(lambda c, r: loss_fn(c, r, rc, rr), (pc.requires_grad_(), pr.requires_grad_()))


def test_pinned_golden_value() -> None:
    # pair 0: pi_c - ref_c = 10, pi_r - ref_r = -10, x = 0.1 * 20 = 2, -log sigmoid(2) = log(1 + e^-2)
    #   = 0.1269280110429725; pair 1: the policy's margin equals the reference's, x = 0, log 2 = 0.6931471805599453
    # mean: (0.1269280110429725 + 0.6931471805599453) / 2 = 0.4100375958014589
    pc, pr = torch.tensor([-20.0, -30.0]), torch.tensor([-60.0, -31.0])
    rc, rr = torch.tensor([-30.0, -32.0]), torch.tensor([-50.0, -33.0])
    assert DPOLoss(beta=0.1)(pc, pr, rc, rr).item() == pytest.approx(0.4100375958014589, rel=1e-6)


def test_policy_equal_to_reference_gives_log_2() -> None:
    pc, pr, _, _ = four_logps(5, seed=8)
    value = DPOLoss(beta=0.7)(pc, pr, pc.clone(), pr.clone())
    assert value.item() == pytest.approx(math.log(2.0), rel=1e-12)


def test_gradient_pushes_chosen_up_and_rejected_down() -> None:
    pc, pr, rc, rr = four_logps(5, seed=12)
    pc.requires_grad_()
    pr.requires_grad_()
    DPOLoss()(pc, pr, rc, rr).backward()
    assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0)  # a descent step raises pi_c, lowers pi_r
    torch.testing.assert_close(pc.grad, -pr.grad)  # the loss depends on pi_c - pi_r only


def test_empty_batch_gives_zero_and_finite_gradients() -> None:
    pc, pr = torch.zeros(0, requires_grad=True), torch.zeros(0, requires_grad=True)
    value = DPOLoss()(pc, pr, torch.zeros(0), torch.zeros(0))
    assert value.item() == 0.0
    value.backward()
    assert pc.grad.shape == (0,) and pr.grad.shape == (0,)


def test_no_gradient_reaches_the_reference() -> None:
    layer = torch.nn.Linear(3, 2)
    ref = layer(torch.randn(4, 3, generator=torch.Generator().manual_seed(16)))  # a reference output in a graph
    rc_leaf, rr_leaf = (x.detach().requires_grad_() for x in four_logps(4, seed=17, dtype=torch.float32)[2:])
    pc, pr, _, _ = (x.requires_grad_() for x in four_logps(4, seed=21, dtype=torch.float32))
    loss_fn = DPOLoss()
    (loss_fn(pc, pr, ref[:, 0], ref[:, 1]) + loss_fn(pc, pr, rc_leaf, rr_leaf)).backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert rc_leaf.grad is None and rr_leaf.grad is None
    assert pc.grad.abs().sum() > 0 and pr.grad.abs().sum() > 0


def test_bf16_inputs_are_computed_in_fp32() -> None:
    pc, pr, rc, rr = four_logps(8, seed=25, dtype=torch.bfloat16)
    pc.requires_grad_()
    value = DPOLoss(beta=0.2)(pc, pr, rc, rr)
    assert value.dtype == torch.float32
    fp32 = DPOLoss(beta=0.2)(pc.detach().float(), pr.float(), rc.float(), rr.float())
    torch.testing.assert_close(value, fp32, rtol=0, atol=0)
    torch.testing.assert_close(value.double(), naive_dpo(pc.detach(), pr, rc, rr, 0.2), rtol=1e-6, atol=1e-7)
    value.backward()
    assert pc.grad.dtype == torch.bfloat16 and torch.isfinite(pc.grad.float()).all()


def test_large_margins_stay_finite() -> None:
    pc = torch.tensor([0.0, -1e5], requires_grad=True)
    pr, rc, rr = torch.tensor([-1e5, 0.0]), torch.zeros(2), torch.zeros(2)
    value = DPOLoss(beta=1.0)(pc, pr, rc, rr)  # x = 1e5 (loss 0) and x = -1e5 (loss 1e5)
    assert value.item() == pytest.approx(1e5 / 2)
    value.backward()
    assert torch.isfinite(pc.grad).all()
    torch.testing.assert_close(pc.grad, torch.tensor([0.0, -0.5]))


def test_implicit_rewards_and_margins() -> None:
    pc, pr, rc, rr = four_logps(5, seed=29)
    beta = 0.25
    chosen, rejected = implicit_rewards(pc, rc, beta), implicit_rewards(pr, rr, beta)
    torch.testing.assert_close(chosen, beta * (pc - rc))
    margin = chosen - rejected
    torch.testing.assert_close(margin, beta * ((pc - rc) - (pr - rr)))
    # the loss is -log sigmoid of the reward margin, averaged
    torch.testing.assert_close(DPOLoss(beta)(pc, pr, rc, rr), torch.nn.functional.softplus(-margin).mean())
    # the reference is detached, the policy is not; bf16 in, fp32 out
    policy, ref = pc.clone().requires_grad_(), rc.clone().requires_grad_()
    implicit_rewards(policy, ref, beta).sum().backward()
    assert ref.grad is None and torch.all(policy.grad == beta)
    assert implicit_rewards(pc.bfloat16(), rc.bfloat16(), beta).dtype == torch.float32
    with pytest.raises(ValueError, match="reference"):
        implicit_rewards(pc, rc[:3], beta)


def naive_sequence_logps(logits_: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Float64 loop: the sum over labelled positions of `log softmax(row)[label]`."""
    out = []
    for rows, seq in zip(logits_.double(), labels, strict=True):
        total = torch.zeros((), dtype=torch.float64)
        for row, y in zip(rows, seq, strict=True):
            if y != ignore_index:
                total = total + row[y] - torch.logsumexp(row, dim=0)
        out.append(total)
    return torch.stack(out)


def test_sequence_logps_equals_a_manual_loop_and_ignores_masked_positions() -> None:
    x = logits(3, 6, 9, seed=33, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, 9, (3, 6), generator=torch.Generator().manual_seed(34))
    labels[0, :2] = -100  # a prompt
    labels[2] = -100  # no response at all
    value = sequence_logps(x, labels)
    ref_x = x.detach().clone().requires_grad_()
    expected = naive_sequence_logps(ref_x, labels)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    assert value[2].item() == 0.0 and torch.all(value[:2] < 0)
    weights = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)  # a non-unit upstream gradient per sequence
    (weights * value).sum().backward()
    (weights * expected).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)
    assert torch.all(x.grad[labels == -100] == 0)
    # the logits at ignored positions do not matter; nor does another ignore_index's value elsewhere
    changed = x.detach().clone()
    changed[labels == -100] = 50.0
    torch.testing.assert_close(sequence_logps(changed, labels), value.detach())
    custom = torch.where(labels == -100, 7, labels)
    torch.testing.assert_close(sequence_logps(changed, custom, ignore_index=7), sequence_logps(changed, labels))
    small = torch.tensor([[1, -100, 3], [-100, 0, 2]])
    assert torch.autograd.gradcheck(
        lambda t: sequence_logps(t, small), (logits(2, 3, 4, seed=35).double().requires_grad_(),)
    )


def test_sequence_logps_in_fp32_for_bf16_logits_and_on_empty_input() -> None:
    x = logits(2, 5, 11, seed=36, dtype=torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(37))
    value = sequence_logps(x, labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), naive_sequence_logps(x.detach(), labels), rtol=1e-6, atol=1e-5)
    value.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    empty = torch.zeros(0, 4, 5, requires_grad=True)
    out = sequence_logps(empty, torch.zeros(0, 4, dtype=torch.long))
    assert out.shape == (0,)
    out.sum().backward()
    assert empty.grad.shape == empty.shape


def test_invalid_arguments_and_shapes_raise_value_error() -> None:
    for beta in (0.0, -0.1):
        with pytest.raises(ValueError, match="beta"):
            DPOLoss(beta=beta)
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="four"):
        DPOLoss()(z, z, z, torch.zeros(4))
    with pytest.raises(ValueError, match="four"):
        DPOLoss()(*[torch.zeros(2, 3)] * 4)
    with pytest.raises(ValueError, match="labels"):
        sequence_logps(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        sequence_logps(torch.zeros(2, 3, 5), torch.zeros(2, 3))


def test_constructor_defaults_and_registered_as_the_dpo_objective() -> None:
    params = contract.assert_constructor_annotated_and_documented(DPOLoss, ["beta"])
    assert [p.default for p in params] == [0.1]
    from distill.tasks.loss_terms import LOSSES

    assert LOSSES.get("dpo") is DPOLoss  # the objective of `task: dpo` recipes (not a teacher-student logit term)
