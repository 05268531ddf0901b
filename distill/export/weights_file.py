"""An image student as `model.safetensors` (the model's own parameter names: timm, torchvision and the CIFAR zoo
load it as their state dict) and `distill_model.json` (its architecture and arguments), verified by rebuilding it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from distill.export import Exported, within_tolerance
from distill.models import create_model
from distill.models.lora import has_lora, merge_lora, parameter_counts

WEIGHTS, ARCHITECTURE = "model.safetensors", "distill_model.json"
RELATIVE_TOLERANCE = 1e-5


def export_weights(restored: Any, folder: Path) -> Exported:
    from safetensors.torch import load_file, save_file

    module, data, loaded = restored.module, restored.data, restored.loaded
    student = module.student.eval()
    trainable, _ = parameter_counts(student)
    if has_lora(student):
        student = merge_lora(student)
    images = sample_images(data)
    with torch.no_grad():
        reference = student(images).float()
    state = {k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    spec = {k: v for k, v in loaded.recipe.student.items() if k != "lora"}
    architecture = {"model": spec, "data_args": data.model_args("student")}
    (folder / ARCHITECTURE).write_text(json.dumps(architecture, indent=2))

    # read back as a user would: the architecture from its file, the weights into it
    described = json.loads((folder / ARCHITECTURE).read_text())
    model_args = {k: v for k, v in described["model"].items() if k != "name"}
    rebuilt = create_model(described["model"]["name"], **described["data_args"], **model_args)
    rebuilt.load_state_dict(load_file(str(folder / WEIGHTS)))
    with torch.no_grad():
        reread = rebuilt.eval()(images)
    difference, tolerance = within_tolerance(reference, reread, RELATIVE_TOLERANCE, "model's outputs")
    return Exported(
        folder=folder,
        kind="safetensors",
        files=sorted(p.name for p in folder.iterdir()),
        max_difference=difference,
        tolerance=tolerance,
        trainable=trainable,
        parameters=sum(p.numel() for p in student.parameters()),
    )


def sample_images(data: Any, count: int = 8) -> torch.Tensor:
    """The first validation images, as the student reads them."""
    dataset = data.val_set
    images = [dataset[i][0] for i in range(min(count, len(dataset)))]
    batch = torch.stack(images)
    return batch.to(memory_format=torch.channels_last) if getattr(data, "channels_last", False) else batch
