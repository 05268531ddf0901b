"""The chunked LM-head machinery: teacher sources (logits, hidden states + head, stored top-k), cross-entropy rows,
weighted combinations and checkpointed per-row maps, each against plain autograd over full logits (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import TokenDivergenceLoss
from losses.chunked import (
    chunk_sums,
    cross_entropy_rows,
    fused_masked_sum_and_count,
    head_rows_map,
    masked_sum_and_count,
    weighted_row_loss,
)
from losses.graph_on_logits import topk_transform
from losses.stored_teacher import StoredTopK, bytes_per_token
from losses.teacher_rows import TeacherHead, TeacherTopK

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "tvd"]


def dense_divergence(log_s: torch.Tensor, log_t: torch.Tensor, divergence: str, beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence of two (N, K) log-distributions, plain autograd (the reference)."""
    p_s, p_t = log_s.exp(), log_t.exp()
    if divergence == "forward_kl":
        return torch.where(p_t > 0, p_t * (log_t - log_s), 0.0).sum(-1)
    if divergence == "reverse_kl":
        return torch.where(p_s > 0, p_s * (log_s - log_t), 0.0).sum(-1)
    if divergence == "tvd":
        return 0.5 * (p_s - p_t).abs().sum(-1)
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1 - beta))
    kl_t = torch.where(p_t > 0, p_t * (log_t - log_m), 0.0).sum(-1)
    kl_s = torch.where(p_s > 0, p_s * (log_s - log_m), 0.0).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def head_inputs(seed: int = 0, vocab: int = 37, hidden: int = 6, teacher_vocab: int | None = None):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 5, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, generator=g, dtype=torch.float64, requires_grad=True)
    th = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    tw = torch.randn(teacher_vocab or vocab, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, vocab, (2, 5), generator=g)
    labels[0, :2] = -100
    return h, w, b, th, tw, labels


def stored_topk(teacher_logits: torch.Tensor, k: int) -> TeacherTopK:
    log_p = teacher_logits.log_softmax(-1)
    values, indices = log_p.topk(k, dim=-1)
    rest = log_p.scatter(-1, indices, -math.inf).logsumexp(-1)
    return TeacherTopK(values, indices, rest, teacher_logits.shape[-1])


