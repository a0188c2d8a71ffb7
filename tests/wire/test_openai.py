from __future__ import annotations

import json
from typing import Any

import pytest

from sluiceway.errors import ERROR_CLASSES, InvalidRequestError
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.requests import Message
from sluiceway.wire.openai import (
    FIELDS,
    UNSERVED,
    OpenAIEncoder,
    completion_body,
    error_object,
    error_shape,
    error_type,
    parse_request,
)
from sluiceway.wire.sse import SSEDecoder

HEAD = b'data: {"id":"c","object":"chat.completion.chunk","created":7,"model":"m","choices":'
USER = [{"role": "user", "content": "hi"}]


def encode(events: list[Event], **kwargs: Any) -> bytes:
    encoder = OpenAIEncoder("c", 7, "m", **kwargs)
    return b"".join(encoder.encode(i, e) for i, e in enumerate(events, start=1))


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (
            [TextDelta("Hi")],
            HEAD + b'[{"index":0,"delta":{"role":"assistant","content":"Hi"},"logprobs":null,'
            b'"finish_reason":null}]}\n\n',
        ),
        (
            [TextDelta("a"), TextDelta('"é\n')],
            HEAD + b'[{"index":0,"delta":{"role":"assistant","content":"a"},"logprobs":null,'
            b'"finish_reason":null}]}\n\n'
            + HEAD
            + '[{"index":0,"delta":{"content":"\\"é\\n"},"logprobs":null,'.encode()
            + b'"finish_reason":null}]}\n\n',
        ),
        ([Usage(3, 0)], b""),
        (
            [TextDelta("a"), Usage(3, 1), Finish("stop")],
            HEAD + b'[{"index":0,"delta":{"role":"assistant","content":"a"},"logprobs":null,'
            b'"finish_reason":null}]}\n\n'
            + HEAD
            + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
        ),
        (
            [Finish("length")],
            HEAD + b'[{"index":0,"delta":{"role":"assistant"},"logprobs":null,"finish_reason":"length"}]}\n\n'
            b"data: [DONE]\n\n",
        ),
        (
            [Finish("content_filter")],
            HEAD + b'[{"index":0,"delta":{"role":"assistant"},"logprobs":null,'
            b'"finish_reason":"content_filter"}]}\n\ndata: [DONE]\n\n',
        ),
        (
            [ErrorEvent("upstream_error", "boom", retryable=True), Finish("error")],
            b'data: {"error":{"message":"boom","type":"server_error","param":null,'
            b'"code":"upstream_error"}}\n\n'
            b"data: [DONE]\n\n",
        ),
    ],
)
def test_encode_table(events: list[Event], expected: bytes) -> None:
    assert encode(events) == expected


def test_usage_chunk_has_empty_choices_and_comes_last_before_done() -> None:
    raw = encode([Usage(5, 0), TextDelta("x"), Usage(5, 2), Finish("stop")], include_usage=True)
    assert raw.endswith(
        HEAD + b'[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\ndata: [DONE]\n\n'
    )


def test_cancelled_reads_as_stop() -> None:
    assert b'"finish_reason":"stop"' in encode([Finish("cancelled")])


def test_heartbeat_is_a_comment() -> None:
    assert OpenAIEncoder("c", 1, "m").heartbeat() == b": ping\n\n"


