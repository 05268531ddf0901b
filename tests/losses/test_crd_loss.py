"""CRDLoss: references written from the formula (float64 loops), the memory's updates, resume, and the loss contract."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from losses.consumes import FEATURES
from losses.crd import CRDLoss, nce_loss
from tests.losses import contract
from tests.losses.contract import UPSTREAM, logits

DIMS = {"student_dim": 6, "teacher_dim": 4, "num_samples": 9, "embed_dim": 3, "negatives": 7, "temperature": 0.5}


def small_loss(seed: int = 0, **kwargs) -> CRDLoss:
    torch.manual_seed(seed)
    return CRDLoss(**{**DIMS, **kwargs}).double()


def batch(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return logits(size, 6, seed=seed, dtype=torch.float64), logits(size, 2, 2, seed=seed + 1, dtype=torch.float64)


def fix_negatives(loss: CRDLoss, *draws: list[list[int]]) -> None:
    queue = iter(torch.tensor(d) for d in draws)
    loss.draw_negatives = lambda size, device: next(queue)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum())


def embed(features: torch.Tensor, linear: torch.nn.Linear) -> list[torch.Tensor]:
    w, b = linear.weight.detach(), linear.bias.detach()
    return [unit(sum(w[:, j] * f[j] for j in range(len(f))) + b) for f in features.reshape(len(features), -1)]


def reference_nce(scores: list[list[torch.Tensor]], z: torch.Tensor, noise: float) -> torch.Tensor:
    """-(1/B)[sum_i log(p_i0 / (p_i0 + c)) + sum_{i,k} log(c / (p_ik + c))], p = score / Z, c = K/N."""
    total = torch.zeros((), dtype=torch.float64)
    for row in scores:
        p = [s / z for s in row]
        total = total + torch.log(p[0] / (p[0] + noise)) + sum(torch.log(noise / (q + noise)) for q in p[1:])
    return -total / len(scores)


def reference_crd(loss: CRDLoss, f_s, f_t, indices=None, negatives=None, z=None):
    """Both directions from the formula: bank rows `[index] + negatives`, or (queue) the other embedding first."""
    v_s, v_t = embed(f_s, loss.embed_student), embed(f_t.detach(), loss.embed_teacher)
    bank_s, bank_t, temp = loss.memory_student.clone(), loss.memory_teacher.clone(), loss.temperature
    scores_s, scores_t = [], []
    for i in range(len(v_s)):
        if loss.queue:
            first_s, first_t = torch.dot(v_t[i], v_s[i]), torch.dot(v_s[i].detach(), v_t[i])
            rest_s = [torch.dot(bank_t[k], v_s[i]) for k in range(len(bank_t))]
            rest_t = [torch.dot(bank_s[k], v_t[i]) for k in range(len(bank_s))]
            scores_s.append([torch.exp(x / temp) for x in [first_s, *rest_s]])
            scores_t.append([torch.exp(x / temp) for x in [first_t, *rest_t]])
        else:
            rows = [int(indices[i]), *negatives[i]]
            scores_s.append([torch.exp(torch.dot(bank_t[r], v_s[i]) / temp) for r in rows])
            scores_t.append([torch.exp(torch.dot(bank_s[r], v_t[i]) / temp) for r in rows])
    if z is None:  # N * mean(scores) of this batch, no gradient
        z = [loss.num_samples * torch.stack([x.detach() for r in sc for x in r]).mean() for sc in (scores_s, scores_t)]
    noise = loss.negatives / loss.num_samples
    return reference_nce(scores_s, z[0], noise) + reference_nce(scores_t, z[1], noise), z, v_s, v_t


NEG_A = [[0, 8, 8, 3, 1, 5, 2], [4, 4, 7, 0, 6, 2, 1], [1, 2, 3, 4, 5, 6, 7], [8, 0, 2, 2, 5, 3, 6]]
NEG_B = [[7, 7, 1, 0, 2, 4, 3], [5, 0, 8, 3, 3, 1, 6], [2, 6, 4, 0, 8, 1, 5], [3, 3, 3, 7, 0, 6, 4]]


def test_nce_loss_matches_float64_reference_in_value_and_gradient_and_gradcheck() -> None:
    log_scores = logits(4, 6, seed=1, dtype=torch.float64).requires_grad_()
    ref_scores = log_scores.detach().clone().requires_grad_()
    value = nce_loss(log_scores, 0.3)
    expected = reference_nce([[torch.exp(x) for x in row] for row in ref_scores], torch.tensor(1.0), 0.3)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    (UPSTREAM * value).backward()
    (UPSTREAM * expected).backward()
    torch.testing.assert_close(log_scores.grad, ref_scores.grad, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: nce_loss(x, 0.7), (logits(3, 5, seed=2, dtype=torch.float64).requires_grad_(),)
    )


@pytest.mark.parametrize("queue", [False, True])
def test_matches_float64_reference_in_value_and_gradients(queue: bool) -> None:
    loss = small_loss(queue=queue)
    fix_negatives(loss, NEG_A)
    f_s, f_t = batch(4, seed=3)
    f_s.requires_grad_()
    ref_s = f_s.detach().clone().requires_grad_()
    indices = torch.tensor([2, 7, 0, 5])
    expected, z, _, _ = reference_crd(loss, ref_s, f_t, indices, NEG_A)
    value = loss(f_s, [f_t], None if queue else indices)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.normalizers, torch.stack(z), rtol=1e-10, atol=0)
    (UPSTREAM * value).backward()
    (UPSTREAM * expected).backward()
    torch.testing.assert_close(f_s.grad, ref_s.grad, rtol=1e-9, atol=1e-12)
    assert loss.embed_teacher.weight.grad.abs().sum() > 0  # the teacher-anchored direction trains its embedding


def test_bank_rows_of_the_batch_move_with_momentum_and_the_others_stay() -> None:
    loss = small_loss(momentum=0.8)
    fix_negatives(loss, NEG_A)
    f_s, f_t = batch(4, seed=5)
    indices = [6, 1, 3, 8]
    old_s, old_t = loss.memory_student.clone(), loss.memory_teacher.clone()
    _, _, v_s, v_t = reference_crd(loss, f_s, f_t, indices, NEG_A)
    loss(f_s, f_t, torch.tensor(indices))
    for memory, old, v in ((loss.memory_student, old_s, v_s), (loss.memory_teacher, old_t, v_t)):
        for row in range(9):
            expected = unit(0.8 * old[row] + 0.2 * v[indices.index(row)]) if row in indices else old[row]
            torch.testing.assert_close(memory[row], expected, rtol=1e-12, atol=1e-14)


def test_normalization_constant_is_fixed_by_the_first_training_batch_and_eval_changes_nothing() -> None:
    loss = small_loss()
    fix_negatives(loss, NEG_A, NEG_B, NEG_B)
    (f1, t1), (f2, t2), idx = batch(4, seed=7), batch(4, seed=9), torch.tensor([0, 4, 8, 2])
    _, z, _, _ = reference_crd(loss, f1, t1, idx, NEG_A)
    loss(f1, t1, idx)
    expected, fresh = reference_crd(loss, f2, t2, idx, NEG_B, z=z)[0], reference_crd(loss, f2, t2, idx, NEG_B)[1]
    assert not torch.allclose(torch.stack(fresh), torch.stack(z))
    torch.testing.assert_close(loss(f2, t2, idx), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.normalizers, torch.stack(z), rtol=1e-12, atol=0)

    frozen = small_loss(seed=3).eval()
    state = copy.deepcopy(frozen.state_dict())
    negatives = frozen.draw_negatives(4, torch.device("cpu")).tolist()  # in eval the step does not advance
    expected = reference_crd(frozen, f1, t1, idx, negatives)[0]  # with Z of this batch
    for _ in range(2):  # the same twice: nothing was stored
        torch.testing.assert_close(frozen(f1, t1, idx), expected, rtol=1e-10, atol=1e-12)
    for key, value in frozen.state_dict().items():
        assert value == state[key] if key == "_extra_state" else torch.equal(value, state[key]), key


def test_queue_pointer_wraps_and_keeps_the_latest_embeddings() -> None:
    loss = small_loss(queue=True, negatives=5)
    init = loss.memory_student.clone()
    f1, f2, f3 = (batch(n, seed=s)[0] for n, s in ((3, 11), (3, 13), (7, 15)))
    expected = {k: init[k] for k in range(5)}
    for f_s, slots in ((f1, [0, 1, 2]), (f2, [3, 4, 0]), (f3, [1, 2, 3, 4, 0])):
        f_t = torch.zeros(len(f_s), 2, 2, dtype=torch.float64)
        v_s = embed(f_s, loss.embed_student)[-5:]  # a batch longer than the queue keeps its last 5 rows
        loss(f_s, f_t)
        expected.update(zip(slots, v_s, strict=True))
        torch.testing.assert_close(loss.memory_student, torch.stack([expected[k] for k in range(5)]))
        assert loss.queue_pointer.item() == (slots[-1] + 1) % 5


@pytest.mark.parametrize("queue", [False, True])
def test_state_dict_round_trip_resumes_identically(queue: bool) -> None:
    original = small_loss(queue=queue)
    steps = [(*batch(4, seed=20 + 2 * i), torch.tensor([i, 3, 5 + i, 8])) for i in range(3)]
    original(*steps[0])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    resumed = small_loss(seed=99, queue=queue)
    assert not torch.equal(resumed.memory_student, original.memory_student)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for step in steps[1:]:
        assert torch.equal(original(*step), resumed(*step))
    for key, value in original.state_dict().items():
        assert (
            value == resumed.state_dict()[key]
            if key == "_extra_state"
            else torch.equal(value, resumed.state_dict()[key])
        )


def test_negatives_are_deterministic_given_the_global_seed_and_advance_per_training_step() -> None:
    a, b, c = small_loss(seed=4), small_loss(seed=4), small_loss(seed=5)
    first = a.draw_negatives(6, torch.device("cpu"))
    assert first.shape == (6, 7) and first.min() >= 0 and first.max() < 9 and len(first.unique()) > 1
    assert torch.equal(first, b.draw_negatives(6, torch.device("cpu")))
    assert not torch.equal(first, c.draw_negatives(6, torch.device("cpu")))
    assert not torch.equal(first, a.draw_negatives(6, torch.device("cpu")))
    a.eval()
    assert torch.equal(a.draw_negatives(6, torch.device("cpu")), a.draw_negatives(6, torch.device("cpu")))
    f_s, f_t = batch(4, seed=30)
    assert torch.equal(small_loss(seed=4)(f_s, f_t, torch.arange(4)), small_loss(seed=4)(f_s, f_t, torch.arange(4)))


def test_gradcheck_float64_wrt_student_with_z_set_and_the_memory_frozen() -> None:
    loss = small_loss()
    f_s, f_t = batch(3, seed=31)
    loss(f_s, f_t, torch.tensor([1, 2, 3]))
    loss.eval()
    assert torch.autograd.gradcheck(lambda s: loss(s, f_t, torch.tensor([4, 0, 6])), (f_s.requires_grad_(),))


@pytest.mark.parametrize("queue", [False, True])
def test_empty_batch_gives_zero_finite_gradients_and_no_state_change(queue: bool) -> None:
    loss = small_loss(queue=queue)
    memory = loss.memory_student.clone()
    empty = torch.zeros(0, dtype=torch.long)
    contract.assert_zero_with_finite_gradients(
        lambda s, t: loss(s, t, empty), torch.zeros(0, 6, dtype=torch.float64, requires_grad=True), torch.zeros(0, 4)
    )
    assert torch.equal(loss.embed_student.weight.grad, torch.zeros_like(loss.embed_student.weight))
    assert torch.equal(loss.normalizers, torch.zeros(2, dtype=torch.float64)) and torch.equal(
        loss.memory_student, memory
    )


def test_no_gradient_reaches_the_teacher() -> None:
    torch.manual_seed(0)
    loss = CRDLoss(5, 5, num_samples=10, embed_dim=4, negatives=6)
    contract.assert_no_gradient_reaches_the_teacher(lambda s, t: loss(s, t, torch.tensor([1, 5, 9])), seed=32)


def test_bf16_and_autocast_give_the_fp32_result_of_the_rounded_values() -> None:
    torch.manual_seed(0)
    loss = CRDLoss(100, 100, num_samples=50, embed_dim=16, negatives=32)
    student = logits(16, 100, seed=33, dtype=torch.bfloat16).requires_grad_()
    teacher, indices = logits(16, 100, seed=34, dtype=torch.bfloat16), torch.arange(16) * 3
    fp32 = copy.deepcopy(loss)(student.detach().float(), teacher.float(), indices)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = copy.deepcopy(loss)(student.detach().float(), teacher.float(), indices)
    value = loss(student, teacher, indices)
    assert value.dtype == torch.float32 and autocast.dtype == torch.float32
    torch.testing.assert_close(value, fp32, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(autocast, fp32, rtol=1e-6, atol=1e-7)
    value.backward()
    assert student.grad.dtype == torch.bfloat16 and torch.isfinite(student.grad.float()).all()
    assert loss(logits(2, 100, seed=35, dtype=torch.float64), teacher[:2], indices[:2]).dtype == torch.float64


def test_indices_are_required_in_bank_mode_and_checked() -> None:
    loss, (f_s, f_t) = small_loss(), batch(2, seed=36)
    for bad in (None, torch.tensor([0, 9]), torch.tensor([-1, 0]), torch.tensor([0.0, 1.0]), torch.tensor([1])):
        with pytest.raises(ValueError, match="indices"):
            loss(f_s, f_t, bad)
    assert torch.isfinite(small_loss(queue=True)(f_s, f_t, None))
    with pytest.raises(ValueError, match="student feature has 5"):
        loss(f_s[:, :5], f_t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one student feature"):
        loss([f_s, f_s], f_t, torch.tensor([0, 1]))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"student_dim": 0}, "student_dim"),
        ({"teacher_dim": 2.5}, "teacher_dim"),
        ({"num_samples": 0}, "num_samples"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"negatives": 0}, "negatives"),
        ({"temperature": 0.0}, "temperature"),
        ({"momentum": 1.5}, "momentum"),
        ({"momentum": True}, "momentum"),
        ({"queue": "yes"}, "queue"),
    ],
)
def test_invalid_hyper_parameters_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        CRDLoss(**{**DIMS, **kwargs})


def test_declares_features_and_builds_from_one_pair_of_shapes() -> None:
    assert CRDLoss.consumes.kind == FEATURES and CRDLoss.consumes.extra == ("indices",)
    assert CRDLoss.shape_arguments == ("student_dim", "teacher_dim")
    loss = CRDLoss.from_shapes([(256,)], [(64, 2, 2)], num_samples=10, negatives=4)
    assert (loss.embed_student.in_features, loss.embed_teacher.in_features, loss.negatives) == (256, 256, 4)
    assert loss.memory_student.shape == (10, 128) and loss.memory_student.abs().max() <= 1 / (128 / 3) ** 0.5
    with pytest.raises(ValueError, match="one pair"):
        CRDLoss.from_shapes([(8,), (8,)], [(8,), (8,)], num_samples=10)
    with pytest.raises(ValueError, match="student_dim"):
        CRDLoss.from_shapes([(8,)], [(8,)], num_samples=10, student_dim=8)
    doc = CRDLoss.__doc__.split("Args:")[1]
    assert all(f"{name}:" in doc for name in [*DIMS, "momentum", "queue"])


def _crd_and_batch() -> tuple[CRDLoss, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    loss = CRDLoss(student_dim=6, teacher_dim=5, num_samples=20, embed_dim=4, negatives=7)
    g = torch.Generator().manual_seed(1)
    return loss, torch.randn(5, 6, generator=g), torch.randn(5, 5, generator=g), torch.tensor([0, 3, 4, 9, 17])


def _two_rank_update(rank: int, folder: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    loss, f_s, f_t, indices = _crd_and_batch()
    half = slice(0, 3) if rank == 0 else slice(3, 5)  # unequal halves of one batch of 5
    loss(f_s[half], f_t[half], indices[half])
    torch.save(loss.state_dict(), f"{folder}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_under_two_processes_the_memories_take_every_ranks_rows_and_stay_one(tmp_path):
    torch.multiprocessing.spawn(_two_rank_update, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single, f_s, f_t, indices = _crd_and_batch()
    initial = {name: buffer.clone() for name, buffer in single.named_buffers()}
    single(f_s, f_t, indices)  # the whole batch in one process
    for name in ("memory_student", "memory_teacher"):
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], single.state_dict()[name])
        assert not torch.equal(ranks[0][name][[9, 17]], initial[name][[9, 17]])  # rank 1's rows reached rank 0