def grads(loss: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_teacher_head_gives_the_divergence_of_full_logits(divergence: str) -> None:
    h, w, b, th, tw, labels = head_inputs()
    loss_fn = TokenDivergenceLoss(divergence, chunk_size=3)
    fused = loss_fn.fused(h, w, TeacherHead(th, tw), labels, b)
    full = loss_fn(F.linear(h, w, b), th @ tw.T, labels)
    assert torch.allclose(fused, full, atol=1e-12)
    for got, want in zip(grads(fused, h, w, b), grads(full, h, w, b), strict=True):
        assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_stored_topk_with_every_entry_is_exact(divergence: str, temperature: float) -> None:
    h, w, b, th, tw, labels = head_inputs(1)
    teacher_logits = th @ tw.T
    loss_fn = TokenDivergenceLoss(divergence, temperature=temperature, chunk_size=4)
    cached = loss_fn.fused(h, w, stored_topk(teacher_logits, w.shape[0]), labels, b)
    full = loss_fn(F.linear(h, w, b), teacher_logits, labels)
    assert torch.allclose(cached, full, atol=1e-10)
    for got, want in zip(grads(cached, h, w), grads(full, h, w), strict=True):
        assert torch.allclose(got, want, atol=1e-10)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_stored_topk_is_the_divergence_over_k_plus_one_buckets(divergence: str) -> None:
    g = torch.Generator().manual_seed(2)
    student = torch.randn(3, 4, 23, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = 2 * torch.randn(3, 4, 23, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 23, (3, 4), generator=g)
    labels[1, 1] = -100
    k = 5
    top = stored_topk(teacher, k)
    value = TokenDivergenceLoss(divergence, chunk_size=5)(student, top, labels)
    # reference: bucket both distributions densely with a (23 -> k + 1) membership matrix per position
    log_s = student.log_softmax(-1)
    member = F.one_hot(top.indices, 23).to(torch.float64)  # (B, T, k, V)
    q_kept = (member * log_s.exp()[..., None, :]).sum(-1)  # (B, T, k)
    q = torch.cat([q_kept, 1 - q_kept.sum(-1, keepdim=True)], -1)
    t = torch.cat([top.logprobs.exp(), top.tail.exp()[..., None]], -1)
    per_token = dense_divergence(q.log(), t.log(), divergence)
    valid = labels != -100
    reference = per_token[valid].mean()
    assert torch.allclose(value, reference, atol=1e-10)
    assert torch.allclose(*[torch.autograd.grad(x, student)[0] for x in (value, reference)], atol=1e-10)


def test_stored_topk_with_a_padded_teacher_vocabulary_matches_logits() -> None:
    h, w, b, th, tw, labels = head_inputs(3, vocab=30, teacher_vocab=34)
    teacher_logits = th @ tw.T
    teacher_logits[..., 30:] = -1e4  # padding rows of the head: no mass
    loss_fn = TokenDivergenceLoss("forward_kl", chunk_size=4)
    cached = loss_fn.fused(h, w, stored_topk(teacher_logits, 34), labels, b)
    full = loss_fn(F.linear(h, w, b), teacher_logits, labels)
    assert torch.allclose(cached, full, atol=1e-10)
    teacher_logits[..., 31] = 5.0  # a real entry past the student's vocabulary: refused
    with pytest.raises(ValueError, match="differ beyond padding"):
        loss_fn.fused(h, w, stored_topk(teacher_logits, 34), labels, b)


def test_topk_below_the_vocabulary_needs_temperature_one() -> None:
    h, w, b, th, tw, labels = head_inputs()
    with pytest.raises(ValueError, match="temperature 2.0 needs the teacher's whole distribution"):
        TokenDivergenceLoss(temperature=2.0).fused(h, w, stored_topk(th @ tw.T, 5), labels, b)


def test_cross_entropy_rows_equal_cross_entropy() -> None:
    h, w, b, _, _, labels = head_inputs()
    total, count = fused_masked_sum_and_count(cross_entropy_rows, h, w, b, None, labels, -100, 3)
    reference = F.cross_entropy(F.linear(h, w, b).flatten(0, 1), labels.flatten(), reduction="sum")
    assert count == int((labels != -100).sum())
    assert torch.allclose(total, reference, atol=1e-12)
    for got, want in zip(grads(total, h, w, b), grads(reference, h, w, b), strict=True):
        assert torch.allclose(got, want, atol=1e-12)


def test_weighted_row_loss_is_the_weighted_sum_and_records_each_part() -> None:
    h, w, b, th, tw, labels = head_inputs(4)
    kl, jsd = TokenDivergenceLoss("forward_kl"), TokenDivergenceLoss("jsd", beta=0.3)
    pad: list[torch.Tensor] = []
    sums: dict[str, list[torch.Tensor]] = {}
    parts = [("ce", 0.5, cross_entropy_rows), ("kl", 2.0, kl.row_loss(pad)), ("jsd", 0.7, jsd.row_loss(pad))]
    total, count = fused_masked_sum_and_count(
        weighted_row_loss(parts, sums), h, w, b, TeacherHead(th, tw), labels, -100, 4
    )
    logits, teacher = F.linear(h, w, b), th @ tw.T
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    reference = 0.5 * ce + (2.0 * kl(logits, teacher, labels) + 0.7 * jsd(logits, teacher, labels)) * count
    assert torch.allclose(total, reference, atol=1e-10)
    assert torch.allclose(torch.stack(sums["ce"]).sum(), ce.detach(), atol=1e-10)
    assert torch.allclose(torch.stack(sums["kl"]).sum() / count, kl(logits, teacher, labels).detach(), atol=1e-10)
    for got, want in zip(grads(total, h, w, b), grads(reference, h, w, b), strict=True):
        assert torch.allclose(got, want, atol=1e-10)


def test_chunk_sums_evaluate_without_full_logits() -> None:
    h, w, b, th, tw, labels = head_inputs(5)

    def stats(rows, targets):
        return {"agree": (rows.argmax(-1) == targets.teacher.argmax(-1)).sum(), "rows": torch.tensor(len(rows))}

    totals, count = chunk_sums(stats, (h, w, b), TeacherHead(th, tw), labels, -100, 3)
    valid = labels != -100
    logits, teacher = F.linear(h, w, b), th @ tw.T
    assert count == int(valid.sum()) == int(totals["rows"])
    assert int(totals["agree"]) == int((logits.argmax(-1) == teacher.argmax(-1))[valid].sum())


def test_head_rows_map_checkpoints_each_chunk_with_the_same_gradients() -> None:
    h, w, b, *_ = head_inputs(6)
    values, index = head_rows_map(lambda z: topk_transform(z, 4, "zscore"), h, w, b, chunk_size=3)
    want_values, want_index = topk_transform(F.linear(h, w, b), 4, "zscore")
    assert torch.equal(index, want_index) and torch.allclose(values, want_values, atol=1e-12)
    for got, want in zip(
        grads(values.square().sum(), h, w, b), grads(want_values.square().sum(), h, w, b), strict=True
    ):
        assert torch.allclose(got, want, atol=1e-12)


def test_masked_sum_accepts_a_teacher_source_in_place_of_logits() -> None:
    g = torch.Generator().manual_seed(7)
    student = torch.randn(2, 3, 11, generator=g, requires_grad=True)
    th, tw = torch.randn(2, 3, 4, generator=g), torch.randn(11, 4, generator=g)
    labels = torch.randint(0, 11, (2, 3), generator=g)
    loss_fn = TokenDivergenceLoss("reverse_kl")
    row_loss = loss_fn.row_loss([])
    from_head, _ = masked_sum_and_count(row_loss, student, TeacherHead(th, tw), labels, -100, 2)
    from_logits, _ = masked_sum_and_count(row_loss, student, th @ tw.T, labels, -100, 2)
    assert torch.allclose(from_head, from_logits, atol=1e-6)


@pytest.mark.parametrize("transform", ["zscore", "softmax", "none"])
def test_stored_topk_gives_gld_the_kept_values_of_the_logits(transform: str) -> None:
    g = torch.Generator().manual_seed(8)
    logits = 3 * torch.randn(2, 6, 40, generator=g)
    stored = StoredTopK.from_logits(logits, 12)
    values, indices = stored.kept(5, transform)
    want_values, want_indices = topk_transform(logits, 5, transform)
    assert torch.equal(indices, want_indices)
    assert torch.allclose(values, want_values, atol=1e-5)
    with pytest.raises(ValueError, match="more than the 12 stored"):
        stored.kept(13, transform)


def test_stored_topk_from_the_head_equals_from_the_logits_and_keeps_the_label_and_the_tail() -> None:
    h, w, b, _, _, labels = head_inputs(9)
    with torch.no_grad():
        logits = F.linear(h, w, b).float()
    from_head = StoredTopK.from_head(h.float(), w.float(), b.float(), 6, labels, chunk_size=4)
    from_logits = StoredTopK.from_logits(logits, 6, labels)
    assert torch.equal(from_head.indices, from_logits.indices)
    assert torch.allclose(from_head.stats, from_logits.stats, atol=1e-5)
    log_p = logits.log_softmax(-1)
    valid = labels != -100
    assert torch.allclose(
        from_head.stat("label_logp")[valid], log_p.gather(-1, labels.clamp(min=0)[..., None])[..., 0][valid]
    )
    assert torch.allclose(from_head.stat("tail").exp() + from_head.logprobs.exp().sum(-1), torch.ones(2, 5), atol=1e-5)
    assert bytes_per_token(64) == 64 * 8 + 20
