"""Conversations in the `messages` format (`[{"role": ..., "content": ...}, ...]`), as read from a data source;
`distill.data.chat` renders them with a chat template and labels the assistant's turns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill.errors import DistillError

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    """Turns of a chat; the assistant's are trained on."""

    messages: tuple[Message, ...]

    def as_dicts(self, count: int | None = None) -> list[dict[str, str]]:
        """The first `count` messages (all by default) as chat templates read them."""
        return [{"role": m.role, "content": m.content} for m in self.messages[:count]]

    def texts(self) -> list[str]:
        return [m.content for m in self.messages]


def parse_conversation(value: Any, where: str, needs_answer: bool = True) -> Conversation:
    """A `messages` value (a list of `{"role", "content"}`) as a Conversation; one with malformed messages, or (when
    it `needs_answer`) with no assistant turn to train on, is a one-line error naming `where`.

    A content may be a list of parts, as OpenAI's format and multimodal datasets write it: its text parts
    (`{"type": "text", "text": ...}`) are joined; any other part (an image, audio) is refused, since text models
    cannot read it."""
    if not isinstance(value, list) or not value:
        raise DistillError(f"{where}: messages must be a non-empty list of {{'role', 'content'}}")
    messages = []
    for number, message in enumerate(value):
        if not isinstance(message, dict):
            raise DistillError(f"{where}: message {number} has no text 'content'")
        if message.get("role") not in ROLES:
            raise DistillError(f"{where}: message {number} has role {message.get('role')!r}; expected one of {ROLES}")
        messages.append(Message(message["role"], message_text(message.get("content"), f"{where}: message {number}")))
    if needs_answer and not any(m.role == "assistant" and m.content.strip() for m in messages):
        raise DistillError(f"{where}: the conversation has no assistant turn to train on")
    return Conversation(tuple(messages))


def message_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or a list of text parts joined as chat templates join them (with
    nothing between); a part of another type is a one-line error naming `where`."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise DistillError(f"{where} has no text 'content'")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text" or not isinstance(part.get("text"), str):
            raise DistillError(
                f"{where}: content part {index} is {kind!r}, not text ({{'type': 'text', 'text': ...}}); text models "
                "read text parts only"
            )
        texts.append(part["text"])
    return "".join(texts)
