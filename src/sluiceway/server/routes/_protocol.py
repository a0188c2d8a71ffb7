"""What every client-protocol route shares: reading the body, choosing the model, whole answers.

How a non-streaming answer notices that its client left: once the body is read, the next ASGI
``receive()`` returns only at ``http.disconnect``. :func:`complete` races that against reading the
stream to its end; if the client goes first, the reader is closed, which detaches it from the
stream, and the hub cancels the generation as its disconnect policy says (as for a stream).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Any

from fastapi import Request

from sluiceway.errors import InvalidRequestError
from sluiceway.events import ErrorEvent, Finish, FinishReason, TextDelta, Usage
from sluiceway.requests import ChatRequest
from sluiceway.server.relay import collect
from sluiceway.server.state import AppState
from sluiceway.streams.hub import Stream
from sluiceway.streams.log import Batch


async def read_json(http: Request) -> Any:
    """The request body as JSON (raises ``InvalidRequestError`` for anything else)."""
    try:
        return json.loads(await http.body())
    except ValueError:
        raise InvalidRequestError("the request body must be JSON") from None


def resolve(state: AppState, request: ChatRequest) -> ChatRequest:
    """``request`` with its model resolved (empty: the default) and ``max_tokens`` capped for it.

    Raises ``UnknownModelError`` before any byte is sent.
    """
    config, _ = state.models.resolve(request.model or None)
    return replace(
        request, model=config.name, max_tokens=state.models.cap_max_tokens(config, request.max_tokens)
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole generation: its text, last usage, finish reason and error (if it failed)."""

    text: str
    usage: Usage
    finish: FinishReason
    error: ErrorEvent | None


def summarize(events: Batch) -> Answer:
    """Fold a stream's events into one :class:`Answer`."""
    texts: list[str] = []
    usage = Usage(0, 0)
    finish: FinishReason = "stop"
    error: ErrorEvent | None = None
    for _, event in events:
        match event:
            case TextDelta(text):
                texts.append(text)
            case Usage():
                usage = event
            case ErrorEvent():
                error = error or event
            case Finish(reason):
                finish = reason
    return Answer("".join(texts), usage, finish, error)


async def complete(http: Request, stream: Stream) -> Answer | None:
    """Read ``stream`` to its end; ``None`` if the client disconnected first."""
    collector = asyncio.ensure_future(collect(stream.read()))
    watcher = asyncio.ensure_future(_disconnected(http))
    try:
        await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (collector, watcher):
            task.cancel()
        await asyncio.gather(collector, watcher, return_exceptions=True)
    if collector.cancelled():
        return None
    return summarize(collector.result())


async def _disconnected(http: Request) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass
