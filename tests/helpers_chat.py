"""Tiny Hugging Face tokenizers with chat templates of their own, made offline: a byte-level BPE trained on a few
sentences, saved as a tokenizer folder that `hf:<folder>` loads. Two template styles, so that a teacher and a student
can render the same conversation differently."""

from __future__ import annotations

import json
from pathlib import Path

# ChatML-style turns, as Qwen's templates write them
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# header-style turns with an eos after each, as Llama 3's templates write them
HEADER_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# a template that drops the content of earlier assistant turns once a later turn follows (as reasoning models do)
FORGETFUL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}(earlier answer){% else %}{{ m['content'] }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "header": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}
CORPUS = ["what is a list? a list holds items in order.", "how do i sort? call sorted on it."] * 20


def chat_tokenizer(folder: Path, style: str = "chatml", vocab_size: int = 320) -> str:
    """Save a fast tokenizer with the chat template of `style` ('chatml', 'header' or 'forgetful') to `folder`;
    returns its `hf:` spec."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS["header" if style == "header" else "chatml"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    template = {"chatml": CHATML_TEMPLATE, "header": HEADER_TEMPLATE, "forgetful": FORGETFUL_TEMPLATE}[style]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=specials,
    )
    tokenizer.chat_template = template
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return f"hf:{folder}"


def conversations_file(path: Path, conversations: list[list[tuple[str, str]]]) -> Path:
    """A JSONL file of `{"messages": [...]}` lines from `(role, content)` turns."""
    lines = [json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) for turns in conversations]
    path.write_text("\n".join(lines) + "\n")
    return path