def test_stream_decodes_at_every_split_point() -> None:
    events: list[Event] = [Usage(2, 0), TextDelta("Grüß "), TextDelta("🚀"), Usage(2, 2), Finish("stop")]
    raw = encode(events, include_usage=True)
    whole = [e.data for e in SSEDecoder().feed(raw)]
    assert whole[-1] == "[DONE]"
    chunks = [json.loads(d) for d in whole[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Grüß 🚀"
    for cut in range(1, len(raw)):
        decoder = SSEDecoder()
        assert [e.data for e in decoder.feed(raw[:cut]) + decoder.feed(raw[cut:])] == whole


# ---- requests ----------------------------------------------------------------------------------


def test_parse_minimal() -> None:
    params = parse_request({"model": "echo", "messages": USER})
    assert params.request.messages == (Message("user", "hi"),)
    assert params.request.model == "echo"
    assert (params.stream, params.include_usage) == (False, False)


def test_parse_everything() -> None:
    params = parse_request(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None},
            ],
            "max_completion_tokens": 9,
            "max_tokens": 100,
            "temperature": 0.5,
            "stop": ["\n", "END"],
            "stream": True,
            "stream_options": {"include_usage": True},
            "top_p": 1,
        }
    )
    request = params.request
    assert request.messages == (
        Message("system", "be brief"),
        Message("user", "ab"),
        Message("assistant", ""),
    )
    assert (request.max_tokens, request.temperature, request.stop) == (9, 0.5, ("\n", "END"))
    assert (params.stream, params.include_usage) == (True, True)


def test_parse_without_model_leaves_it_to_the_route() -> None:
    assert parse_request({"messages": USER}).request.model == ""


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ([], "JSON object"),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
        ({"messages": USER, "model": 3}, "model"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "temperature": 3}, "temperature"),
        ({"messages": USER, "stop": 5}, "stop"),
        ({"messages": USER, "stream": "yes"}, "stream"),
        ({"messages": USER, "stream_options": []}, "stream_options"),
        ({"messages": USER, "stream_options": {"include_usage": "yes"}}, "include_usage"),
        ({"messages": USER, "max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"messages": USER, "frobnicate": True}, "unknown field"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "system"}, *USER]}, "messages[0].content"),
        ({"messages": [*USER, {"role": "developer", "content": None}]}, "messages[1].content"),
    ],
)
def test_parse_rejects(body: object, names: str) -> None:
    with pytest.raises(InvalidRequestError, match=names.replace("[", r"\[").replace("]", r"\]")):
        parse_request(body)


def test_an_assistant_turn_may_have_no_content() -> None:
    messages = [*USER, {"role": "assistant"}, {"role": "assistant", "content": None}, *USER]
    assert parse_request({"messages": messages}).request.messages[1:3] == (
        Message("assistant", ""),
        Message("assistant", ""),
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"n": 2}, "n: sluiceway answers with one choice; n must be 1"),
        ({"n": 0}, "n: sluiceway answers with one choice"),
        ({"n": "abc"}, "n: must be an integer"),
        ({"n": True}, "n: must be an integer"),
        ({"n": 1.0}, "n: must be an integer"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools: sluiceway does not call tools",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
            "tools: sluiceway does not call tools; tools must be empty",
        ),
        ({"tools": "x"}, "tools: must be an array"),
        ({"tool_choice": "required"}, "tool_choice: sluiceway does not call tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice: sluiceway does not"),
        ({"tool_choice": 3}, "tool_choice: must be a string or an object"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls: must be a boolean"),
        ({"functions": [{"name": "f"}]}, "functions: sluiceway does not call tools"),
        ({"functions": {}}, "functions: must be an array"),
        ({"function_call": {"name": "f"}}, "function_call: sluiceway does not call tools"),
        ({"logprobs": True}, "logprobs: sluiceway does not return log probabilities; logprobs must be false"),
        ({"logprobs": "y"}, "logprobs: must be a boolean"),
        ({"top_logprobs": 3}, "top_logprobs: sluiceway does not return log probabilities"),
        ({"top_logprobs": "3"}, "top_logprobs: must be an integer"),
        ({"response_format": {"type": "json_object"}}, "response_format: sluiceway answers with free text"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
            'response_format: sluiceway answers with free text; response_format must be {"type": "text"}',
        ),
        ({"response_format": {}}, "response_format: sluiceway answers with free text"),
        ({"response_format": "json"}, "response_format: must be an object"),
        ({"modalities": ["text", "audio"]}, "modalities: sluiceway answers with text only"),
        ({"modalities": []}, "modalities: sluiceway answers with text only"),
        ({"modalities": "text"}, "modalities: must be an array of strings"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio: sluiceway answers with text only"),
        ({"audio": "alloy"}, "audio: must be an object"),
        ({"n": "abc", "tools": "x", "logprobs": "y"}, "n: must be an integer"),  # the first, by the table
    ],
)
def test_unserved_features_are_refused_naming_the_field(extra: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_request({"messages": USER, **extra})
    assert info.value.message.startswith(message)


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 1},
        {"n": None},
        {"tools": []},
        {"tools": None},
        {"tool_choice": "none"},
        {"tool_choice": "auto"},
        {"tools": [], "tool_choice": "auto", "parallel_tool_calls": True},
        {"tool_choice": None, "parallel_tool_calls": False},
        {"functions": [], "function_call": "none"},
        {"function_call": "auto"},
        {"logprobs": False},
        {"logprobs": None, "top_logprobs": None},
        {"top_logprobs": 0},
        {"response_format": {"type": "text"}},
        {"response_format": None},
        {"modalities": ["text"]},
        {"modalities": None, "audio": None},
        {"seed": 1, "top_p": 0.5, "user": "u", "frequency_penalty": 0, "presence_penalty": 0},
        {"logit_bias": {"50256": -100}, "metadata": {"k": "v"}, "store": False, "service_tier": "auto"},
        {"reasoning_effort": "low", "verbosity": "low", "prediction": None, "web_search_options": None},
    ],
)
def test_default_values_of_unserved_features_are_accepted(extra: dict[str, object]) -> None:
    assert parse_request({"messages": USER, **extra}).request.messages == (Message("user", "hi"),)


