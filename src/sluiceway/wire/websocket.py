"""The WebSocket chat protocol (``GET /ws/chat``), without I/O: JSON text frames both ways.

Client to server, one turn at a time, any number of turns per socket::

    {"message": "Hi"}                                             one user turn
    {"messages": [{"role", "content"}, …], "model"?, "max_tokens"?, "temperature"?, "stop"?}
    {"type": "cancel"}                                            stop the current turn

Server to client, for each turn::

    {"type": "start", "stream_id": "…", "model": "echo"}          the turn's stream and model
    {"type": "chunk", "text": "Hel"}                              (one per delta)
    {"type": "done", "usage": {"input_tokens", "output_tokens"}, "finish_reason": "stop" | "length"
     | "cancelled", "ttft_ms", "tokens_per_s"}
    or {"type": "error", "code", "message", "retryable"?, "retry_after"?}

A turn that starts a generation opens with ``start`` (a turn refused before that, e.g. for an
unknown model, gets only an ``error``). A turn ends with exactly one ``done`` or ``error``; a
cancelled turn ends with ``done`` whose ``finish_reason`` is ``"cancelled"``. Errors that belong to
no turn (bad JSON, a turn sent while one is running) are ``error`` frames too; the socket stays open
after any of them. A turn refused for a limit (``overloaded``, ``rate_limited``) says when to try
again in ``retry_after`` (seconds), as the HTTP routes do in ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sluiceway.errors import InvalidRequestError
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.requests import ChatRequest, Message, make_message, make_request
from sluiceway.wire.seed import dumps, error_payload


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client asks to stop the running turn."""


@dataclass(frozen=True, slots=True)
class Turn:
    """The client asks for an answer (``request.model`` empty means the default model)."""

    request: ChatRequest


ClientFrame = Cancel | Turn


def parse_frame(text: str) -> ClientFrame:
    """Read one client frame (raises ``InvalidRequestError`` naming what is wrong)."""
    try:
        body = orjson.loads(text)
    except ValueError:
        raise InvalidRequestError("frames must be JSON objects") from None
    if not isinstance(body, Mapping):
        raise InvalidRequestError("frames must be JSON objects")
    kind = body.get("type")
    if kind == "cancel":
        return Cancel()
    if kind not in (None, "chat"):
        raise InvalidRequestError(f"unknown frame type {kind!r} (expected 'cancel' or a chat turn)")
    return Turn(_request(body))


def _request(body: Mapping[str, Any]) -> ChatRequest:
    messages: list[Message] = []
    raw = body.get("messages")
    if raw is not None:
        if not isinstance(raw, list):
            raise InvalidRequestError("messages: must be an array")
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise InvalidRequestError(f"messages[{i}]: must be an object")
            messages.append(make_message(item.get("role"), item.get("content"), where=f"messages[{i}]"))
    if body.get("message") is not None:
        if not isinstance(body["message"], str):
            raise InvalidRequestError("message: must be a string")
        messages.append(make_message("user", body["message"], where="message"))
    if not messages:
        raise InvalidRequestError("give 'message' (a string) or 'messages' (a non-empty list)")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError("model: must be a string")
    return make_request(
        messages,
        model or "",
        max_tokens=body.get("max_tokens"),
        temperature=body.get("temperature"),
        stop=body.get("stop"),
    )


def error_frame(error: ErrorEvent) -> str:
    """An ``error`` frame for a failure that is not an event of a stream (a turn refused before it
    started carries the error's ``retryable`` and ``retry_after``, as an HTTP 429 its ``Retry-After``)."""
    return dumps(error_payload(error))


class WebSocketEncoder:
    """Turns one turn's events into server frames (JSON text); one per turn."""

    def __init__(self, stream_id: str, model: str) -> None:
        self._stream_id = stream_id
        self._model = model
        self._usage = Usage(0, 0)

    def start(self) -> str:
        """The frame that opens the turn."""
        return dumps({"type": "start", "stream_id": self._stream_id, "model": self._model})

    def encode(self, event: Event) -> str | None:
        """The frame for ``event``, or ``None`` when it sends nothing (a ``Usage`` kept for ``done``)."""
        match event:
            case TextDelta(text):
                return dumps({"type": "chunk", "text": text})
            case Usage():
                self._usage = event
                return None
            case ErrorEvent():
                return dumps(error_payload(event))
            case Finish(reason="error"):
                return None
            case Finish():
                return dumps(
                    {
                        "type": "done",
                        "usage": {
                            "input_tokens": self._usage.input_tokens,
                            "output_tokens": self._usage.output_tokens,
                        },
                        "finish_reason": event.reason,
                        "ttft_ms": event.ttft_ms,
                        "tokens_per_s": event.tokens_per_s,
                    }
                )
        raise AssertionError(f"unhandled event {event!r}")
