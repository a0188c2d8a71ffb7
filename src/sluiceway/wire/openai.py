"""The OpenAI Chat Completions format (``POST /v1/chat/completions``), without I/O.

Streaming answers are SSE ``data:`` lines, one ``chat.completion.chunk`` object each::

    data: {"id":"chatcmpl-…","object":"chat.completion.chunk",…,"choices":[{"index":0,
           "delta":{"role":"assistant","content":"Hel"},"logprobs":null,"finish_reason":null}]}
    data: {…"choices":[{"index":0,"delta":{"content":"lo"},…}]}
    data: {…"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}
    data: {…"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}
    data: [DONE]

The first delta carries the role; the finish reason rides on a last, empty delta; the usage chunk
is sent only when the request asked for ``stream_options.include_usage``. A failure after the first
byte is ``data: {"error": {...}}``: the openai SDKs (Python ``Stream.__stream__``, Node
``Stream.fromSSEResponse``) raise ``APIError`` on any event whose JSON has an ``error`` key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sluiceway.errors import ERROR_CLASSES, InvalidRequestError
from sluiceway.events import ErrorEvent, Event, Finish, FinishReason, TextDelta, Usage
from sluiceway.requests import (
    ChatRequest,
    Message,
    check_fields,
    make_message,
    make_request,
    positive_int,
    text_content,
)
from sluiceway.wire.seed import DONE, SSE_HEADERS, dumps
from sluiceway.wire.sse import PING

FINISH_REASONS: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "cancelled": "stop",
    "error": "stop",
    "content_filter": "content_filter",
}
"""Our finish reasons as OpenAI's (which has no "cancelled"; a client only sees it if a Stop
elsewhere ended the stream it reads)."""

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

ERROR_TYPES: dict[str, str] = {
    "rate_limited": "rate_limit_error",
    "overloaded": "rate_limit_error",
}
"""OpenAI error types that the HTTP status does not tell (otherwise 4xx: ``invalid_request_error``,
5xx: ``server_error``)."""
ERROR_CODES = {"unknown_model": "model_not_found", "unauthorized": "invalid_api_key"}

FIELDS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "messages",
        "metadata",
        "modalities",
        "model",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
"""Every body field the real API defines: others are refused, as the real API refuses them.
Fields it defines but sluiceway does not use are accepted and ignored, except those in
:data:`UNSERVED`, which would change the answer."""


@dataclass(frozen=True, slots=True)
class Unserved:
    """A field whose values but a few would change what the answer is (more choices, tool calls, log
    probabilities, JSON, audio): its JSON type (in words, and a check), the values served, and why
    the others are refused. ``null`` (or leaving the field out) is always served."""

    name: str
    kind: str
    is_kind: Callable[[Any], bool]
    served: Callable[[Any], bool]
    why: str = ""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_list(value: object) -> bool:
    return isinstance(value, list)


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_object(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_choice(value: object) -> bool:
    return isinstance(value, str | Mapping)


NO_TOOLS = "sluiceway does not call tools"
NO_LOGPROBS = "sluiceway does not return log probabilities"
UNSERVED: tuple[Unserved, ...] = (
    Unserved("n", "an integer", _is_int, lambda v: v == 1, "sluiceway answers with one choice; n must be 1"),
    Unserved("tools", "an array", _is_list, lambda v: not v, f"{NO_TOOLS}; tools must be empty"),
    Unserved(
        "tool_choice",
        "a string or an object",
        _is_choice,
        lambda v: v in ("none", "auto"),
        f"{NO_TOOLS}; tool_choice must be 'none' or 'auto'",
    ),
    Unserved("parallel_tool_calls", "a boolean", _is_bool, lambda v: True),
    Unserved("functions", "an array", _is_list, lambda v: not v, f"{NO_TOOLS}; functions must be empty"),
    Unserved(
        "function_call",
        "a string or an object",
        _is_choice,
        lambda v: v in ("none", "auto"),
        f"{NO_TOOLS}; function_call must be 'none' or 'auto'",
    ),
    Unserved(
        "logprobs",
        "a boolean",
        _is_bool,
        lambda v: v is False,
        f"{NO_LOGPROBS}; logprobs must be false",
    ),
    Unserved(
        "top_logprobs", "an integer", _is_int, lambda v: v == 0, f"{NO_LOGPROBS}; top_logprobs must be 0"
    ),
    Unserved(
        "response_format",
        "an object",
        _is_object,
        lambda v: v.get("type") == "text",
        'sluiceway answers with free text; response_format must be {"type": "text"}',
    ),
    Unserved(
        "modalities",
        "an array of strings",
        _is_strings,
        lambda v: v == ["text"],
        'sluiceway answers with text only; modalities must be ["text"]',
    ),
    Unserved(
        "audio",
        "an object",
        _is_object,
        lambda v: False,
        "sluiceway answers with text only; audio must be null",
    ),
)
"""The fields checked by :func:`refuse_unserved`, in the order they are checked."""


@dataclass(frozen=True, slots=True)
class CompletionParams:
    """A parsed request: what to generate (``request.model`` empty means the default) and how to answer."""

    request: ChatRequest
    stream: bool
    include_usage: bool


def parse_request(body: object) -> CompletionParams:
    """Validate a Chat Completions body into a :class:`ChatRequest` (raises ``InvalidRequestError``)."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError("the request body must be a JSON object")
    check_fields(body, FIELDS)
    refuse_unserved(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("messages: must be a non-empty array")
    messages = [_message(m, f"messages[{i}]") for i, m in enumerate(raw)]
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError("model: must be a string")
    positive_int(body.get("max_tokens"), "max_tokens")
    max_tokens = positive_int(body.get("max_completion_tokens"), "max_completion_tokens")
    max_tokens = body.get("max_tokens") if max_tokens is None else max_tokens
    request = make_request(
        messages,
        model or "",
        max_tokens=max_tokens,
        temperature=body.get("temperature"),
        stop=body.get("stop"),
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool | None):
        raise InvalidRequestError("stream: must be a boolean")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        raise InvalidRequestError("stream_options: must be an object")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool | None):
        raise InvalidRequestError("stream_options.include_usage: must be a boolean")
    return CompletionParams(request, bool(stream), bool(include_usage))


