"""SpecVLM's elastic visual compressor (docs/methods.md, section 8): the draft reads each image through one or
several compression primitives; which ones, and with what weight, is the recipe's `mode`. The target never reads
the compressed tokens, so decoding stays lossless whatever the draft reads."""

from __future__ import annotations

import torch
from torch import nn

from distill.models.compressor.gate import QuestionGate
from distill.models.compressor.primitives import PRIMITIVES
from distill.models.compressor.rows import Block, DraftInputs, image_blocks, lay_out, pad_rows
from distill.models.compressor.settings import CompressorSettings

Routing = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # use (B, E), scale (B, E), choice (B,)


class VisualCompressor(nn.Module):
    """`forward(features, next_embeddings, image, question) -> DraftInputs`: each image block of each row read through
    the primitives `settings.mode` routes it to, the rows laid out and padded to the longest.

    Modes: `fixed`, the one primitive; `gate`, one primitive per row chosen by the question-aware gate (its tokens
    multiplied by the choice's straight-through weight, 1 in value); `weighted`, every primitive's tokens scaled by
    the gate's softmax weight, concatenated; `concat`, every primitive's tokens concatenated, no gate.

    Args:
        settings: the recipe's `student.compressor`.
        hidden_size: H, the width of the target's features (and of its embeddings).
        heads: attention heads of the resampler (the draft's).
    """

    def __init__(self, settings: CompressorSettings, hidden_size: int, heads: int) -> None:
        super().__init__()
        self.settings, self.hidden_size = settings, hidden_size
        width = 2 * hidden_size  # a position's feature and next embedding, side by side
        self.experts = nn.ModuleList(PRIMITIVES[name](settings, width, heads) for name in settings.primitives)
        experts = len(self.experts)
        self.gate = (
            QuestionGate(width, experts, settings.gate_hidden, settings.gate_temperature) if settings.gated else None
        )

    @property
    def keeps_every_label(self) -> bool:
        """Whether every labelled position keeps exactly one prediction (every image's last token predicts the
        position after it): false where a row may read an image through `text_only` alone."""
        alone = self.settings.mode in ("fixed", "gate")
        return not (alone and any(not expert.keeps_block_end for expert in self.experts))

    def forward(
        self, features: torch.Tensor, next_embeddings: torch.Tensor, image: torch.Tensor, question: torch.Tensor
    ) -> DraftInputs:
        """`features`, `next_embeddings` `[B, T, H]`; `image` `[B, T]` bool (the image positions) and `question`
        `[B, T]` bool (the text positions the gate reads: the prompt's)."""
        blocks = image_blocks(image)
        if not blocks:
            return DraftInputs.uncompressed(features, next_embeddings)
        inputs = torch.cat([features, next_embeddings.to(features.dtype)], dim=-1)  # (B, T, 2H)
        use, scale, choice = self.route(inputs, image, question & ~image)
        tokens, sources = self.compress_blocks(inputs, blocks, use, scale)
        compressed = pad_rows(lay_out(inputs, blocks, tokens, sources), self.hidden_size)
        compressed.choice = choice
        return compressed

    def route(self, inputs: torch.Tensor, image: torch.Tensor, question: torch.Tensor) -> Routing:
        """Which primitives read each row (`[B, E]` bool), the scale of their tokens (`[B, E]`, None: 1), and the
        gate's choice per row (`[B]`, mode gate only)."""
        rows, experts = inputs.shape[0], len(self.experts)
        every = torch.ones(rows, experts, dtype=torch.bool, device=inputs.device)
        if self.gate is None:  # fixed, concat
            return every, None, None
        logits = self.gate.logits(inputs, question, image)
        if self.settings.mode == "weighted":
            return every, self.gate.soft(logits), None
        choice, weight = self.gate.choose(logits)
        use = torch.nn.functional.one_hot(choice, experts).bool()
        return use, weight[:, None].expand(-1, experts), choice

    def compress_blocks(
        self, inputs: torch.Tensor, blocks: list[Block], use: torch.Tensor, scale: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each block's tokens `[M, 2H]` and the block positions they stand for `[M]`: its primitives' outputs in the
        recipe's order. Blocks of one length that a primitive reads go through it together."""
        routed = use.tolist()
        parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in blocks]
        for e, expert in enumerate(self.experts):
            by_length: dict[int, list[int]] = {}
            for i, block in enumerate(blocks):
                if routed[block.row][e]:
                    by_length.setdefault(block.length, []).append(i)
            for length, members in by_length.items():
                rows = [blocks[i].row for i in members]
                stacked = torch.stack(
                    [inputs[blocks[i].row, blocks[i].start : blocks[i].start + length] for i in members]
                )
                tokens, sources = expert(stacked)  # (R, M, 2H), (R, M)
                if scale is not None:
                    tokens = tokens * scale[rows, e].to(tokens.dtype)[:, None, None]
                for k, i in enumerate(members):
                    parts[i].append((tokens[k], sources[k]))
        empty = inputs.new_zeros(0, inputs.shape[-1])
        tokens = [torch.cat([t for t, _ in part]) if part else empty for part in parts]
        sources = [torch.cat([s for _, s in part]) if part else empty.new_zeros(0, dtype=torch.long) for part in parts]
        return tokens, sources
