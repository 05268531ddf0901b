"""Tiny local stand-ins for a LLaVA-1.5 checkpoint, made offline: a processor folder, images and a JSONL file, and a
LlavaForConditionalGeneration whose vocabulary and image token match the processor's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WORDS = "USER : ASSISTANT what is in this picture ? describe it a red blue green square circle in the corner ."
SPECIALS = ("<unk>", "<pad>", "<s>", "</s>", "<image>")  # ids 0..4: unk, pad, bos, eos, image
IMAGE_SIZE, PATCH_SIZE = 16, 8  # (16 / 8) ** 2 = 4 image tokens


def tiny_llava_processor(folder: Path) -> Path:
    """Save a LlavaProcessor (a word-level tokenizer that adds bos, a 16x16 CLIP image processor) to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([WORDS], trainer=trainers.WordLevelTrainer(special_tokens=list(SPECIALS)))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",  # drops CLS ...
        num_additional_image_tokens=1,  # ... which the vision tower adds: LLaVA-1.5's settings
    )
    processor.save_pretrained(folder)
    return folder


def write_image_text_jsonl(folder: Path, rows: list[tuple[str, str]], name: str = "data.jsonl") -> Path:
    """One random RGB PNG (of varied sizes) per (prompt, response) row under `folder/images`, and the JSONL file."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, (prompt, response) in enumerate(rows):
        pixels = rng.integers(0, 256, size=(12 + i % 3 * 10, 20 + i % 2 * 7, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png", "prompt": prompt, "response": response}))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_llava(vocab_size: int = 64, image_token_id: int = 4, seed: int = 0) -> torch.nn.Module:
    """A randomly initialized LlavaForConditionalGeneration for 16x16 images in patches of 8 (4 image tokens)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id)
    return LlavaForConditionalGeneration(config).eval()
