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
    it `needs_answer`) with no assistant turn to train on, is a one-line error naming `where`."""
    if not isinstance(value, list) or not value:
        raise DistillError(f"{where}: messages must be a non-empty list of {{'role', 'content'}}")
    messages = []
    for number, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DistillError(f"{where}: message {number} has no text 'content'")
        if message.get("role") not in ROLES:
            raise DistillError(f"{where}: message {number} has role {message.get('role')!r}; expected one of {ROLES}")
        messages.append(Message(message["role"], message["content"]))
    if needs_answer and not any(m.role == "assistant" and m.content.strip() for m in messages):
        raise DistillError(f"{where}: the conversation has no assistant turn to train on")
    return Conversation(tuple(messages))
