"""An image student as `model.safetensors` (the model's own parameter names: timm, torchvision and the CIFAR zoo
load it as their state dict) and `distill_model.json` (its architecture and arguments), verified by rebuilding it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distill.engine.run_student import RunStudent
from distill.export import Exported, relative_tolerance, within_tolerance
from distill.export.probes import probe_images
from distill.models import create_model
from distill.models.lora import has_lora, merge_lora, parameter_counts

WEIGHTS, ARCHITECTURE = "model.safetensors", "distill_model.json"
FLOAT32_TOLERANCE = 1e-5


def export_weights(run: RunStudent, folder: Path, dtype: torch.dtype) -> Exported:
    from safetensors.torch import load_file, save_file

    student = run.model
    trainable, _ = parameter_counts(student)
    if has_lora(student):
        student = merge_lora(student)
    images = probe_images(run.record)
    with torch.no_grad():
        reference = student(images).float()
    state = {k: cast(v, dtype) for k, v in student.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    spec = {k: v for k, v in run.loaded.recipe.student.items() if k != "lora"}
    architecture = {"model": spec, "data_args": run.record["model_args"]["student"]}
    (folder / ARCHITECTURE).write_text(json.dumps(architecture, indent=2))

    # read back as a user would: the architecture from its file, the weights into it, in the dtype written
    described = json.loads((folder / ARCHITECTURE).read_text())
    model_args = {k: v for k, v in described["model"].items() if k != "name"}
    rebuilt = create_model(described["model"]["name"], **described["data_args"], **model_args)
    rebuilt.load_state_dict(load_file(str(folder / WEIGHTS)))
    with torch.no_grad():
        reread = rebuilt.to(dtype).eval()(images.to(dtype))
    difference, tolerance = within_tolerance(
        reference, reread, relative_tolerance(dtype, FLOAT32_TOLERANCE), "model's outputs"
    )
    return Exported(
        folder=folder,
        kind="safetensors",
        files=sorted(p.name for p in folder.iterdir()),
        max_difference=difference,
        tolerance=tolerance,
        trainable=trainable,
        parameters=sum(p.numel() for p in student.parameters()),
        dtype=dtype,
    )


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A weight in the export's dtype; integer buffers (BatchNorm's batch count) stay as they are."""
    tensor = tensor.detach().cpu()
    return (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
