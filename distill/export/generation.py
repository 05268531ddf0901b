"""Where generation stops, written into the exported `config.json` and `generation_config.json`: the run's
tokenizer's eos, bos and pad ids (a config-built model otherwise keeps its library's defaults, Llama's 1 and 2,
which mean bytes 1 and 2 to a `bytes` tokenizer), and the chat template's end-of-turn token beside eos.

vLLM and SGLang add every id of `generation_config.json`'s `eos_token_id` to a request's stop tokens, and
transformers' `generate` stops at any of them: a chat model then stops at the end of its turn (`<|im_end|>` for
ChatML, `<|eot_id|>` for Llama 3) rather than running on into a new turn until the tokenizer's eos.

The end of a turn is read from the template itself, as the data code finds assistant spans: render a conversation
up to an assistant message and through it, and take the markup that follows the message. When a single special
token starts it, that token ends turns; when the tokenizer spells the markup in several ordinary tokens (the
`bytes` and `bpe:` tokenizers with `chatml`), no id can, and the markup is reported as a stop string to pass with
requests (transformers refuses `stop_strings` in a generation config when `generate` is called without the
tokenizer, so it is not written there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from distill.data.chat import end_of_turn_markup
from distill.data.tokenizers import Tokenizer


@dataclass
class TurnEnd:
    """How the chat template ends an assistant's turn."""

    ids: list[int] = field(default_factory=list)  # a special token that ends it (empty: none, or no template)
    text: str | None = None  # the markup, when several ordinary tokens spell it: a stop string


def end_of_turn(tokenizer: Any) -> TurnEnd:
    """The end of an assistant's turn in `tokenizer`'s chat template (a transformers tokenizer), found as the data
    code finds it (`end_of_turn_markup`)."""
    if not getattr(tokenizer, "chat_template", None):
        return TurnEnd()

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    try:
        markup = end_of_turn_markup(render)
    except Exception:  # a template with rules of its own: no end of turn can be read from it
        return TurnEnd()
    if not markup:
        return TurnEnd()
    first = tokenizer(markup, add_special_tokens=False)["input_ids"][:1]
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    if first and first[0] in special and markup.startswith(tokenizer.convert_ids_to_tokens(first[0])):
        return TurnEnd(ids=first)
    return TurnEnd(text=markup.split()[0])  # '<|im_end|>' of '<|im_end|>\n': what a stop string needs


def set_stop_ids(model: nn.Module, tokenizer: Tokenizer, turn: TurnEnd) -> list[int]:
    """Write the run's special ids into `model`'s config and generation config, with the end-of-turn token beside
    eos; returns the generation config's eos ids. Ids the generation config already lists stay when it was read
    from a pretrained model's `generation_config.json`, not derived from its config."""
    eos = [tokenizer.eos_id, *turn.ids]
    generation = model.generation_config
    if not getattr(generation, "_from_model_config", False):
        kept = generation.eos_token_id
        eos += [kept] if isinstance(kept, int) else list(kept or [])
    eos = list(dict.fromkeys(eos))  # in order, once each
    for config in (model.config, generation):
        config.bos_token_id = tokenizer.bos_id
        config.pad_token_id = tokenizer.pad_id
    model.config.eos_token_id = tokenizer.eos_id
    generation.eos_token_id = eos if len(eos) > 1 else eos[0]
    return eos
