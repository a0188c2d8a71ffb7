"""What a conversation store holds and hands out: immutable records, and the pure functions that
build them (a title from the first message, a finished answer from a stream's events).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeAlias

from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.requests import Message, Role

MessageStatus: TypeAlias = Literal["streaming", "complete", "cancelled", "error"]
AnswerStatus: TypeAlias = Literal["complete", "cancelled", "error"]
TITLE_LENGTH = 60


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored turn. User messages are ``complete`` at once; an answer is ``streaming`` until its
    generation ends, then ``complete``, ``cancelled`` (with the partial text) or ``error`` (with code)."""

    id: str
    role: Role
    content: str
    status: MessageStatus
    created_at: datetime
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    ttft_ms: float | None = None
    error_code: str | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation; ``messages`` (oldest first) is filled only when asked for."""

    id: str
    title: str | None
    created_at: datetime
    updated_at: datetime
    messages: tuple[StoredMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """One page of conversations, most recently active first; ``next_cursor`` is ``None`` at the end."""

    conversations: tuple[Conversation, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Turn:
    """A question stored with its answer's placeholder (``answer_id``), and the history before it."""

    conversation: Conversation
    history: tuple[StoredMessage, ...]
    question: StoredMessage
    answer_id: str
    model: str

    @property
    def prompt(self) -> tuple[Message, ...]:
        """What the model is asked: every earlier message with text, then the question.

        Answers that produced no text (an early error, a turn still streaming in parallel) are left
        out; a cancelled or failed answer's partial text stays in, as the user saw it.
        """
        earlier = tuple(Message(m.role, m.content) for m in self.history if m.content or m.role == "user")
        return (*earlier, Message(self.question.role, self.question.content))


@dataclass(frozen=True, slots=True)
class Answer:
    """How an assistant message ended: its status, text, usage, time to first token and error code."""

    status: AnswerStatus
    content: str
    usage: Usage | None = None
    ttft_ms: float | None = None
    error_code: str | None = None


def answer_from_events(events: Iterable[Event]) -> Answer:
    """Fold one stream's events into its :class:`Answer`.

    A stream that ends without a ``Finish`` (its generation died in a way the relay could not log)
    counts as an ``internal`` error, so its text is still kept.
    """
    parts: list[str] = []
    usage: Usage | None = None
    error: ErrorEvent | None = None
    finish: Finish | None = None
    for event in events:
        match event:
            case TextDelta(text):
                parts.append(text)
            case Usage():
                usage = event
            case ErrorEvent():
                error = event
            case Finish():
                finish = event
    content = "".join(parts)
    if finish is None:
        code = error.code if error is not None else "internal"
        return Answer("error", content, usage, None, code)
    if finish.reason == "error":
        code = error.code if error is not None else "internal"
        return Answer("error", content, usage, finish.ttft_ms, code)
    status: AnswerStatus = "cancelled" if finish.reason == "cancelled" else "complete"
    return Answer(status, content, usage, finish.ttft_ms)


def retried_from(history: tuple[StoredMessage, ...], question: str) -> int | None:
    """Where the turn that a retry of ``question`` replaces starts in ``history``, or ``None``.

    A retry replaces the conversation's last turn only when that turn asked the same ``question``
    and its answer did not complete (it failed, was stopped, or is still streaming). So a retry whose
    earlier attempt never reached the store (the server was unreachable) cannot replace an older,
    answered turn: it is then stored as a new turn.
    """
    last = next((i for i in range(len(history) - 1, -1, -1) if history[i].role == "user"), None)
    if last is None or history[last].content != question:
        return None
    answers = history[last + 1 :]
    if any(m.role != "assistant" or m.status == "complete" for m in answers):
        return None
    return last


def derive_title(text: str, limit: int = TITLE_LENGTH) -> str | None:
    """A title from the first user message: whitespace collapsed, cut at a word within ``limit``."""
    words = " ".join(text.split())
    if len(words) <= limit:
        return words or None
    cut = words[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" .,;:-") + "…"
