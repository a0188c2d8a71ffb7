"""The OpenAPI document says which errors each route can answer, and in what shape.

The app's exception handlers and security middleware answer errors the routes never mention
(401 from the key check, 413 from the body limit, 429 from the quotas, 502-504 from an upstream
that failed before the first byte). :func:`document_errors` adds them to every operation after
FastAPI builds the schema, so clients and fuzzers (schemathesis, in the tests) can hold every
response to the document. FastAPI's automatic 422 is replaced by 400: sluiceway answers a body
that fails validation with 400 in the protocol's own shape.

Every protocol's error body (seed, OpenAI, Anthropic) carries ``error.message``: that is the shared
schema documented here; each protocol's extra fields are allowed.

The compatible APIs read their bodies by hand (``wire/*.parse_request``, to answer in their own
error shapes), so FastAPI cannot infer a request schema for them: :data:`REQUEST_BODIES` describes
what those parsers accept, within what the real APIs accept. The fields and roles come from the wire
modules themselves; the fields sluiceway refuses unless at a served value (``wire.openai.UNSERVED``,
checked by functions) take their served values from :data:`OPENAI_SERVED` and their reason from the
wire, and a test holds the two to the parsers' verdicts value by value.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from sluiceway.server.auth import OPEN_PATHS, OPEN_PREFIXES
from sluiceway.wire import anthropic as anthropic_wire
from sluiceway.wire import openai as openai_wire

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message"],
            "properties": {"message": {"type": "string"}},
        }
    },
}
DESCRIPTIONS = {
    400: "Invalid request: the message names the field and what is wrong with it",
    401: "Missing or invalid API key",
    403: "The API key may not use this model",
    404: "Unknown model or resource",
    413: "Request body too large",
    429: "Rate limit or quota reached; retry after Retry-After seconds",
    502: "The model's upstream failed before the first token",
    503: "The model's upstream is unavailable; retry after Retry-After seconds",
    504: "The model's upstream timed out",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
GENERATING = (403, 404, 429, 502, 503, 504)
GENERATING_PATHS = frozenset({"/chat/stream", "/v1/chat/completions", "/v1/messages", "/api/chat"})
"""Operations that start a generation: they can answer every error a model or a quota can cause."""


_NULLABLE_STRING = {"type": ["string", "null"]}
_MAX_TOKENS = {"type": ["integer", "null"], "minimum": 1}
_TEMPERATURE = {"type": ["number", "null"], "minimum": 0, "maximum": 2}
_STREAM = {"type": ["boolean", "null"]}
_TEXT_PARTS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    },
}
_STOP = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]}
_EMPTY_ARRAY = {"type": "array", "maxItems": 0}
_TOOL_CHOICE = {"enum": ["none", "auto"]}

OPENAI_SERVED: dict[str, dict[str, Any]] = {
    "n": {"type": "integer", "const": 1},
    "tools": _EMPTY_ARRAY,
    "tool_choice": _TOOL_CHOICE,
    "parallel_tool_calls": {"type": "boolean"},
    "functions": _EMPTY_ARRAY,
    "function_call": _TOOL_CHOICE,
    "logprobs": {"const": False},
    "top_logprobs": {"type": "integer", "const": 0},
    "response_format": {"type": "object", "required": ["type"], "properties": {"type": {"const": "text"}}},
    "modalities": {"const": ["text"]},
    "audio": {"not": {}},  # no value: only null
}
"""The values served of each field of ``wire.openai.UNSERVED`` besides ``null`` (which always is)."""

OPENAI_CONTENT_OPTIONAL = frozenset({"assistant"})
"""The roles whose ``content`` may be missing or ``null`` (an assistant turn may hold only tool calls)."""


def _served(field: openai_wire.Unserved) -> dict[str, Any]:
    """The schema of one field of ``UNSERVED``: ``null`` or a served value, and why only those."""
    schema: dict[str, Any] = {"anyOf": [{"type": "null"}, OPENAI_SERVED[field.name]]}
    if field.why:
        schema["description"] = field.why
    return schema


def _openai_message() -> dict[str, Any]:
    """One Chat Completions message: a role of ``wire.openai.ROLES``, ``content`` required but on
    the roles of :data:`OPENAI_CONTENT_OPTIONAL`."""
    roles = list(openai_wire.ROLES)
    content_required = [role for role in roles if role not in OPENAI_CONTENT_OPTIONAL]
    return {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"enum": roles},
            "content": {"anyOf": [{"type": "string"}, _TEXT_PARTS, {"type": "null"}]},
        },
        "if": {"required": ["role"], "properties": {"role": {"enum": content_required}}},
        "then": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
    }


OPENAI_CHAT: dict[str, Any] = {
    "title": "ChatCompletionRequest",
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": _NULLABLE_STRING,
        "messages": {"type": "array", "minItems": 1, "items": _openai_message()},
        "max_tokens": _MAX_TOKENS,
        "max_completion_tokens": _MAX_TOKENS,
        "temperature": _TEMPERATURE,
        "stop": _STOP,
        "stream": _STREAM,
        "stream_options": {"type": ["object", "null"], "properties": {"include_usage": _STREAM}},
    }
    | {field.name: _served(field) for field in openai_wire.UNSERVED},
}
ANTHROPIC_MESSAGES: dict[str, Any] = {
    "title": "MessagesRequest",
    "type": "object",
    "required": ["max_tokens", "messages"],
    "properties": {
        "model": _NULLABLE_STRING,
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["user", "assistant"]},
                    "content": {"anyOf": [{"type": "string"}, _TEXT_PARTS]},
                },
            },
        },
        "system": {"anyOf": [{"type": "string"}, _TEXT_PARTS, {"type": "null"}]},
        "temperature": _TEMPERATURE,
        "stop_sequences": _STOP,
        "stream": _STREAM,
        "tools": {
            "anyOf": [{"type": "null"}, _EMPTY_ARRAY],
            "description": "sluiceway does not call tools; tools must be empty",
        },
    },
}
AISDK_CHAT: dict[str, Any] = {
    "title": "UIChatRequest",
    "type": "object",
    "required": ["messages"],
    "properties": {
        "id": {"description": "the chat id (a string; other values are ignored)"},
        "trigger": {"description": "submit-message or regenerate-message (other values are ignored)"},
        "messageId": {"description": "the message to regenerate (other values are ignored)"},
        "model": _NULLABLE_STRING,
        "max_tokens": _MAX_TOKENS,
        "maxOutputTokens": _MAX_TOKENS,
        "temperature": _TEMPERATURE,
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "parts"],
                "properties": {
                    "id": {"description": "the UI message id (not used)"},
                    "role": {"enum": ["system", "user", "assistant"]},
                    "parts": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["type"],
                            "properties": {"type": {"type": "string"}},
                            "if": {"properties": {"type": {"const": "text"}}},
                            "then": {"required": ["text"], "properties": {"text": {"type": "string"}}},
                        },
                    },
                },
            },
        },
    },
}


def _closed(schema: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """``schema`` listing every field of the real API (unused ones: any value) and no others."""
    properties = {name: {} for name in sorted(fields)} | schema["properties"]
    return {**schema, "properties": properties, "additionalProperties": False}


OPENAI_CHAT = _closed(OPENAI_CHAT, openai_wire.FIELDS)
ANTHROPIC_MESSAGES = _closed(ANTHROPIC_MESSAGES, anthropic_wire.FIELDS)
REQUEST_BODIES = {
    "/v1/chat/completions": OPENAI_CHAT,
    "/v1/messages": ANTHROPIC_MESSAGES,
    "/api/chat": AISDK_CHAT,
}


def error_statuses(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    """The error statuses an operation can answer, judged by its path, method and inputs."""
    statuses: list[int] = []
    if path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
        statuses.append(401)
    if operation.get("parameters") or "requestBody" in operation or method in ("post", "put", "patch"):
        statuses.append(400)
    if "requestBody" in operation or method in ("post", "put", "patch"):
        statuses.append(413)
    if path in GENERATING_PATHS:
        statuses += GENERATING
    if "{" in path:
        statuses.append(404)
    return sorted(set(statuses))


def add_error_responses(schema: dict[str, Any]) -> None:
    """Document the shared error responses on every operation of ``schema`` (in place)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if method == "post" and path in REQUEST_BODIES and "requestBody" not in operation:
                body = {"application/json": {"schema": REQUEST_BODIES[path]}}
                operation["requestBody"] = {"required": True, "content": body}
            responses: dict[str, Any] = operation["responses"]
            responses.pop("422", None)
            for status in error_statuses(path, method, operation):
                response: dict[str, Any] = {
                    "description": DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": ref}},
                }
                if status in (429, 503):
                    response["headers"] = RETRY_AFTER
                responses.setdefault(str(status), response)


def document_errors(app: FastAPI) -> None:
    """Make ``app.openapi()`` include the error responses (computed once, like FastAPI's own)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_error_responses(build())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
