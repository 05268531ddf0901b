"""A speculative-decoding draft in the EAGLE checkpoint layout: `config.json` (the target's configuration with one
decoder layer, the draft's MLP width and whether the fusion has a bias) and `model.safetensors` with EAGLE's names:
`fc` (the fusion of `[embedding of x_{t+1}, feature f_t]`), `layers.0.self_attn.{q,k,v,o}_proj`,
`layers.0.mlp.{gate,up,down}_proj` and `layers.0.post_attention_layernorm`. The layer has no input norm (EAGLE's
first layer reads the fusion directly), and the embeddings and LM head are the target's, so neither is written.
This is the layout vLLM's and SGLang's EAGLE loaders read; it is checked here by loading it back into a draft and
decoding held-out prompts with the target, which must be lossless with the run's accepted length.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.export import Exported
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


def eagle_state(draft: EagleDraft) -> dict[str, torch.Tensor]:
    """The draft's weights under EAGLE's names."""
    state = {"fc.weight": draft.fuse.weight}
    if draft.fuse.bias is not None:
        state["fc.bias"] = draft.fuse.bias
    for ours, theirs in LAYER_NAMES.items():
        state[f"layers.0.{theirs}.weight"] = getattr(draft.layer, ours).weight
    return {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}


def eagle_config(draft: EagleDraft, target: nn.Module) -> dict[str, Any]:
    config = target.config.to_dict()
    config.pop("text_config", None)
    config.update(
        num_hidden_layers=1,
        intermediate_size=draft.shape.intermediate_size,
        bias=draft.fuse.bias is not None,
        architectures=["LlamaForCausalLM"],
        torch_dtype="float32",
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


def export_eagle(restored: Any, folder: Path) -> Exported:
    from safetensors.torch import save_file

    module = restored.module
    draft: EagleDraft = module.student.eval()
    if draft.shape.input_norm:
        raise DistillError(
            "export: the EAGLE layout has no norm before the draft's layer, and this draft has one; train it with "
            "student.input_norm=false"
        )
    if draft.image_token_id is not None:
        raise DistillError("export: the EAGLE layout here is for text targets; this draft serves a VLM")
    save_file(eagle_state(draft), str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(eagle_config(draft, module.teacher), indent=2, default=str))

    from distill.generate.speculative import evaluate_speculative

    prompts = module.held_out_prompts(restored.data)
    if not prompts:
        raise DistillError("export: no held-out prompts to check the exported draft on (speculative.prompts: 0)")
    before = evaluate_speculative(module.teacher, draft, prompts, **module.decoding)
    after = evaluate_speculative(module.teacher, load_eagle(folder), prompts, **module.decoding)
    if after.lossless < 1.0 or after.accepted_length != before.accepted_length:
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
        tolerance=0.0,
        trainable=sum(p.numel() for p in draft.parameters()),
        parameters=sum(p.numel() for p in draft.parameters()),
        details={"accepted_length": after.accepted_length, "lossless": after.lossless, "shape": shape},
    )
