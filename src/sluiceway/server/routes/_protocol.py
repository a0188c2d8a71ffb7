"""What every client-protocol route shares: installing, reading the body, choosing the model, whole answers.

How a non-streaming answer notices that its client left: once the body is read, the next ASGI
``receive()`` returns only at ``http.disconnect``. :func:`complete` races that against reading the
stream to its end; if the client goes first, the reader is closed, which detaches it from the
stream, and the hub cancels the generation as its disconnect policy says (as for a stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response

from sluiceway.errors import InvalidRequestError
from sluiceway.events import ErrorEvent, Finish, FinishReason, TextDelta, Usage, repaired_text
from sluiceway.requests import ChatRequest
from sluiceway.server.errors import ErrorShape, error_response
from sluiceway.server.relay import collect
from sluiceway.server.state import AppState
from sluiceway.streams.hub import Stream
from sluiceway.streams.log import Batch

DirectEndpoint = Callable[[Request, AppState], Awaitable[Response]]


def route_directly(app: FastAPI, router: APIRouter, endpoint: DirectEndpoint) -> None:
    """Dispatch ``POST`` on ``endpoint``'s path (as ``router`` declares it) to ``endpoint`` ahead of
    FastAPI's router; call it before any router is included, so that this route is tried first.

    Why: FastAPI's router tries the routes of every included router in turn and resolves each
    route's dependencies per request: 120-220 µs of a streaming request's CPU here
    (``benchmarks/asgi_request.py``; docs/benchmarks.md). A plain Starlette route calls
    ``endpoint(request, app state)`` directly; errors still go through the app's exception handlers,
    every middleware still runs. The FastAPI route stays registered for the OpenAPI document (it is
    never reached for ``POST``), so ``endpoint`` must take exactly the request and the state.
    """
    path = next(r.path for r in router.routes if isinstance(r, APIRoute) and r.endpoint is endpoint)

    async def direct(request: Request) -> Response:
        return await endpoint(request, request.app.state.sluiceway)

    name = f"{endpoint.__name__}-direct"
    app.router.add_route(path, direct, methods=["POST"], name=name, include_in_schema=False)


def install_protocol(
    app: FastAPI, router: APIRouter, error_prefixes: Iterable[str], error_shape: ErrorShape
) -> None:
    """Serve ``router`` on ``app``; errors under ``error_prefixes`` take the protocol's ``error_shape``."""
    app.include_router(router)
    for prefix in error_prefixes:
        app.state.error_shapes.register(prefix, error_shape)


async def read_json(http: Request) -> Any:
    """The request body as JSON (raises ``InvalidRequestError`` for anything else).

    Parsed by ``orjson``, which refuses what the standard library lets through and nothing
    downstream can encode again: escapes of lone surrogates (``"\\ud800"``), and nesting deeper
    than 1,024 levels (``json.loads`` raises ``RecursionError`` there instead)."""
    try:
        return orjson.loads(await http.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body must be JSON ({exc.msg})") from None


class JSONRequest(Request):
    """A request whose ``json()`` is parsed as :func:`read_json` parses (FastAPI reads bodies
    through it); an error is ``orjson.JSONDecodeError``, a ``json.JSONDecodeError``, which FastAPI
    answers as a validation error."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class JSONRoute(APIRoute):
    """The route class of the routers that take JSON bodies: their requests are :class:`JSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(JSONRequest(request.scope, request.receive))

        return handle


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
    stop_sequence: str | None = None
    """The stop sequence that ended it, when the model said which."""


def summarize(events: Batch) -> Answer:
    """Fold a stream's events into one :class:`Answer`."""
    texts: list[str] = []
    usage = Usage(0, 0)
    finish: FinishReason = "stop"
    stop_sequence: str | None = None
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
                finish, stop_sequence = reason, event.stop_sequence
    return Answer(repaired_text("".join(texts)), usage, finish, error, stop_sequence)


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


async def answer_response(
    http: Request, stream: Stream, body: Callable[[Answer], dict[str, Any]]
) -> Response:
    """The non-streaming answer: ``body(answer)`` as JSON, the error's response if the generation
    failed, or 499 if the client disconnected first."""
    answer = await complete(http, stream)
    headers = {"X-Stream-Id": stream.stream_id}  # also on errors: the request log names the stream
    if answer is None:
        return Response(status_code=499, headers=headers)
    if answer.error is not None:
        response = error_response(answer.error, http)
        response.headers.update(headers)
        return response
    return JSONResponse(body(answer), headers=headers)


async def _disconnected(http: Request) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass
