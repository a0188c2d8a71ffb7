from __future__ import annotations

import json

import pytest

from sluiceway.errors import InvalidRequestError, OverloadedError
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.requests import Message
from sluiceway.wire.websocket import Cancel, Turn, WebSocketEncoder, error_frame, parse_frame


def frames(events: list[Event]) -> list[str]:
    encoder = WebSocketEncoder("s1", "m")
    return [f for f in (encoder.encode(e) for e in events) if f is not None]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([Usage(3, 0)], []),
        (
            [TextDelta("Hi"), TextDelta('"é\n')],
            ['{"type":"chunk","text":"Hi"}', '{"type":"chunk","text":"\\"é\\n"}'],
        ),
        (
            [Usage(3, 0), TextDelta("a"), Usage(3, 1), Finish("stop", ttft_ms=1.5, tokens_per_s=None)],
            [
                '{"type":"chunk","text":"a"}',
                '{"type":"done","usage":{"input_tokens":3,"output_tokens":1},"finish_reason":"stop",'
                '"ttft_ms":1.5,"tokens_per_s":null}',
            ],
        ),
        (
            [Finish("cancelled")],
            [
                '{"type":"done","usage":{"input_tokens":0,"output_tokens":0},"finish_reason":"cancelled",'
                '"ttft_ms":null,"tokens_per_s":null}'
            ],
        ),
        (
            [TextDelta("a"), ErrorEvent("upstream_error", "boom", True), Finish("error")],
            [
                '{"type":"chunk","text":"a"}',
                '{"type":"error","code":"upstream_error","message":"boom","retryable":true}',
            ],
        ),
    ],
)
def test_encode_table(events: list[Event], expected: list[str]) -> None:
    assert frames(events) == expected


def test_start_frame_names_stream_and_model() -> None:
    assert WebSocketEncoder("s1", "echo").start() == '{"type":"start","stream_id":"s1","model":"echo"}'


def test_error_frame() -> None:
    assert json.loads(error_frame(ErrorEvent("invalid_request", "no"))) == {
        "type": "error",
        "code": "invalid_request",
        "message": "no",
    }


def test_an_error_frame_carries_the_errors_retry_hints() -> None:
    refused = OverloadedError("busy", retry_after=1.0).to_event()
    assert json.loads(error_frame(refused)) == {
        "type": "error",
        "code": "overloaded",
        "message": "busy",
        "retryable": True,
        "retry_after": 1.0,
    }


def test_parse_cancel() -> None:
    assert parse_frame('{"type": "cancel"}') == Cancel()


def test_parse_one_message() -> None:
    frame = parse_frame('{"message": "hi"}')
    assert isinstance(frame, Turn)
    assert frame.request.messages == (Message("user", "hi"),)
    assert frame.request.model == ""


def test_parse_conversation_with_limits() -> None:
    frame = parse_frame(
        json.dumps(
            {
                "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                "message": "more",
                "model": "echo",
                "max_tokens": 4,
                "temperature": 1,
                "stop": "x",
            }
        )
    )
    assert isinstance(frame, Turn)
    request = frame.request
    assert request.messages == (Message("system", "s"), Message("user", "u"), Message("user", "more"))
    assert (request.model, request.max_tokens, request.temperature, request.stop) == ("echo", 4, 1.0, ("x",))


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("not json", "JSON"),
        ("[1]", "JSON objects"),
        ('{"type": "resume"}', "unknown frame type"),
        ("{}", "give 'message'"),
        ('{"message": 3}', "message: must be a string"),
        ('{"messages": {}}', "messages"),
        ('{"messages": [3]}', r"messages\[0\]"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', r"messages\[0\].role"),
        ('{"message": "x", "model": 1}', "model"),
        ('{"message": "x", "max_tokens": -1}', "max_tokens"),
    ],
)
def test_parse_rejects(text: str, names: str) -> None:
    with pytest.raises(InvalidRequestError, match=names):
        parse_frame(text)
