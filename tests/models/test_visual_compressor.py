"""The draft's elastic visual compressor: each primitive's tokens, the question-aware gate, rows of unequal length
padded so that each row reads as it would alone, and `pool` giving `visual_pool`'s values exactly."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.models.compressor import PRIMITIVES, CompressorSettings
from distill.models.draft import DraftShape, EagleDraft
from distill.models.visual_pool import pool_visual

IMAGE, H = 9, 8
ALL = ["pool", "prune", "conv", "resampler", "text_only"]


def primitive(name: str, **settings):
    torch.manual_seed(0)
    return PRIMITIVES[name](CompressorSettings(primitives=[name], **settings), 2 * H, 2)


def draft(**compressor) -> EagleDraft:
    torch.manual_seed(0)
    return EagleDraft(DraftShape(H, 2, 2, 4, 16), image_token_id=IMAGE, compressor=compressor)


def image_rows(rows: int = 2, image: int = 16, before: int = 2, after: int = 5) -> torch.Tensor:
    return torch.tensor([[1] * before + [IMAGE] * image + [5] * after] * rows)


@pytest.mark.parametrize(
    ("name", "settings", "n", "sources"),
    [
        ("pool", {"factor": 4}, 16, [3, 7, 11, 15]),
        ("pool", {"factor": 4}, 6, [3, 5]),
        ("conv", {"factor": 4}, 16, [5, 7, 13, 15]),  # 2x2 windows of the 4x4 patch grid, each at its last patch
        ("conv", {"factor": 4}, 6, [3, 5]),  # no square grid: along the sequence, the last window padded
        ("resampler", {"queries": 3}, 16, [5, 10, 15]),
        ("text_only", {}, 16, []),
    ],
)
def test_each_primitive_gives_its_tokens_and_the_positions_they_stand_for(name, settings, n, sources):
    blocks = torch.randn(3, n, 2 * H)
    tokens, stands_for = primitive(name, **settings)(blocks)
    assert tokens.shape == (3, len(sources), 2 * H)
    assert stands_for.tolist() == [sources] * 3


def test_pool_averages_groups_and_conv_starts_as_the_average_of_each_window():
    blocks = torch.randn(2, 16, 2 * H)
    pooled, _ = primitive("pool", factor=4)(blocks)
    assert torch.allclose(pooled, blocks.view(2, 4, 4, 2 * H).mean(2))
    convolved, _ = primitive("conv", factor=4)(blocks)
    grid = blocks.view(2, 2, 2, 2, 2, 2 * H)  # (R, row, in-row, column, in-column, D) of the 4x4 grid
    assert torch.allclose(convolved, grid.mean(dim=(2, 4)).reshape(2, 4, 2 * H), atol=1e-6)


def test_prune_keeps_the_best_scored_tokens_in_order_and_the_last_one_and_trains_its_score():
    prune = primitive("prune", keep=3)
    blocks = torch.randn(2, 8, 2 * H)
    scores = prune.score(blocks).squeeze(-1).detach()
    tokens, kept = prune(blocks)
    for row in range(2):
        best = scores[row, :-1].topk(2).indices.sort().values.tolist()
        assert kept[row].tolist() == [*best, 7]  # the block's last position always: it reads into the text
    assert torch.equal(tokens, blocks.gather(1, kept[..., None].expand(-1, -1, 2 * H)))  # the tokens as they are
    (tokens * torch.randn_like(tokens)).sum().backward()
    assert prune.score.weight.grad is not None and prune.score.weight.grad.abs().sum() > 0
    with pytest.raises(DistillError, match=r"student\.compressor\.keep \(9\) is more than the 8 image tokens"):
        primitive("prune", keep=9)(blocks)


def test_the_resampler_mixes_the_image_tokens_and_learns_its_queries():
    resampler = primitive("resampler", queries=4)
    blocks = torch.randn(2, 16, 2 * H, requires_grad=True)
    tokens, _ = resampler(blocks)
    # attention weights are a convex combination: every output channel lies within its inputs' range
    assert (tokens <= blocks.amax(1, keepdim=True) + 1e-6).all() and (
        tokens >= blocks.amin(1, keepdim=True) - 1e-6
    ).all()
    assert not torch.allclose(tokens[:, 0], tokens[:, 1])  # queries differ: not one average repeated
    (tokens * torch.randn_like(tokens)).sum().backward()
    assert resampler.queries.grad.abs().sum() > 0 and resampler.keys.weight.grad.abs().sum() > 0


def gate_inputs(rows: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = image_rows(rows)
    return torch.randn(rows, ids.shape[1], H, generator=g), torch.randn(rows, ids.shape[1], H, generator=g), ids


def test_the_gate_chooses_at_random_in_training_and_by_its_argmax_in_evaluation():
    model = draft(mode="gate", primitives=ALL)
    features, embeddings, ids = gate_inputs()
    image = ids == IMAGE
    inputs = torch.cat([features, embeddings], dim=-1)
    logits = model.compressor.gate.logits(inputs, ~image, image)
    model.train()
    torch.manual_seed(0)
    draws = torch.stack([model.compress_rows(features, embeddings, ids).choice for _ in range(40)])  # (40, B)
    assert all(len(set(draws[:, row].tolist())) > 1 for row in range(len(ids)))  # Gumbel noise: not always one
    model.eval()
    chosen = [model.compress_rows(features, embeddings, ids).choice for _ in range(3)]
    assert all(torch.equal(c, logits.argmax(-1)) for c in chosen)  # deterministic: the logits' argmax
    for training in (True, False):  # the chosen tokens are read as they are: a weight of exactly 1
        _, weight = model.compressor.gate.train(training).choose(logits)
        assert torch.equal(weight, torch.ones_like(weight))


@pytest.mark.parametrize("mode", ["gate", "weighted"])
def test_the_gates_weights_receive_gradient_from_the_draft(mode):
    model = draft(mode=mode, primitives=["pool", "prune", "conv"])
    features, embeddings, ids = gate_inputs()
    rows = model.compress_rows(features, embeddings, ids)
    out = model(rows.features, rows.next_embeddings, positions=rows.positions, mask=rows.mask)
    (out * torch.randn_like(out))[rows.valid].sum().backward()
    for name, p in model.compressor.gate.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_weighted_reads_every_primitive_scaled_by_the_soft_gate_and_concat_every_one_unscaled():
    features, embeddings, ids = gate_inputs(rows=2)
    weighted = draft(mode="weighted", primitives=["pool", "resampler"]).eval()
    inputs = torch.cat([features, embeddings], dim=-1)
    image = ids == IMAGE
    soft = weighted.compressor.gate.soft(weighted.compressor.gate.logits(inputs, ~image, image))
    rows = weighted.compress_rows(features, embeddings, ids)
    assert rows.features.shape[1] == 2 + 4 + 4 + 5  # text, 4 pooled, 4 queries, text
    pooled, _ = weighted.compressor.experts[0](inputs[:, 2:18])
    assert torch.allclose(rows.features[:, 2:6], pooled[..., :H] * soft[:, :1, None])
    concat = draft(mode="concat", primitives=["pool", "prune"], keep=2).compress_rows(features, embeddings, ids)
    assert concat.features.shape[1] == 2 + 4 + 2 + 5 and torch.allclose(concat.features[:, 2:6], pooled[..., :H])
    # only the image's last token predicts the text after it; the others a position inside the image
    assert concat.aligned[0, 2:6].tolist() == [6, 10, 14, 17]  # pool's last group too: positions 3-17 are image
    assert 3 <= concat.aligned[0, 6] <= 17 and concat.aligned[0, 7] == 18


def force(model: EagleDraft, choice: list[int]) -> None:
    """The gate of `model` made to choose `choice` (one primitive per row), with weight 1."""
    chosen = torch.tensor(choice)
    model.compressor.gate.choose = lambda logits: (chosen, torch.ones(len(chosen)))


def test_rows_of_unequal_length_each_read_as_they_would_alone():
    model = draft(mode="gate", primitives=["pool", "text_only", "resampler"]).eval()
    for p in model.layer.parameters():
        p.data.normal_(std=0.3)  # a new draft's attention adds nothing yet (its output projection is zero)
    features, embeddings, ids = gate_inputs(rows=3)
    force(model, [0, 1, 2])  # pool (4 tokens), text only (none), resampler (4 queries)
    rows = model.compress_rows(features, embeddings, ids)
    assert rows.valid.sum(1).tolist() == [11, 7, 11] and rows.mask is not None
    together = model(rows.features, rows.next_embeddings, positions=rows.positions, mask=rows.mask)
    assert torch.isfinite(together).all()  # pads see themselves: no empty attention row, no NaN
    for row in range(3):
        force(model, [[0, 1, 2][row]])
        alone = model.compress_rows(features[row : row + 1], embeddings[row : row + 1], ids[row : row + 1])
        assert alone.mask is None and alone.features.shape[1] == rows.valid[row].sum()  # one row: never padded
        by_itself = model(alone.features, alone.next_embeddings)
        real = rows.valid[row]
        assert torch.equal(rows.aligned[row, real], alone.aligned[0])
        assert torch.allclose(together[row, real], by_itself[0], atol=1e-5), row


def test_pool_gives_visual_pools_values_exactly():
    features, embeddings, ids = gate_inputs(rows=3)
    pooled = draft(mode="fixed", primitives=["pool"], factor=4).compress_rows(features, embeddings, ids)
    (f, e), kept = pool_visual((features, embeddings), ids[0] == IMAGE, 4)
    assert torch.equal(pooled.features, f) and torch.equal(pooled.next_embeddings, e)
    assert torch.equal(pooled.aligned, (kept + 1).expand(3, -1)) and pooled.mask is None and pooled.positions is None
    shorthand = EagleDraft(DraftShape(H, 2, 2, 4, 16), visual_pool=4, image_token_id=IMAGE)
    assert torch.equal(shorthand.compress(features, embeddings, ids)[0], f)
    assert shorthand.state_dict().keys() == EagleDraft(DraftShape(H, 2, 2, 4, 16)).state_dict().keys()


def test_a_batch_one_prompt_compresses_unpadded_for_decoding():
    for settings in ({"primitives": ["text_only"]}, {"mode": "gate", "primitives": ALL}):
        model = draft(**settings).eval()
        features, embeddings, ids = gate_inputs(rows=1)
        out, nxt, kept = model.compress(features, embeddings, ids)
        assert out.shape[:2] == nxt.shape[:2] == (1, len(kept)) and len(kept) < ids.shape[1]


def test_only_text_only_alone_can_leave_a_label_without_a_prediction():
    assert draft(mode="fixed", primitives=["pool"]).keeps_every_label
    assert draft(mode="weighted", primitives=["pool", "text_only"]).keeps_every_label
    assert not draft(mode="fixed", primitives=["text_only"]).keeps_every_label
    assert not draft(mode="gate", primitives=["pool", "text_only"]).keeps_every_label
    assert EagleDraft(DraftShape(H, 2, 2, 4, 16)).keeps_every_label


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"primitives": ["poool"]},
            r"student\.compressor\.primitives: unknown primitive 'poool' \(did you mean 'pool'",
        ),
        ({"mode": "gated"}, r"student\.compressor\.mode: unknown mode 'gated' \(did you mean 'gate'"),
        ({"factor": 0}, r"student\.compressor\.factor must be >= 1, got 0"),
        ({"keep": 0}, r"student\.compressor\.keep must be >= 1"),
        ({"gate_temperature": 0.0, "mode": "gate", "primitives": ["pool", "conv"]}, r"gate_temperature must be > 0"),
        ({"mode": "gate", "primitives": ["pool"]}, r"mode gate combines two or more primitives, got 1"),
        ({"mode": "fixed", "primitives": ["pool", "conv"]}, r"mode fixed reads one primitive, got 2"),
        ({"mode": "concat", "primitives": ["pool", "text_only"]}, r"text_only adds no tokens to a concat"),
        ({"mode": "gate", "primitives": ["pool", "pool"]}, r"each primitive once"),
    ],
)
def test_bad_settings_are_refused_in_one_line_naming_the_key(settings, message):
    with pytest.raises(DistillError, match=message) as raised:
        CompressorSettings(**settings)
    assert "\n" not in str(raised.value)


def test_a_compressor_needs_an_image_target_and_is_not_set_twice():
    with pytest.raises(DistillError, match="student.compressor: the target reads no images"):
        EagleDraft(DraftShape(H, 2, 2, 4, 16), compressor={"primitives": ["pool"]})
    with pytest.raises(DistillError, match="student.visual_pool and student.compressor both compress"):
        EagleDraft(DraftShape(H, 2, 2, 4, 16), visual_pool=4, image_token_id=IMAGE, compressor={})
