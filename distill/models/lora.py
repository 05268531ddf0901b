"""LoRA students through the `peft` library: adapters injected into the student's layers in place (the model keeps
its class, so every task reads it as before), everything else frozen; merged back into plain layers for export.

A recipe asks for it in the student's section: `student: {name: ..., lora: {r: 8, alpha: 16, dropout: 0.05,
target_modules: [q_proj, v_proj]}}`. Target names are the last parts of module paths (as `named_modules()` gives
them); a name that matches no layer of the model is a one-line error with the closest valid name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from distill.errors import DistillError, did_you_mean

ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


@dataclass
class LoRASettings:
    """The student's `lora:` section."""

    r: int = field(default=8, metadata={"help": "rank of the adapters"})
    alpha: float = field(default=16.0, metadata={"help": "scale: the adapters' update is multiplied by alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' input, in [0, 1)"})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "the layers adapted, by their last name part"}
    )

    def check(self) -> None:
        if self.r < 1:
            raise DistillError(f"student.lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise DistillError(f"student.lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise DistillError("student.lora.target_modules must name at least one layer")


def adaptable_names(model: nn.Module) -> list[str]:
    """The last path parts of the layers LoRA can adapt (linear, embedding and convolution layers)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, ADAPTABLE)})


def check_targets(model: nn.Module, settings: LoRASettings) -> None:
    """Every target names a layer of `model` (which may live on the meta device: only its structure is read)."""
    settings.check()
    valid = adaptable_names(model)
    for target in settings.target_modules:
        if target not in valid:
            raise DistillError(
                f"student.lora.target_modules: the model has no layer named '{target}'{did_you_mean(target, valid)} "
                f"(adaptable layers: {', '.join(valid[:12])}{', ...' if len(valid) > 12 else ''})"
            )


def add_lora(model: nn.Module, settings: LoRASettings) -> nn.Module:
    """Inject LoRA adapters into `model`'s layers named by `settings.target_modules`; only they train."""
    check_targets(model, settings)
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise DistillError("student.lora needs the peft library: pip install peft (or distill[llm])") from None
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    adapted = inject_adapter_in_model(config, model)
    for name, parameter in adapted.named_parameters():
        if "lora_" in name:
            # peft makes adapters in their base layer's dtype; trainable weights stay fp32 over a bf16/fp16 base
            # (peft's layers cast their input to the adapter's dtype and the sum back to the base's)
            parameter.data = parameter.data.float()
    return adapted


def has_lora(model: nn.Module) -> bool:
    layer = _lora_layer_class()
    return layer is not None and any(isinstance(module, layer) for module in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """`model` with every LoRA layer merged into its base layer and replaced by it (in place): a plain model with
    the base model's parameter names, as `from_pretrained` and serving engines read them."""
    layer = _lora_layer_class()
    for name, module in list(model.named_modules()):
        if layer is None or not isinstance(module, layer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model


def _lora_layer_class() -> type | None:
    """peft's LoRA layer class, or None without peft (then no model has LoRA layers)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return None
    return LoraLayer


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """`(trainable, total)` parameters of `model`."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
