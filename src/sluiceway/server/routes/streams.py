"""Streams by id: resume, Stop, and the AI SDK's resume.

- ``GET /chat/stream/{stream_id}?after=N`` answers, in the seed SSE format, exactly the events
  after ``N`` and then the live tail. A ``Last-Event-ID: <stream>:<seq>`` header (what a browser's
  ``EventSource`` sends when it reconnects) wins over ``after``: it is the newer of the two. Nothing
  left to send: 204, which also stops an ``EventSource`` from reconnecting. An ``after`` past the
  newest event logged is a 400: no client can have seen it (waiting for it would send only pings).
- ``POST /chat/stream/{stream_id}/cancel`` is the Stop button: it cancels at once, whatever the
  disconnect policy, waits (briefly) for the end to be logged and reports it with the usage so far.
- ``GET /api/chat/{chat_id}/stream`` is where ``useChat({resume: true})`` reconnects: the chat's
  running stream replayed from its start (the AI SDK's ``resumeStreamIsReplay``), then live; 204 when
  the chat has no running stream.

Every route works for streams another process runs when the stream logs are in Redis.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import JSONResponse, Response

from sluiceway.errors import InvalidRequestError, ReaderLaggedError, StreamNotFoundError
from sluiceway.events import ErrorEvent, Finish, Usage
from sluiceway.server.relay import parse_event_id, stream_response
from sluiceway.server.state import AppState, StateDep
from sluiceway.streams.hub import Stream
from sluiceway.streams.log import StreamLog
from sluiceway.wire.aisdk import UIMessageStreamEncoder
from sluiceway.wire.seed import SeedEncoder

router = APIRouter()
CANCEL_WAIT_S = 10.0
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "SSE stream"},
    204: {"description": "nothing (more) to send"},
}


def chat_key(chat_id: str) -> str:
    """The hub key under which ``POST /api/chat`` records a chat's stream."""
    return f"aisdk:{chat_id}"


async def resume_seed(http: Request, state: AppState, stream_id: str, after: int) -> Response:
    """The seed SSE of ``stream_id`` after event ``after``, then live (404 if not retained; 400 for an
    ``after`` past the stream's newest event)."""
    stream = await lookup(state, stream_id)
    await check_after(stream, after)
    return stream_response(http, state, stream, lambda s: SeedEncoder(s.stream_id), after=after)


async def check_after(stream: Stream, after: int) -> None:
    """Refuse ``after`` beyond the newest event the stream has logged (when its log can tell)."""
    last = await stream.log.logged_seq()
    if last is not None and after > last:
        raise InvalidRequestError(f"after is past the stream's last event {last} (got {after})")


async def lookup(state: AppState, stream_id: str) -> Stream:
    """The stream, run here or by another process sharing the backend; else ``stream_not_found``."""
    stream = await state.hub.lookup(stream_id)
    if stream is None:
        raise StreamNotFoundError(f"no stream {stream_id!r} here: it never existed or its retention ended")
    return stream


@router.get("/chat/stream/{stream_id}", response_class=Response, responses=SSE)
async def resume(
    stream_id: str,
    http: Request,
    state: StateDep,
    after: Annotated[int, Query(ge=0, description="the last event seq the client has")] = 0,
    last_event_id: Annotated[str | None, Header(description="<stream>:<seq>, from EventSource")] = None,
) -> Response:
    """Resume a stream after an event: exactly the events after it, then the live tail."""
    if last_event_id:
        _, after = parse_event_id(last_event_id, stream_id)
    return await resume_seed(http, state, stream_id, after)


@router.post("/chat/stream/{stream_id}/cancel")
async def cancel(stream_id: str, state: StateDep) -> JSONResponse:
    """Stop generating now; answer with how the stream ended and the usage it consumed."""
    stream = await lookup(state, stream_id)
    running = not stream.finished
    stream.cancel("stop")
    try:
        async with asyncio.timeout(CANCEL_WAIT_S):
            usage, finish, error = await _outcome(stream.log)
    except TimeoutError:
        return JSONResponse({"stream_id": stream_id, "status": "cancelling"}, status_code=202)
    body: dict[str, Any] = {
        "stream_id": stream_id,
        "status": "cancelled" if running and finish.reason == "cancelled" else "finished",
        "finish_reason": finish.reason,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    }
    if error is not None:
        body["error"] = {"code": error.code, "message": error.message}
    return JSONResponse(body)


async def _outcome(log: StreamLog) -> tuple[Usage, Finish, ErrorEvent | None]:
    """The last usage, the finish and the error of a stream, read from its log (without attaching)."""
    usage, error, after = Usage(0, 0), None, 0
    while True:
        lagged = None
        async with aclosing(log.read(after)) as events:
            async for batch in events:
                for seq, event in batch or ():
                    if isinstance(event, Finish):
                        return usage, event, error
                    if isinstance(event, ErrorEvent) and event.code == ReaderLaggedError.code:
                        lagged = seq  # the log was trimmed: only its tail matters here
                        break
                    if isinstance(event, Usage):
                        usage = event
                    elif isinstance(event, ErrorEvent):
                        error = event
                if lagged is not None:
                    break
        if lagged is None:
            raise StreamNotFoundError("the stream's log ended without its end")
        after = lagged


@router.get("/api/chat/{chat_id}/stream", response_class=Response, responses=SSE)
async def resume_chat(chat_id: str, http: Request, state: StateDep) -> Response:
    """``useChat({resume: true})``: the chat's running stream from its start, then live; else 204."""
    stream = await state.hub.find(chat_key(chat_id))
    if stream is None or stream.finished:
        return Response(status_code=204)

    def encoder(s: Stream) -> UIMessageStreamEncoder:
        return UIMessageStreamEncoder(f"msg-{s.stream_id}", s.model or "")

    return stream_response(http, state, stream, encoder)
