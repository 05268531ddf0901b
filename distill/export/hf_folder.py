"""A Hugging Face student as a `save_pretrained` folder with its tokenizer and where generation stops, in the dtype
asked for, verified by loading it back as a user does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.engine.run_student import RunStudent
from distill.errors import DistillError
from distill.export import Exported, relative_tolerance, within_tolerance
from distill.export.generation import end_of_turn, set_stop_ids
from distill.export.probes import probe_inputs, probe_texts
from distill.export.tokenizer_files import hf_tokenizer
from distill.models.lora import merge_lora, parameter_counts

FLOAT32_TOLERANCE = 1e-4  # of the largest logit: float32 weights written and read back, merged adapters


def export_hf(run: RunStudent, folder: Path, dtype: torch.dtype) -> Exported:
    if run.tokenizer is None:
        raise DistillError("export: a language-model student is exported with its tokenizer, and the run has none")
    student = run.model
    trainable, _ = parameter_counts(student)
    tokenizer = hf_tokenizer(run.tokenizer, run.chat_template)
    inputs = probe_inputs(run.tokenizer, tokenizer, image_tokens(student))
    with torch.no_grad():
        reference = student(**inputs).logits.float()
    quiet_transformers()
    merged = merge_lora(student).to(dtype)
    turn = end_of_turn(tokenizer)
    eos = set_stop_ids(merged, run.tokenizer, turn)
    merged.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    reloaded = load_exported(folder)
    with torch.no_grad():
        reread = reloaded(**inputs).logits
    difference, tolerance = within_tolerance(
        reference, reread, relative_tolerance(dtype, FLOAT32_TOLERANCE), "model's logits"
    )
    check_tokenizer(folder, run)
    return Exported(
        folder=folder,
        kind="hf",
        files=sorted(p.name for p in folder.iterdir()),
        max_difference=difference,
        tolerance=tolerance,
        trainable=trainable,
        parameters=sum(p.numel() for p in reloaded.parameters()),
        dtype=dtype,
        details={"eos_token_id": eos, "stop_string": turn.text},
    )


def image_tokens(model: Any) -> set[int]:
    """A VLM's image token ids (LLaVA names it either way), which text-only probes must not hold."""
    config = getattr(model, "config", None)
    return {getattr(config, key) for key in ("image_token_id", "image_token_index") if getattr(config, key, None)}


def quiet_transformers() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one line per file written or read is noise here


def load_exported(folder: Path) -> Any:
    """The exported model as a user loads it: in the dtype its config names with transformers 5 (earlier versions
    load float32 unless told otherwise, which the tolerance covers too)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(str(folder))
    auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM
    return auto.from_pretrained(str(folder)).eval()


def check_tokenizer(folder: Path, run: RunStudent) -> None:
    """The exported tokenizer encodes as the run's did, and renders conversations with the run's chat template."""
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(str(folder))
    for text in probe_texts():
        if run.tokenizer.encode(text) != exported(text, add_special_tokens=False)["input_ids"]:
            raise DistillError("export: the exported tokenizer encodes text differently from the run's")
    if run.chat_template is not None or getattr(exported, "chat_template", None):
        from distill.data.chat import ChatRenderer

        messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
        renderer = ChatRenderer(run.tokenizer, run.chat_template, "the run's tokenizer")
        if exported.apply_chat_template(messages, tokenize=False) != renderer.render(messages):
            raise DistillError("export: the exported chat template renders conversations differently")
