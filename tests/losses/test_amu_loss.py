"""AMU-Tuning's head, uncertainty factor and loss (docs/methods.md, section 9), checked against the formula written
naively in float64, on hand-made inputs, and for the loss contract (tests/losses/contract.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from losses import AMULogitBias, AMULoss, amu_uncertainty
from losses.amu import class_means
from tests.losses.contract import labels, logits


def naive_uncertainty(clip_logits: torch.Tensor, power: float) -> torch.Tensor:
    """`(kappa / 250) ** -power` row by row, kappa the mean fourth power of the z-scored softmax."""
    rows = []
    for row in clip_logits.double():
        p = torch.softmax(row, dim=0)
        mean = p.sum() / len(p)
        std = math.sqrt(sum((x - mean) ** 2 for x in p) / (len(p) - 1))
        kappa = sum(((x - mean) / std) ** 4 for x in p) / len(p)
        rows.append((kappa / 250) ** -power)
    return torch.tensor(rows, dtype=torch.float64).unsqueeze(1)


def features(n: int, dim: int, seed: int) -> torch.Tensor:
    return logits(n, dim, seed=seed, scale=1.0, dtype=torch.float64)


def test_the_head_starts_at_the_class_means_of_the_normalized_features():
    x, y = features(12, 5, seed=0), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    head = AMULogitBias(x, y, num_classes=3)
    normalized = x / x.norm(dim=1, keepdim=True)
    for c in range(3):
        torch.testing.assert_close(head.weight[c].double(), normalized[y == c].mean(dim=0), rtol=1e-6, atol=1e-7)
    # k shots per class: the authors' sum / (N / C) is the same thing
    torch.testing.assert_close(class_means(x, y, 3), torch.stack([normalized[y == c].sum(0) / 4 for c in range(3)]))
    # unequal counts: each class by its own count
    uneven = torch.tensor([0, 0, 0, 1, 2, 2])
    torch.testing.assert_close(class_means(x[:6], uneven, 3)[1], normalized[3])
    assert [n for n, p in head.named_parameters() if p.requires_grad] == ["weight"]


def test_one_hot_prediction_over_1000_classes_gives_about_0_575():
    one_hot = torch.zeros(1, 1000)
    one_hot[0, 7] = 60.0  # softmax is one-hot to within e^-60
    u = amu_uncertainty(one_hot, power=0.4)
    assert u.shape == (1, 1)
    # kappa = (999^3 + 1) / 1000 / (999 / 1000)^2 ... ~ 996 for a one-hot over 1000 classes (unbiased std)
    assert u.item() == pytest.approx((996.0 / 250) ** -0.4, abs=2e-3) and u.item() == pytest.approx(0.575, abs=1e-3)


def test_uncertainty_matches_the_formula_and_grows_as_the_prediction_flattens():
    clip = logits(6, 9, seed=3, dtype=torch.float64)
    for power in (0.4, 1.0, 0.0):
        torch.testing.assert_close(amu_uncertainty(clip, power), naive_uncertainty(clip, power))
    base = torch.tensor([[4.0, 1.0, 0.0, -1.0, 0.5]])
    sharper, flatter = (amu_uncertainty(base * s).item() for s in (3.0, 0.3))
    assert sharper < amu_uncertainty(base).item() < flatter
    assert torch.isfinite(amu_uncertainty(torch.zeros(2, 5))).all()  # uniform: no kurtosis, a finite factor


def test_fused_logits_follow_the_formula_with_and_without_uncertainty():
    x, y = features(10, 6, seed=4), torch.arange(10) % 5
    clip, aux_in = logits(3, 5, seed=5, dtype=torch.float64), features(3, 6, seed=6)
    w = class_means(x, y, 5)
    normalized = aux_in / aux_in.norm(dim=1, keepdim=True)
    raw = normalized @ w.t()
    expected_aux = (raw - raw.mean(1, keepdim=True)) / (raw.std(1, keepdim=True) + 1e-7)
    for uncertainty, u in (("kurtosis", naive_uncertainty(clip, 0.4)), ("none", 1.0)):
        head = AMULogitBias(x, y, num_classes=5, alpha=0.7, uncertainty=uncertainty)
        fused, aux = head(clip, aux_in)
        torch.testing.assert_close(aux, expected_aux)
        torch.testing.assert_close(fused, clip + 0.7 * u * expected_aux)


def test_only_the_head_weight_gets_gradient_and_training_it_fits_the_shots():
    x, y = features(40, 8, seed=7).float(), torch.arange(40) % 4
    clip = torch.zeros(40, 4, requires_grad=True)  # an uninformative zero-shot branch
    aux_in = x.clone().requires_grad_()
    head, loss = AMULogitBias(x, y, num_classes=4, alpha=1.0, uncertainty="none"), AMULoss(lam=0.5)
    fused, aux = head(clip, aux_in)
    loss(fused, aux, y).backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    before = loss(*head(clip.detach(), x), y).item()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(50):
        optimizer.zero_grad()
        loss(*head(clip.detach(), x), y).backward()
        optimizer.step()
    assert loss(*head(clip.detach(), x), y).item() < before
    # the factor is a gate computed without gradient: clip logits get gradient only through the sum
    clip2 = logits(4, 4, seed=8).requires_grad_()
    gated = AMULogitBias(x, y, num_classes=4)
    gated(clip2, x[:4])[0].sum().backward()
    torch.testing.assert_close(clip2.grad, torch.ones_like(clip2))


def naive_amu_loss(fused: torch.Tensor, aux: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    def ce(z: torch.Tensor) -> torch.Tensor:
        return -torch.stack([torch.log_softmax(z[i], 0)[y[i]] for i in range(len(y))]).mean()

    return lam * ce(fused) + (1 - lam) * ce(aux)


def test_loss_equals_the_naive_reference_in_value_and_gradient():
    y = labels(5, 7, seed=9)
    fused, aux = (logits(5, 7, seed=s, dtype=torch.float64).requires_grad_() for s in (10, 11))
    fused_ref, aux_ref = (t.detach().clone().requires_grad_() for t in (fused, aux))
    value, expected = AMULoss(0.35)(fused, aux, y), naive_amu_loss(fused_ref, aux_ref, y, 0.35)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    (0.37 * value).backward()
    (0.37 * expected).backward()
    torch.testing.assert_close(fused.grad, fused_ref.grad)
    torch.testing.assert_close(aux.grad, aux_ref.grad)
    assert torch.autograd.gradcheck(lambda f, a: AMULoss(0.35)(f, a, y), (fused.detach().requires_grad_(), aux))


def test_loss_golden_value_parts_empty_batch_and_bf16():
    fused, aux, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([0])
    loss = AMULoss(0.35)
    fused_ce, aux_ce = loss.parts(fused, aux, y)
    assert fused_ce.item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert aux_ce.item() == pytest.approx(math.log(2))
    assert loss(fused, aux, y).item() == pytest.approx(0.35 * math.log(1 + math.exp(-2)) + 0.65 * math.log(2))
    empty = torch.zeros(0, 3, requires_grad=True)
    value = loss(empty, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(empty.grad).all()
    z32, a32, y32 = logits(8, 6, seed=12), logits(8, 6, seed=13), labels(8, 6, seed=14)
    low = loss(z32.bfloat16(), a32.bfloat16(), y32)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss(z32.bfloat16().float(), a32.bfloat16().float(), y32).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AMULoss(lam=1.5), "lam must be in"),
        (lambda: AMULoss(lam=-0.1), "lam must be"),
        (lambda: AMULogitBias(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), 2, uncertainty="entropy"), "uncertainty"),
        (lambda: AMULogitBias(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), 3), r"none for classes \[2\]"),
        (lambda: AMULogitBias(torch.randn(4, 3), torch.tensor([0, 1, 0, 5]), 3), r"labels must lie in \[0, 3\)"),
        (lambda: AMULogitBias(torch.randn(4, 3), torch.tensor([0, 1, 0]), 2), "features must be"),
        (lambda: AMULogitBias(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), 2, alpha=-1), "alpha"),
        (
            lambda: AMULogitBias(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), 2)(
                torch.zeros(2, 3), torch.zeros(2, 3)
            ),
            r"clip_logits must be \(B, 2\)",
        ),
        (
            lambda: AMULogitBias(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), 2)(
                torch.zeros(2, 2), torch.zeros(2, 4)
            ),
            r"aux_features must be \(B, 3\)",
        ),
        (lambda: amu_uncertainty(torch.zeros(3)), "clip_logits must be"),
        (lambda: AMULoss()(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)), "aux logits"),
    ],
)
def test_bad_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_head_is_not_moved_by_features_in_half_precision():
    x, y = features(6, 4, seed=15).float(), torch.tensor([0, 1, 2, 0, 1, 2])
    head = AMULogitBias(x, y, num_classes=3)
    fused, aux = head(logits(2, 3, seed=16).bfloat16(), x[:2].bfloat16())
    assert fused.dtype == aux.dtype == torch.float32
    expected = F.normalize(x[:2].bfloat16().float(), dim=-1) @ head.weight.t()
    standardized = (expected - expected.mean(1, keepdim=True)) / (expected.std(1, keepdim=True) + 1e-7)
    torch.testing.assert_close(aux, standardized)
