"""The loss contract (tests/losses/contract.py) for every feature loss, against the naive float64 references of
tests/losses/feature_reference.py (docs/methods.md, section 11). Method-specific tests live in
test_feature_map_losses.py, test_relational_losses.py, test_hidden_state_loss.py and test_projector.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from losses.consumes import FEATURES, TOKEN_FEATURES
from losses.feature_maps import AttentionTransferLoss, HintLoss, SimilarityPreservingLoss
from losses.hidden_state import HiddenStateLoss
from losses.relational import PKTLoss, RKDLoss
from tests.losses import contract
from tests.losses.contract import UPSTREAM, logits
from tests.losses.feature_reference import ref_at, ref_hidden, ref_hint, ref_pkt, ref_rkd, ref_sp, token_mask

Shapes = list[tuple[int, ...]]


@dataclass
class Case:
    make: Callable[[], nn.Module]
    reference: Callable[..., torch.Tensor]  # (s, t) -> scalar of one pair
    student: Shapes
    teacher: Shapes
    masked: bool = False
    average: bool = False  # pairs averaged instead of summed

    def call(self, fn: Callable[..., torch.Tensor], s: list | torch.Tensor, t: list | torch.Tensor) -> torch.Tensor:
        """`fn(s, t)`, with a token mask built from the (first) student feature for the masked losses."""
        first = s if isinstance(s, torch.Tensor) else s[0]
        return fn(s, t, token_mask(*first.shape[:2])) if self.masked else fn(s, t)

    def reference_total(self, s: list[torch.Tensor], t: list[torch.Tensor]) -> torch.Tensor:
        extra = (token_mask(*s[0].shape[:2]),) if self.masked else ()
        total = sum(self.reference(a, b, *extra) for a, b in zip(s, t, strict=True))
        return total / len(s) if self.average else total


CASES = {
    "hint": Case(HintLoss, ref_hint, [(3, 2, 3, 3), (3, 4)], [(3, 2, 3, 3), (3, 4)]),
    "at": Case(AttentionTransferLoss, ref_at, [(3, 2, 4, 4), (2, 2, 4, 6)], [(3, 3, 2, 2), (2, 3, 6, 3)]),
    "at_p3": Case(lambda: AttentionTransferLoss(3.0), lambda s, t: ref_at(s, t, 3.0), [(2, 2, 3, 3)], [(2, 1, 3, 3)]),
    "sp": Case(SimilarityPreservingLoss, ref_sp, [(4, 2, 2, 2), (4, 5)], [(4, 6), (4, 2, 3)]),
    "rkd": Case(RKDLoss, ref_rkd, [(4, 6), (4, 2, 3)], [(4, 5), (4, 7)]),
    "rkd_weights": Case(lambda: RKDLoss(2.0, 0.5), lambda s, t: ref_rkd(s, t, 2.0, 0.5), [(5, 3)], [(5, 4)]),
    "pkt": Case(PKTLoss, ref_pkt, [(5, 6), (5, 2, 3)], [(5, 4), (5, 3)]),
    "hs_mse": Case(HiddenStateLoss, lambda s, t, m: ref_hidden(s, t, m, "mse"), [(2, 3, 4)] * 2, [(2, 3, 4)] * 2,
                   masked=True, average=True),
    "hs_cosine": Case(lambda: HiddenStateLoss("cosine"), lambda s, t, m: ref_hidden(s, t, m, "cosine"),
                      [(2, 3, 4)] * 2, [(2, 3, 4)] * 2, masked=True, average=True),
}  # fmt: skip


def features(shapes: Shapes, seed: int, dtype: torch.dtype = torch.float64, batch: int | None = None) -> list:
    """Seeded Gaussian features of the given shapes (the batch dim replaced by `batch` if given)."""
    return [logits(*((batch,) + shape[1:] if batch is not None else shape), seed=seed + i, scale=1.0, dtype=dtype)
            for i, shape in enumerate(shapes)]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_matches_float64_reference_in_value_and_gradient(name: str) -> None:
    case = CASES[name]
    student = [f.requires_grad_() for f in features(case.student, seed=0)]
    teacher = features(case.teacher, seed=10)
    ref_student = [f.detach().clone().requires_grad_() for f in student]
    value = case.call(case.make(), student, teacher)
    expected = case.reference_total(ref_student, teacher)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.autograd.backward([UPSTREAM * value, UPSTREAM * expected])
    for got, want in zip(student, ref_student, strict=True):
        assert want.grad.abs().sum() > 0
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_pairs_are_summed_or_averaged_and_a_single_tensor_is_one_pair(name: str) -> None:
    case = CASES[name]
    loss = case.make()
    student, teacher = features(case.student * 2, seed=1)[:2], features(case.teacher * 2, seed=11)[:2]
    parts = [case.call(loss, s, t) for s, t in zip(student, teacher, strict=True)]  # single tensors
    total = case.call(loss, student, teacher)
    torch.testing.assert_close(total, (parts[0] + parts[1]) / (2 if case.average else 1), rtol=1e-12, atol=0)
    assert parts[0] > 0 and parts[1] > 0


@pytest.mark.parametrize("name", CASES)
def test_gradcheck_float64_wrt_student(name: str) -> None:
    case = CASES[name]
    loss, teacher = case.make(), features(case.teacher[:1], seed=12)
    student = features(case.student[:1], seed=2)[0].requires_grad_()
    assert torch.autograd.gradcheck(lambda s: case.call(loss, [s], teacher), (student,))


@pytest.mark.parametrize("name", CASES)
def test_empty_batch_gives_zero_and_finite_gradients(name: str) -> None:
    case = CASES[name]
    student = features(case.student, seed=3, dtype=torch.float32, batch=0)
    teacher = features(case.teacher, seed=13, dtype=torch.float32, batch=0)
    contract.assert_zero_with_finite_gradients(
        lambda s, t: case.call(case.make(), [s, *student[1:]], [t, *teacher[1:]]),
        student[0].requires_grad_(),
        teacher[0],
    )


@pytest.mark.parametrize("name", CASES)
def test_no_gradient_reaches_the_teacher(name: str) -> None:
    case = CASES[name]
    scale = nn.Parameter(torch.tensor(1.5))  # the teacher's features are the output of a layer
    teacher = [f * scale for f in features(case.teacher, seed=14, dtype=torch.float32)]
    leaves = [f.requires_grad_() for f in features(case.teacher, seed=24, dtype=torch.float32)]
    student = [f.requires_grad_() for f in features(case.student, seed=4, dtype=torch.float32)]
    loss = case.make()
    (case.call(loss, student, teacher) + case.call(loss, student, leaves)).backward()
    assert scale.grad is None
    assert all(f.grad is None for f in leaves)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student)


@pytest.mark.parametrize("name", CASES)
def test_bf16_inputs_give_fp32_result_of_the_rounded_values(name: str) -> None:
    case = CASES[name]
    loss = case.make()
    student = [f.requires_grad_() for f in features(case.student, seed=5, dtype=torch.bfloat16)]
    teacher = features(case.teacher, seed=15, dtype=torch.bfloat16)
    value = case.call(loss, student, teacher)
    assert value.dtype == torch.float32
    fp32 = case.call(loss, [f.detach().float() for f in student], [f.float() for f in teacher])
    torch.testing.assert_close(value, fp32, rtol=1e-6, atol=1e-7)
    reference = case.reference_total([f.detach() for f in student], teacher)
    torch.testing.assert_close(value.double(), reference, rtol=1e-5, atol=1e-6)
    value.backward()
    assert all(f.grad.dtype == torch.bfloat16 and torch.isfinite(f.grad.float()).all() for f in student)


@pytest.mark.parametrize("name", CASES)
def test_list_lengths_must_match_and_not_be_empty(name: str) -> None:
    case = CASES[name]
    student, teacher = features(case.student, seed=6), features(case.teacher, seed=16)
    with pytest.raises(ValueError, match="2 student features but 1 teacher"):
        case.call(case.make(), student[:1] * 2, teacher[:1])
    with pytest.raises(ValueError, match="at least one pair"):
        case.make()([], [], token_mask(2, 3)) if case.masked else case.make()([], [])


@pytest.mark.parametrize("name", CASES)
def test_batch_sizes_must_match(name: str) -> None:
    case = CASES[name]
    student = features(case.student[:1], seed=7)
    teacher = features(case.teacher[:1], seed=17, batch=case.teacher[0][0] + 1)
    with pytest.raises(ValueError, match="teacher"):
        case.call(case.make(), student, teacher)


@pytest.mark.parametrize(
    ("cls", "kind", "needs_teacher_shape"),
    [
        (HintLoss, FEATURES, True),
        (AttentionTransferLoss, FEATURES, False),
        (SimilarityPreservingLoss, FEATURES, False),
        (RKDLoss, FEATURES, False),
        (PKTLoss, FEATURES, False),
        (HiddenStateLoss, TOKEN_FEATURES, True),
    ],
)
def test_declares_what_it_consumes(cls: type, kind: str, needs_teacher_shape: bool) -> None:
    assert cls.consumes.kind == kind
    assert cls.needs_teacher_shape is needs_teacher_shape
