"""The seed SSE format of ``POST /chat/stream``.

::

    id: <stream>:<seq>
    data: {"type":"chunk","text":"Hel"}

    id: <stream>:<seq>
    data: {"type":"done","usage":{"input_tokens":5,"output_tokens":2},"finish_reason":"stop",
           "ttft_ms":12.5,"tokens_per_s":80.1}

    data: [DONE]

Errors once streaming began: ``data: {"type":"error","code":…,"message":…}`` then ``data: [DONE]``.
A browser client that reads only ``.text`` of each JSON object keeps working.
"""

from __future__ import annotations

from typing import Any

import orjson

from sluiceway.events import ErrorEvent, Event, Finish, TextDelta, Usage
from sluiceway.wire.sse import PING, frame

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def dumps(obj: Any) -> str:
    """Compact JSON, UTF-8 kept as is (the same text as ``json.dumps(obj, ensure_ascii=False,
    separators=(",", ":"))``, about ten times faster: this runs once per token)."""
    return orjson.dumps(obj).decode()


def error_payload(event: ErrorEvent) -> dict[str, Any]:
    """The JSON body of an in-band error."""
    payload: dict[str, Any] = {"type": "error", "code": event.code, "message": event.message}
    if event.retryable:
        payload["retryable"] = True
    if event.retry_after is not None:
        payload["retry_after"] = event.retry_after
    return payload


class SeedEncoder:
    """Encoder for the seed format; ``stream_id`` prefixes every event id."""

    media_type = "text/event-stream"
    headers = SSE_HEADERS

    def __init__(self, stream_id: str) -> None:
        self._prefix = f"id: {stream_id}:"
        self._id_prefix = self._prefix.encode()
        self._usage = Usage(0, 0)

    def start(self) -> bytes:
        return b""

    def heartbeat(self) -> bytes:
        return PING

    def encode(self, seq: int, event: Event) -> bytes:
        if type(event) is TextDelta:  # per token: bytes joined, one dumps of the text alone
            return b'%s%d\ndata: {"type":"chunk","text":%s}\n\n' % (
                self._id_prefix,
                seq,
                orjson.dumps(event.text),
            )
        match event:
            case Usage():
                self._usage = event
                return b""
            case ErrorEvent():
                return frame(dumps(error_payload(event)), id=f"{self._prefix[4:]}{seq}")
            case Finish(reason="error"):
                return DONE
            case Finish():
                done = {
                    "type": "done",
                    "usage": {
                        "input_tokens": self._usage.input_tokens,
                        "output_tokens": self._usage.output_tokens,
                    },
                    "finish_reason": event.reason,
                    "ttft_ms": event.ttft_ms,
                    "tokens_per_s": event.tokens_per_s,
                }
                return frame(dumps(done), id=f"{self._prefix[4:]}{seq}") + DONE
        raise AssertionError(f"unhandled event {event!r}")
