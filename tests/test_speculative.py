"""Speculative decoding: lossless against the target's own greedy output, and rounds counted exactly."""

from __future__ import annotations

import pytest
import torch

import distill.generate.speculative as speculative
from distill.generate.speculative import evaluate_speculative, greedy_decode, speculative_decode
from distill.models import create_model
from distill.models.draft import EagleDraft

V = 61


def tiny_target(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("llama", vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2).eval()


def random_draft(target, seed: int = 1) -> EagleDraft:
    draft = EagleDraft.for_target(target)
    torch.manual_seed(seed)
    for p in draft.parameters():
        p.data.normal_(std=0.3)
    return draft.eval()


def prompts(count: int = 4, length: int = 6, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, V, (1, length + i), generator=g)} for i in range(count)]


def test_greedy_decode_is_transformers_greedy_generation():
    target, prompt = tiny_target(), prompts(1)[0]
    expected = target.generate(**prompt, do_sample=False, max_new_tokens=12, min_new_tokens=12)
    assert greedy_decode(target, prompt, 12) == expected[0, prompt["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_output_is_the_targets_greedy_output_whatever_the_draft(depth):
    target = tiny_target()
    draft = random_draft(target)
    for prompt in prompts():
        decoded = speculative_decode(target, draft, prompt, 25, depth)
        assert decoded.tokens == greedy_decode(target, prompt, 25)
        assert len(decoded.tokens) == 25 and decoded.round_tokens == 24  # the first token comes from the prompt
        assert decoded.rounds <= 24


def test_generation_stops_after_eos_both_ways():
    target, prompt = tiny_target(), prompts(1)[0]
    plain = greedy_decode(target, prompt, 20)
    eos = plain[7]  # a token the target emits: decoding must stop right after its first occurrence
    stopped = greedy_decode(target, prompt, 20, eos_id=eos)
    assert stopped == plain[: plain.index(eos) + 1]
    assert speculative_decode(target, random_draft(target), prompt, 20, 4, eos_id=eos).tokens == stopped


def test_a_draft_that_always_agrees_is_fully_accepted():
    """A target whose final norm is zero gives all-zero logits (greedy picks token 0); a draft that outputs zero
    features makes the shared head propose token 0 too: every round accepts all `depth` drafts plus one."""
    target = tiny_target()
    target.model.norm.weight.data.zero_()
    draft = EagleDraft.for_target(target)
    for p in draft.fuse.parameters():
        p.data.zero_()
    decoded = speculative_decode(target, draft, prompts(1)[0], 21, depth=4)
    assert decoded.tokens == [0] * 21 and decoded.rounds == 4 and decoded.round_tokens == 20
    report = evaluate_speculative(target, draft, prompts(2), 21, depth=4)
    assert report.accepted_length == 5.0 and report.lossless == 1.0 and report.tokens == 42


def test_partly_right_drafts_emit_the_accepted_prefix_plus_the_targets_token(monkeypatch):
    """A draft that proposes the target's next two tokens, then two wrong ones, gains 3 tokens per round."""
    from distill.generate.draft_tree import DraftTree

    target, prompt = tiny_target(), prompts(1)[0]
    truth = greedy_decode(target, prompt, 40)
    calls = []

    def two_right(draft, cache, target_, root_feature, shape):
        done = sum(calls) + 1  # tokens emitted so far (the first comes from the prompt)
        calls.append(3)
        chain = [*truth[done : done + 2], *[(t + 1) % V for t in truth[done + 2 : done + shape.depth]]]
        return DraftTree(chain, list(range(-1, len(chain) - 1)), list(range(1, len(chain) + 1)))

    monkeypatch.setattr(speculative, "grow", two_right)
    decoded = speculative_decode(target, random_draft(target), prompt, 40, depth=4)
    assert decoded.tokens == truth and decoded.rounds == 13 and decoded.round_tokens == 39  # 13 x 3
    assert decoded.accepted == [2] * 13  # two drafts accepted per round, then the target's own token
    text = decoded.marked(lambda ids: "".join(f"<{i}>" for i in ids))
    first = f"<{truth[0]}>"
    rounds = [f"[<{truth[1 + 3 * r]}><{truth[2 + 3 * r]}>]<{truth[3 + 3 * r]}>" for r in range(13)]
    assert text == first + "".join(rounds)


def test_the_draft_is_left_in_the_mode_it_was_in():
    target = tiny_target()
    draft = random_draft(target).train()
    report = evaluate_speculative(target, draft, prompts(2), 8, depth=3)
    assert draft.training and report.prompts == 2 and report.speedup > 0
    assert 1.0 <= report.accepted_length <= 4.0


@pytest.mark.parametrize("visual_pool", [1, 4])
def test_a_vlm_target_with_image_prompts_is_decoded_losslessly(visual_pool):
    """LLaVA-style target: the image reaches the draft through the target's features (pooled by the compressor
    when visual_pool > 1, so the draft's cache is shorter than the target's), and the output is still greedy's."""
    from distill.data import create_datamodule

    data = create_datamodule("captions", num_images=6)
    data.setup("fit")
    torch.manual_seed(0)
    target = create_model("llava_tiny", **data.model_args("teacher")).eval()
    draft = EagleDraft.for_target(target, visual_pool=visual_pool)
    assert draft.image_token_id == data.image_token_id
    torch.manual_seed(1)
    for p in draft.parameters():
        p.data.normal_(std=0.3)
    rows = [data.val_set[0]]
    image_prompts = [{"input_ids": r["input_ids"][None, :20], "pixel_values": r["pixel_values"][None]} for r in rows]
    for prompt in image_prompts:
        assert speculative_decode(target, draft, prompt, 16, 4).tokens == greedy_decode(target, prompt, 16)
