from __future__ import annotations

import pytest

from sluiceway.wire.sse import ServerSentEvent, SSEDecoder, comment, frame


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": "x"}, b"data: x\n\n"),
        ({"data": "a\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": ""}, b"data: \n\n"),
        ({"data": "x", "event": "ping"}, b"event: ping\ndata: x\n\n"),
        ({"data": "x", "id": "s:1"}, b"id: s:1\ndata: x\n\n"),
        ({"data": "é", "event": "e", "id": "7"}, "event: e\nid: 7\ndata: é\n\n".encode()),
    ],
)
def test_frame(kwargs: dict[str, str], expected: bytes) -> None:
    data = kwargs.pop("data")
    assert frame(data, **kwargs) == expected


def test_comment() -> None:
    assert comment("ping") == b": ping\n\n"


def decode_all(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"data: a\n\n", [ServerSentEvent("a")]),
        (b"data: a\r\n\r\n", [ServerSentEvent("a")]),
        (b"data: a\r\rdata: b\r\r", [ServerSentEvent("a"), ServerSentEvent("b")]),
        (b"data: a\ndata: b\n\n", [ServerSentEvent("a\nb")]),
        (b"data:a\n\n", [ServerSentEvent("a")]),
        (b"data:  a\n\n", [ServerSentEvent(" a")]),
        (b": comment\ndata: a\n\n", [ServerSentEvent("a")]),
        (b": ping\n\n", []),
        (b"event: x\ndata: a\n\n", [ServerSentEvent("a", event="x")]),
        (b"id: 1\ndata: a\n\ndata: b\n\n", [ServerSentEvent("a", id="1"), ServerSentEvent("b", id="1")]),
        (b"id: a\0b\ndata: a\n\n", [ServerSentEvent("a")]),
        (b"retry: 300\ndata: a\n\n", [ServerSentEvent("a", retry=300)]),
        (b"retry: 3x\ndata: a\n\n", [ServerSentEvent("a")]),
        (b"\xef\xbb\xbfdata: a\n\n", [ServerSentEvent("a")]),
        (b"data\n\n", [ServerSentEvent("")]),
        (b"event: only\n\n", []),
        (b"data: unterminated", []),
        (b"unknown: field\ndata: a\n\n", [ServerSentEvent("a")]),
        ("data: 你好 🙂\n\n".encode(), [ServerSentEvent("你好 🙂")]),
    ],
)
def test_decode_table(raw: bytes, expected: list[ServerSentEvent]) -> None:
    assert decode_all(raw) == expected


STREAM = (
    '\ufeffid: s:1\r\ndata: {"text":"héllo 你好"}\r\n\r\n'
    ": ping\n\n"
    "event: message_start\rdata: line1\rdata: line2\r\r"
    "id: s:2\ndata: 🙂 end\n\n"
).encode()
EXPECTED = [
    ServerSentEvent('{"text":"héllo 你好"}', id="s:1"),
    ServerSentEvent("line1\nline2", event="message_start", id="s:1"),
    ServerSentEvent("🙂 end", id="s:2"),
]


@pytest.mark.parametrize("split", range(len(STREAM) + 1))
def test_every_split_point(split: int) -> None:
    assert decode_all(STREAM[:split], STREAM[split:]) == EXPECTED


def test_byte_by_byte() -> None:
    assert decode_all(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


def test_roundtrip() -> None:
    payloads = ["a", "multi\nline", "", "ünïcode 🙂"]
    raw = b"".join(frame(p, id=str(i)) for i, p in enumerate(payloads))
    assert [e.data for e in decode_all(raw)] == payloads


def data_by_feed(*chunks: bytes) -> tuple[list[str], str | None, int | None]:
    decoder = SSEDecoder()
    found = [event.data for chunk in chunks for event in decoder.feed(chunk)]
    return found, decoder.last_event_id, decoder.retry


def data_by_feed_data(*chunks: bytes) -> tuple[list[str], str | None, int | None]:
    decoder = SSEDecoder()
    found = [data for chunk in chunks for data in decoder.feed_data(chunk)]
    return found, decoder.last_event_id, decoder.retry


OPENAI_LIKE = (
    b'data: {"a":1}\n\ndata: {"b":"\xe4\xbd\xa0"}\n\n: keep-alive\n\n'
    b"data: x\ndata: y\n\n\n\nid: 7\ndata: z\n\nretry: 5\ndata:nospace\n\nevent: e\ndata: w\n\n"
    b"data: [DONE]\n\n"
)
FEED_DATA_CASES = [STREAM, OPENAI_LIKE, OPENAI_LIKE.replace(b"\n", b"\r\n"), b"data: a\n\ndata: b"]


@pytest.mark.parametrize("raw", FEED_DATA_CASES, ids=["mixed", "openai-like", "crlf", "unterminated"])
def test_feed_data_is_the_data_of_feed_at_every_split_point(raw: bytes) -> None:
    for split in range(len(raw) + 1):
        assert data_by_feed_data(raw[:split], raw[split:]) == data_by_feed(raw[:split], raw[split:]), split
    for first in range(0, len(raw) + 1, 3):  # and pairs of split points
        for second in range(first, len(raw) + 1, 5):
            parts = (raw[:first], raw[first:second], raw[second:])
            assert data_by_feed_data(*parts) == data_by_feed(*parts), (first, second)


def test_feed_data_byte_by_byte_and_whole() -> None:
    for raw in FEED_DATA_CASES:
        assert data_by_feed_data(*(raw[i : i + 1] for i in range(len(raw)))) == data_by_feed(raw)
        assert data_by_feed_data(raw) == data_by_feed(raw)
    assert data_by_feed_data(OPENAI_LIKE)[0] == [
        '{"a":1}',
        '{"b":"你"}',
        "x\ny",
        "z",
        "nospace",
        "w",
        "[DONE]",
    ]
