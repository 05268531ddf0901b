"""The compression primitives of the draft's visual compressor. Each maps image blocks `[R, N, D]` (R blocks of N
image positions; D = 2H: the target's feature and the next token's embedding at each position, side by side) to
draft tokens `[R, M, D]`, and names for each token the block position it stands for (`[R, M]`, in 0..N-1,
nondecreasing): the compressor aligns the token's prediction from it (`distill.models.compressor.rows.align_block`)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.models.compressor.settings import KEY, CompressorSettings
from distill.models.visual_pool import pool_visual

Tokens = tuple[torch.Tensor, torch.Tensor]  # (R, M, D) draft tokens, (R, M) the block position each stands for


def spread(count: int, n: int, rows: int, device: torch.device) -> torch.Tensor:
    """`[rows, count]` block positions spread evenly over `n`, the last at n - 1: `ceil((j + 1) n / count) - 1`."""
    j = torch.arange(1, count + 1, device=device)
    return ((j * n + count - 1) // count - 1).clamp(min=0).expand(rows, -1)


class Primitive(nn.Module):
    """One way of reading an image block: `forward(blocks [R, N, D]) -> (tokens [R, M, D], sources [R, M])`."""

    keeps_block_end: ClassVar[bool] = True  # whether a token stands for the block's end (see `align_block`)

    def __init__(self, settings: CompressorSettings, width: int, heads: int) -> None:
        super().__init__()


class Pool(Primitive):
    """Consecutive tokens averaged in groups of `factor` (the last group may be shorter): M = ceil(N / factor); each
    group stands for its last position, as `visual_pool` has always done."""

    def __init__(self, settings: CompressorSettings, width: int, heads: int) -> None:
        super().__init__(settings, width, heads)
        self.factor = settings.factor

    def forward(self, blocks: torch.Tensor) -> Tokens:
        rows, n, _ = blocks.shape
        image = torch.ones(n, dtype=torch.bool, device=blocks.device)
        (pooled,), last = pool_visual((blocks,), image, self.factor)
        return pooled, last.expand(rows, -1)


class Prune(Primitive):
    """The `keep` tokens of highest learned score (a linear map of each token), in their original order. The block's
    last position is always kept: it holds the embedding of the token after the image, and its prediction is that
    of the first text token (the first draft of decoding reads it).

    Gradient to the score: each kept token is multiplied by `1 + (s - s.detach())`, s = sigmoid(score), which is exactly
    1 in value (the draft reads the tokens as they are, in training as in decoding) while the score receives the
    gradient of scaling its token. Scaling by sigmoid(score) itself would also train the score, but it would shrink
    the tokens the draft reads by an amount that drifts with the score."""

    def __init__(self, settings: CompressorSettings, width: int, heads: int) -> None:
        super().__init__(settings, width, heads)
        self.keep = settings.keep
        self.score = nn.Linear(width, 1)

    def forward(self, blocks: torch.Tensor) -> Tokens:
        rows, n, width = blocks.shape
        if self.keep > n:
            raise DistillError(f"{KEY}.keep ({self.keep}) is more than the {n} image tokens of this input")
        scores = self.score(blocks).squeeze(-1)  # (R, N)
        others = scores[:, :-1].topk(self.keep - 1, dim=1).indices  # (R, keep - 1)
        end = torch.full((rows, 1), n - 1, dtype=torch.long, device=blocks.device)
        kept = torch.cat([others, end], dim=1).sort(dim=1).values  # (R, keep), in order
        chosen = blocks.gather(1, kept[..., None].expand(-1, -1, width))
        weight = torch.sigmoid(scores.gather(1, kept))
        return chosen * (1 + (weight - weight.detach()))[..., None], kept


def grid(n: int, factor: int) -> tuple[int, int] | None:
    """`(side, window)` when `n` tokens are a square patch grid that square windows of `factor` tokens tile; else
    None."""
    side, window = math.isqrt(n), math.isqrt(factor)
    if side * side == n and window * window == factor and side % window == 0:
        return side, window
    return None


def windows(x: torch.Tensor, factor: int) -> torch.Tensor:
    """`[R, N, ...]` -> `[R, M, factor, ...]`: square windows of the patch grid in raster order where `grid` finds
    one, else runs of `factor` along the sequence (the last one zero-padded)."""
    rows, n = x.shape[:2]
    tiled = grid(n, factor)
    if tiled is None:
        padded = F.pad(x, [0, 0] * (x.dim() - 2) + [0, -n % factor])
        return padded.view(rows, -1, factor, *x.shape[2:])
    side, window = tiled
    cells = x.view(rows, side // window, window, side // window, window, *x.shape[2:])
    return cells.transpose(2, 3).reshape(rows, -1, factor, *x.shape[2:])


class Conv(Primitive):
    """A strided convolution over the tokens, stride = kernel = `factor` tokens: over the patch grid (windows of
    sqrt(factor) x sqrt(factor) patches) when N is a square grid they tile, else along the sequence. M = N / factor,
    or ceil(N / factor) along the sequence; each token stands for the last position of its window.

    Depthwise (one filter per channel), so it holds D * factor weights: a dense one would hold D * D * factor, for a
    7B target more than the draft's own layer. It starts as the average of each window (`pool`) and learns from
    there."""

    def __init__(self, settings: CompressorSettings, width: int, heads: int) -> None:
        super().__init__(settings, width, heads)
        self.factor = settings.factor
        self.weight = nn.Parameter(torch.full((settings.factor, width), 1.0 / settings.factor))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, blocks: torch.Tensor) -> Tokens:
        rows, n, _ = blocks.shape
        tokens = torch.einsum("rmfd,fd->rmd", windows(blocks, self.factor), self.weight.to(blocks.dtype))
        positions = torch.arange(n, device=blocks.device)[None].expand(rows, -1)
        ends = windows(positions + 1, self.factor).amax(dim=2) - 1  # (the zero padding reads as position -1)
        return tokens + self.bias.to(blocks.dtype), ends


class Resampler(Primitive):
    """`queries` learned queries cross-attend to the block's tokens (multi-head; keys a linear map of the normalized
    tokens): M = queries, spread over the block (the last stands for its end).

    The values are the tokens themselves, split by heads, with no output projection: each draft token is a learned
    mix of the image positions, of the kind the draft's fusion reads everywhere else, and the block holds no D x D
    matrix (a value and an output projection would add 2 D^2 weights, for a 7B target a quarter of a billion)."""

    def __init__(self, settings: CompressorSettings, width: int, heads: int) -> None:
        super().__init__(settings, width, heads)
        self.heads = heads if width % (2 * heads) == 0 else 1
        key_width = width // 2
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.keys = nn.Linear(width, key_width, bias=False)
        self.queries = nn.Parameter(torch.randn(settings.queries, key_width))

    def forward(self, blocks: torch.Tensor) -> Tokens:
        rows, n, width = blocks.shape
        h = self.heads
        keys = self.keys(self.norm(blocks)).view(rows, n, h, -1).transpose(1, 2)  # (R, h, N, d)
        queries = self.queries.to(blocks.dtype).view(1, -1, h, keys.shape[-1]).transpose(1, 2)  # (1, h, Q, d)
        values = blocks.view(rows, n, h, width // h).transpose(1, 2)  # (R, h, N, D / h)
        mixed = F.scaled_dot_product_attention(queries.expand(rows, -1, -1, -1), keys, values)  # (R, h, Q, D / h)
        tokens = mixed.transpose(1, 2).reshape(rows, -1, width)
        return tokens, spread(tokens.shape[1], n, rows, blocks.device)


class TextOnly(Primitive):
    """No image tokens: the draft reads the text alone (M = 0)."""

    keeps_block_end = False

    def forward(self, blocks: torch.Tensor) -> Tokens:
        rows = blocks.shape[0]
        return blocks[:, :0], torch.zeros(rows, 0, dtype=torch.long, device=blocks.device)


PRIMITIVES: dict[str, type[Primitive]] = {
    "prune": Prune,
    "pool": Pool,
    "conv": Conv,
    "resampler": Resampler,
    "text_only": TextOnly,
}
