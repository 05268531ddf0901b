"""A finished run's student rebuilt from its checkpoint alone, for `distill export`: the recipe's student section,
the sizes and the tokenizer the run recorded from its data (`data.record`), and the trained weights.

`pipeline.restore` rebuilds the whole task to evaluate it; this reads nothing the student is not made of. Not the
data (it may be on the Hub, moved or deleted), not the frozen models (a teacher may be gone, or need a GPU, as an
`int8` one does). What is read: an `hf:` student's pretrained model (its configuration, and the base weights of a
LoRA student), and for a LoRA student of another kind the base weights its checkpoints leave out (the file `init`
read them from, or the run's seeded initialization, made again from the seed).

A speculative-decoding draft is the exception: it is shaped by its target, serves beside it, and is checked by
decoding with it, so its target is rebuilt too, from the weights the draft learned from (`restore_target`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from distill.config.load import LoadedRecipe, from_dict
from distill.data.record import tokenizer_from_record
from distill.data.tokenizers import Tokenizer
from distill.engine.run_folder import RunCheckpoint, comes_with_weights
from distill.errors import DistillError
from distill.models import create_model, model_for_data
from distill.models.lora import LoRASettings, add_lora
from distill.models.weights import load_weights
from distill.teachers.resolve import FrozenPlan, load_frozen

DRAFT_TASK = "draft_distill"  # the task whose student is a draft for its teacher, the target


@dataclass
class RunStudent:
    """A finished run's trained student, with what its users need beside it."""

    model: nn.Module  # in eval mode; a LoRA student keeps its adapters (models.lora.merge_lora merges them)
    loaded: LoadedRecipe  # the recipe it was trained with (not pinned: no frozen model is read)
    checkpoint: RunCheckpoint
    record: dict[str, Any]  # data.record: what the models took from the data
    tokenizer: Tokenizer | None  # token data: the run's tokenizer, exactly
    target: nn.Module | None = None  # a draft's target

    @property
    def chat_template(self) -> str | None:
        """The template the run rendered conversations with in place of the tokenizer's own (a built-in name or
        Jinja), or None."""
        return self.record.get("chat_template")


class RecordedSizes:
    """The data as the models saw it, for `model_for_data`: the sizes the run recorded, per role."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def model_args(self, role: str) -> dict[str, Any]:
        return dict(self.record["model_args"][role])


def restore_student(checkpoint: RunCheckpoint) -> RunStudent:
    """The trained student of `checkpoint`, built from it alone (a draft with its target)."""
    loaded = from_dict(checkpoint.recipe, f"{checkpoint.path} recipe")
    record = checkpoint.data_record or record_from_data(loaded)
    tokenizer = tokenizer_from_record(record["tokenizer"]) if record.get("tokenizer") else None
    target = restore_target(checkpoint, record) if loaded.recipe.task == DRAFT_TASK else None
    L.seed_everything(loaded.recipe.seed, workers=True, verbose=False)  # the run seeded just before its student
    model = build_draft(loaded, target) if target is not None else build_student(loaded, record, checkpoint)
    load_trained(model, checkpoint)
    return RunStudent(model.eval(), loaded, checkpoint, record, tokenizer, target)


def record_from_data(loaded: LoadedRecipe) -> dict[str, Any]:
    """For a checkpoint written before runs kept their `data.record`: read from the data again (which must then be
    reachable, as it was for every export then)."""
    from distill.data.record import data_record
    from distill.engine.wiring import prepare_data

    return data_record(prepare_data(loaded))


def build_student(loaded: LoadedRecipe, record: dict[str, Any], checkpoint: RunCheckpoint) -> nn.Module:
    """The recipe's student as `BuildContext.student` builds it, sized by the recorded data; a LoRA student with
    the base weights it trained on (its checkpoints hold the adapters only)."""
    spec = dict(loaded.recipe.student)
    lora = spec.pop("lora", None)
    student = model_for_data(spec, RecordedSizes(record), "student")
    if lora is None:
        return student  # every weight is in the checkpoint: where it started does not matter
    load_base(student, loaded, checkpoint)
    return add_lora(student, LoRASettings(**lora))


def load_base(student: nn.Module, loaded: LoadedRecipe, checkpoint: RunCheckpoint) -> None:
    """A LoRA student's base weights as the run had them: the pretrained or seeded ones it was built with (nothing
    to do), or the file `init` named (the teacher's weights for `init: teacher`)."""
    init = loaded.recipe.init
    if init is None:
        return
    source = checkpoint.sources.get("teacher" if init == "teacher" else "student_init") or {}
    weights = str(source.get("weights", init))
    if comes_with_weights(source):
        return  # init: teacher from a pretrained model: the same model the student was built from
    if not Path(weights).is_file():
        what = "the teacher's (init: teacher)" if init == "teacher" else "read by init"
        raise DistillError(
            f"export: the LoRA student's base weights are {what}, from {weights}, which is gone; its checkpoints hold "
            "the adapters only: restore that file"
        )
    load_weights(student, weights, "init")


def restore_target(checkpoint: RunCheckpoint, record: dict[str, Any]) -> nn.Module:
    """A draft's target, from the weights the draft learned from, in float32 whatever `teacher.dtype` the run held
    it in (an `int8` target needs a GPU; the export only reads it and checks the draft with it)."""
    source = checkpoint.sources.get("teacher")
    if not source:
        raise DistillError(f"export: {checkpoint.path} does not record the target its draft was trained for")
    need = "a draft is exported for its target (config.json is the target's with one layer, and the draft is checked"
    weights = None if comes_with_weights(source) else Path(source["weights"])
    if weights is not None and not weights.is_file():
        raise DistillError(
            f"export: {need} by decoding with it); the target's weights are gone ({weights}): restore them"
        )
    try:  # as the run loaded it, but in float32 (no teacher.dtype)
        target = load_frozen(FrozenPlan("teacher", dict(source["model"]), weights), RecordedSizes(record))
    except DistillError as exc:
        raise DistillError(f"export: {need} by decoding with it), which cannot be built: {exc}") from None
    return target.requires_grad_(False).eval()


def build_draft(loaded: LoadedRecipe, target: nn.Module) -> nn.Module:
    """The recipe's draft for `target`, as task draft_distill builds it."""
    spec = loaded.recipe.student
    return create_model(spec["name"], target=target, **{k: v for k, v in spec.items() if k != "name"})


def load_trained(model: nn.Module, checkpoint: RunCheckpoint) -> None:
    """The checkpoint's student weights into `model`: every one it has, and it must have all but the untrained
    base of a LoRA student. Loss terms' modules (feature projectors) are left out."""
    state = {k.removeprefix("student."): v for k, v in checkpoint.state.items() if k.startswith("student.")}
    result = model.load_state_dict(state, strict=False)
    untrained = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    missing = [key for key in result.missing_keys if key not in untrained]
    unexpected = result.unexpected_keys
    if missing or unexpected:
        raise DistillError(
            f"{checkpoint.path} does not fit the recipe's student: {len(missing)} missing keys"
            f"{f' (e.g. {missing[0]})' if missing else ''}, {len(unexpected)} unexpected"
            f"{f' (e.g. {unexpected[0]})' if unexpected else ''}"
        )
