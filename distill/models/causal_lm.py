"""Causal language models: Hugging Face models by name or path (`hf:<name>`), and tiny Llama-style models built
from a config for offline runs and tests."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.models.registry import MODELS
from distill.registry import remote_code_allowed


@MODELS.register("llama")
def llama(
    vocab_size: int = 259,
    hidden_size: int = 64,
    intermediate_size: int = 176,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 4,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    padded_vocab_size: int | None = None,
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """A Llama-style causal LM (transformers' LlamaForCausalLM) built from a config, randomly initialized.

    Args:
        vocab_size: vocabulary size (set from the dataset's tokenizer).
        padded_vocab_size: rows of the embedding and the LM head when more than the tokenizer's entries, as real
            models pad them (Qwen2.5: 151,665 tokenizer entries, 151,936 rows in the small models, 152,064 in the
            large); None: exactly `vocab_size`.
        hidden_size: width of the residual stream.
        intermediate_size: width of the MLP.
        num_hidden_layers: decoder layers.
        num_attention_heads: attention heads.
        num_key_value_heads: key/value heads (fewer than attention heads: grouped-query attention).
        max_position_embeddings: longest sequence.
        tie_word_embeddings: share the input embedding and the LM head.
        attn_implementation: the attention kernel (`eager`, `sdpa`, `flash_attention_2` where flash-attn is
            installed, ...), as for `hf:` models.
    """
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise DistillError("the llama model needs transformers: pip install 'distill[llm]'") from None
    if padded_vocab_size is not None and padded_vocab_size < vocab_size:
        raise DistillError(
            f"padded_vocab_size {padded_vocab_size} is smaller than the tokenizer's vocabulary ({vocab_size})"
        )
    check_attention(attn_implementation, "llama")
    config = LlamaConfig(
        vocab_size=padded_vocab_size or vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config)


def output_rows(model: nn.Module | None) -> int:
    """The rows of a model's output head (its vocabulary, padded), or 0 when it has no single head."""
    head = model.get_output_embeddings() if model is not None and hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else 0


def from_pretrained(name_or_path: str, vocab_size: int | None = None, **kwargs: Any) -> nn.Module:
    """The Hugging Face model at `name_or_path`: `AutoModelForImageTextToText` when its config has a
    `vision_config` (a LLaVA-style VLM), else `AutoModelForCausalLM`; a one-line error when it is unreachable."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    except ImportError:
        raise DistillError("hf: models need transformers: pip install 'distill[llm]'") from None
    if kwargs.get("trust_remote_code") and not remote_code_allowed():
        raise DistillError(
            f"hf:{name_or_path}: trust_remote_code runs Python code from the model's repository; "
            "pass --allow-remote-code to distill to allow it"
        )
    if "attn_implementation" in kwargs:
        check_attention(kwargs["attn_implementation"], f"hf:{name_or_path}")
    config_kwargs = {key: kwargs[key] for key in ("revision", "trust_remote_code") if key in kwargs}
    config = _reach(name_or_path, AutoConfig.from_pretrained, **config_kwargs)
    auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM
    model = _reach(name_or_path, auto.from_pretrained, **kwargs)
    if vocab_size is not None and model.get_output_embeddings().weight.shape[0] < vocab_size:
        raise DistillError(
            f"hf:{name_or_path}: its vocabulary ({model.get_output_embeddings().weight.shape[0]}) is smaller than "
            f"the tokenizer's ({vocab_size}): use the model's own tokenizer (data.tokenizer=hf:{name_or_path})"
        )
    return model


def _reach(name_or_path: str, load: Callable[..., Any], **kwargs: Any) -> Any:
    """`load(name_or_path, **kwargs)`, its OSError or ValueError turned into a one-line DistillError."""
    try:
        return load(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistillError(
            f"hf:{name_or_path}: cannot load it (no local folder of that name and the Hugging Face Hub is "
            f"unreachable or does not have it): {first}"
        ) from None


# The kernels transformers selects by name, and the package each needs beyond torch.
ATTENTION_PACKAGES = {
    "eager": None,
    "sdpa": None,
    "flex_attention": None,
    "flash_attention_2": "flash_attn",
    "flash_attention_3": "flash_attn_interface",
}

# The precisions a Hugging Face model can be loaded in (`dtype`); `auto`: the one its weights were saved in.
HF_DTYPES = ("float32", "bfloat16", "float16", "auto")


def check_attention(implementation: str, what: str) -> None:
    """A one-line error for an attention kernel transformers does not know, or one whose package is missing
    (transformers' own error for it would be reported as an unreachable model)."""
    if implementation not in ATTENTION_PACKAGES:
        raise DistillError(
            f"{what}: attn_implementation must be one of {', '.join(ATTENTION_PACKAGES)}, got {implementation!r}"
        )
    package = ATTENTION_PACKAGES[implementation]
    if package is not None and importlib.util.find_spec(package) is None:
        raise DistillError(
            f"{what}: attn_implementation {implementation} needs the {package} package (and a CUDA GPU), which is "
            "not installed: use sdpa"
        )


def enable_gradient_checkpointing(model: nn.Module, what: str) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (less memory,
    about one more forward pass of time). Non-reentrant: it works with frozen inputs and LoRA adapters."""
    if not hasattr(model, "gradient_checkpointing_enable") or not getattr(model, "supports_gradient_checkpointing", 0):
        raise DistillError(
            f"{what}: gradient_checkpointing applies to Hugging Face transformer models (hf:<name>, llama); "
            f"{type(model).__name__} does not support it"
        )
    non_reentrant = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=non_reentrant)
    if getattr(model.config, "use_cache", False):
        model.config.use_cache = False  # a KV cache is of no use while training, and checkpointing refuses it
