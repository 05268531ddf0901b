"""EAGLE-2 draft trees: growing and re-ranking, the tree attention mask, greedy output equal to the target's own for
every tree shape (LLM and VLM targets), both KV caches consistent after partial acceptance, and sampling that keeps
the target's distribution."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

import distill.generate.speculative as speculative
from distill.errors import DistillError
from distill.generate.draft_tree import DraftTree, TreeShape, accepted_path, grow_tree, keep_best, verification_inputs
from distill.generate.speculative import Target, greedy_decode, sample_decode, speculative_decode
from distill.models import create_model
from distill.models.draft import EagleDraft, KVCache

V = 8  # a small vocabulary: a random draft's top-k often holds the target's token, so paths get accepted

SHAPES = [(1, 1, None), (4, 1, None), (3, 2, None), (4, 3, 8), (5, 4, 20), (2, 5, None), (6, 2, 3)]


def tiny_target(seed: int = 1, vocab: int = V):
    torch.manual_seed(seed)
    return create_model("llama", vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2).eval()


def random_draft(target, seed: int = 1, std: float = 0.3) -> EagleDraft:
    draft = EagleDraft.for_target(target)
    torch.manual_seed(seed)
    for p in draft.parameters():
        p.data.normal_(std=std)
    return draft.eval()


def prompts(count: int = 3, vocab: int = V, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (1, 5 + i), generator=g)} for i in range(count)]


def test_the_best_nodes_form_a_tree_in_verification_order():
    # root children a (value -0.1) and b (-0.5); a's children c (-0.2), d (-2.0); b's child e (-0.6)
    tokens, parents, depths = [10, 11, 12, 13, 14], [-1, -1, 0, 0, 1], [1, 1, 2, 2, 2]
    values = [-0.1, -0.5, -0.2, -2.0, -0.6]
    tree = keep_best(tokens, parents, depths, values, count=3)
    assert (tree.tokens, tree.parents, tree.depths) == ([10, 11, 12], [-1, -1, 0], [1, 1, 2])
    # a child is never kept without its parent, even where its value ranks it higher
    orphaned = keep_best([1, 2, 3], [-1, 0, -1], [1, 2, 1], [-0.5, -0.5, -0.4], count=2)
    assert orphaned.tokens == [3, 1] and orphaned.parents == [-1, -1]


def test_each_node_sees_the_prefix_the_root_its_ancestors_and_itself():
    tree = DraftTree(tokens=[5, 6, 7, 4], parents=[-1, -1, 0, 2], depths=[1, 1, 2, 3])
    sees = tree.sees(torch.device("cpu")).int().tolist()
    assert sees == [
        [1, 0, 0, 0, 0],  # root
        [1, 1, 0, 0, 0],  # 5
        [1, 0, 1, 0, 0],  # 6
        [1, 1, 0, 1, 0],  # 7 (child of 5)
        [1, 1, 0, 1, 1],  # 4 (child of 7)
    ]
    ids, positions, mask = verification_inputs(tree, root=9, position=3, dtype=torch.float32, device="cpu")
    assert ids.tolist() == [[9, 5, 6, 7, 4]] and positions.tolist() == [[3, 4, 4, 5, 6]]
    assert mask.shape == (1, 1, 5, 8) and (mask[0, 0, :, :3] == 0).all()  # the cached prefix: seen by all
    assert torch.equal(mask[0, 0, :, 3:] == 0, torch.tensor(sees, dtype=torch.bool))


def test_the_walk_descends_while_a_child_holds_the_targets_token():
    tree = DraftTree(tokens=[5, 6, 7, 4], parents=[-1, -1, 0, 2], depths=[1, 1, 2, 3])
    # the target's token at [root, 5, 6, 7, 4]
    assert accepted_path(tree, [5, 7, 0, 4, 3]) == ([1, 3, 4], 3)  # root -> 5 -> 7 -> 4, then its own 3
    assert accepted_path(tree, [6, 7, 1, 4, 3]) == ([2], 1)
    assert accepted_path(tree, [2, 7, 1, 4, 3]) == ([], 2)


def test_a_tree_of_width_one_is_the_drafts_greedy_chain():
    target = tiny_target(vocab=61)
    draft = random_draft(target)
    head, embed = target.get_output_embeddings(), target.get_input_embeddings()
    with torch.no_grad():
        features = torch.randn(1, 5, 32)
        chain_cache, tree_cache = KVCache(), KVCache()
        root = draft(features, embed(torch.randint(0, 61, (1, 5))), chain_cache)[:, -1:]
        draft(features, embed(torch.randint(0, 61, (1, 5))), tree_cache)
        tree = grow_tree(draft, tree_cache, head, embed, root, TreeShape(depth=4))
        expected, predicted = [], root
        for _ in range(4):
            expected.append(int(head(predicted)[0, -1].argmax()))
            predicted = draft(predicted, embed(torch.tensor([[expected[-1]]])), chain_cache)
    assert tree.tokens == expected and tree.parents == [-1, 0, 1, 2] and tree.depths == [1, 2, 3, 4]


def test_growing_draws_top_k_children_of_the_best_top_k_nodes_of_each_level():
    target = tiny_target(vocab=61)
    draft = random_draft(target)
    with torch.no_grad():
        cache = KVCache()
        embed = target.get_input_embeddings()
        root = draft(torch.randn(1, 4, 32), embed(torch.randint(0, 61, (1, 4))), cache)[:, -1:]
        tree = grow_tree(draft, cache, target.get_output_embeddings(), embed, root, TreeShape(3, top_k=3))
    assert len(tree) == TreeShape(3, top_k=3).drawn == 3 + 2 * 9
    assert Counter(tree.depths) == {1: 3, 2: 9, 3: 9}
    assert len(cache) == 4 + 3 + 3  # the prefix, then the three nodes expanded at each of two levels
    for parent in set(tree.parents):  # siblings are distinct tokens
        siblings = [token for token, p in zip(tree.tokens, tree.parents, strict=True) if p == parent]
        assert len(siblings) == len(set(siblings))
    for depth in (2, 3):  # the nodes grown further are the level's three of highest value
        level = [node for node in range(len(tree)) if tree.depths[node] == depth - 1]
        best = sorted(level, key=lambda node: -tree.values[node])[:3]
        assert {tree.parents[node] for node in range(len(tree)) if tree.depths[node] == depth} == set(best)


def test_every_nodes_value_is_the_drafts_log_probability_of_its_path_read_as_a_chain():
    """Expanding a level's nodes together (shared positions by depth, each seeing only its ancestors) gives each the
    prediction the draft makes reading that node's own path one token after another."""
    import copy

    target = tiny_target(vocab=61)
    draft = random_draft(target)
    head, embed = target.get_output_embeddings(), target.get_input_embeddings()
    with torch.no_grad():
        cache = KVCache()
        root = draft(torch.randn(1, 4, 32), embed(torch.randint(0, 61, (1, 4))), cache)[:, -1:]
        prefix = copy.deepcopy(cache)
        tree = grow_tree(draft, cache, head, embed, root, TreeShape(4, top_k=3, total_tokens=25))
        for node in range(len(tree)):
            path = [node]
            while tree.parents[path[-1]] >= 0:
                path.append(tree.parents[path[-1]])
            path.reverse()
            chain, predicted, value = copy.deepcopy(prefix), root, 0.0
            for i, step in enumerate(path):
                value += float(head(predicted)[0, -1].float().log_softmax(-1)[tree.tokens[step]])
                if i + 1 < len(path):
                    predicted = draft(predicted, embed(torch.tensor([[tree.tokens[step]]])), chain)
            assert tree.values[node] == pytest.approx(value, abs=1e-4), (node, path)
    assert max(tree.depths) == 4


