"""What a loss consumes, declared on its class (`consumes = Consumes(...)`), so that a training loop can feed any
loss without reading its signature, and can refuse a loss it has nothing to feed with.

The kinds, each with the call it stands for:

- `CLASS_LOGITS`: `loss(student_logits (B, C), teacher_logits (B, C), target (B,))`, one distribution per sample.
- `TOKEN_LOGITS`: `loss(student_logits (B, T, V), teacher_logits (B, T, V'), labels (B, T))`, one distribution per
  position, both models reading the same tokens (the same tokenizer); `labels` is -100 where a position is not
  distilled (prompt, padding).
- `SEQUENCE_LOGITS`: `loss(student_logits (B, T, V), teacher_logits (B, T', V'), student_mask (B, T),
  teacher_mask (B, T'))`, each side over its own positions and vocabulary (tokenizers may differ).
- `FEATURES`: `loss(student_features, teacher_features)`, each a list of intermediate outputs `(B, ...)`, one per
  paired layer (a single tensor is taken as a list of one). A loss whose class sets `needs_teacher_shape = True`
  (FitNet's hint) gets each student feature already mapped to its teacher's shape by a projector (where the shapes
  differ, or always with `always_project = True`); a loss that
  builds modules from the feature shapes (CRD's embeddings, ReviewKD's fusion) names those constructor arguments in
  `shape_arguments` and fills them from the shapes with its `from_shapes(student_shapes, teacher_shapes)`.
- `TOKEN_FEATURES`: `loss(student_hidden, teacher_hidden, mask (B, T))`, lists of per-token hidden states
  `(B, T, D)` of a language model, one per paired layer; `mask` is True where a position is distilled.
- `OBJECTIVE`: the whole objective of one kind of training (DPO, AlignDistil, draft distillation, AMU), called with
  arguments of its own.

`extra` names keyword inputs a loss takes beyond its kind's, e.g. `("epoch",)` for a warm-up over epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

CLASS_LOGITS = "class_logits"
TOKEN_LOGITS = "token_logits"
SEQUENCE_LOGITS = "sequence_logits"
FEATURES = "features"
TOKEN_FEATURES = "token_features"
OBJECTIVE = "objective"

# The positional inputs after (student_logits, teacher_logits) of each kind.
KIND_INPUTS: dict[str, tuple[str, ...]] = {
    CLASS_LOGITS: ("target",),
    TOKEN_LOGITS: ("labels",),
    SEQUENCE_LOGITS: ("student_mask", "teacher_mask"),
    FEATURES: (),
    TOKEN_FEATURES: ("mask",),
}

KIND_DESCRIPTIONS = {
    CLASS_LOGITS: "class logits with labels",
    TOKEN_LOGITS: "token logits of one tokenizer with a label mask",
    SEQUENCE_LOGITS: "per-position logits with a mask on each side (any tokenizers)",
    FEATURES: "intermediate features of named layers",
    TOKEN_FEATURES: "per-token hidden states of named layers with a mask",
    OBJECTIVE: "the whole objective of a task",
}


@dataclass(frozen=True)
class Consumes:
    """What a loss's `forward` takes: one of the kinds above, plus `extra` keyword inputs."""

    kind: str
    extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KIND_DESCRIPTIONS:
            raise ValueError(f"kind must be one of {sorted(KIND_DESCRIPTIONS)}, got {self.kind!r}")
