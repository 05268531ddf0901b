"""`distill export`: a finished run's student in the form its users load, from the run's checkpoint alone.

- A Hugging Face student (causal LM) becomes a `save_pretrained` folder (safetensors), LoRA adapters merged into
  its weights, with the run's tokenizer and chat template and the ids generation stops at (`export/generation.py`):
  `AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)` read it, as serving
  engines do. With `adapter_only`, a LoRA run's adapters alone become a PEFT adapter folder (`export/adapter.py`).
- A speculative-decoding draft becomes an EAGLE-layout folder (`export/eagle.py`) that serving engines load
  beside its target.
- Any other student (timm, torchvision, the CIFAR zoo, distill's own) becomes `model.safetensors` with the model's
  own parameter names, and `distill_model.json` naming the architecture and its arguments.

The student is rebuilt from the checkpoint (`engine.run_student`): its recipe, the sizes and tokenizer the run
recorded from its data, its weights. Neither the data nor the frozen models are read (a draft's target excepted),
so a run exports offline, moved to another folder, with its teacher deleted or one that needs a GPU.

The weights are written in `dtype` (default: the student's own, float32 unless it trained in another). Every export
is read back the way a user would and compared with the run's student on probe inputs made from its tokenizer
(`export/probes.py`), within a tolerance that fits the dtype: the export fails, and leaves nothing behind, beyond it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.errors import DistillError

DTYPES = ("float32", "bfloat16", "float16")
NOT_EXPORTED = {  # tasks whose student has no form of its own to export, and why
    "amu": "task amu's student is a logit bias on two frozen models' outputs (CLIP's and the auxiliary model's), "
    "read beside them; it has no form of its own to export",
}


@dataclass
class Exported:
    folder: Path
    kind: str  # "hf", "adapter", "safetensors" or "eagle"
    files: list[str]
    max_difference: float  # largest |output difference| between the run's student and the exported one
    tolerance: float
    trainable: int  # the run's trainable parameters (the adapters for a LoRA student)
    parameters: int  # the exported model's parameters
    dtype: torch.dtype = torch.float32  # of the written weights
    details: dict = field(default_factory=dict)  # what the check measured beyond the output difference


def relative_tolerance(dtype: torch.dtype, float32: float) -> float:
    """How far a reloaded export's outputs may be from the run's float32 student's, relative to the largest output:
    `float32` for float32 weights; for half-precision weights (computed in that precision, as users run them) 16
    times the dtype's machine epsilon, the rounding of each weight and activation grown over the layers
    (bfloat16: 0.125, float16: 0.016), far below what a wrong or missing weight does."""
    return float32 if dtype == torch.float32 else max(float32, 16 * torch.finfo(dtype).eps)


def within_tolerance(ours: torch.Tensor, theirs: torch.Tensor, relative: float, what: str) -> tuple[float, float]:
    """`(largest |difference|, tolerance)` between the run's outputs and the reloaded export's, the tolerance being
    `relative` times the largest output; beyond it the export fails in one line naming `what` differs."""
    difference = float((theirs.float() - ours.float()).abs().max())
    tolerance = relative * max(1.0, float(ours.float().abs().max()))
    if difference > tolerance:
        raise DistillError(f"export: the reloaded {what} differ by {difference:.3g} (> {tolerance:.3g})")
    return difference, tolerance


def export_run(
    checkpoint_path: str | Path, out: str | Path, adapter_only: bool = False, dtype: str | None = None
) -> Exported:
    """Export the student of `checkpoint_path` (a checkpoint written by `distill fit`) to the new folder `out`:
    whole, or with `adapter_only` a LoRA run's adapters; its weights in `dtype` (None: the student's own)."""
    from distill.engine.run_folder import RunCheckpoint
    from distill.engine.run_student import DRAFT_TASK, restore_student

    folder = Path(out).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise DistillError(f"export: {folder} exists and is not empty; give a new folder")
    if dtype is not None and dtype not in DTYPES:
        raise DistillError(f"export: --dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    checkpoint = RunCheckpoint.read(checkpoint_path)
    task = checkpoint.recipe.get("task")
    if task in NOT_EXPORTED:
        raise DistillError(f"export: {NOT_EXPORTED[task]}")
    if adapter_only:
        from distill.export.adapter import check_adapter_run

        check_adapter_run(checkpoint.recipe)
    run = restore_student(checkpoint)
    weights_dtype = getattr(torch, dtype) if dtype is not None else own_dtype(run.model)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if adapter_only:
            from distill.export.adapter import export_adapter

            return export_adapter(run, folder, weights_dtype)
        if task == DRAFT_TASK:
            from distill.export.eagle import export_eagle

            return export_eagle(run, folder, weights_dtype)
        if hasattr(run.model, "save_pretrained"):
            from distill.export.hf_folder import export_hf

            return export_hf(run, folder, weights_dtype)
        from distill.export.weights_file import export_weights

        return export_weights(run, folder, weights_dtype)
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for child in folder.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def own_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the student trained in: that of its floating-point parameters (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
