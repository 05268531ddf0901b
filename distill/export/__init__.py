"""`distill export`: a finished run's student in the form its users load.

- A Hugging Face student (causal LM) becomes a `save_pretrained` folder (safetensors), LoRA adapters merged into
  its weights, with the run's tokenizer and chat template: `AutoModelForCausalLM.from_pretrained(folder)` and
  `AutoTokenizer.from_pretrained(folder)` read it, as serving engines do.
- A speculative-decoding draft becomes an EAGLE-layout folder (`export/eagle.py`) that serving engines load
  beside its target.
- Any other student (timm, torchvision, the CIFAR zoo, distill's own) becomes `model.safetensors` with the model's
  own parameter names, and `distill_model.json` naming the architecture and its arguments.

Every export is read back the way a user would and compared with the run's student on a batch of its validation
data: the export fails, and leaves nothing behind, when the outputs differ beyond the tolerance.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from distill.errors import DistillError

if TYPE_CHECKING:
    import torch


@dataclass
class Exported:
    folder: Path
    kind: str  # "hf", "safetensors" or "eagle"
    files: list[str]
    max_difference: float  # largest |output difference| between the run's student and the exported one
    tolerance: float
    trainable: int  # the run's trainable parameters (the adapters for a LoRA student)
    parameters: int  # the exported model's parameters
    details: dict = field(default_factory=dict)  # what the check measured beyond the output difference


def within_tolerance(ours: torch.Tensor, theirs: torch.Tensor, relative: float, what: str) -> tuple[float, float]:
    """`(largest |difference|, tolerance)` between the run's outputs and the reloaded export's, the tolerance being
    `relative` times the largest output; beyond it the export fails in one line naming `what` differs."""
    difference = float((theirs.float() - ours.float()).abs().max())
    tolerance = relative * max(1.0, float(ours.float().abs().max()))
    if difference > tolerance:
        raise DistillError(f"export: the reloaded {what} differ by {difference:.3g} (> {tolerance:.3g})")
    return difference, tolerance


def export_run(checkpoint_path: str | Path, out: str | Path) -> Exported:
    """Export the student of `checkpoint_path` (a checkpoint written by `distill fit`) to the new folder `out`."""
    from distill.engine.pipeline import restore
    from distill.engine.run_folder import RunCheckpoint

    folder = Path(out).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise DistillError(f"export: {folder} exists and is not empty; give a new folder")
    checkpoint = RunCheckpoint.read(checkpoint_path)
    restored = restore(checkpoint)
    student = restored.module.student.eval()
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if restored.loaded.recipe.task == "draft_distill":
            from distill.export.eagle import export_eagle

            return export_eagle(restored, folder)
        if hasattr(student, "save_pretrained"):
            from distill.export.hf_folder import export_hf

            return export_hf(restored, folder)
        from distill.export.weights_file import export_weights

        return export_weights(restored, folder)
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for child in folder.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
