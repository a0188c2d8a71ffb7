"""The Vercel AI SDK UI-message stream (``POST /api/chat``, what ``useChat`` reads), without I/O.

The request is what the ``ai`` package's ``DefaultChatTransport`` posts (ai v5 to v7)::

    {"id": chatId, "messages": [{"id", "role", "parts": [{"type": "text", "text"}, …]}, …],
     "trigger": "submit-message" | "regenerate-message", "messageId": …, …body extras}

Extras are the transport's ``body`` option: ``model``, ``max_tokens`` (or ``maxOutputTokens``),
``temperature``, ``stop``. The answer is SSE of JSON chunks with the header ``x-vercel-ai-ui-message-stream:
v1``::

    data: {"type":"start","messageId":"msg-…"}
    data: {"type":"start-step"}
    data: {"type":"text-start","id":"text-0"}
    data: {"type":"text-delta","id":"text-0","delta":"Hel"}            (one per delta)
    data: {"type":"text-end","id":"text-0"}
    data: {"type":"finish-step"}
    data: {"type":"finish","finishReason":"stop","messageMetadata":{"usage":{…}}}
    data: [DONE]

A failure after the first byte is ``{"type":"error","errorText":…}`` (the client's ``onError`` and
``chat.error``); a generation stopped elsewhere ends with ``{"type":"abort"}``. Before the first
byte, errors are JSON ``{"error": {"code", "message"}}`` with the HTTP status, which the transport
turns into an error whose message is that body.

The older "data stream protocol" (``0:"text"`` lines, ``x-vercel-ai-data-stream: v1``) is not
spoken: only ``ai`` 4.x reads it, and that major line gets no releases any more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sluiceway.errors import InvalidRequestError
from sluiceway.events import ErrorEvent, Event, Finish, FinishReason, TextDelta, Usage
from sluiceway.requests import ChatRequest, Message, make_message, make_request, positive_int
from sluiceway.wire.seed import DONE, SSE_HEADERS, dumps
from sluiceway.wire.sse import PING

HEADERS = {**SSE_HEADERS, "x-vercel-ai-ui-message-stream": "v1"}
FINISH_REASONS: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "error": "error",
    "content_filter": "content-filter",
}
TEXT_ID = "text-0"


@dataclass(frozen=True, slots=True)
class UIChatParams:
    """A parsed request: what to generate (``request.model`` empty means the default) and the chat id."""

    request: ChatRequest
    chat_id: str | None
    trigger: str | None


def parse_request(body: object) -> UIChatParams:
    """Validate a chat transport body into a :class:`ChatRequest` (raises ``InvalidRequestError``).

    Each UI message's text is its ``text`` parts joined (other parts, such as ``step-start`` or
    reasoning, are not sent to the model); a message with a plain ``content`` string is read too.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequestError("the request body must be a JSON object")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("messages: must be a non-empty array")
    messages = [_message(m, f"messages[{i}]") for i, m in enumerate(raw)]
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError("model: must be a string")
    max_output = positive_int(body.get("maxOutputTokens"), "maxOutputTokens")
    max_tokens = positive_int(body.get("max_tokens"), "max_tokens")
    max_tokens = max_output if max_tokens is None else max_tokens
    request = make_request(
        messages,
        model or "",
        max_tokens=max_tokens,
        temperature=body.get("temperature"),
        stop=body.get("stop"),
    )
    chat_id = body.get("id")
    trigger = body.get("trigger")
    return UIChatParams(
        request,
        chat_id if isinstance(chat_id, str) else None,
        trigger if isinstance(trigger, str) else None,
    )


def _message(raw: object, where: str) -> Message:
    if not isinstance(raw, Mapping):
        raise InvalidRequestError(f"{where}: must be an object")
    role = raw.get("role")
    parts = raw.get("parts")
    if parts is None and isinstance(raw.get("content"), str):
        return make_message(role, raw["content"], where=where)
    if not isinstance(parts, list):
        raise InvalidRequestError(f"{where}.parts: must be an array")
    texts = []
    for i, part in enumerate(parts):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise InvalidRequestError(f"{where}.parts[{i}]: must be an object with a string 'type'")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidRequestError(f"{where}.parts[{i}].text: must be a string")
            texts.append(part["text"])
    return make_message(role, "".join(texts), where=where)


def chunk(payload: Mapping[str, Any]) -> bytes:
    """One UI-message chunk as an SSE event."""
    return f"data: {dumps(payload)}\n\n".encode()


_DELTA_HEAD = f'data: {{"type":"text-delta","id":"{TEXT_ID}","delta":'.encode()
"""A token's chunk up to its text (what :func:`chunk` renders for it, as bytes once)."""


class UIMessageStreamEncoder:
    """Encoder for the UI-message stream; one per response.

    ``message_id`` names the assistant message the client assembles (``start.messageId``).
    """

    media_type = "text/event-stream"
    headers = HEADERS

    def __init__(self, message_id: str, model: str) -> None:
        self._message_id = message_id
        self._model = model
        self._usage = Usage(0, 0)
        self._text_open = False

    def start(self) -> bytes:
        return chunk({"type": "start", "messageId": self._message_id}) + b'data: {"type":"start-step"}\n\n'

    def heartbeat(self) -> bytes:
        return PING

    def encode(self, seq: int, event: Event) -> bytes:
        if type(event) is TextDelta and self._text_open:  # every token but the first
            return _DELTA_HEAD + orjson.dumps(event.text) + b"}\n\n"
        match event:
            case TextDelta(text):
                head = b"" if self._text_open else self._open_text()
                return head + chunk({"type": "text-delta", "id": TEXT_ID, "delta": text})
            case Usage():
                self._usage = event
                return b""
            case ErrorEvent():
                return chunk({"type": "error", "errorText": event.message})
            case Finish(reason="error"):
                return self._close_text() + DONE
            case Finish(reason="cancelled"):
                return self._close_text() + chunk({"type": "abort", "reason": "cancelled"}) + DONE
            case Finish(reason):
                return self._close_text() + self._finish(FINISH_REASONS[reason], event) + DONE
        raise AssertionError(f"unhandled event {event!r}")

    def _open_text(self) -> bytes:
        self._text_open = True
        return chunk({"type": "text-start", "id": TEXT_ID})

    def _close_text(self) -> bytes:
        if not self._text_open:
            return b""
        self._text_open = False
        return chunk({"type": "text-end", "id": TEXT_ID})

    def _finish(self, reason: str, event: Finish) -> bytes:
        metadata = {
            "model": self._model,
            "usage": {"inputTokens": self._usage.input_tokens, "outputTokens": self._usage.output_tokens},
        }
        return b'data: {"type":"finish-step"}\n\n' + chunk(
            {"type": "finish", "finishReason": reason, "messageMetadata": metadata}
        )