@pytest.mark.parametrize(("depth", "top_k", "total"), SHAPES)
def test_greedy_output_is_the_targets_for_every_tree_shape(depth, top_k, total):
    target = tiny_target()
    draft = random_draft(target)
    accepted = 0
    for prompt in prompts():
        decoded = speculative_decode(target, draft, prompt, 24, depth, top_k=top_k, total_tokens=total)
        assert decoded.tokens == greedy_decode(target, prompt, 24)
        assert decoded.round_tokens == 23 and decoded.rounds == len(decoded.accepted)
        accepted += sum(decoded.accepted)
    assert accepted > 0  # paths were accepted: the caches were compacted, not only cropped


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tree_decoding_on_cuda_is_the_targets_greedy_output():
    # every mask the tree builds (the draft's expansion, the target's verification) must sit on the model's device
    target, draft = tiny_target().cuda(), random_draft(tiny_target()).cuda()
    for prompt in prompts():
        prompt = {k: v.cuda() for k, v in prompt.items()}
        decoded = speculative_decode(target, draft, prompt, 24, 4, top_k=3, total_tokens=8)
        assert decoded.tokens == greedy_decode(target, prompt, 24)


def test_greedy_output_is_the_vlm_targets_for_tree_shapes():
    from distill.data import create_datamodule

    data = create_datamodule("captions", num_images=6)
    data.setup("fit")
    torch.manual_seed(0)
    target = create_model("llava_tiny", **data.model_args("teacher")).eval()
    draft = random_draft(target)
    row = data.val_set[0]
    prompt = {"input_ids": row["input_ids"][None, :20], "pixel_values": row["pixel_values"][None]}
    reference = greedy_decode(target, prompt, 16)
    for depth, top_k, total in [(4, 1, None), (3, 4, 12), (2, 8, None)]:
        assert speculative_decode(target, draft, prompt, 16, depth, top_k=top_k, total_tokens=total).tokens == reference


