"""The Anthropic Messages format (``POST /v1/messages``), without I/O.

A streaming answer is SSE with named events, each ``data:`` repeating the name as ``type``::

    message_start        {"message": {id, type, role, content: [], model, stop_reason: null, usage}}
    content_block_start  {"index": 0, "content_block": {"type": "text", "text": ""}}
    ping
    content_block_delta  {"index": 0, "delta": {"type": "text_delta", "text": "Hel"}}   (one per delta)
    content_block_stop   {"index": 0}
    message_delta        {"delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {…}}
    message_stop

How the head is timed: ``message_start`` reports the input tokens, which the provider's early
``Usage`` tells; so the head is written at the first event that is not a ``Usage``, or at the first
keep-alive if that comes sooner (the real API never sends ``ping`` before ``message_start``). Its
input tokens are then those known so far (often 0, as the relay logs the early ``Usage`` with the
first text); ``message_delta``'s usage always carries the final input and output tokens, which the
SDKs take as the message's. A failure after the first byte is ``event: error`` with
``{"type": "error", "error": {"type", "message"}}``, which the anthropic SDKs raise as
``APIStatusError`` (Python) / ``APIError`` (Node); the stream then just ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluiceway.errors import ERROR_CLASSES, InvalidRequestError
from sluiceway.events import ErrorEvent, Event, Finish, FinishReason, TextDelta, Usage
from sluiceway.requests import ChatRequest, Message, check_fields, make_message, make_request, text_content
from sluiceway.wire.seed import SSE_HEADERS, dumps

STOP_REASONS: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "cancelled": "end_turn",
    "error": "end_turn",
    "content_filter": "refusal",
}

ERROR_TYPES: dict[str, str] = {
    "invalid_request": "invalid_request_error",
    "unauthorized": "authentication_error",
    "forbidden": "permission_error",
    "unknown_model": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limited": "rate_limit_error",
    "overloaded": "overloaded_error",
    "upstream_unavailable": "overloaded_error",
    "upstream_timeout": "timeout_error",
    "upstream_auth": "api_error",
    "upstream_error": "api_error",
    "internal": "api_error",
}
"""Our codes as Anthropic error types. ``upstream_auth`` is ``api_error``: the gateway's own
credentials failed upstream, which the caller cannot fix with its key."""

STATUS_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""For codes not in :data:`ERROR_TYPES` (new ones), and for an error answered with another status
than its code's (the framework's 404 and 405 come as ``invalid_request``): by status."""

FIELDS = frozenset(
    {
        "cache_control",
        "container",
        "context_management",
        "diagnostics",
        "inference_geo",
        "max_tokens",
        "mcp_servers",
        "messages",
        "metadata",
        "model",
        "output_config",
        "service_tier",
        "speed",
        "stop_sequences",
        "stream",
        "system",
        "temperature",
        "thinking",
        "tool_choice",
        "tools",
        "top_k",
        "top_p",
        "user_profile_id",
        "workspace_id",
    }
)
"""Every body field the real API defines: others are refused ("Extra inputs are not permitted").
Of those sluiceway does not use, ``tools`` is refused unless empty (it would change the answer's
shape); the others (``tool_choice``, ``thinking``, ``metadata``, ``top_k`` …) are accepted and ignored."""

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_DELTA_HEAD = (
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":'
)


@dataclass(frozen=True, slots=True)
class MessagesParams:
    """A parsed request: what to generate (``request.model`` empty means the default) and how."""

    request: ChatRequest
    stream: bool


