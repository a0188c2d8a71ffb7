from __future__ import annotations

import json

import pytest

from sluiceway.errors import InvalidRequestError
from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.requests import Message
from sluiceway.wire.aisdk import UIMessageStreamEncoder, parse_request
from sluiceway.wire.sse import SSEDecoder

START = b'data: {"type":"start","messageId":"msg-1"}\n\ndata: {"type":"start-step"}\n\n'
TEXT_START = b'data: {"type":"text-start","id":"text-0"}\n\n'
TEXT_END = b'data: {"type":"text-end","id":"text-0"}\n\n'
DONE = b"data: [DONE]\n\n"


def encode(events: list[Event]) -> bytes:
    encoder = UIMessageStreamEncoder("msg-1", "m")
    return encoder.start() + b"".join(encoder.encode(i, e) for i, e in enumerate(events, start=1))


def delta(text: str) -> bytes:
    body = json.dumps(text, ensure_ascii=False)
    return f'data: {{"type":"text-delta","id":"text-0","delta":{body}}}\n\n'.encode()


def finish(reason: str, usage: str) -> bytes:
    return (
        b'data: {"type":"finish-step"}\n\n'
        b'data: {"type":"finish","finishReason":"' + reason.encode() + b'","messageMetadata":'
        b'{"model":"m","usage":' + usage.encode() + b"}}\n\n"
    )


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], START),
        ([Usage(2, 0)], START),
        ([TextDelta("Hi")], START + TEXT_START + delta("Hi")),
        ([TextDelta("a"), TextDelta('"é\n🚀')], START + TEXT_START + delta("a") + delta('"é\n🚀')),
        (
            [Usage(2, 0), TextDelta("a"), Usage(2, 1), Finish("stop")],
            START
            + TEXT_START
            + delta("a")
            + TEXT_END
            + finish("stop", '{"inputTokens":2,"outputTokens":1}')
            + DONE,
        ),
        (
            [TextDelta("a"), Finish("length")],
            START
            + TEXT_START
            + delta("a")
            + TEXT_END
            + finish("length", '{"inputTokens":0,"outputTokens":0}')
            + DONE,
        ),
        ([Finish("stop")], START + finish("stop", '{"inputTokens":0,"outputTokens":0}') + DONE),
        (
            [Finish("content_filter")],
            START + finish("content-filter", '{"inputTokens":0,"outputTokens":0}') + DONE,
        ),
        (
            [TextDelta("a"), ErrorEvent("upstream_error", "boom", True), Finish("error")],
            START
            + TEXT_START
            + delta("a")
            + b'data: {"type":"error","errorText":"boom"}\n\n'
            + TEXT_END
            + DONE,
        ),
        (
            [TextDelta("a"), Finish("cancelled")],
            START
            + TEXT_START
            + delta("a")
            + TEXT_END
            + b'data: {"type":"abort","reason":"cancelled"}\n\n'
            + DONE,
        ),
    ],
)
def test_encode_table(events: list[Event], expected: bytes) -> None:
    assert encode(events) == expected


def test_headers_name_the_ui_message_stream() -> None:
    encoder = UIMessageStreamEncoder("x", "m")
    assert encoder.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert encoder.media_type == "text/event-stream"
    assert encoder.heartbeat() == b": ping\n\n"


def test_stream_decodes_at_every_split_point() -> None:
    raw = encode([Usage(1, 0), TextDelta("Grüß "), TextDelta("👍🏽"), Usage(1, 2), Finish("stop")])
    whole = [e.data for e in SSEDecoder().feed(raw)]
    assert whole[-1] == "[DONE]"
    types = [json.loads(d)["type"] for d in whole[:-1]]
    assert types == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    for cut in range(1, len(raw)):
        decoder = SSEDecoder()
        assert [e.data for e in decoder.feed(raw[:cut]) + decoder.feed(raw[cut:])] == whole


# ---- requests ----------------------------------------------------------------------------------


def test_parse_transport_body() -> None:
    params = parse_request(
        {
            "id": "chat-1",
            "messages": [
                {"id": "s", "role": "system", "parts": [{"type": "text", "text": "be brief"}]},
                {
                    "id": "u1",
                    "role": "user",
                    "parts": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {
                    "id": "a1",
                    "role": "assistant",
                    "parts": [{"type": "step-start"}, {"type": "text", "text": "ab", "state": "done"}],
                },
                {
                    "id": "u2",
                    "role": "user",
                    "parts": [{"type": "file", "url": "data:,x"}, {"type": "text", "text": "c"}],
                },
            ],
            "trigger": "submit-message",
            "messageId": None,
            "model": "echo",
            "max_tokens": 7,
            "temperature": 0.3,
            "stop": ["END"],
        }
    )
    request = params.request
    assert request.messages == (
        Message("system", "be brief"),
        Message("user", "ab"),
        Message("assistant", "ab"),
        Message("user", "c"),
    )
    assert (request.model, request.max_tokens, request.temperature, request.stop) == (
        "echo",
        7,
        0.3,
        ("END",),
    )
    assert (params.chat_id, params.trigger) == ("chat-1", "submit-message")


def test_parse_camel_case_max_output_tokens_and_content_strings() -> None:
    params = parse_request({"messages": [{"role": "user", "content": "hi"}], "maxOutputTokens": 3})
    assert params.request.messages == (Message("user", "hi"),)
    assert (params.request.model, params.request.max_tokens, params.chat_id) == ("", 3, None)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (None, "JSON object"),
        ({"messages": []}, "messages"),
        ({"messages": [1]}, r"messages\[0\]"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\].parts"),
        ({"messages": [{"role": "tool", "parts": []}]}, r"messages\[0\].role"),
        ({"messages": [{"role": "user", "parts": []}], "model": 1}, "model"),
        ({"messages": [{"role": "user", "parts": []}], "temperature": "hot"}, "temperature"),
    ],
)
def test_parse_rejects(body: object, names: str) -> None:
    with pytest.raises(InvalidRequestError, match=names):
        parse_request(body)


@pytest.mark.parametrize("text", ["", " plain", 'q"uote\\back', "é🙂\u2028", "line\nbreak\t"])
def test_a_later_text_delta_is_the_general_chunk(text: str) -> None:
    encoder = UIMessageStreamEncoder("msg-1", "m")
    encoder.encode(1, TextDelta("first"))
    body = json.dumps(
        {"type": "text-delta", "id": "text-0", "delta": text}, ensure_ascii=False, separators=(",", ":")
    )
    assert encoder.encode(2, TextDelta(text)) == f"data: {body}\n\n".encode()
