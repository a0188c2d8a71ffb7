from __future__ import annotations

import json

import pytest

from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.wire.seed import SeedEncoder
from sluiceway.wire.sse import SSEDecoder


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([TextDelta("Hi")], b'id: s:1\ndata: {"type":"chunk","text":"Hi"}\n\n'),
        ([TextDelta('"é\n')], 'id: s:1\ndata: {"type":"chunk","text":"\\"é\\n"}\n\n'.encode()),
        ([Usage(3, 0)], b""),
        (
            [Usage(3, 2), Finish("stop", ttft_ms=12.5, tokens_per_s=40.0)],
            b'id: s:2\ndata: {"type":"done","usage":{"input_tokens":3,"output_tokens":2},'
            b'"finish_reason":"stop","ttft_ms":12.5,"tokens_per_s":40.0}\n\ndata: [DONE]\n\n',
        ),
        (
            [Finish("cancelled")],
            b'id: s:1\ndata: {"type":"done","usage":{"input_tokens":0,"output_tokens":0},'
            b'"finish_reason":"cancelled","ttft_ms":null,"tokens_per_s":null}\n\ndata: [DONE]\n\n',
        ),
        (
            [ErrorEvent("upstream_error", "boom", retryable=True), Finish("error")],
            b'id: s:1\ndata: {"type":"error","code":"upstream_error","message":"boom","retryable":true}'
            b"\n\ndata: [DONE]\n\n",
        ),
        (
            [ErrorEvent("rate_limited", "slow down", True, 2.0)],
            b'id: s:1\ndata: {"type":"error","code":"rate_limited","message":"slow down",'
            b'"retryable":true,"retry_after":2.0}\n\n',
        ),
    ],
)
def test_encode_table(events: list[Event], expected: bytes) -> None:
    encoder = SeedEncoder("s")
    assert b"".join(encoder.encode(i, e) for i, e in enumerate(events, start=1)) == expected


def test_heartbeat_is_a_comment() -> None:
    assert SeedEncoder("s").heartbeat() == b": ping\n\n"


def test_seed_browser_reader_sees_text_only_in_chunks() -> None:
    encoder = SeedEncoder("abc")
    raw = b"".join(
        encoder.encode(i, e)
        for i, e in enumerate([Usage(1, 0), TextDelta("a"), TextDelta("b"), Usage(1, 2), Finish("stop")], 1)
    )
    decoded = SSEDecoder().feed(raw)
    assert decoded[-1].data == "[DONE]"
    bodies = [json.loads(e.data) for e in decoded[:-1]]
    assert "".join(b.get("text", "") for b in bodies) == "ab"
    assert [e.id for e in decoded[:-1]] == ["abc:2", "abc:3", "abc:5"]


@pytest.mark.parametrize("text", ["", " plain", 'q"uote\\back', "é🙂\u2028", "line\nbreak\t"])
def test_a_token_event_is_compact_json_with_its_id(text: str) -> None:
    frame = SeedEncoder("s1").encode(7, TextDelta(text))
    body = json.dumps({"type": "chunk", "text": text}, ensure_ascii=False, separators=(",", ":"))
    assert frame == f"id: s1:7\ndata: {body}\n\n".encode()