def parse_request(body: object) -> MessagesParams:
    """Validate a Messages API body into a :class:`ChatRequest` (raises ``InvalidRequestError``).

    Like the real API, ``max_tokens`` is required and roles alternate between user and assistant
    (only the user/assistant roles are allowed; the system prompt is the ``system`` field).
    """
    if not isinstance(body, Mapping):
        raise InvalidRequestError("the request body must be a JSON object")
    check_fields(body, FIELDS)
    if body.get("max_tokens") is None:
        raise InvalidRequestError("max_tokens: Field required")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("messages: must be a non-empty array")
    messages: list[Message] = []
    if body.get("system") is not None:
        messages.append(make_message("system", _text(body["system"], "system"), where="system"))
    for i, item in enumerate(raw):
        messages.append(_message(item, f"messages.{i}"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError("model: must be a string")
    _refuse_tools(body.get("tools"))
    request = make_request(
        messages,
        model or "",
        max_tokens=body["max_tokens"],
        temperature=body.get("temperature"),
        stop=body.get("stop_sequences"),
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool | None):
        raise InvalidRequestError("stream: must be a boolean")
    return MessagesParams(request, bool(stream))


def _refuse_tools(tools: object) -> None:
    """Refuse any tool (none is served); an empty list is fine, and ``tool_choice``, which means
    nothing without tools, is ignored."""
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequestError("tools: must be an array")
    if tools:
        raise InvalidRequestError("tools: sluiceway does not call tools; tools must be empty")


def _message(raw: object, where: str) -> Message:
    if not isinstance(raw, Mapping):
        raise InvalidRequestError(f"{where}: must be an object")
    role = raw.get("role")
    if role not in ("user", "assistant"):
        raise InvalidRequestError(f"{where}.role: must be 'user' or 'assistant'")
    return make_message(role, _text(raw.get("content"), f"{where}.content"), where=where)


def _text(content: object, where: str) -> str:
    return text_content(content, where, noun="blocks", index="{where}.{i}")


def error_type(code: str, status: int | None = None) -> str:
    """Anthropic's error type for one of our codes (or, failing that, for the HTTP status).

    A code's type holds at its own status; answered with another (a 404 for an unknown path comes
    as ``invalid_request``), the status tells the type.
    """
    cls = ERROR_CLASSES.get(code)
    if code in ERROR_TYPES and (status is None or cls is None or cls.status == status):
        return ERROR_TYPES[code]
    if status is None:
        status = cls.status if cls is not None else 500
    if status in STATUS_TYPES:
        return STATUS_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(code: str, message: str, status: int | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": error_type(code, status), "message": message}}


def error_shape(error: ErrorEvent, status: int) -> dict[str, Any]:
    """The body of an error answered before the first byte (the status goes on the response)."""
    return error_body(error.code, error.message, status)


def usage_object(usage: Usage) -> dict[str, int]:
    """Anthropic's usage: input and output tokens."""
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def stop_delta(finish: FinishReason, stop_sequence: str | None = None) -> dict[str, str | None]:
    """``stop_reason`` and ``stop_sequence``: ``"stop_sequence"`` and the string when a known stop
    sequence ended the answer, else the reason as :data:`STOP_REASONS` maps it (and ``null``)."""
    if finish == "stop" and stop_sequence is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": stop_sequence}
    return {"stop_reason": STOP_REASONS[finish], "stop_sequence": None}


def message_body(
    message_id: str,
    model: str,
    text: str,
    usage: Usage,
    finish: FinishReason,
    stop_sequence: str | None = None,
) -> dict[str, Any]:
    """A whole ``message`` object (the non-streaming answer)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        **stop_delta(finish, stop_sequence),
        "usage": usage_object(usage),
    }


def named_event(name: str, payload: Mapping[str, Any]) -> bytes:
    """One named SSE event whose data repeats the name as ``type``."""
    return f"event: {name}\ndata: {dumps({'type': name, **payload})}\n\n".encode()


class AnthropicEncoder:
    """Encoder for the Messages event stream; one per response."""

    media_type = "text/event-stream"
    headers = SSE_HEADERS

    def __init__(self, message_id: str, model: str) -> None:
        self._message_id = message_id
        self._model = model
        self._usage = Usage(0, 0)
        self._started = False

    def start(self) -> bytes:
        return b""

    def heartbeat(self) -> bytes:
        return PING if self._started else self._head()

    def encode(self, seq: int, event: Event) -> bytes:
        if isinstance(event, Usage):
            self._usage = event
            return b""
        head = b"" if self._started else self._head()
        match event:
            case TextDelta(text):
                return head + f"{_DELTA_HEAD}{dumps(text)}}}}}\n\n".encode()
            case ErrorEvent():
                return head + named_event("error", {"error": error_body(event.code, event.message)["error"]})
            case Finish(reason="error"):
                return head
            case Finish(reason, stop_sequence=stop_sequence):
                return head + self._tail(stop_delta(reason, stop_sequence))
        raise AssertionError(f"unhandled event {event!r}")

    def _head(self) -> bytes:
        self._started = True
        message = message_body(self._message_id, self._model, "", Usage(self._usage.input_tokens, 0), "stop")
        message.update(content=[], stop_reason=None)
        return (
            named_event("message_start", {"message": message})
            + named_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            + PING
        )

    def _tail(self, delta: dict[str, str | None]) -> bytes:
        return (
            named_event("content_block_stop", {"index": 0})
            + named_event("message_delta", {"delta": delta, "usage": usage_object(self._usage)})
            + named_event("message_stop", {})
        )
