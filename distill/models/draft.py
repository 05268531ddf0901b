"""An EAGLE-style draft model for speculative decoding (docs/methods.md, section 8).

The draft reads the target's last hidden state `f_t` (the LM head's input) and the embedding of the next token
`x_{t+1}`, and predicts `f_{t+1}`; the target's frozen LM head turns the prediction into next-token logits. It is one
Llama-style decoder layer (input norm, rotary attention, SwiGLU MLP) behind a linear fusion of the two inputs. The
target's embeddings and LM head are not part of the draft: the caller passes embeddings in and applies the head, so a
draft checkpoint holds only the draft's own weights.

The layer is written here rather than taken from transformers so that its key/value cache can be cut back to any
length after a verification round, whatever the transformers release.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.models.compressor import CompressorSettings, DraftInputs, VisualCompressor
from distill.models.registry import MODELS


@dataclass(frozen=True)
class DraftShape:
    """The sizes of a draft layer, read from the target's (text) config by `DraftShape.of`."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    input_norm: bool = True  # an RMSNorm before the layer's attention; EAGLE's checkpoint layout has none
    fuse_bias: bool = True  # a bias on the fusion of [embedding, feature]

    @staticmethod
    def of(target: nn.Module, intermediate_size: int | None = None) -> DraftShape:
        """The target's sizes (a transformers model; for a VLM, its language model's config)."""
        config = getattr(target.config, "text_config", None) or target.config
        heads = config.num_attention_heads
        rope = getattr(config, "rope_parameters", None) or {}
        return DraftShape(
            hidden_size=config.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate_size=intermediate_size or config.intermediate_size,
            rms_norm_eps=getattr(config, "rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        )


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.float()  # no copy for fp32 input
        return self.weight * (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class KVCache:
    """The draft layer's keys and values `[B, kv_heads, L, head_dim]`, cut back with `crop` after verification."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is not None:
            keys, values = torch.cat([self.keys, keys], dim=2), torch.cat([self.values, values], dim=2)
        self.keys, self.values = keys, values
        return keys, values

    def crop(self, length: int) -> None:
        """Keep the first `length` positions."""
        if self.keys is not None:
            self.keys, self.values = self.keys[:, :, :length], self.values[:, :, :length]


def rotary_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`cos` and `sin` `[..., T, head_dim]` of the rotary embedding (Llama's half-split layout) at `positions`
    `[T]` or `[B, T]`."""
    half = head_dim // 2
    inverse = 1.0 / theta ** (torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[..., None] * inverse  # (..., T, d/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x` `[B, heads, T, d]` rotated by the angles of `rotary_angles` (`[T, d]`, or `[B, T, d]` per row)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d): the same angles for every head
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + turned.float() * sin).to(x.dtype)


class DraftLayer(nn.Module):
    """One pre-norm decoder layer: `x + attn(norm(x))`, then `+ mlp(norm(.))`; causal over the cache and `x` unless
    given other positions and a mask (a draft tree: each node sees the cached prefix and its own ancestors)."""

    def __init__(self, shape: DraftShape) -> None:
        super().__init__()
        self.shape = shape
        h, d = shape.hidden_size, shape.head_dim
        self.input_norm = RMSNorm(h, shape.rms_norm_eps) if shape.input_norm else nn.Identity()
        self.q_proj = nn.Linear(h, shape.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, shape.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, shape.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(shape.num_heads * d, h, bias=False)
        self.post_attention_norm = RMSNorm(h, shape.rms_norm_eps)
        self.gate_proj = nn.Linear(h, shape.intermediate_size, bias=False)
        self.up_proj = nn.Linear(h, shape.intermediate_size, bias=False)
        self.down_proj = nn.Linear(shape.intermediate_size, h, bias=False)

    def attention(
        self,
        x: torch.Tensor,
        cache: KVCache | None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        s = self.shape
        past = len(cache) if cache is not None else 0
        if positions is None:
            positions = torch.arange(past, past + t, device=x.device)

        def heads(proj: nn.Linear, n: int) -> torch.Tensor:
            return proj(x).view(b, t, n, s.head_dim).transpose(1, 2)  # (B, n, T, d)

        cos, sin = rotary_angles(positions, s.head_dim, s.rope_theta)
        q = rotate(heads(self.q_proj, s.num_heads), cos, sin)
        k = rotate(heads(self.k_proj, s.num_kv_heads), cos, sin)
        v = heads(self.v_proj, s.num_kv_heads)
        if cache is not None:
            k, v = cache.append(k, v)
        group = s.num_heads // s.num_kv_heads
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if mask is None and t > 1:
            # query i sits at position past + i and sees keys 0..past + i (a causal mask aligned bottom-right);
            # a single query sees every key: no mask (the common decoding step, kept cheap)
            mask = (
                torch.arange(past + t, device=x.device)[None, :]
                <= torch.arange(past, past + t, device=x.device)[:, None]
            )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, T, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, s.num_heads * s.head_dim))

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attention(self.input_norm(x), cache, positions, mask)
        h = self.post_attention_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class EagleDraft(nn.Module):
    """`f^_{t+1} = layer(fuse([embed(x_{t+1}), f_t]))`: the predicted next hidden state of the target `[B, T, H]`.

    Args:
        shape: the layer's sizes (`DraftShape.of(target)` matches the target's).
        visual_pool: for a VLM target, average consecutive image positions in groups of this many before the draft
            reads them (`compress`); 1: no pooling. Shorthand for `compressor` in mode fixed with `pool`.
        image_token_id: the target's image token (None: a text-only target).
        compressor: for a VLM target, how the draft reads the image positions (`CompressorSettings`, or a mapping
            of its fields); None: as `visual_pool` says.
    """

    _no_split_modules = ["DraftLayer"]  # the block FSDP shards and gathers as one (transformers' convention)

    def __init__(
        self,
        shape: DraftShape,
        visual_pool: int = 1,
        image_token_id: int | None = None,
        compressor: CompressorSettings | dict | None = None,
    ) -> None:
        super().__init__()
        if visual_pool < 1:
            raise DistillError(f"visual_pool must be >= 1, got {visual_pool}")
        self.shape = shape
        self.visual_pool, self.image_token_id = visual_pool, image_token_id
        self.fuse = nn.Linear(2 * shape.hidden_size, shape.hidden_size, bias=shape.fuse_bias)
        self.layer = DraftLayer(shape)
        self.reset_parameters()
        # made after the layer's initialization: a draft's fusion and layer start the same with or without one
        settings = compressor_settings(visual_pool, compressor, image_token_id)
        self.compressor = (
            VisualCompressor(settings, shape.hidden_size, shape.num_heads) if settings is not None else None
        )

    def reset_parameters(self) -> None:
        """The fusion's and the layer's weights (a compressor initializes its own)."""
        std = 1.0 / math.sqrt(self.shape.hidden_size)
        for module in [self.fuse, *self.layer.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # start as "the next feature is the current one's fusion": the residual layer begins near the identity
        nn.init.zeros_(self.layer.o_proj.weight)
        nn.init.zeros_(self.layer.down_proj.weight)

    @staticmethod
    def for_target(
        target: nn.Module,
        intermediate_size: int | None = None,
        visual_pool: int = 1,
        input_norm: bool = True,
        fuse_bias: bool = True,
        compressor: CompressorSettings | dict | None = None,
    ) -> EagleDraft:
        config = target.config
        image_token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
        shape = replace(DraftShape.of(target, intermediate_size), input_norm=input_norm, fuse_bias=fuse_bias)
        return EagleDraft(shape, visual_pool, image_token, compressor)

    @property
    def keeps_every_label(self) -> bool:
        """Whether every labelled position of a row keeps one draft prediction, so that the tokens the loss averages
        over are the rows' labels (false where an image may be read through `text_only` alone)."""
        return self.compressor is None or self.compressor.keeps_every_label

    def compress_rows(
        self,
        features: torch.Tensor,
        next_embeddings: torch.Tensor,
        input_ids: torch.Tensor,
        question: torch.Tensor | None = None,
    ) -> DraftInputs:
        """The draft's inputs `[B, T, H]` with each row's image positions (`input_ids` `[B, T]` is the image token
        there) compressed, rows of unequal length padded: `DraftInputs` (what to read, the mask and positions for
        `forward`, and the target position each draft position predicts). `question` `[B, T]` bool: the text
        positions the gate reads (the prompt's; default every text position)."""
        if self.compressor is None:
            return DraftInputs.uncompressed(features, next_embeddings)
        image = input_ids == self.image_token_id
        question = ~image if question is None else question
        return self.compressor(features, next_embeddings, image, question)

    def compress(
        self, features: torch.Tensor, next_embeddings: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The draft's inputs with image positions compressed (`input_ids` `[B, T]` are the tokens at those
        positions), unpadded: for one prompt (decoding) or rows that compress alike; and `[T']` the position
        before the one each draft position predicts (its original position, for text and pooled positions), None
        when nothing is compressed. Rows that compress differently are read with `compress_rows`."""
        rows = self.compress_rows(features, next_embeddings, input_ids)
        if rows.features is features:
            return features, next_embeddings, None
        if rows.mask is not None or not (rows.aligned == rows.aligned[:1]).all():
            raise DistillError("compress: the rows of this batch compress differently; read them with compress_rows")
        return rows.features, rows.next_embeddings, rows.aligned[0] - 1

    def forward(
        self,
        features: torch.Tensor,
        next_embeddings: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`features` `[B, T, H]` (f_t) and `next_embeddings` `[B, T, H]` (of x_{t+1}) -> predicted f_{t+1} `[B, T, H]`.

        With a `cache`, the T positions continue after those already cached (speculative decoding); without one,
        they are a whole sequence from position 0 (training). `positions` (`[T]` or `[B, T]`, the rotary positions)
        and `mask` (bool, `[B or 1, 1, T, cached + T]`, True where a query may attend) replace the causal order: a
        draft tree's nodes share positions by depth and see only their ancestors; padded rows hide their pads."""
        fused = self.fuse(torch.cat([next_embeddings.to(features.dtype), features], dim=-1))
        return self.layer(fused, cache, positions, mask)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self.shape).items())


def compressor_settings(
    visual_pool: int, compressor: CompressorSettings | dict | None, image_token_id: int | None
) -> CompressorSettings | None:
    """The compressor a draft is built with: `compressor`, or `visual_pool`'s pooling; None for a text target (it
    has no image positions: `visual_pool` is then ignored, an explicit compressor refused)."""
    if isinstance(compressor, dict):
        compressor = CompressorSettings(**compressor)
    if compressor is not None and visual_pool > 1:
        raise DistillError("student.visual_pool and student.compressor both compress the image: set one of them")
    if compressor is not None and image_token_id is None:
        raise DistillError("student.compressor: the target reads no images (it has no image token)")
    if compressor is None and visual_pool > 1 and image_token_id is not None:
        compressor = CompressorSettings(mode="fixed", primitives=["pool"], factor=visual_pool)
    return compressor if image_token_id is not None else None


@MODELS.register("eagle_draft")
def eagle_draft(
    target: nn.Module | None = None,
    intermediate_size: int | None = None,
    visual_pool: int = 1,
    input_norm: bool = True,
    fuse_bias: bool = True,
    compressor: CompressorSettings | None = None,
) -> EagleDraft:
    """An EAGLE-style one-layer draft for `target` (set by distill from the teacher), sized as its layers.

    Args:
        target: the model the draft serves.
        intermediate_size: width of the draft's MLP (None: the target's).
        visual_pool: VLM targets: pool the image positions the draft reads in groups of this many (1: none).
        input_norm: an RMSNorm before the layer's attention. EAGLE's checkpoint layout (what serving engines
            load, `distill export`) has none: set false for a draft you will serve.
        fuse_bias: a bias on the fusion layer (EAGLE-1's own drafts have one; vLLM's loader reads none).
        compressor: VLM targets: SpecVLM's elastic visual compressor (`mode`, `primitives`, `factor`, `keep`,
            `queries`, `gate_temperature`, `gate_hidden`); null: as `visual_pool` says.
    """
    if target is None:
        raise DistillError("eagle_draft is built for a target model: use it as the student of a draft_distill recipe")
    return EagleDraft.for_target(target, intermediate_size, visual_pool, input_norm, fuse_bias, compressor)
