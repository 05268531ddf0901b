"""Conversations in the `messages` format, rendered with a chat template and labelled on the assistant's turns only.

A conversation is rendered to text by the tokenizer's own chat template (a Hugging Face tokenizer's
`apply_chat_template`), or by a Jinja template the recipe gives (`data.chat_template`; `chatml` names a built-in
one) for tokenizers without one. Which characters of the rendered text belong to an assistant turn is found by
rendering prefixes of the conversation: the turn is what rendering it adds after the prompt that asks for it
(`add_generation_prompt`), its end-of-turn markup included, so that the model learns to stop. No separator of any
model family is assumed. A template that renders earlier turns differently once later ones follow (some drop
earlier reasoning) falls back to the turn's content where it appears in the text (a turn it drops is not
trained). Tokens are then labelled from the tokenizer's character offsets: a token is trained when it starts inside
an assistant span.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from distill.data.conversation import Conversation, Message
from distill.data.text_rows import IGNORE, TokenRow, cut_row
from distill.errors import DistillError

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BUILT_IN_TEMPLATES = {"chatml": CHATML}
Span = tuple[int, int]


class OffsetTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def encode_offsets(self, text: str) -> tuple[list[int], list[Span]]: ...


class ChatRenderer:
    """Renders conversations for one tokenizer: with `template` (a Jinja text, or a built-in name) when given, else
    with the tokenizer's own chat template; `what` names the tokenizer in errors."""

    def __init__(self, tokenizer: Any, template: str | None, what: str) -> None:
        self.what = what
        own = getattr(getattr(tokenizer, "tokenizer", None), "chat_template", None)
        self.hf_tokenizer = tokenizer.tokenizer if template is None and own else None
        if template is None and self.hf_tokenizer is None:
            raise DistillError(
                f"data: conversations need a chat template and {what} has none; set data.chat_template "
                f"({', '.join(BUILT_IN_TEMPLATES)} or a Jinja template)"
            )
        self.jinja = _compile(BUILT_IN_TEMPLATES.get(template, template)) if template is not None else None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        try:
            if self.hf_tokenizer is not None:
                return self.hf_tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=add_generation_prompt
                )
            assert self.jinja is not None
            return self.jinja.render(messages=messages, add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # the template's own errors (raise_exception, bad roles...)
            raise DistillError(f"data: the chat template of {self.what} failed: {' '.join(str(exc).split())}") from None

    def assistant_spans(self, conversation: Conversation) -> tuple[str, list[Span]]:
        """The rendered conversation and the character spans of its assistant turns."""
        full = self.render(conversation.as_dicts())
        spans: list[Span] = []
        for index, message in enumerate(conversation.messages):
            if message.role != "assistant":
                continue
            asked = self.render(conversation.as_dicts(index), add_generation_prompt=True)
            through = self.render(conversation.as_dicts(index + 1))
            start = spans[-1][1] if spans else 0
            if through.startswith(asked) and full.startswith(through) and len(asked) >= start:
                spans.append((len(asked), len(through)))
                continue
            found = full.find(message.content, start)  # the template rewrites earlier turns: find the content
            if found >= 0:  # not there: the template dropped it, and there is nothing of it to train on
                spans.append((found, found + len(message.content)))
        if not spans:
            raise DistillError(f"data: the chat template of {self.what} renders no assistant turn of a conversation")
        return full, spans


def end_of_turn(renderer: ChatRenderer, tokenizer: OffsetTokenizer) -> list[int]:
    """The tokens that end an assistant turn in `renderer`'s template, as `tokenizer` writes them; [] when the
    template adds nothing there. Generation stops at them: a chat model ends its answer with them, not necessarily
    with the tokenizer's eos."""
    markup = end_of_turn_markup(renderer.render)
    return tokenizer.encode(markup) if markup else []


def end_of_turn_markup(render: Callable[[list[dict[str, str]], bool], str]) -> str:
    """The markup that ends an assistant turn (`<|im_end|>` in ChatML, `<|eot_id|>` in Llama 3's template), read from
    the template itself: what rendering a turn (`render(messages, add_generation_prompt)`) adds after its content,
    without the whitespace around it; '' when it adds nothing there, or renders the answer other than as given."""
    probe = Conversation((Message("user", "?"), Message("assistant", "X")))
    asked = render(probe.as_dicts(1), True)
    through = render(probe.as_dicts(), False)
    if not through.startswith(asked + "X"):
        return ""
    return through[len(asked) + 1 :].strip()


def _compile(template: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    try:
        return environment.from_string(template)
    except TemplateError as exc:
        raise DistillError(f"data.chat_template is not a valid Jinja template: {exc}") from None


def encode_conversation(
    conversation: Conversation,
    tokenizer: OffsetTokenizer,
    renderer: ChatRenderer,
    max_len: int | None,
    last_turn_only: bool = False,
) -> TokenRow:
    """The conversation's tokens, labelled on its assistant turns (IGNORE elsewhere; with `last_turn_only`, on its
    final answer alone), cut to `max_len` tokens. The rendered text carries whatever bos the template writes, so
    none is added."""
    text, spans = renderer.assistant_spans(conversation)
    if last_turn_only:
        spans = spans[-1:]
    ids, offsets = tokenizer.encode_offsets(text)
    labels = [token if _inside(start, spans) else IGNORE for token, (start, _) in zip(ids, offsets, strict=True)]
    return cut_row(ids, labels, max_len)


def _inside(position: int, spans: Sequence[Span]) -> bool:
    return any(start <= position < end for start, end in spans)
