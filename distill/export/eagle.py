"""A speculative-decoding draft in the EAGLE checkpoint layout: `config.json` (the target's configuration with one
decoder layer, the draft's MLP width and whether the fusion has a bias) and `model.safetensors` with EAGLE's names:
`fc` (the fusion of `[embedding of x_{t+1}, feature f_t]`), `layers.0.self_attn.{q,k,v,o}_proj`,
`layers.0.mlp.{gate,up,down}_proj` and `layers.0.post_attention_layernorm`. The layer has no input norm (EAGLE's
first layer reads the fusion directly), and the embeddings and LM head are the target's, so neither is written.
This is the layout vLLM's and SGLang's EAGLE loaders read; it is checked here by loading it back into a draft and
decoding prompts made from the run's tokenizer with the target, which must be lossless with the run's accepted
length.

Unlike other students, a draft is exported with its target: its sizes, and the rest of `config.json`, are the
target's, and only decoding with the target shows the draft works. The target is rebuilt from the weights the draft
learned from (`engine.run_student.restore_target`); when they are gone the export says so. The data is not read.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.engine.run_student import RunStudent
from distill.errors import DistillError
from distill.export import Exported, relative_tolerance
from distill.export.probes import probe_prompts
from distill.models.draft import DraftShape, EagleDraft

CONFIG, WEIGHTS = "config.json", "model.safetensors"
LAYER_NAMES = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
}


def eagle_state(draft: EagleDraft, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The draft's weights under EAGLE's names, in `dtype`."""
    state = {"fc.weight": draft.fuse.weight}
    if draft.fuse.bias is not None:
        state["fc.bias"] = draft.fuse.bias
    for ours, theirs in LAYER_NAMES.items():
        state[f"layers.0.{theirs}.weight"] = getattr(draft.layer, ours).weight
    return {name: tensor.detach().to(dtype).contiguous().cpu() for name, tensor in state.items()}


def eagle_config(draft: EagleDraft, target: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    config = target.config.to_dict()
    config.pop("text_config", None)
    config.update(
        num_hidden_layers=1,
        intermediate_size=draft.shape.intermediate_size,
        bias=draft.fuse.bias is not None,
        architectures=["LlamaForCausalLM"],
        torch_dtype=str(dtype).removeprefix("torch."),
    )
    return config


def load_eagle(folder: Path) -> EagleDraft:
    """A draft read from an EAGLE-layout folder (`config.json` and `model.safetensors`), as a serving engine reads
    it: sizes from the configuration, weights by EAGLE's names, no input norm."""
    from safetensors.torch import load_file

    config = json.loads((folder / CONFIG).read_text())
    heads = config["num_attention_heads"]
    shape = DraftShape(
        hidden_size=config["hidden_size"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        intermediate_size=config["intermediate_size"],
        rope_theta=config.get("rope_theta", 10000.0),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        input_norm=False,
        fuse_bias=bool(config.get("bias", False)),
    )
    draft = EagleDraft(shape)
    weights = load_file(str(folder / WEIGHTS))
    mine = {"fuse.weight": weights.pop("fc.weight")}
    if shape.fuse_bias:
        mine["fuse.bias"] = weights.pop("fc.bias")
    for ours, theirs in LAYER_NAMES.items():
        mine[f"layer.{ours}.weight"] = weights.pop(f"layers.0.{theirs}.weight")
    draft.load_state_dict(mine)
    return draft.eval()


def export_eagle(run: RunStudent, folder: Path, dtype: torch.dtype) -> Exported:
    from safetensors.torch import save_file

    from distill.generate.speculative import evaluate_speculative

    draft: EagleDraft = run.model
    target = run.target
    if draft.compressor is not None:  # first: no setting of the draft makes it fit
        settings = draft.compressor.settings
        raise DistillError(
            f"export: this draft reads images through a visual compressor ({settings.mode}: "
            f"{', '.join(settings.primitives)}), which serving engines' EAGLE readers do not have; the EAGLE layout "
            "holds the fusion and the layer only"
        )
    if draft.shape.input_norm:
        raise DistillError(
            "export: the EAGLE layout has no norm before the draft's layer, and this draft has one; train it with "
            "student.input_norm=false"
        )
    if draft.image_token_id is not None:
        raise DistillError("export: the EAGLE layout here is for text targets; this draft serves a VLM")
    save_file(eagle_state(draft, dtype), str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(eagle_config(draft, target, dtype), indent=2, default=str))

    settings = run.loaded.settings
    decoding = {
        "depth": settings.depth,
        "top_k": settings.top_k,
        "total_tokens": settings.total_tokens,
        "max_new_tokens": settings.max_new_tokens,
        "eos_id": run.tokenizer.eos_id,
    }
    prompts = probe_prompts(run.tokenizer, max(settings.prompts, 1), settings.prompt_tokens)
    before = evaluate_speculative(target, draft, prompts, **decoding)
    after = evaluate_speculative(target, load_eagle(folder), prompts, **decoding)
    # Greedy verification keeps decoding lossless whatever the draft; rounded weights may only change what it drafts
    allowed = 0.0 if dtype == torch.float32 else relative_tolerance(dtype, 0.0) * before.accepted_length
    if after.lossless < 1.0 or abs(after.accepted_length - before.accepted_length) > allowed:
        raise DistillError(
            f"export: the reloaded draft decodes with accepted length {after.accepted_length:.3f} (lossless "
            f"{after.lossless:.0%}); the run's draft had {before.accepted_length:.3f}"
        )
    shape = dataclasses.asdict(draft.shape)
    return Exported(
        folder=folder,
        kind="eagle",
        files=sorted(p.name for p in folder.iterdir()),
        max_difference=abs(after.accepted_length - before.accepted_length),
        tolerance=allowed,
        trainable=sum(p.numel() for p in draft.parameters()),
        parameters=sum(p.numel() for p in draft.parameters()),
        dtype=dtype,
        details={"accepted_length": after.accepted_length, "lossless": after.lossless, "shape": shape},
    )
