"""Vision-language models: a tiny LLaVA (a CLIP vision tower, a projector and a Llama language model) built from a
config, randomly initialized, for offline runs and tests (e.g. as the target of speculative-decoding drafts)."""

from __future__ import annotations

from torch import nn

from distill.errors import DistillError
from distill.models.registry import MODELS

# What a LLaVA-style model reads beside the token ids (batches and prompts carry them when the data has images).
VISION_INPUTS = ("pixel_values", "image_sizes")


@MODELS.register("llava_tiny")
def llava_tiny(
    vocab_size: int = 260,
    image_token_id: int = 259,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    intermediate_size: int = 176,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 4,
    vision_hidden_size: int = 32,
    vision_layers: int = 1,
    vision_heads: int = 2,
) -> nn.Module:
    """A LLaVA-style vision-language model (transformers' LlavaForConditionalGeneration), randomly initialized.

    Each image becomes (image_size // patch_size) ** 2 features (the CLIP tower's last layer without CLS), which
    replace, in order, the image tokens of the row. Call it with `input_ids`, `attention_mask` and `pixel_values`
    `[B, 3, image_size, image_size]`; with a KV cache, later steps pass only the new tokens and no `pixel_values`.

    Args:
        vocab_size: vocabulary size, the image token included (set from the dataset).
        image_token_id: the id of the image placeholder token (set from the dataset).
        image_size: height and width of the images (set from the dataset).
        patch_size: the vision tower's patch size (set from the dataset).
        hidden_size: width of the language model's residual stream.
        intermediate_size: width of the language model's MLP.
        num_hidden_layers: language model decoder layers.
        num_attention_heads: language model attention heads.
        num_key_value_heads: key/value heads (fewer than attention heads: grouped-query attention).
        vision_hidden_size: width of the vision tower (its MLP is 4x wider).
        vision_layers: vision tower encoder layers.
        vision_heads: vision tower attention heads.
    """
    try:
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    except ImportError:
        raise DistillError("the llava_tiny model needs transformers: pip install 'distill[llm]'") from None
    if image_size % patch_size:
        raise DistillError(f"llava_tiny: image_size ({image_size}) must be divisible by patch_size ({patch_size})")
    if not 0 <= image_token_id < vocab_size:
        raise DistillError(f"llava_tiny: image_token_id ({image_token_id}) must be in [0, vocab_size={vocab_size})")
    for width, heads, what in ((hidden_size, num_attention_heads, ""), (vision_hidden_size, vision_heads, "vision_")):
        if width % heads:
            raise DistillError(f"llava_tiny: {what}hidden_size ({width}) must be divisible by the heads ({heads})")
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=4 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        num_channels=3,
        image_size=image_size,
        patch_size=patch_size,
    )
    text_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=512,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,  # stored as `image_token_index`
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",  # drop CLS: one feature per patch
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    return LlavaForConditionalGeneration(config)
