"""Speculative decoding with a draft that reads images through the elastic visual compressor: the output is the
target's greedy output whatever the draft reads, and the draft reads the prompt compressed and unpadded."""

from __future__ import annotations

import pytest
import torch

from distill.generate.speculative import greedy_decode, speculative_decode
from distill.models import create_model
from distill.models.draft import EagleDraft

ALL = ["pool", "prune", "conv", "resampler", "text_only"]
VARIANTS = {
    **{name: {"mode": "fixed", "primitives": [name]} for name in ALL},
    "gate": {"mode": "gate", "primitives": ALL},
    "weighted": {"mode": "weighted", "primitives": ALL},
    "concat": {"mode": "concat", "primitives": ["pool", "prune", "conv", "resampler"]},
}
# the prompt's 20 positions hold 16 image ones; each primitive reads them as 4 tokens (factor, keep, queries: 4)
# or none (text_only): the positions the draft reads first
READ = {**{name: {8} for name in ALL}, "text_only": {4}, "gate": {4, 8}, "weighted": {20}, "concat": {20}}


@pytest.fixture(scope="module")
def vlm():
    from distill.data import create_datamodule

    data = create_datamodule("captions", num_images=10)
    data.setup("fit")
    torch.manual_seed(0)
    target = create_model("llava_tiny", **data.model_args("teacher")).eval()
    rows = [data.val_set[0]]
    # bos, the 16 image tokens and the first three caption bytes
    prompts = [{"input_ids": r["input_ids"][None, :20], "pixel_values": r["pixel_values"][None]} for r in rows]
    return target, prompts


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_compressor_draft_decodes_exactly_the_targets_greedy_output(vlm, variant):
    target, prompts = vlm
    draft = EagleDraft.for_target(target, compressor=VARIANTS[variant])
    torch.manual_seed(1)
    for p in draft.parameters():
        p.data.normal_(std=0.3)  # untrained, but not the near-identity a new draft starts as
    draft.eval()
    read = []
    draft.register_forward_hook(lambda module, args, out: read.append(args[0].shape[1]))
    for prompt in prompts:
        read.clear()
        decoded = speculative_decode(target, draft, prompt, 16, 4)
        assert decoded.tokens == greedy_decode(target, prompt, 16)
        assert read[0] in READ[variant] and decoded.rounds > 0  # the prompt, compressed and unpadded
        assert speculative_decode(target, draft, prompt, 16, 4) == decoded  # evaluation mode: the same choice
