"""What a client sends and what it gets back, shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypedDict
from urllib.parse import quote

from sluiceway.events import Finish, FinishReason, Usage
from sluiceway.requests import Message

DEFAULT_URL = "http://127.0.0.1:8000"

MessageLike: TypeAlias = Message | Mapping[str, str]
Messages: TypeAlias = str | Sequence[MessageLike]
"""A single user message, or the conversation as ``Message``\\ s or ``{"role", "content"}`` dicts."""


class ChatOptions(TypedDict, total=False):
    """The options of a chat request, as keyword arguments of ``stream_chat`` and ``chat``: which model,
    the token limit, a system prompt, the temperature, the stored conversation to continue, and
    ``extra`` fields merged into the body as they are."""

    model: str | None
    max_tokens: int | None
    system: str | None
    temperature: float | None
    conversation_id: str | None
    extra: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class ChatResult:
    """One whole answer.

    ``ttft_ms`` (time to first token) and ``tokens_per_s`` are measured by this client, from sending
    the request to the first text and across the text; ``finish`` is the server's own ``Finish`` with
    its measurements. ``resumes`` counts the reconnections that were needed.
    """

    text: str
    usage: Usage | None
    finish_reason: FinishReason | None
    ttft_ms: float | None
    tokens_per_s: float | None
    stream_id: str | None = None
    finish: Finish | None = None
    resumes: int = 0

    @property
    def output_tokens(self) -> int | None:
        """Tokens generated, as the server counted them."""
        return None if self.usage is None else self.usage.output_tokens


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One HTTP request for the I/O layer to make: method, path under the base URL, JSON body."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None


def chat_call(
    messages: Messages,
    *,
    model: str | None = None,
    max_tokens: int | None = None,
    system: str | None = None,
    temperature: float | None = None,
    conversation_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> HttpCall:
    """``POST /chat/stream`` for a conversation (a string is one user message)."""
    body: dict[str, Any] = {}
    turns = [] if isinstance(messages, str) else [_message_dict(m) for m in messages]
    if system is not None:
        turns.insert(0, {"role": "system", "content": system})
    if turns:
        body["messages"] = turns
    if isinstance(messages, str):
        body["message"] = messages
    optional = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "conversation_id": conversation_id,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    body.update(extra or {})
    return HttpCall("POST", "/chat/stream", json=body)


def client_headers(headers: Mapping[str, str] | None, api_key: str | None) -> dict[str, str]:
    """Headers for every request: ``headers``, plus ``Authorization: Bearer <api_key>`` if given."""
    merged = dict(headers or {})
    if api_key:
        merged["Authorization"] = f"Bearer {api_key}"
    return merged


def resume_call(stream_id: str, after: int) -> HttpCall:
    """``GET /chat/stream/{stream_id}?after=<seq>``: the same stream from after event ``after``."""
    return HttpCall("GET", f"/chat/stream/{quote(stream_id, safe='')}", params={"after": str(after)})


def cancel_call(stream_id: str) -> HttpCall:
    """``POST /chat/stream/{stream_id}/cancel``: stop the generation now."""
    return HttpCall("POST", f"/chat/stream/{quote(stream_id, safe='')}/cancel")


def _message_dict(message: MessageLike) -> dict[str, str]:
    if isinstance(message, Message):
        return {"role": message.role, "content": message.content}
    return {"role": str(message["role"]), "content": str(message["content"])}
