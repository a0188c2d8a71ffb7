"""Provider-neutral chat requests, validated once at the edge.

Every protocol route turns its body into a :class:`ChatRequest`; providers only ever see this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from sluiceway.errors import InvalidRequestError

Role: TypeAlias = Literal["system", "user", "assistant"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of the conversation."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What to generate: the conversation, which model, and the sampling limits."""

    messages: tuple[Message, ...]
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = field(default=())

    @property
    def last_user_text(self) -> str:
        """The newest user message's text (empty if there is none)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""


def make_message(role: object, content: object, *, where: str = "messages") -> Message:
    """Validate one message's role and content, naming the field that is wrong."""
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequestError(f"{where}.role must be one of system, user, assistant; got {role!r}")
    if not isinstance(content, str):
        raise InvalidRequestError(f"{where}.content must be a string")
    return Message(role, content)  # type: ignore[arg-type]


def check_fields(body: Mapping[str, object], known: frozenset[str], *, where: str = "") -> None:
    """Refuse fields a protocol does not define, naming them (the real APIs reject them too)."""
    unknown = [key for key in body if key not in known]
    if unknown:
        names = ", ".join(repr(f"{where}.{key}" if where else key)[:80] for key in unknown[:5])
        raise InvalidRequestError(f"unknown field(s): {names}")


def text_content(content: object, where: str, *, noun: str, index: str, optional: bool = False) -> str:
    """A message's text: a string, or the text items of a content array joined.

    The protocols differ only in wording: what an item is called (``noun``: "blocks", "parts"), how
    its place is written (``index``, a format of ``where`` and ``i``: ``"{where}.{i}"``,
    ``"{where}[{i}]"``), and whether ``None`` reads as empty text (``optional``).
    """
    if content is None and optional:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, item in enumerate(content):
            if (
                not isinstance(item, Mapping)
                or item.get("type") != "text"
                or not isinstance(item.get("text"), str)
            ):
                raise InvalidRequestError(f"{index.format(where=where, i=i)}: only text {noun} are supported")
            texts.append(item["text"])
        return "".join(texts)
    raise InvalidRequestError(f"{where}: must be a string or an array of text {noun}")


def positive_int(value: object, name: str) -> int | None:
    """``value`` if it is ``None`` or a positive integer; otherwise a 400 naming ``name``."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise InvalidRequestError(f"{name}: must be a positive integer")


MAX_TOKENS_LIMIT = 2**31 - 1
"""The largest ``max_tokens`` accepted: upstream servers read it as a 32-bit integer (llama.cpp's
``n_predict``), and a number past 64 bits cannot even be sent on to them."""


def make_request(
    messages: list[Message] | tuple[Message, ...],
    model: str,
    *,
    max_tokens: object = None,
    temperature: object = None,
    stop: object = None,
) -> ChatRequest:
    """Build a :class:`ChatRequest`, checking the limits every protocol shares."""
    if not messages:
        raise InvalidRequestError("messages must not be empty")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidRequestError("max_tokens must be a positive integer")
        if max_tokens > MAX_TOKENS_LIMIT:
            raise InvalidRequestError(f"max_tokens must be at most {MAX_TOKENS_LIMIT}")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2
    ):
        raise InvalidRequestError("temperature must be a number between 0 and 2")
    stops: tuple[str, ...] = ()
    if isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    elif stop is not None:
        raise InvalidRequestError("stop must be a string or a list of strings")
    return ChatRequest(
        messages=tuple(messages),
        model=model,
        max_tokens=max_tokens,
        temperature=None if temperature is None else float(temperature),
        stop=stops,
    )
