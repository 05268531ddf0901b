"""ReviewKDLoss: HCL and the ABF fusion against references written from the formula (float64), and the loss contract."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from losses.consumes import FEATURES
from losses.review_kd import ReviewKDLoss, hierarchical_context_loss
from tests.losses import contract
from tests.losses.contract import UPSTREAM, logits


def reference_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pool to l x l: cell (i, j) averages rows [iH/l, ceil((i+1)H/l)), the same for columns."""
    height, width = x.shape[-2:]
    rows = []
    for i in range(size):
        r0, r1 = i * height // size, -(-(i + 1) * height // size)
        cells = [x[:, :, r0:r1, j * width // size : -(-(j + 1) * width // size)].mean(dim=(2, 3)) for j in range(size)]
        rows.append(torch.stack(cells, dim=-1))
    return torch.stack(rows, dim=-2)


def reference_hcl(s: torch.Tensor, t: torch.Tensor, levels=(4, 2, 1)) -> torch.Tensor:
    """Weight 1 for the full map, then half the previous weight for each level l < H; the weighted mean of the MSEs."""
    terms = [(1.0, ((s - t) ** 2).sum() / s.numel())]
    for level in levels:
        if level < s.shape[2]:
            ps, pt = reference_pool(s, level), reference_pool(t, level)
            terms.append((terms[-1][0] / 2, ((ps - pt) ** 2).sum() / ps.numel()))
    return sum(w * v for w, v in terms) / sum(w for w, _ in terms)


def bn_eval(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]


def nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    (h, w), (height, width) = x.shape[-2:], size
    return x[:, :, [i * h // height for i in range(height)]][:, :, :, [j * w // width for j in range(width)]]


def reference_fused(loss: ReviewKDLoss, maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Eval-mode ABFs from the description: deepest first, reduce, mix with the resized deeper map, 3x3 to output."""
    outputs, deeper = [], None
    for abf, x in zip(reversed(loss.abfs), reversed(maps), strict=True):
        mid = bn_eval(F.conv2d(x, abf.conv1[0].weight), abf.conv1[1])
        if deeper is not None:
            up, att = nearest(deeper, tuple(mid.shape[-2:])), abf.att_conv[0]
            weights = 1 / (1 + torch.exp(-F.conv2d(torch.cat([mid, up], dim=1), att.weight, att.bias)))
            mid = mid * weights[:, 0:1] + up * weights[:, 1:2]
        outputs.insert(0, bn_eval(F.conv2d(mid, abf.conv2[0].weight, padding=1), abf.conv2[1]))
        deeper = mid
    return outputs


def maps(channels: list[int], sizes: list[int], batch: int, seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    """Seeded (B, C, s, s) maps; size 0 stands for a pooled (B, C) vector."""
    shapes = [(batch, c, s, s) if s else (batch, c) for c, s in zip(channels, sizes, strict=True)]
    return [logits(*shape, seed=seed + i, scale=1.0, dtype=dtype) for i, shape in enumerate(shapes)]


def randomized(loss: ReviewKDLoss, seed: int) -> ReviewKDLoss:
    """Random BN statistics and affine parameters, so that the eval-mode reference sees non-trivial BNs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in loss.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor in (module.weight, module.bias, module.running_mean):
                    tensor.copy_(torch.randn(tensor.shape, generator=generator))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return loss


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 6, 5), (2, 3, 1, 1)])
@pytest.mark.parametrize("levels", [(4, 2, 1), (3, 1), ()])
def test_hcl_matches_float64_reference_in_value_and_gradient(shape: tuple[int, ...], levels: tuple[int, ...]) -> None:
    teacher = logits(*shape, seed=1, dtype=torch.float64)
    student = logits(*shape, seed=2, dtype=torch.float64).requires_grad_()
    ref = student.detach().clone().requires_grad_()
    value, expected = hierarchical_context_loss(student, teacher, levels), reference_hcl(ref, teacher, levels)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    (UPSTREAM * value).backward()
    (UPSTREAM * expected).backward()
    torch.testing.assert_close(student.grad, ref.grad, rtol=1e-9, atol=1e-12)


def test_hcl_gradcheck_float64() -> None:
    teacher = logits(2, 2, 5, 4, seed=3, dtype=torch.float64)
    student = logits(2, 2, 5, 4, seed=4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: hierarchical_context_loss(s, teacher, (4, 2, 1)), (student,))


@pytest.mark.parametrize(("size", "expected"), [(8, 8 / 15), (4, 4 / 7), (2, 2 / 3), (1, 1.0)])
def test_hcl_golden_values_on_a_checkerboard(size: int, expected: float) -> None:
    # A +-1 checkerboard against 0: full-map MSE 1, every pooled level (even blocks) 0, the 1x1 map 1 itself.
    # So HCL = 1 / (1 + 1/2 + ...) over the levels below H: 8 -> 1/(15/8), 4 -> 1/(7/4), 2 -> 1/(3/2), 1 -> 1.
    board = torch.tensor([[(-1.0) ** (i + j) for j in range(size)] for i in range(size)])[None, None]
    assert hierarchical_context_loss(torch.zeros_like(board), board).item() == pytest.approx(expected, rel=1e-7)


def test_loss_matches_float64_reference_in_value_and_gradients() -> None:
    torch.manual_seed(0)
    loss = randomized(ReviewKDLoss([3, 4, 5], [2, 6, 3], mid_channels=4), seed=3).double().eval()
    students = [s.requires_grad_() for s in maps([3, 4, 5], [8, 4, 0], batch=2, seed=4)]
    teachers = maps([2, 6, 3], [8, 4, 0], batch=2, seed=10)
    refs = [s.detach().clone().requires_grad_() for s in students]
    as_maps = [r if r.dim() == 4 else r[:, :, None, None] for r in refs]
    fused = reference_fused(loss, as_maps)
    expected = 5 / 20 * sum(reference_hcl(f, t.reshape(f.shape)) for f, t in zip(fused, teachers, strict=True))
    value = loss(students, teachers, epoch=5)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    (UPSTREAM * value).backward()
    (UPSTREAM * expected).backward()
    for s, r in zip(students, refs, strict=True):
        assert s.grad.abs().sum() > 0
        torch.testing.assert_close(s.grad, r.grad, rtol=1e-9, atol=1e-12)
    small = randomized(ReviewKDLoss([2, 3], [2, 2], mid_channels=2, warmup_epochs=0), seed=5).double().eval()
    pair_s, pair_t = maps([2, 3], [4, 2], batch=2, seed=20), maps([2, 2], [4, 2], batch=2, seed=30)
    assert torch.autograd.gradcheck(lambda a, b: small([a, b], pair_t), tuple(s.requires_grad_() for s in pair_s))


def test_warmup_ramps_the_loss_by_the_one_based_epoch() -> None:
    torch.manual_seed(1)
    loss = ReviewKDLoss([4, 6], [4, 6], mid_channels=3, warmup_epochs=20)
    students, teachers = maps([4, 6], [4, 2], batch=3, seed=40, dtype=torch.float32), maps([4, 6], [4, 2], 3, seed=50)
    full = loss(students, teachers, epoch=20)
    assert full > 0
    torch.testing.assert_close(loss(students, teachers, epoch=10), full / 2)
    torch.testing.assert_close(loss(students, teachers, epoch=1), full / 20)
    torch.testing.assert_close(loss(students, teachers, epoch=40), full)
    no_ramp = copy.deepcopy(loss)
    no_ramp.warmup_epochs = 0
    torch.testing.assert_close(no_ramp(students, teachers, epoch=1), full)
    torch.testing.assert_close(no_ramp(students, teachers), full)  # the explicit opt-out needs no epoch
    for epoch in (0, 0.5, -1):  # epoch 0 would scale the term by exactly 0: a 0-based counter
        with pytest.raises(ValueError, match="epoch must be a number >= 1"):
            loss(students, teachers, epoch=epoch)
    with pytest.raises(ValueError, match="ramps in over warmup_epochs=20 epochs: pass epoch"):
        loss(students, teachers)  # mdistiller always ramps: no silent factor of 1


@pytest.mark.parametrize(
    ("student", "teacher"),
    [([64, 128, 256, 256], [64, 128, 256, 256]), ([16, 32, 64, 64], [32, 64, 128, 128])],
)
def test_fused_outputs_have_the_teacher_shapes(student: list[int], teacher: list[int]) -> None:
    shapes = [32, 16, 8, 1]
    loss = ReviewKDLoss.from_shapes(
        [(c, s, s) for c, s in zip(student[:3], shapes[:3], strict=True)] + [(student[3],)],
        [(c, s, s) for c, s in zip(teacher, shapes, strict=True)],
    )
    fused = loss.fuse([torch.randn(2, c, s, s) for c, s in zip(student, shapes, strict=True)])
    assert [tuple(f.shape) for f in fused] == [(2, c, s, s) for c, s in zip(teacher, shapes, strict=True)]
    assert [abf.att_conv is None for abf in loss.abfs] == [False, False, False, True]  # the deepest fuses nothing
    assert all(abf.conv1[0].out_channels == min(512, student[-1]) for abf in loss.abfs)  # the authors' default
    for conv in (loss.abfs[0].conv1[0], loss.abfs[2].conv2[0]):  # kaiming_uniform(a=1): bound sqrt(3 / fan_in)
        fan_in = conv.weight[0].numel()
        assert 1 / math.sqrt(fan_in) < conv.weight.abs().max() <= math.sqrt(3 / fan_in)


def test_gradients_reach_every_abf_parameter_but_not_the_teacher() -> None:
    torch.manual_seed(2)
    loss = ReviewKDLoss([3, 4, 5], [2, 6, 3], mid_channels=4, warmup_epochs=0)
    teacher_layer = torch.nn.Conv2d(6, 6, 1)
    teachers = maps([2, 6, 3], [8, 4, 0], batch=3, seed=60, dtype=torch.float32)
    teachers[1] = teacher_layer(teachers[1])
    teachers[0].requires_grad_()
    loss(maps([3, 4, 5], [8, 4, 0], batch=3, seed=70, dtype=torch.float32), teachers).backward()
    assert teachers[0].grad is None and teacher_layer.weight.grad is None
    for name, parameter in loss.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    single = ReviewKDLoss([5], [5], mid_channels=4, warmup_epochs=0)
    contract.assert_no_gradient_reaches_the_teacher(lambda s, t: single(s, t), seed=80)


def test_empty_batch_gives_zero_finite_gradients_and_leaves_batch_norm_alone() -> None:
    loss = ReviewKDLoss([3, 4], [2, 5], mid_channels=4)
    students = [s.requires_grad_() for s in maps([3, 4], [4, 2], batch=0, seed=90, dtype=torch.float32)]
    running = loss.abfs[0].conv1[1].running_mean.clone()
    value = loss(students, maps([2, 5], [4, 2], batch=0, seed=95, dtype=torch.float32), epoch=3)
    assert value.item() == 0.0
    value.backward()
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in students)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in loss.parameters())
    assert torch.equal(loss.abfs[0].conv1[1].running_mean, running) and loss.abfs[0].conv1[1].num_batches_tracked == 0


