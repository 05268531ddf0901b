"""The EAGLE-style draft: sized from its target, causal over its KV cache, cut back exactly by `crop`."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.models import create_model
from distill.models.draft import DraftShape, EagleDraft, KVCache, rotary_angles, rotate


def tiny_target(**changes):
    torch.manual_seed(0)
    args = {"vocab_size": 61, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, **changes}
    return create_model("llama", **args).eval()


def trained_looking(draft: EagleDraft) -> EagleDraft:
    """Random weights everywhere (the zero-initialised output projections too), so every path matters."""
    torch.manual_seed(1)
    for p in draft.parameters():
        p.data.normal_(std=0.3)
    return draft.eval()


def test_the_draft_is_sized_from_the_target_and_holds_none_of_its_weights():
    target = tiny_target(num_attention_heads=4, num_key_value_heads=2)
    draft = create_model("eagle_draft", target=target, intermediate_size=40)
    assert draft.shape == DraftShape(32, 4, 2, 8, 40, target.config.rms_norm_eps, 10000.0)
    assert draft.fuse.in_features == 64 and draft.layer.k_proj.out_features == 2 * 8
    assert not any(key.startswith(("embed", "lm_head")) for key in draft.state_dict())
    n_target = sum(p.numel() for p in target.model.layers[0].parameters())
    n_layer = sum(p.numel() for p in draft.layer.parameters())
    assert n_layer < n_target  # the narrower MLP
    with pytest.raises(DistillError, match="draft_distill"):
        create_model("eagle_draft")


def test_a_new_draft_passes_its_fused_input_through():
    """o_proj and down_proj start at zero: the layer adds nothing until trained."""
    draft = EagleDraft.for_target(tiny_target())
    features, embeddings = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    expected = draft.fuse(torch.cat([embeddings, features], dim=-1))
    assert torch.allclose(draft(features, embeddings), expected)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_decoding_with_the_cache_equals_the_whole_sequence_at_once(kv_heads):
    draft = trained_looking(EagleDraft.for_target(tiny_target(num_attention_heads=4, num_key_value_heads=kv_heads)))
    features, embeddings = torch.randn(1, 9, 32), torch.randn(1, 9, 32)
    whole = draft(features, embeddings)  # (1, 9, 32)
    cache = KVCache()
    pieces = [draft(features[:, a:b], embeddings[:, a:b], cache) for a, b in ((0, 4), (4, 5), (5, 9))]
    assert len(cache) == 9
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-5)


def test_each_position_sees_only_the_past():
    draft = trained_looking(EagleDraft.for_target(tiny_target()))
    features, embeddings = torch.randn(1, 6, 32), torch.randn(1, 6, 32)
    changed = features.clone()
    changed[:, 4] += 1.0
    before, after = draft(features, embeddings), draft(changed, embeddings)
    assert torch.allclose(before[:, :4], after[:, :4]) and not torch.allclose(before[:, 4:], after[:, 4:])


def test_crop_forgets_the_rejected_positions():
    draft = trained_looking(EagleDraft.for_target(tiny_target()))
    features, embeddings = torch.randn(1, 7, 32), torch.randn(1, 7, 32)
    cache = KVCache()
    draft(features[:, :5], embeddings[:, :5], cache)
    draft(torch.randn(1, 3, 32), torch.randn(1, 3, 32), cache)  # speculated positions 5-7, then rejected
    cache.crop(5)
    resumed = draft(features[:, 5:], embeddings[:, 5:], cache)
    assert torch.allclose(resumed, draft(features, embeddings)[:, 5:], atol=1e-5)


def test_rotary_embedding_makes_attention_scores_depend_on_relative_position_only():
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> torch.Tensor:
        return (rotate(q, *angles(i)) * rotate(k, *angles(j))).sum()

    def angles(position: int) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary_angles(torch.tensor([position]), 8, 10000.0)

    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5) and not torch.allclose(score(3, 1), score(3, 2))
    assert torch.allclose(rotate(q, *angles(0)), q)
