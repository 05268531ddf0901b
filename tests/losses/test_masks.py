"""Sequence losses take bool, integer or float 0/1 masks alike (EAGLE-style code passes float loss masks) and refuse
any other value by name, instead of reading it as "set"."""

from __future__ import annotations

import pytest
import torch

from losses import AlignDistilLoss, DraftDistillLoss, GraphOnLogitsLoss
from losses._common import as_mask

B, T, V, H = 2, 5, 7, 4


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(B, T, size, generator=g) for name, size in (("s", V), ("t", V), ("u", V), ("h", H))}


def losses_with_mask() -> dict[str, object]:
    """Each mask-taking loss as `(student logits leaf, mask) -> loss`."""
    x = inputs()
    return {
        "align_distil": lambda s, m: AlignDistilLoss()(s, x["t"], x["u"], m),
        "draft_distill": lambda s, m: DraftDistillLoss()(s, x["t"], x["h"], x["h"] + 0.5, m),
        "gld": lambda s, m: GraphOnLogitsLoss()(s, x["t"], m, m),
    }


MASK = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])


@pytest.mark.parametrize("name", sorted(losses_with_mask()))
@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.float32, torch.float64, torch.bfloat16])
def test_integer_and_float_masks_equal_the_bool_mask_in_value_and_gradient(name, dtype):
    loss = losses_with_mask()[name]
    student = inputs()["s"]
    reference_leaf = student.clone().requires_grad_()
    reference = loss(reference_leaf, MASK.bool())
    reference.backward()
    leaf = student.clone().requires_grad_()
    value = loss(leaf, MASK.to(dtype))
    value.backward()
    assert value.item() == reference.item()
    assert torch.equal(leaf.grad, reference_leaf.grad)
    assert reference_leaf.grad[~MASK.bool()].abs().sum() == 0 or name == "gld"  # unmasked rows get no gradient


@pytest.mark.parametrize("name", sorted(losses_with_mask()))
@pytest.mark.parametrize("stray", [0.5, 2.0, -1.0, float("nan")])
def test_values_other_than_0_and_1_are_refused_naming_the_value(name, stray):
    mask = MASK.float()
    mask[1, 2] = stray
    with pytest.raises(ValueError, match="only 0 and 1"):
        losses_with_mask()[name](inputs()["s"], mask)


def test_as_mask_names_the_argument_and_the_shape():
    with pytest.raises(ValueError, match=r"teacher_mask \(2, 4\) does not match the \(B, T\) \(2, 5\)"):
        as_mask(torch.ones(2, 4), (2, 5), "teacher_mask")
    with pytest.raises(ValueError, match="got 3"):
        as_mask(torch.tensor([[0, 3]]), (1, 2))
    assert as_mask(torch.tensor([[0.0, 1.0]]), (1, 2)).tolist() == [[False, True]]