def test_bf16_and_autocast_give_the_fp32_result_of_the_rounded_values() -> None:
    torch.manual_seed(3)
    loss = ReviewKDLoss([8, 16], [8, 12], mid_channels=8)
    students = [s.requires_grad_() for s in maps([8, 16], [8, 4], batch=4, seed=100, dtype=torch.bfloat16)]
    teachers = maps([8, 12], [8, 4], batch=4, seed=110, dtype=torch.bfloat16)
    rounded = ([s.detach().float() for s in students], [t.float() for t in teachers])
    fp32 = loss(*rounded, epoch=30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = loss(*rounded, epoch=30)
    value = loss(students, teachers, epoch=30)
    assert value.dtype == torch.float32 and autocast.dtype == torch.float32
    torch.testing.assert_close(value, fp32, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(autocast, fp32, rtol=1e-6, atol=1e-7)
    value.backward()
    assert all(s.grad.dtype == torch.bfloat16 and torch.isfinite(s.grad.float()).all() for s in students)


def test_mismatched_features_raise_value_errors_naming_the_pair() -> None:
    loss = ReviewKDLoss([3, 4], [2, 5], mid_channels=4)
    students = maps([3, 4], [4, 2], batch=2, seed=120, dtype=torch.float32)
    with pytest.raises(ValueError, match="pair 1"):
        loss(students, maps([2, 5], [4, 3], batch=2, seed=130, dtype=torch.float32))
    with pytest.raises(ValueError, match="pair 0"):
        loss(students, maps([3, 5], [4, 2], batch=2, seed=130, dtype=torch.float32))
    with pytest.raises(ValueError, match="built for 2 pairs"):
        loss(students[:1], students[:1])


def test_from_shapes_reads_channels_and_refuses_unusable_shapes() -> None:
    assert ReviewKDLoss.consumes.kind == FEATURES and ReviewKDLoss.consumes.extra == ("epoch",)
    assert ReviewKDLoss.shape_arguments == ("student_channels", "teacher_channels")
    loss = ReviewKDLoss.from_shapes([(8, 4, 4), (16,)], [(6, 4, 4), (12, 1, 1)], mid_channels=5, warmup_epochs=0)
    assert (loss.student_channels, loss.teacher_channels, loss.mid_channels) == ([8, 16], [6, 12], 5)
    for student, teacher, match in [
        ([(8, 4, 4)], [(6, 8, 8)], "pair 0"),
        ([(8, 4, 4), (8,)], [(6, 4, 4)], "one to one"),
        ([(8, 4)], [(6, 4)], r"\(C, H, W\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            ReviewKDLoss.from_shapes(student, teacher)
    with pytest.raises(ValueError, match="student_channels"):
        ReviewKDLoss.from_shapes([(8,)], [(8,)], student_channels=[8])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"student_channels": []}, "student_channels"),
        ({"student_channels": [4, 0]}, "student_channels"),
        ({"teacher_channels": [4]}, "teacher_channels"),
        ({"mid_channels": 0}, "mid_channels"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"pool_levels": (4, 0)}, "pool_levels"),
        ({"pool_levels": "421"}, "pool_levels"),
    ],
)
def test_invalid_hyper_parameters_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ReviewKDLoss(**{"student_channels": [4, 8], "teacher_channels": [4, 8], **kwargs})


def test_mid_channels_default_to_the_authors_rule():
    assert ReviewKDLoss([64, 128, 256, 256], [64, 128, 256, 256]).mid_channels == 256  # resnet8x4
    assert ReviewKDLoss([16, 32, 64, 64], [16, 32, 64, 64]).mid_channels == 64  # resnet20
    assert ReviewKDLoss([256, 1024], [256, 1024]).mid_channels == 512  # capped
