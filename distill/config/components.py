"""Checks a component section (`{name: ..., <arguments>}`) against the registry entry it names."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from distill.config.schema import DatasetSpec, LossTermSpec, ModelSpec
from distill.config.validate import Checker
from distill.errors import DistillError, RecipeError
from distill.models.lora import LoRASettings
from distill.models.taps import LayerName

# Arguments set by distill from the dataset (or, for a draft, the target model), not by the recipe.
INJECTED_MODEL_ARGS = ("num_classes", "in_chans", "vocab_size", "image_token_id", "image_size", "patch_size", "target")


def check_component(checker: Checker, kind: type, value: dict, path: str) -> dict[str, Any]:
    if kind is LossTermSpec:
        return _loss_term(checker, value, path)
    name = value.get("name")
    if not isinstance(name, str):
        raise checker.fail(f"{path}.name", "is required: the registered name of the component")
    args = {k: v for k, v in value.items() if k != "name"}
    if kind is ModelSpec:
        from distill.models import LIBRARY_PREFIXES, MODELS

        lora = _lora(checker, args.pop("lora", None), path)
        options = _training_options(checker, args, path)
        if name.startswith("hf:"):
            args = _hf_arguments(checker, args, path)
        if name.startswith(LIBRARY_PREFIXES):
            # the library checks its own arguments when the model is built
            return {"name": name, **args, **options, **lora}
        target = _lookup(checker, MODELS, name, f"{path}.name")
        for injected in INJECTED_MODEL_ARGS:
            if injected in args:
                raise checker.fail(f"{path}.{injected}", "is set from the dataset; remove it from the recipe")
        return {"name": name, **checker.arguments(target, args, path, skip=INJECTED_MODEL_ARGS), **options, **lora}
    if kind is DatasetSpec:
        from distill.data import DATASETS

        target = _lookup(checker, DATASETS, name, f"{path}.name")
        return {"name": name, **checker.arguments(target, args, path)}
    raise TypeError(f"no component checker for {kind}")


def _lora(checker: Checker, value: Any, path: str) -> dict[str, Any]:
    """A model's `lora` section, checked (the student's only): `{"lora": {...}}`, or nothing without one."""
    if value is None:
        return {}
    if path != "student":
        raise checker.fail(f"{path}.lora", "only the student takes LoRA adapters")
    settings = checker.dataclass(LoRASettings, value, f"{path}.lora")
    return {"lora": dataclasses.asdict(settings)}


def _training_options(checker: Checker, args: dict[str, Any], path: str) -> dict[str, Any]:
    """Keys distill reads on a model section besides the model's own arguments, taken out of `args`:
    `gradient_checkpointing` (the student's only; written back only when given, so that recipes without it keep
    their resolved form, and with it the store keys of their trained teachers)."""
    if "gradient_checkpointing" not in args:
        return {}
    value = checker.value(bool, args.pop("gradient_checkpointing"), f"{path}.gradient_checkpointing")
    if path != "student":
        raise checker.fail(
            f"{path}.gradient_checkpointing", "applies to the student only (frozen models keep no activations)"
        )
    return {"gradient_checkpointing": value}


def _hf_arguments(checker: Checker, args: dict[str, Any], path: str) -> dict[str, Any]:
    """A Hugging Face model's arguments with its precision checked. The student loads in float32 unless the recipe
    says otherwise: trainable weights need fp32 master copies (`bf16-mixed` computes in bf16 but updates the weights
    in their own dtype, and most AdamW updates round away in bf16), whatever dtype its checkpoint was saved in.
    A frozen model's precision is its section's `dtype` (`teacher.dtype`: it loads in it directly), one key for
    every kind of model, int8 included."""
    from distill.models.causal_lm import HF_DTYPES

    if path != "student" and path.endswith(".model") and ("dtype" in args or "torch_dtype" in args):
        key = "dtype" if "dtype" in args else "torch_dtype"
        section = path.removesuffix(".model")
        raise checker.fail(f"{path}.{key}", f"a frozen model's precision is {section}.dtype: write that instead")
    if "torch_dtype" in args:
        raise checker.fail(f"{path}.torch_dtype", "is called dtype in transformers 5: write dtype")
    if path == "student":
        args = {"dtype": "float32", **args}
    if "dtype" in args and args["dtype"] not in HF_DTYPES:
        raise checker.fail(f"{path}.dtype", f"must be one of {', '.join(HF_DTYPES)}, got {args['dtype']!r}")
    return args


def _loss_term(checker: Checker, value: dict, path: str) -> dict[str, Any]:
    from distill.tasks.feature_terms import shape_arguments
    from distill.tasks.loss_terms import LOSSES

    key = path.rsplit(".", 1)[-1]
    loss_name = value.get("loss", key)
    if not isinstance(loss_name, str):
        raise checker.fail(f"{path}.loss", f"must be a string, got {loss_name!r}")
    if "weight" not in value:
        raise checker.fail(f"{path}.weight", "is required: every loss term has an explicit weight")
    weight = checker.value(float, value["weight"], f"{path}.weight")
    target = _lookup(checker, LOSSES, loss_name, f"{path}.loss" if "loss" in value else path)
    layers = _feature_layers(checker, target, value, path)
    given = {k: v for k, v in value.items() if k not in ("loss", "weight", *layers)}
    shaped = shape_arguments(target) if layers else ()
    args = checker.arguments(target, given, path, skip=shaped)
    if not any(name in shaped for name in inspect.signature(target).parameters):
        try:
            target(**args)  # the loss validates its own values (e.g. temperature > 0)
        except ValueError as exc:
            raise checker.fail(path, f"is invalid: {exc}") from None
    return {"loss": loss_name, "weight": weight, **layers, **args}


def _feature_layers(checker: Checker, target: type, value: dict, path: str) -> dict[str, Any]:
    """A feature term's `student` and `teacher` layers (a layer or an equal-length list each); none for others."""
    from distill.tasks.feature_terms import LAYER_KEYS, layer_list, reads_features

    if not reads_features(target):
        return {}
    layers = {}
    for side in LAYER_KEYS:
        if side not in value:
            raise checker.fail(
                f"{path}.{side}", f"is required: the {side}'s layer(s) the term reads (a module path, e.g. layer2)"
            )
        layers[side] = checker.value(LayerName | list[LayerName], value[side], f"{path}.{side}")
        if isinstance(layers[side], list) and not layers[side]:
            raise checker.fail(f"{path}.{side}", "is an empty list: name at least one layer")
    counts = [len(layer_list(layers[side])) for side in LAYER_KEYS]
    if counts[0] != counts[1]:
        raise checker.fail(
            path, f"pairs layers in order: student names {counts[0]}, teacher {counts[1]}; give both the same number"
        )
    return layers


def _lookup(checker: Checker, registry: Any, name: str, path: str) -> Any:
    try:
        return registry.get(name)
    except DistillError as exc:
        raise RecipeError(f"{checker.source}: '{path}': {exc}") from None
