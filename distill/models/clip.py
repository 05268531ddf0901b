"""CLIP through open_clip as a frozen zero-shot classifier (docs/methods.md, section 9): class text embeddings averaged
over prompt templates make a linear head on the normalized image embedding.

`open_clip:<architecture>` names any open_clip model (`pretrained` picks its weights, e.g. RN50 + 'openai', which
open_clip downloads); `open_clip:tiny` is a randomly initialized 1-layer ViT/text transformer built here from a
config, for offline tests."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError

DEFAULT_TEMPLATES = ["a photo of a {}."]
TINY = "tiny"


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise DistillError("open_clip models need open_clip_torch: pip install -e '.[clip]'") from None
    return open_clip


class ClipZeroShot(nn.Module):
    """`logits = scale * normalize(encode_image(x)) @ W`, `W` `[D, C]` the normalized class text embeddings.

    Grey images (1 channel) are repeated to the 3 channels CLIP takes. The text classifier is a buffer: it is
    saved with the model and never trained here.
    """

    def __init__(self, clip: nn.Module, class_weights: torch.Tensor, scale: float = 100.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("class_weights", class_weights)  # (D, C)
        self.scale = scale

    @property
    def num_classes(self) -> int:
        return self.class_weights.shape[1]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized image embeddings `[B, D]`."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C)
        return self.scale * self.image_features(images) @ self.class_weights.float()


@torch.no_grad()
def text_classifier(clip: nn.Module, tokenizer: Any, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """`[D, C]`: per class, the mean of its normalized template embeddings, normalized again."""
    columns = []
    for name in class_names:
        tokens = tokenizer([template.format(name) for template in templates])
        embeddings = F.normalize(clip.encode_text(tokens).float(), dim=-1)  # (templates, D)
        columns.append(F.normalize(embeddings.mean(dim=0), dim=0))
    return torch.stack(columns, dim=1)


def tiny_clip(image_size: int, width: int = 32, context_length: int = 16) -> tuple[nn.Module, Any]:
    """A randomly initialized open_clip CLIP (1-layer ViT with 2x2 patches, 1-layer text transformer) and its
    tokenizer (open_clip's bundled BPE, no download)."""
    open_clip = _open_clip()
    patch = 2 if image_size % 2 == 0 else 1
    vision = {"image_size": image_size, "layers": 1, "width": width, "patch_size": patch, "head_width": width // 2}
    text = {"context_length": context_length, "vocab_size": 49408, "width": width, "heads": 2, "layers": 1}
    return open_clip.CLIP(embed_dim=width, vision_cfg=vision, text_cfg=text), open_clip.SimpleTokenizer(
        context_length=context_length
    )


def create_open_clip(
    architecture: str,
    class_names: list[str] | None,
    pretrained: str | None = None,
    templates: list[str] | None = None,
    scale: float = 100.0,
    image_size: int = 224,
    cache_dir: str | None = None,
) -> ClipZeroShot:
    """The zero-shot classifier of open_clip model `architecture` for `class_names` (from the dataset)."""
    if not class_names:
        raise DistillError(f"open_clip:{architecture}: the dataset gives no class names for the zero-shot prompts")
    templates = templates or DEFAULT_TEMPLATES
    if any("{}" not in template for template in templates):
        raise DistillError(f"open_clip:{architecture}: every template needs a '{{}}' for the class name: {templates}")
    if architecture == TINY:
        clip, tokenizer = tiny_clip(image_size)
    else:
        open_clip = _open_clip()
        if architecture not in open_clip.list_models():
            raise DistillError(f"unknown open_clip model '{architecture}' (see open_clip.list_models())")
        try:
            clip = open_clip.create_model(architecture, pretrained=pretrained, cache_dir=cache_dir)
        except Exception as exc:  # no network, unknown tag: open_clip raises several kinds
            raise DistillError(f"open_clip:{architecture} ({pretrained}): {' '.join(str(exc).split())[:300]}") from None
        tokenizer = open_clip.get_tokenizer(architecture)
    clip.eval()
    return ClipZeroShot(clip, text_classifier(clip, tokenizer, class_names, templates), scale)
