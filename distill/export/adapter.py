"""A LoRA run's adapters alone, as a PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`, and
the run's tokenizer): what `peft.PeftModel.from_pretrained(base, folder)` loads, and what vLLM (`--enable-lora
--lora-modules name=folder`) and SGLang (`--lora-paths name=folder`) serve on top of the base model.

The base is the one a server loads: `base_model_name_or_path` is the `hf:` student's Hub name (with its revision), or
the absolute path of its local folder. So only a student loaded by name whose base weights are that model's can be
exported this way; any other LoRA student is exported merged. The folder is checked as a user reads it: the base
loaded by that name, the adapters put on it by PEFT, and the logits compared with the run's student.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from distill.engine.run_student import RunStudent
from distill.errors import DistillError
from distill.export import Exported, relative_tolerance, within_tolerance
from distill.export.generation import end_of_turn
from distill.export.hf_folder import image_tokens, quiet_transformers
from distill.export.probes import probe_inputs
from distill.export.tokenizer_files import hf_tokenizer
from distill.models.lora import parameter_counts

WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's names: the adapter's path in the PeftModel that wraps the base
FLOAT32_TOLERANCE = 1e-4


def check_adapter_run(recipe: dict[str, Any]) -> None:
    """Refuse, before anything is built, a run whose student has no adapters, or whose base a server cannot load."""
    student = recipe.get("student") or {}
    name = str(student.get("name", ""))
    if not student.get("lora"):
        raise DistillError(
            f"export: --adapter-only writes a LoRA student's adapters, and this run's student ({name}) has none "
            "(no student.lora): export it whole, without --adapter-only"
        )
    if not name.startswith("hf:"):
        raise DistillError(
            f"export: --adapter-only needs a student a server can load as the base (student.name hf:<model>); "
            f"this run's {name} exists only in the run: export it merged, without --adapter-only"
        )
    if recipe.get("init") is not None:
        raise DistillError(
            f"export: --adapter-only: the student's base weights came from init ({recipe['init']}), not from {name}, "
            "which a server would load under the adapters: export it merged, without --adapter-only"
        )


def served_base(student: dict[str, Any]) -> str:
    """What a server loads as the base: the Hub name, or a local folder's absolute path."""
    name = str(student["name"]).removeprefix("hf:")
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name


def export_adapter(run: RunStudent, folder: Path, dtype: torch.dtype) -> Exported:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    student = run.model
    trainable, _ = parameter_counts(student)
    tokenizer = hf_tokenizer(run.tokenizer, run.chat_template)
    inputs = probe_inputs(run.tokenizer, tokenizer, image_tokens(student))
    with torch.no_grad():
        reference = student(**inputs).logits.float()
    quiet_transformers()
    adapters = get_peft_model_state_dict(student)
    state = {f"{PREFIX}{k}": v.detach().to(dtype).contiguous().cpu() for k, v in adapters.items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    config = adapter_config(student, run)
    config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))  # the run's chat template travels with the adapters

    peft_model = load_adapter(config.base_model_name_or_path, config.revision, folder, dtype)
    loaded = get_peft_model_state_dict(peft_model)  # a PeftModel's names carry the prefix already
    if loaded.keys() != state.keys() or any(not torch.equal(loaded[k].to(dtype), state[k]) for k in state):
        raise DistillError("export: PEFT did not load every adapter weight written (names or values differ)")
    with torch.no_grad():
        reread = peft_model(**inputs).logits
    difference, tolerance = within_tolerance(
        reference, reread, relative_tolerance(dtype, FLOAT32_TOLERANCE), "base model with the adapters' logits"
    )
    return Exported(
        folder=folder,
        kind="adapter",
        files=sorted(p.name for p in folder.iterdir()),
        max_difference=difference,
        tolerance=tolerance,
        trainable=trainable,
        parameters=sum(v.numel() for v in state.values()),
        dtype=dtype,
        details={"base": config.base_model_name_or_path, "end_of_turn": end_of_turn(tokenizer).ids},
    )


def adapter_config(student: torch.nn.Module, run: RunStudent) -> Any:
    """The LoRA configuration the adapters were injected with, for a causal LM on the served base."""
    config = copy.deepcopy(student.peft_config["default"])
    spec = run.loaded.recipe.student
    config.base_model_name_or_path = served_base(spec)
    config.revision = spec.get("revision")
    config.task_type = "CAUSAL_LM"
    config.inference_mode = True
    return config


def load_adapter(base: str, revision: str | None, folder: Path, dtype: torch.dtype) -> Any:
    """The folder as a user loads it: the base by its name, in the export's dtype, the adapters on it by PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs = {"revision": revision} if revision else {}
    try:
        # cast after loading rather than through from_pretrained's dtype argument, which transformers 4 names otherwise
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs).to(dtype)
    except (OSError, ValueError) as exc:  # the run's student was built from it a moment ago: rare, but one line
        raise DistillError(f"export: cannot load the base model {base} to check the adapters: {exc}") from None
    return PeftModel.from_pretrained(model, str(folder)).eval()
