"""The one path every streaming route takes: start a generation, wait for its first word, answer.

How the first byte is chosen: the route starts the generation and reads the log until the first
decisive event (text, an error, or the end) or until ``heartbeat_s`` passes. An error that comes
before any text is still a proper HTTP error (JSON, 4xx/5xx, ``Retry-After``) because no byte has
been sent; after that, errors travel in-band in the protocol's own shape.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing

from fastapi import Request
from starlette.responses import Response

from sluiceway.events import ErrorEvent, Event, TextDelta, Usage
from sluiceway.requests import ChatRequest
from sluiceway.server.errors import error_response
from sluiceway.server.responses import EventStreamResponse
from sluiceway.server.state import AppState
from sluiceway.streams.hub import DisconnectPolicy, Stream
from sluiceway.streams.log import Batch
from sluiceway.wire.base import Encoder

EncoderFactory = Callable[[Stream], Encoder]


def start_stream(state: AppState, request: ChatRequest, policy: DisconnectPolicy | None = None) -> Stream:
    """Resolve the model and start generating (raises before any byte if the model is unknown)."""
    _, provider = state.models.resolve(request.model)
    return state.hub.start(provider, request, policy=policy)


async def stream_response(
    http: Request,
    state: AppState,
    stream: Stream,
    make_encoder: EncoderFactory,
    *,
    after: int = 0,
    headers: dict[str, str] | None = None,
) -> Response:
    """Answer with ``stream`` read after ``after`` in the encoder's protocol."""
    reader = stream.read(after, idle=state.settings.heartbeat_s)
    head: list[Batch | None] = []
    async for batch in reader:
        head.append(batch)
        if batch is None or any(not _is_preamble(ev) for _, ev in batch):
            break
    error = _early_error(head) if after == 0 else None
    if error is not None:
        await reader.aclose()
        return error_response(error, http)
    encoder = make_encoder(stream)
    all_headers = {**encoder.headers, "X-Stream-Id": stream.stream_id, **(headers or {})}
    return EventStreamResponse(
        _body(encoder, head, reader), media_type=encoder.media_type, headers=all_headers
    )


def _is_preamble(event: Event) -> bool:
    return isinstance(event, Usage)


def _early_error(head: list[Batch | None]) -> ErrorEvent | None:
    for batch in head:
        for _, event in batch or ():
            if isinstance(event, TextDelta):
                return None
            if isinstance(event, ErrorEvent):
                return event
    return None


async def _body(
    encoder: Encoder, head: list[Batch | None], reader: AsyncGenerator[Batch | None, None]
) -> AsyncGenerator[bytes, None]:
    async with aclosing(reader):
        start = encoder.start()
        first = start + b"".join(_encode(encoder, batch) for batch in head)
        if first:
            yield first
        async for batch in reader:
            yield _encode(encoder, batch)


def _encode(encoder: Encoder, batch: Batch | None) -> bytes:
    if batch is None:
        return encoder.heartbeat()
    return b"".join(encoder.encode(seq, event) for seq, event in batch)


async def collect(reader: AsyncIterator[Batch | None]) -> Batch:
    """Read a whole stream (for non-streaming answers)."""
    events: Batch = []
    async for batch in reader:
        if batch:
            events.extend(batch)
    return events
