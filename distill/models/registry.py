"""The model registry and `create_model`, which also reaches any timm, torchvision or Hugging Face model."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from distill.errors import DistillError
from distill.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("model")

LIBRARY_PREFIXES = ("timm:", "torchvision:", "hf:", "open_clip:")
VISION_DATA_ARGS = ("image_token_id", "image_size", "patch_size")  # set by VLM datasets


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    vocab_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by registry name, `timm:<name>`, `torchvision:<name>`, `hf:<name or path>` or
    `open_clip:<architecture>` (a zero-shot classifier: `class_names` from the dataset).

    `num_classes` and `in_chans` (image models) or `vocab_size` (language models) come from the dataset and
    reach the models that take them; the remaining keyword arguments are the model's own.
    """
    if name.startswith("timm:"):
        return _create_timm(name.removeprefix("timm:"), num_classes, in_chans, kwargs)
    if name.startswith("torchvision:"):
        if in_chans not in (None, 3):
            raise DistillError(
                f"torchvision model '{name}' takes 3-channel images but the dataset has {in_chans}: "
                "use a timm:<name> model (it adapts to in_chans) or a registered one"
            )
        return _create_torchvision(name.removeprefix("torchvision:"), num_classes, kwargs)
    if name.startswith("open_clip:"):
        from distill.models.clip import create_open_clip

        return create_open_clip(name.removeprefix("open_clip:"), **kwargs)
    if name.startswith("hf:"):
        from distill.models.causal_lm import from_pretrained

        return from_pretrained(name.removeprefix("hf:"), vocab_size, **kwargs)
    builder = MODELS.get(name)
    params = inspect.signature(builder).parameters
    injected = {"num_classes": num_classes, "in_chans": in_chans, "vocab_size": vocab_size}
    for key, value in injected.items():
        if value is not None and key in params:
            kwargs.setdefault(key, value)
    # what a VLM dataset tells a VLM (image token, image and patch size) reaches only the models that take it
    kwargs = {k: v for k, v in kwargs.items() if k in params or k not in VISION_DATA_ARGS}
    return builder(**kwargs)


def _create_timm(name: str, num_classes: int, in_chans: int | None, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.list_models(name) and name not in timm.list_models(pretrained=True):
        raise DistillError(f"unknown timm model '{name}' (see timm.list_models())")
    if in_chans is not None:
        kwargs.setdefault("in_chans", in_chans)
    try:
        return timm.create_model(name, num_classes=num_classes, **kwargs)
    except (RuntimeError, OSError, TypeError) as exc:  # e.g. pretrained weights unreachable offline, a typo'd argument
        raise DistillError(f"timm model '{name}': {str(exc).splitlines()[0]}") from None


def _create_torchvision(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise DistillError(f"unknown torchvision model '{name}' (see torchvision.models.list_models())")
    try:
        return torchvision.models.get_model(name, num_classes=num_classes, **kwargs)
    except (RuntimeError, OSError, ValueError, TypeError) as exc:  # TypeError: a typo'd argument
        raise DistillError(f"torchvision model '{name}': {str(exc).splitlines()[0]}") from None
    except KeyError as exc:  # from the weights enum
        raise DistillError(
            f"torchvision model '{name}': unknown weights {exc} (see torchvision.models.get_model_weights('{name}'))"
        ) from None
