"""The `student.compressor:` section of a draft: which primitives compress the image positions the draft reads, and
how they are combined (docs/methods.md, section 8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from distill.errors import DistillError, did_you_mean

PrimitiveName = Literal["prune", "pool", "conv", "resampler", "text_only"]
Mode = Literal["fixed", "gate", "weighted", "concat"]
PRIMITIVE_NAMES: tuple[str, ...] = get_args(PrimitiveName)
MODES: tuple[str, ...] = get_args(Mode)
KEY = "student.compressor"


@dataclass
class CompressorSettings:
    """How the draft reads each image: through one primitive (`fixed`), one chosen per input by a question-aware gate
    (`gate`), every primitive's tokens scaled by the gate's soft weights (`weighted`), or every primitive's tokens
    side by side (`concat`)."""

    mode: Mode = field(default="fixed", metadata={"help": "fixed, gate, weighted or concat"})
    primitives: list[PrimitiveName] = field(
        default_factory=lambda: ["pool"],
        metadata={"help": "prune, pool, conv, resampler, text_only: one for fixed, two or more otherwise"},
    )
    factor: int = field(default=4, metadata={"help": "pool and conv: image tokens per draft token"})
    keep: int = field(default=4, metadata={"help": "prune: image tokens kept"})
    queries: int = field(default=4, metadata={"help": "resampler: learned queries (draft tokens per image)"})
    gate_temperature: float = field(default=1.0, metadata={"help": "gate and weighted: softmax temperature"})
    gate_hidden: int = field(default=64, metadata={"help": "gate and weighted: width of the gate's hidden layer"})

    def __post_init__(self) -> None:
        # raised while the recipe is read (the checker builds this class), so a bad value costs no training
        self.check_names()
        count = len(self.primitives)
        if self.mode == "fixed" and count != 1:
            raise DistillError(
                f"{KEY}.primitives: mode fixed reads one primitive, got {count}; gate, weighted and "
                "concat combine several"
            )
        if self.mode != "fixed" and count < 2:
            raise DistillError(f"{KEY}.primitives: mode {self.mode} combines two or more primitives, got {count}")
        if self.mode == "concat" and "text_only" in self.primitives:
            raise DistillError(f"{KEY}.primitives: text_only adds no tokens to a concat; leave it out")
        for key in ("factor", "keep", "queries", "gate_hidden"):
            if getattr(self, key) < 1:
                raise DistillError(f"{KEY}.{key} must be >= 1, got {getattr(self, key)}")
        if not self.gate_temperature > 0:
            raise DistillError(f"{KEY}.gate_temperature must be > 0, got {self.gate_temperature}")

    def check_names(self) -> None:
        """Names checked here too, for settings made in Python (a recipe's are checked against the Literal)."""
        if self.mode not in MODES:
            raise DistillError(f"{KEY}.mode: unknown mode {self.mode!r}{did_you_mean(str(self.mode), MODES)}")
        for name in self.primitives:
            if name not in PRIMITIVE_NAMES:
                raise DistillError(
                    f"{KEY}.primitives: unknown primitive {name!r}{did_you_mean(str(name), PRIMITIVE_NAMES)}"
                )
        if len(set(self.primitives)) != len(self.primitives):
            raise DistillError(f"{KEY}.primitives: each primitive once, got {self.primitives}")

    @property
    def gated(self) -> bool:
        """Whether a gate weighs or chooses the primitives."""
        return self.mode in ("gate", "weighted")
