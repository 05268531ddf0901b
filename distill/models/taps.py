"""Intermediate outputs of any model, named the way a recipe names them, captured by forward hooks while the model
runs unchanged.

A layer is named by its module path as `named_modules()` spells it (`layer2`, `blocks.3`, `features.6`), its output
by default or its input with `:input` (`fc:input`, what the classifier reads); for a Hugging Face language model an
integer `i` names hidden state `i` exactly as `output_hidden_states=True` numbers them (0: the embeddings, `i`: the
output of decoder layer `i`, the last one after the final norm). A module that returns a tuple (a decoder layer)
gives its first element.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from distill.errors import DistillError, did_you_mean

LayerName = str | int
INPUT_SUFFIX = ":input"


@dataclass(frozen=True)
class Tap:
    """Where one feature is read: a module of the model, and whether its input (else its output)."""

    module: nn.Module
    reads_input: bool


def decoder_stack(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module] | None:
    """`(embeddings, decoder layers, final norm)` of a Hugging Face language model, or None for other models."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    text_config = getattr(config, "text_config", None)  # a VLM's language model
    layers = layers or getattr(text_config, "num_hidden_layers", None)
    if not isinstance(layers, int) or not hasattr(model, "get_input_embeddings"):
        return None
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == layers]
    if not stacks:
        return None
    decoder = next(m for m in model.modules() if any(child is stacks[0] for child in m.children()))
    norms = [getattr(decoder, name) for name in ("norm", "final_layernorm", "ln_f") if hasattr(decoder, name)]
    return model.get_input_embeddings(), stacks[0], (norms[0] if norms else stacks[0][-1])


def hidden_state_tap(model: nn.Module, index: int, what: str) -> Tap:
    """The tap of hidden state `index` of a Hugging Face language model (negative: from the end)."""
    stack = decoder_stack(model)
    if stack is None:
        raise DistillError(
            f"{what}: layer {index} is a hidden-state index, which only Hugging Face language models have; "
            f"name {type(model).__name__}'s layers by module path"
        )
    embeddings, layers, norm = stack
    count = len(layers) + 1
    if not -count <= index < count:
        raise DistillError(f"{what}: hidden state {index} does not exist: the model has 0..{count - 1}")
    index %= count
    if index == 0:
        return Tap(embeddings, reads_input=False)
    return Tap(norm if index == len(layers) else layers[index - 1], reads_input=False)


def resolve_tap(model: nn.Module, name: LayerName, what: str) -> Tap:
    """The tap a recipe names; an unknown path raises a DistillError naming the closest valid one."""
    if isinstance(name, int) and not isinstance(name, bool):
        return hidden_state_tap(model, name, what)
    path, reads_input = (name[: -len(INPUT_SUFFIX)], True) if name.endswith(INPUT_SUFFIX) else (name, False)
    modules = dict(model.named_modules())
    if path not in modules or path == "":
        valid = [n for n in modules if n]
        raise DistillError(f"{what}: {type(model).__name__} has no layer '{path}'{did_you_mean(path, valid)}")
    return Tap(modules[path], reads_input)


def first_tensor(value: object) -> torch.Tensor:
    """A module's output as one tensor: itself, or the first element of a tuple or of a model output."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    inner = getattr(value, "last_hidden_state", None)
    if isinstance(inner, torch.Tensor):
        return inner
    raise TypeError(f"the layer returned {type(value).__name__}, not a tensor")


@contextmanager
def captured(taps: Sequence[Tap]) -> Iterator[list[torch.Tensor | None]]:
    """Run the model inside: the list fills with each tap's tensor (the last call's, if a module runs twice).
    The hooks are removed on exit; the list holds references only as long as the caller keeps it."""
    found: list[torch.Tensor | None] = [None] * len(taps)
    handles = []
    for i, tap in enumerate(taps):

        def keep(_module: nn.Module, inputs: tuple, output: object, i: int = i, tap: Tap = tap) -> None:
            found[i] = first_tensor(inputs if tap.reads_input else output)

        handles.append(tap.module.register_forward_hook(keep))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
