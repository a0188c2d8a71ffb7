"""The OpenAPI document tells what the compatible APIs refuse and require, as their parsers do.

The request schemas are held to ``wire/*.parse_request`` value by value: a body the schema accepts
is one the parser accepts, and the other way round, for every refused-unless-served field and every
message role.
"""

from __future__ import annotations

from typing import Any

import pytest

from sluiceway.errors import InvalidRequestError
from sluiceway.server.app import create_app
from sluiceway.server.openapi import ANTHROPIC_MESSAGES, OPENAI_CHAT, OPENAI_SERVED
from sluiceway.wire import anthropic as anthropic_wire
from sluiceway.wire import openai as openai_wire
from tests.live import make_settings

jsonschema_rs = pytest.importorskip("jsonschema_rs")

SAMPLES: list[object] = [
    None,
    0,
    1,
    2,
    -1,
    True,
    False,
    "none",
    "auto",
    "required",
    "text",
    [],
    [{}],
    [{"type": "function", "function": {"name": "f"}}],
    ["text"],
    ["text", "audio"],
    {},
    {"type": "text"},
    {"type": "json_object"},
    {"type": "function", "function": {"name": "f"}},
    {"voice": "alloy", "format": "wav"},
]
USER = [{"role": "user", "content": "hi"}]


def accepts(parse: Any, body: dict[str, Any]) -> bool:
    try:
        parse(body)
    except InvalidRequestError:
        return False
    return True


def valid(schema: dict[str, Any], instance: object) -> bool:
    return bool(jsonschema_rs.validator_for(schema).is_valid(instance))


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(make_settings()).openapi()


def test_every_unserved_openai_field_is_documented_with_the_wires_reason() -> None:
    assert set(OPENAI_SERVED) == {field.name for field in openai_wire.UNSERVED}
    for field in openai_wire.UNSERVED:
        if field.why:
            assert OPENAI_CHAT["properties"][field.name]["description"] == field.why


@pytest.mark.parametrize("field", [f.name for f in openai_wire.UNSERVED])
def test_openai_schema_refuses_what_the_parser_refuses(field: str) -> None:
    for value in SAMPLES:
        body = {"messages": USER, field: value}
        assert valid(OPENAI_CHAT, body) == accepts(openai_wire.parse_request, body), (field, value)


@pytest.mark.parametrize("role", [*openai_wire.ROLES, "tool"])
@pytest.mark.parametrize("content", ["missing", None, "hi", [{"type": "text", "text": "hi"}], 3])
def test_openai_schema_requires_content_where_the_parser_does(role: str, content: object) -> None:
    message: dict[str, Any] = {"role": role} if content == "missing" else {"role": role, "content": content}
    body = {"messages": [*USER, message]}
    assert valid(OPENAI_CHAT, body) == accepts(openai_wire.parse_request, body)


def test_openai_schema_says_which_values_are_served() -> None:
    base = {"messages": USER}
    for refused in ({"n": 2}, {"tools": [{}]}, {"functions": [{}]}, {"logprobs": True}):
        assert not valid(OPENAI_CHAT, base | refused)
    assert not valid(OPENAI_CHAT, base | {"response_format": {"type": "json_object"}})
    assert not valid(OPENAI_CHAT, {"messages": [{"role": "system"}, *USER]})
    served = {"n": 1, "tools": [], "functions": [], "logprobs": False, "response_format": {"type": "text"}}
    assert valid(OPENAI_CHAT, base | served)


@pytest.mark.parametrize("tools", SAMPLES)
def test_anthropic_schema_refuses_tools_as_the_parser_does(tools: object) -> None:
    body = {"max_tokens": 5, "messages": USER, "tools": tools}
    assert valid(ANTHROPIC_MESSAGES, body) == accepts(anthropic_wire.parse_request, body)


def test_served_document_carries_the_request_rules(document: dict[str, Any]) -> None:
    def body(path: str) -> dict[str, Any]:
        schema: dict[str, Any] = document["paths"][path]["post"]["requestBody"]["content"]
        return schema["application/json"]["schema"]

    assert body("/v1/chat/completions")["properties"]["n"]["anyOf"][1] == {"type": "integer", "const": 1}
    assert body("/v1/messages")["properties"]["tools"]["anyOf"][1] == {"type": "array", "maxItems": 0}


def test_one_model_by_id_is_documented(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/models/{model_id}"]["get"]
    assert [p["name"] for p in operation["parameters"]] == ["model_id"]
    assert {"200", "404"} <= set(operation["responses"])