def refuse_unserved(body: Mapping[str, object]) -> None:
    """Refuse (400, naming the field) a value of :data:`UNSERVED` that sluiceway cannot honour."""
    for field in UNSERVED:
        value = body.get(field.name)
        if value is None:
            continue
        if not field.is_kind(value):
            raise InvalidRequestError(f"{field.name}: must be {field.kind}")
        if not field.served(value):
            raise InvalidRequestError(f"{field.name}: {field.why}")


def _message(raw: object, where: str) -> Message:
    if not isinstance(raw, Mapping):
        raise InvalidRequestError(f"{where}: must be an object")
    role = raw.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequestError(f"{where}.role: must be one of system, developer, user, assistant")
    text = text_content(
        raw.get("content"),
        f"{where}.content",
        noun="parts",
        index="{where}[{i}]",
        optional=role == "assistant",  # as OpenAI: an assistant turn may hold only tool calls
    )
    return make_message(ROLES[str(role)], text, where=where)


def error_type(code: str, status: int | None = None) -> str:
    """OpenAI's error ``type`` for one of our codes (by its HTTP status unless listed)."""
    if code in ERROR_TYPES:
        return ERROR_TYPES[code]
    if status is None:
        cls = ERROR_CLASSES.get(code)
        status = cls.status if cls is not None else 500
    return "invalid_request_error" if status < 500 else "server_error"


def error_object(code: str, message: str, status: int | None = None) -> dict[str, Any]:
    """OpenAI's error object: ``{"message", "type", "param", "code"}``."""
    return {
        "message": message,
        "type": error_type(code, status),
        "param": None,
        "code": ERROR_CODES.get(code, code),
    }


def error_shape(error: ErrorEvent, status: int) -> dict[str, Any]:
    """The body of an error answered before the first byte (the status goes on the response)."""
    return {"error": error_object(error.code, error.message, status)}


def usage_object(usage: Usage) -> dict[str, int]:
    """OpenAI's usage: prompt, completion and total tokens."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def completion_body(
    completion_id: str, created: int, model: str, text: str, usage: Usage, finish: FinishReason
) -> dict[str, Any]:
    """A whole ``chat.completion`` object (the non-streaming answer)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": FINISH_REASONS[finish],
            }
        ],
        "usage": usage_object(usage),
    }


_TEXT_TAIL = b'},"logprobs":null,"finish_reason":null}]}\n\n'
"""What follows a token's text in its chunk (the head before it is rendered once per stream)."""
_CONTENT_HEAD = b'[{"index":0,"delta":{"content":'
"""The end of that head: the choices array up to a token's text."""


class OpenAIEncoder:
    """Encoder for ``chat.completion.chunk`` SSE; one per response.

    The chunks' constant head (id, object, created, model) is rendered once per stream, so a token
    costs one small ``dumps`` of its delta.
    """

    media_type = "text/event-stream"
    headers = SSE_HEADERS

    def __init__(self, completion_id: str, created: int, model: str, *, include_usage: bool = False) -> None:
        head = dumps(
            {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        )
        self._text_head = ("data: " + head[:-1] + ',"choices":').encode() + _CONTENT_HEAD
        """Every token's chunk up to its text; the head alone is not kept (≈ 0.2 KB a stream)."""
        self._include_usage = include_usage
        self._usage = Usage(0, 0)
        self._role_sent = False

    def start(self) -> bytes:
        return b""

    def heartbeat(self) -> bytes:
        return PING

    def encode(self, seq: int, event: Event) -> bytes:
        if type(event) is TextDelta and self._role_sent:  # every token but the first
            return self._text_head + orjson.dumps(event.text) + _TEXT_TAIL
        match event:
            case TextDelta(text):
                return self._choice({"content": text}, None)
            case Usage():
                self._usage = event
                return b""
            case ErrorEvent():
                return f"data: {dumps({'error': error_object(event.code, event.message)})}\n\n".encode()
            case Finish(reason="error"):
                return DONE
            case Finish(reason):
                out = self._choice({}, FINISH_REASONS[reason])
                if self._include_usage:
                    usage = dumps(usage_object(self._usage))
                    out += f'{self._head()}[],"usage":{usage}}}\n\n'.encode()
                return out + DONE
        raise AssertionError(f"unhandled event {event!r}")

    def _choice(self, delta: dict[str, str], finish: str | None) -> bytes:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", **delta}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return f"{self._head()}[{dumps(choice)}]}}\n\n".encode()

    def _head(self) -> str:
        """``data: `` and the chunks' constant part, up to the ``choices`` array."""
        return self._text_head[: -len(_CONTENT_HEAD)].decode()