def test_unserved_fields_are_fields_of_the_real_api() -> None:
    assert {field.name for field in UNSERVED} <= FIELDS


# ---- whole answers and errors --------------------------------------------------------------------


def test_completion_body() -> None:
    assert completion_body("c", 7, "m", "hi", Usage(3, 1), "length") == {
        "id": "c",
        "object": "chat.completion",
        "created": 7,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


@pytest.mark.parametrize(
    ("code", "status", "type_", "wire_code"),
    [
        ("invalid_request", 400, "invalid_request_error", "invalid_request"),
        ("unknown_model", 404, "invalid_request_error", "model_not_found"),
        ("unauthorized", 401, "invalid_request_error", "invalid_api_key"),
        ("rate_limited", 429, "rate_limit_error", "rate_limited"),
        ("overloaded", 429, "rate_limit_error", "overloaded"),
        ("upstream_timeout", 504, "server_error", "upstream_timeout"),
        ("internal", 500, "server_error", "internal"),
    ],
)
def test_error_shape(code: str, status: int, type_: str, wire_code: str) -> None:
    body = error_shape(ErrorEvent(code, "why"), status)
    assert body == {"error": {"message": "why", "type": type_, "param": None, "code": wire_code}}


def test_every_code_has_a_type_matching_its_status() -> None:
    for code, cls in ERROR_CLASSES.items():
        assert error_type(code) == error_object(code, "", cls.status)["type"]


@pytest.mark.parametrize("text", ["", " plain", 'q"uote\\back', "é🙂\u2028", "line\nbreak\t"])
def test_a_later_token_is_the_same_chunk_as_the_first_without_the_role(text: str) -> None:
    """Tokens after the first take a pre-rendered path: the same JSON as a general chunk."""
    encoder = OpenAIEncoder("chatcmpl-1", 1700000000, "m")
    first = json.loads(encoder.encode(1, TextDelta(text)).decode()[6:])
    later = encoder.encode(2, TextDelta(text))
    assert later.startswith(b"data: ") and later.endswith(b"\n\n")
    del first["choices"][0]["delta"]["role"]
    assert json.loads(later.decode()[6:]) == first
    assert (
        later == b"data: " + json.dumps(first, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )
