"""A Hugging Face student as a `save_pretrained` folder with its tokenizer, verified by loading it back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.errors import DistillError
from distill.export import Exported, within_tolerance
from distill.export.tokenizer_files import save_tokenizer
from distill.models.lora import merge_lora, parameter_counts
from distill.models.vlm import VISION_INPUTS

RELATIVE_TOLERANCE = 1e-4  # of the largest logit: float32 weights written and read back, merged adapters


def export_hf(restored: Any, folder: Path) -> Exported:
    module, data = restored.module, restored.data
    student = module.student.eval()
    trainable, _ = parameter_counts(student)
    inputs = sample_inputs(data)
    with torch.no_grad():
        reference = student(**inputs).logits.float()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one line per file written or read is noise here
    merged = merge_lora(student)
    merged.save_pretrained(str(folder), safe_serialization=True)
    chat_template = getattr(data, "chat_template", None)
    save_tokenizer(data.tokenizer, chat_template, folder)
    reloaded = load_exported(folder)
    with torch.no_grad():
        reread = reloaded(**inputs).logits
    difference, tolerance = within_tolerance(reference, reread, RELATIVE_TOLERANCE, "model's logits")
    check_tokenizer(folder, data)
    return Exported(
        folder=folder,
        kind="hf",
        files=sorted(p.name for p in folder.iterdir()),
        max_difference=difference,
        tolerance=tolerance,
        trainable=trainable,
        parameters=sum(p.numel() for p in reloaded.parameters()),
    )


def sample_inputs(data: Any, rows: int = 2) -> dict[str, torch.Tensor]:
    """The first validation rows as model inputs (ids, mask and any image inputs)."""
    dataset = data.val_set
    items = [dataset[i] for i in range(min(rows, len(dataset)))]
    keys = ("input_ids", "attention_mask", *VISION_INPUTS)
    return {key: torch.stack([item[key] for item in items]) for key in keys if key in items[0]}


def load_exported(folder: Path) -> Any:
    """The exported model as a user loads it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(str(folder))
    auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM
    return auto.from_pretrained(str(folder)).eval()


def check_tokenizer(folder: Path, data: Any) -> None:
    """The exported tokenizer encodes the run's validation text as the run did, and renders its chat template."""
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(str(folder))
    text = data.tokenizer.decode(data.val_set[0]["input_ids"].tolist())
    ours, theirs = data.tokenizer.encode(text), exported(text, add_special_tokens=False)["input_ids"]
    if ours != theirs:
        raise DistillError("export: the exported tokenizer encodes the validation text differently from the run's")
    if getattr(data, "chat_template", None) is not None or getattr(exported, "chat_template", None):
        from distill.data.chat import ChatRenderer

        messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
        renderer = ChatRenderer(data.tokenizer, getattr(data, "chat_template", None), "the run's tokenizer")
        if exported.apply_chat_template(messages, tokenize=False) != renderer.render(messages):
            raise DistillError("export: the exported chat template renders conversations differently")