def check_caches(model, draft, prompt: torch.Tensor, emitted: list[int], target: Target, draft_cache: KVCache):
    """Both KV caches at a round's start against a fresh pass over the whole sequence so far (the prompt and the
    emitted tokens but the last, the root): the target's compacted cache equals the target's on the plain tokens,
    the draft's equals the draft reading that pass's features."""
    sequence = torch.cat([prompt, torch.tensor([emitted[:-1]], dtype=torch.long)], dim=1)
    fresh = Target(model)
    scored = fresh.forward(sequence)
    assert len(target) == sequence.shape[1]
    for ours, theirs in zip(target.cache.layers, fresh.cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.values, theirs.values, rtol=1e-4, atol=1e-5)
    reread = KVCache()
    next_embeddings = torch.cat([scored.embeddings[:, 1:], fresh.embed(torch.tensor([emitted[-1:]]))], dim=1)
    draft(scored.features, next_embeddings, reread)
    assert len(draft_cache) == len(reread)
    torch.testing.assert_close(draft_cache.keys, reread.keys, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(draft_cache.values, reread.values, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("depth", "top_k", "total"), [(4, 1, None), (3, 3, None), (5, 4, 10)])
def test_both_caches_hold_exactly_the_prefix_and_the_accepted_path_after_each_round(monkeypatch, depth, top_k, total):
    target = tiny_target()
    draft = random_draft(target, seed=11)  # one whose chains get accepted too
    prompt = prompts(1)[0]["input_ids"]
    truth = greedy_decode(target, {"input_ids": prompt}, 30)
    checked = []
    original_grow = speculative.grow

    def grow(draft_, cache, target_, root_feature, shape):
        emitted = len(target_) - prompt.shape[1] + 1  # tokens emitted so far: the last, the root, is not cached
        check_caches(target, draft, prompt, truth[:emitted], target_, cache)
        checked.append(emitted)
        return original_grow(draft_, cache, target_, root_feature, shape)

    monkeypatch.setattr(speculative, "grow", grow)
    decoded = speculative_decode(target, draft, {"input_ids": prompt}, 30, depth, top_k=top_k, total_tokens=total)
    assert decoded.tokens == truth
    assert len(checked) == decoded.rounds and sum(decoded.accepted) > 0  # rounds after partial acceptance checked


def sequence_probabilities(model, prompt: torch.Tensor, length: int, vocab: int) -> dict[tuple[int, ...], float]:
    """The target's exact probability of every continuation of `length` tokens (temperature 1)."""
    probabilities = {}
    with torch.no_grad():
        for continuation in itertools.product(range(vocab), repeat=length):
            ids = torch.cat([prompt, torch.tensor([continuation])], dim=1)
            log_probs = model(input_ids=ids).logits[0].float().log_softmax(-1)
            start = prompt.shape[1] - 1
            picked = log_probs[start : start + length].gather(1, torch.tensor(continuation)[:, None])
            probabilities[continuation] = float(picked.sum().exp())
    return probabilities


def chi_square_p(counts: Counter, expected: dict[tuple[int, ...], float], draws: int) -> float:
    from scipy.stats import chisquare

    keys = sorted(expected)
    total = sum(expected.values())  # 1 up to float rounding, which scipy's check of the sums does not allow
    return float(chisquare([counts[k] for k in keys], [expected[k] / total * draws for k in keys]).pvalue)


def test_sampling_through_a_tree_keeps_the_targets_distribution(monkeypatch):
    vocab, length, draws = 4, 3, 1500
    target = tiny_target(seed=3, vocab=vocab)
    draft = random_draft(target, std=0.5)
    prompt = {"input_ids": torch.tensor([[1, 2, 0]])}
    exact = sequence_probabilities(target, prompt["input_ids"], length, vocab)
    assert sum(exact.values()) == pytest.approx(1.0, abs=1e-5)
    generator = torch.Generator().manual_seed(0)

    def decode_all(decode) -> Counter:
        return Counter(tuple(decode()) for _ in range(draws))

    plain = decode_all(lambda: sample_decode(target, prompt, length, 1.0, generator))
    tree = decode_all(
        lambda: (
            speculative_decode(target, draft, prompt, length, 2, top_k=2, temperature=1.0, generator=generator).tokens
        )
    )
    assert chi_square_p(plain, exact, draws) > 1e-3
    assert chi_square_p(tree, exact, draws) > 1e-3
    # a wrong rule is caught: accepting the draft's first child whatever the target draws
    from distill.generate import draft_tree

    def first_child(tree_, choices):
        below = tree_.children()
        path, current = [], 0
        while below[current]:
            current = below[current][0]
            path.append(current)
        return path, choices[current]

    monkeypatch.setattr(speculative, "accepted_path", first_child)
    biased = decode_all(
        lambda: (
            speculative_decode(target, draft, prompt, length, 2, top_k=2, temperature=1.0, generator=generator).tokens
        )
    )
    assert chi_square_p(biased, exact, draws) < 1e-6
    assert draft_tree.accepted_path is not first_child


def test_bad_tree_settings_and_attention_are_refused():
    with pytest.raises(DistillError, match="speculative.top_k must be >= 1"):
        TreeShape(3, top_k=0)
    with pytest.raises(DistillError, match="speculative.depth must be >= 1"):
        TreeShape(0)
    with pytest.raises(DistillError, match="total_tokens"):
        TreeShape(3, 2, total_tokens=0)
    target = tiny_target()
    target.config._attn_implementation = "flash_attention_2"
    with pytest.raises(DistillError, match="attn_implementation sdpa or eager"):
        speculative_decode(target, random_draft(target), prompts(1)[0], 4, 2, top_k=2)
