from __future__ import annotations

import json

import pytest

from sluiceway.errors import ERROR_CLASSES, InvalidRequestError
from sluiceway.events import ErrorEvent, Event, Finish, FinishReason, TextDelta, Usage
from sluiceway.requests import Message
from sluiceway.wire.anthropic import (
    AnthropicEncoder,
    error_shape,
    error_type,
    message_body,
    parse_request,
    stop_delta,
)
from sluiceway.wire.sse import SSEDecoder

USER = [{"role": "user", "content": "hi"}]
MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":4,"output_tokens":0}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: ping\ndata: {"type":"ping"}\n\n'
)


def encode(events: list[Event]) -> bytes:
    encoder = AnthropicEncoder("msg_1", "m")
    return b"".join(encoder.encode(i, e) for i, e in enumerate(events, start=1))


def delta(text: str) -> bytes:
    body = json.dumps(text, ensure_ascii=False)
    return (
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        f'"delta":{{"type":"text_delta","text":{body}}}}}\n\n'
    ).encode()


def tail(stop_reason: str, usage: str, stop_sequence: str = "null") -> bytes:
    return (
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"'
        + stop_reason.encode()
        + b'","stop_sequence":'
        + stop_sequence.encode()
        + b'},"usage":'
        + usage.encode()
        + b'}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([Usage(4, 0)], b""),
        ([Usage(4, 0), TextDelta("Hi")], MESSAGE_START + delta("Hi")),
        ([Usage(4, 0), TextDelta('"é\n'), TextDelta("🚀")], MESSAGE_START + delta('"é\n') + delta("🚀")),
        (
            [Usage(4, 0), TextDelta("a"), Usage(4, 1), Finish("stop")],
            MESSAGE_START + delta("a") + tail("end_turn", '{"input_tokens":4,"output_tokens":1}'),
        ),
        (
            [Usage(4, 0), TextDelta("a"), Usage(4, 1), Finish("length")],
            MESSAGE_START + delta("a") + tail("max_tokens", '{"input_tokens":4,"output_tokens":1}'),
        ),
        (
            [Usage(4, 0), Finish("stop")],
            MESSAGE_START + tail("end_turn", '{"input_tokens":4,"output_tokens":0}'),
        ),
        (
            [Usage(4, 0), TextDelta("a"), Usage(4, 1), Finish("stop", stop_sequence="END")],
            MESSAGE_START
            + delta("a")
            + tail("stop_sequence", '{"input_tokens":4,"output_tokens":1}', '"END"'),
        ),
        (
            [Usage(4, 0), TextDelta("a"), Finish("length", stop_sequence="END")],
            MESSAGE_START + delta("a") + tail("max_tokens", '{"input_tokens":4,"output_tokens":0}'),
        ),
        (
            [Usage(4, 0), Finish("cancelled")],
            MESSAGE_START + tail("end_turn", '{"input_tokens":4,"output_tokens":0}'),
        ),
        (
            [Usage(4, 0), TextDelta("a"), ErrorEvent("overloaded", "busy", True, 1.0), Finish("error")],
            MESSAGE_START + delta("a") + b'event: error\ndata: {"type":"error",'
            b'"error":{"type":"overloaded_error","message":"busy"}}\n\n',
        ),
    ],
)
def test_encode_table(events: list[Event], expected: bytes) -> None:
    assert encode(events) == expected


def test_head_without_early_usage_reports_zero_input() -> None:
    assert b'"usage":{"input_tokens":0,"output_tokens":0}' in encode([TextDelta("x")])


def test_heartbeat_is_anthropic_ping_event_once_the_message_has_started() -> None:
    encoder = AnthropicEncoder("msg_1", "m")
    encoder.encode(1, Usage(4, 0))
    assert encoder.encode(2, TextDelta("a")) == MESSAGE_START + delta("a")
    assert encoder.heartbeat() == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_a_heartbeat_before_the_first_event_starts_the_message() -> None:
    """The real API's first event is always ``message_start``: a keep-alive that comes before the
    first word sends the head (with the input tokens known so far), and the head is not repeated;
    ``message_delta`` then carries the final usage, input tokens included."""
    encoder = AnthropicEncoder("msg_1", "m")
    head = encoder.heartbeat()
    assert head == MESSAGE_START.replace(b'"input_tokens":4', b'"input_tokens":0')
    assert encoder.heartbeat() == b'event: ping\ndata: {"type":"ping"}\n\n'
    events: list[Event] = [Usage(4, 0), TextDelta("a"), Usage(4, 1), Finish("stop")]
    rest = b"".join(encoder.encode(i, e) for i, e in enumerate(events, start=1))
    assert rest == delta("a") + tail("end_turn", '{"input_tokens":4,"output_tokens":1}')
    names = [e.event for e in SSEDecoder().feed(head + rest)]
    assert names.count("message_start") == 1 and names.index("ping") > names.index("message_start")


def test_stream_decodes_at_every_split_point() -> None:
    raw = encode([Usage(2, 0), TextDelta("naïve "), TextDelta("東京"), Usage(2, 2), Finish("stop")])
    whole = [(e.event, e.data) for e in SSEDecoder().feed(raw)]
    names = [name for name, _ in whole]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(json.loads(data)["type"] == name for name, data in whole)
    for cut in range(1, len(raw)):
        decoder = SSEDecoder()
        assert [(e.event, e.data) for e in decoder.feed(raw[:cut]) + decoder.feed(raw[cut:])] == whole


