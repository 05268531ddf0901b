"""The draft's input rows after compression: image blocks found, each row's text and compressed tokens laid out in
order with the target position each draft position is compared with, and rows of unequal length padded with the
attention mask and rotary positions that hide the padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Block:
    """A run of image positions: `row`, `start` and `length` (N)."""

    row: int
    start: int
    length: int


@dataclass
class DraftInputs:
    """What the draft reads, `[B, T', ...]`, and how its predictions line up with the target's positions.

    `aligned[b, j]` is the target position whose state (and logits) draft position j predicts: `t + 1` for a text
    position t; for a compressed image token, a position inside the image (labelled -100: no loss), except the last
    token of each image, which predicts the position after it, as the image's last position did uncompressed.
    `valid` is False at padding; `mask` (`[B, 1, T', T']`, True where a query may attend) and `positions`
    (`[B, T']`, rotary positions consecutive over each row's real positions) are given only when rows were padded."""

    features: torch.Tensor  # (B, T', H)
    next_embeddings: torch.Tensor  # (B, T', H)
    aligned: torch.Tensor  # (B, T') long
    valid: torch.Tensor  # (B, T') bool
    mask: torch.Tensor | None = None  # (B, 1, T', T') bool
    positions: torch.Tensor | None = None  # (B, T') long
    choice: torch.Tensor | None = None  # (B,): the primitive the gate chose for each row (mode gate)

    @staticmethod
    def uncompressed(features: torch.Tensor, next_embeddings: torch.Tensor) -> DraftInputs:
        b, t, _ = features.shape
        aligned = torch.arange(1, t + 1, device=features.device).expand(b, -1)
        return DraftInputs(
            features, next_embeddings, aligned, torch.ones(b, t, dtype=torch.bool, device=aligned.device)
        )


def image_blocks(image: torch.Tensor) -> list[Block]:
    """The runs of true positions of `image` `[B, T]`, row by row (one read from the device)."""
    edges = torch.diff(F.pad(image.to(torch.int8), (1, 1)), dim=1)  # +1 where a run starts, -1 after it ends
    starts, ends = (edges == 1).nonzero().tolist(), (edges == -1).nonzero().tolist()
    return [Block(row, start, end - start) for (row, start), (_, end) in zip(starts, ends, strict=True)]


def align_block(block: Block, count: int, sources: torch.Tensor) -> torch.Tensor:
    """The target positions `[count]` of a block's compressed tokens, from the block positions they stand for
    (`sources`): the last predicts the position after the block (`start + N`); the others a position inside it
    (`start + 1 + source`, at most the block's last; the block's own start when N = 1), whose label is -100."""
    if count == 0:
        return sources.new_zeros(0)
    n = block.length
    inside = block.start + (1 + sources[:-1].clamp(max=n - 2) if n > 1 else sources[:-1] * 0)
    end = sources.new_full((1,), block.start + n)
    return torch.cat([inside, end])


def lay_out(
    inputs: torch.Tensor, blocks: list[Block], tokens: list[torch.Tensor], sources: list[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each row of `inputs` `[B, T, D]` with its blocks replaced by their `tokens` (`[M, D]` each): `[T_b', D]`,
    and the aligned target positions `[T_b']`."""
    rows: list[tuple[torch.Tensor, torch.Tensor]] = []
    by_row: dict[int, list[int]] = {}
    for i, block in enumerate(blocks):
        by_row.setdefault(block.row, []).append(i)
    length = inputs.shape[1]
    positions = torch.arange(1, length + 1, device=inputs.device)
    for row in range(inputs.shape[0]):
        pieces, aligned, cursor = [], [], 0
        for i in by_row.get(row, []):
            block = blocks[i]
            pieces += [inputs[row, cursor : block.start], tokens[i]]
            aligned += [positions[cursor : block.start], align_block(block, len(tokens[i]), sources[i])]
            cursor = block.start + block.length
        pieces.append(inputs[row, cursor:])
        aligned.append(positions[cursor:])
        rows.append((torch.cat(pieces), torch.cat(aligned)))
    return rows


def pad_rows(rows: list[tuple[torch.Tensor, torch.Tensor]], hidden: int) -> DraftInputs:
    """Rows `[T_b', 2H]` stacked into `DraftInputs`, the shorter ones padded at their end (with the mask and the
    positions that hide the padding, given only when some row is shorter)."""
    lengths = [len(aligned) for _, aligned in rows]
    longest, device = max(lengths), rows[0][0].device
    valid = torch.arange(longest, device=device)[None] < torch.tensor(lengths, device=device)[:, None]
    if min(lengths) == longest:
        stacked, aligned = torch.stack([x for x, _ in rows]), torch.stack([a for _, a in rows])
        return DraftInputs(stacked[..., :hidden], stacked[..., hidden:], aligned, valid)
    stacked = torch.stack([F.pad(x, (0, 0, 0, longest - len(x))) for x, _ in rows])  # (B, T', 2H)
    aligned = torch.stack([F.pad(a, (0, longest - len(a))) for _, a in rows])  # pads: position 0, never valid
    causal = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
    # a real query sees the real positions up to itself; a pad sees itself too, so that no row of the mask is empty
    # (an empty row gives NaN, which would reach the gradient through the masked loss)
    mask = (causal & valid[:, None, :]) | torch.eye(longest, dtype=torch.bool, device=device)
    positions = (valid.cumsum(dim=1) - 1).clamp(min=0)
    return DraftInputs(stacked[..., :hidden], stacked[..., hidden:], aligned, valid, mask[:, None], positions)