# ---- requests ----------------------------------------------------------------------------------


def test_parse_minimal() -> None:
    params = parse_request({"model": "echo", "max_tokens": 5, "messages": USER})
    assert params.request.messages == (Message("user", "hi"),)
    assert (params.request.model, params.request.max_tokens, params.stream) == ("echo", 5, False)


def test_parse_system_blocks_and_options() -> None:
    params = parse_request(
        {
            "model": "m",
            "max_tokens": 20,
            "system": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "q"}]},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q2"},
            ],
            "temperature": 0.2,
            "stop_sequences": ["END"],
            "stream": True,
            "metadata": {"user_id": "u"},
        }
    )
    request = params.request
    assert request.messages == (
        Message("system", "be brief"),
        Message("user", "q"),
        Message("assistant", "a"),
        Message("user", "q2"),
    )
    assert (request.temperature, request.stop, params.stream) == (0.2, ("END",), True)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ("x", "JSON object"),
        ({"messages": USER}, "max_tokens: Field required"),
        ({"max_tokens": 5, "messages": []}, "messages"),
        ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages.0.content.0",
        ),
        ({"max_tokens": 5, "messages": USER, "system": 3}, "system"),
        ({"max_tokens": 0, "messages": USER}, "max_tokens"),
        ({"max_tokens": 5, "messages": USER, "stream": 1}, "stream"),
        ({"max_tokens": None, "messages": USER}, "max_tokens: Field required"),
        ({"max_tokens": 5, "messages": USER, "frobnicate": True}, "unknown field"),
        ({"max_tokens": 5, "messages": USER, "tools": "x"}, "tools: must be an array"),
        (
            {"max_tokens": 5, "messages": USER, "tools": [{"name": "f", "input_schema": {}}]},
            "tools: sluiceway does not call tools; tools must be empty",
        ),
        (
            {"max_tokens": 5, "messages": USER, "tools": [{"name": "f"}], "tool_choice": {"type": "any"}},
            "tools: ",
        ),
    ],
)
def test_parse_rejects(body: object, names: str) -> None:
    with pytest.raises(InvalidRequestError, match=names):
        parse_request(body)


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": []},
        {"tools": None},
        {"tool_choice": {"type": "auto"}},
        {"tools": [], "tool_choice": {"type": "any"}},
        {"thinking": {"type": "enabled", "budget_tokens": 1024}},
        {"metadata": {"user_id": "u"}, "top_k": 5, "service_tier": "auto"},
    ],
)
def test_parse_ignores_what_does_not_change_the_answer(extra: dict[str, object]) -> None:
    params = parse_request({"max_tokens": 5, "messages": USER, **extra})
    assert params.request.messages == (Message("user", "hi"),)


# ---- whole answers and errors --------------------------------------------------------------------


def test_message_body_with_the_stop_sequence_that_ended_it() -> None:
    body = message_body("msg_1", "m", "hi ", Usage(3, 1), "stop", "END")
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "END")


@pytest.mark.parametrize(
    ("finish", "stop_sequence", "expected"),
    [
        ("stop", None, {"stop_reason": "end_turn", "stop_sequence": None}),
        ("stop", "END", {"stop_reason": "stop_sequence", "stop_sequence": "END"}),
        ("stop", "", {"stop_reason": "stop_sequence", "stop_sequence": ""}),
        ("length", None, {"stop_reason": "max_tokens", "stop_sequence": None}),
        ("length", "END", {"stop_reason": "max_tokens", "stop_sequence": None}),
        ("cancelled", "END", {"stop_reason": "end_turn", "stop_sequence": None}),
        ("content_filter", None, {"stop_reason": "refusal", "stop_sequence": None}),
    ],
)
def test_stop_delta(finish: FinishReason, stop_sequence: str | None, expected: dict[str, object]) -> None:
    assert stop_delta(finish, stop_sequence) == expected


def test_message_body() -> None:
    assert message_body("msg_1", "m", "hi", Usage(3, 1), "stop") == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }


@pytest.mark.parametrize(
    ("code", "status", "type_"),
    [
        ("invalid_request", 400, "invalid_request_error"),
        ("unauthorized", 401, "authentication_error"),
        ("forbidden", 403, "permission_error"),
        ("unknown_model", 404, "not_found_error"),
        ("request_too_large", 413, "request_too_large"),
        ("rate_limited", 429, "rate_limit_error"),
        ("overloaded", 429, "overloaded_error"),
        ("upstream_error", 502, "api_error"),
        ("upstream_unavailable", 503, "overloaded_error"),
        ("upstream_timeout", 504, "timeout_error"),
        ("internal", 500, "api_error"),
        ("something_new", 405, "invalid_request_error"),
        ("something_new", 529, "overloaded_error"),
        ("invalid_request", 404, "not_found_error"),  # the framework's 404 for an unknown path
        ("invalid_request", 405, "invalid_request_error"),
        ("internal", 503, "api_error"),
    ],
)
def test_error_shape(code: str, status: int, type_: str) -> None:
    assert error_shape(ErrorEvent(code, "why"), status) == {
        "type": "error",
        "error": {"type": type_, "message": "why"},
    }


def test_every_code_maps_to_an_anthropic_type() -> None:
    known = {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "timeout_error",
        "api_error",
        "overloaded_error",
    }
    for code in ERROR_CLASSES:
        assert error_type(code) in known
