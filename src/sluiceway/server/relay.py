"""The one path every streaming route takes: start a generation, wait for its first word, answer.

How the first byte is chosen: the route starts the generation and answers with a
:class:`StreamAnswer`, which reads the log until the first decisive event (text, an error, or the
end) or until ``heartbeat_s`` passes, and only then picks the response; under
:class:`~sluiceway.server.responses.SluicewayApp` it does so once the middleware has returned, so
no layer is held while a request waits for its first word (a burst of a thousand requests left
the server ≈ 20 MB larger when they all waited inside the layers). An error that comes
before any text is still a proper HTTP error (JSON, 4xx/5xx, ``Retry-After``) because no byte has
been sent; after that, errors travel in-band in the protocol's own shape. A resume (``after > 0``)
never turns into an HTTP error: the client already holds part of the answer. A resume with nothing
left to send answers 204, which also tells a browser's ``EventSource`` to stop reconnecting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import replace

from fastapi import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sluiceway._tasks import stop_task
from sluiceway.errors import InvalidRequestError
from sluiceway.events import ErrorEvent, Event, TextDelta, Usage, repaired_text
from sluiceway.requests import ChatRequest
from sluiceway.server.auth import current_key
from sluiceway.server.errors import error_response, exception_response
from sluiceway.server.limits import InputNames, admit
from sluiceway.server.responses import (
    CLIENT_LEFT,
    Deferred,
    DeferredResponse,
    EventStreamResponse,
    unless_gone,
)
from sluiceway.server.settings import Settings
from sluiceway.server.state import AppState
from sluiceway.streams.backend import StreamBackend
from sluiceway.streams.generation import Candidate, RetryPolicy, Timeouts
from sluiceway.streams.hub import DisconnectPolicy, HubSettings, Stream, StreamHub
from sluiceway.streams.log import Batch
from sluiceway.streams.shutdown import ShutdownSignal
from sluiceway.wire.base import Encoder

EncoderFactory = Callable[[Stream], Encoder]


def start_stream(
    state: AppState,
    request: ChatRequest,
    policy: DisconnectPolicy | None = None,
    *,
    grace_s: float | None = None,
    key: str | None = None,
    protocol: str = "",
    names: InputNames | None = None,
) -> Stream:
    """Resolve the model and start generating; raises before any byte if the model is unknown,
    the server is at its limits (``overloaded``) or shutting down (``shutting_down``).

    The model's configured ``fallbacks`` (those loaded here) go along, tried in order if the model
    fails before its first token. ``key`` names the stream for ``hub.find`` (AI SDK: the chat id).
    ``protocol`` (the route's: ``openai``, ``seed`` …) labels the generation's metrics; ``names``
    is how its 400s for input limits name the request's fields (the request's own layout if unset).

    Also raises when the request breaks an input limit, or the caller's API key may not use the
    model or has reached a quota (``forbidden``, ``rate_limited``): see :mod:`sluiceway.server.limits`.
    """
    config, provider = state.models.resolve(request.model)
    request, lease = admit(state.settings, state.limits, current_key(), config, request, names)
    try:
        stream = state.hub.start(
            provider,
            request,
            policy=policy,
            grace_s=grace_s,
            key=key,
            fallbacks=_fallbacks(state, request, config.fallbacks),
            protocol=protocol,
        )
    except BaseException:
        lease.cancel()
        raise
    lease.hold(stream)
    return stream


def _fallbacks(state: AppState, request: ChatRequest, names: tuple[str, ...]) -> list[Candidate]:
    chain: list[Candidate] = []
    for name in names:
        if name == request.model or name not in state.models.providers:
            continue
        config, provider = state.models.resolve(name)
        max_tokens = state.models.cap_max_tokens(config, request.max_tokens)
        chain.append((replace(request, model=name, max_tokens=max_tokens), provider))
    return chain


def stream_response(
    http: Request, state: AppState, stream: Stream, make_encoder: EncoderFactory, *, after: int = 0
) -> Response:
    """Answer with ``stream`` read after ``after`` in the encoder's protocol (a :class:`StreamAnswer`)."""
    return StreamAnswer(http, state, stream, make_encoder, after)


class StreamAnswer(DeferredResponse):
    """The answer to a streaming request, chosen once the stream's first decisive event is in: the
    stream in the encoder's protocol, a JSON error in the route's shape, or 204 (a resume with
    nothing left to send). Under :class:`~sluiceway.server.responses.SluicewayApp` it waits for that
    event after the middleware has returned. Headers a route sets on it (``X-Stream-Id`` is set)
    go on whichever response it turns into."""

    def __init__(
        self, http: Request, state: AppState, stream: Stream, make_encoder: EncoderFactory, after: int
    ) -> None:
        self.http = http
        self.state = state
        self.stream = stream
        self.make_encoder = make_encoder
        self.after = after
        self.status_code = 200
        self.background = None
        self.init_headers({"X-Stream-Id": stream.stream_id})

    async def finish(
        self, scope: Scope, receive: Receive, deferred: Deferred, server_send: Send
    ) -> DeferredResponse | None:
        chosen: tuple[Response, asyncio.Task[None] | None] | None
        try:
            chosen = await unless_gone(receive, self._choose())
        except Exception as exc:  # in place, the app's exception handlers would have answered it so
            chosen = exception_response(exc, self.http), None
        if chosen is None:  # the client left before the first word: its reader is closed, the policy applies
            scope[CLIENT_LEFT] = self.stream.stream_id
            return None
        response, listener = chosen
        if isinstance(response, EventStreamResponse):
            response.listener = listener
            return response  # finished in this answer's place: the request and the route's closures go
        if listener is not None:
            await stop_task(listener)
        response.headers.update(self.headers)
        await response(scope, receive, deferred.take_send())
        return None

    async def abandon(self) -> None:
        self.stream.readers_left()  # no reader will come from here: the disconnect policy applies

    async def _choose(self) -> Response:
        reader = self.stream.read(self.after, idle=self.state.settings.heartbeat_s or None)
        head: list[Batch | None] = []
        try:
            async for batch in reader:
                head.append(batch)
                if batch is None or any(not _is_preamble(ev) for _, ev in batch):
                    break
        except BaseException:
            await reader.aclose()
            raise
        error = _early_error(head) if self.after == 0 else None
        if error is not None or not head:
            await reader.aclose()
            return error_response(error, self.http) if error is not None else Response(status_code=204)
        encoder = self.make_encoder(self.stream)
        return EventStreamResponse(
            _body(encoder, head, reader),
            media_type=encoder.media_type,
            headers={**encoder.headers, **self.headers},
        )


def parse_event_id(value: str, stream_id: str | None = None) -> tuple[str, int]:
    """Split a ``Last-Event-ID`` of the form ``<stream>:<seq>``; raise ``InvalidRequestError``.

    With ``stream_id`` given, the id must belong to that stream.
    """
    sid, sep, seq = value.strip().rpartition(":")
    if not sep or not sid or not seq.isascii() or not seq.isdigit():
        raise InvalidRequestError(f"Last-Event-ID must look like '<stream>:<seq>'; got {value!r}")
    if stream_id is not None and sid != stream_id:
        raise InvalidRequestError(f"Last-Event-ID {value!r} belongs to another stream than {stream_id!r}")
    return sid, int(seq)


def hub_settings(settings: Settings) -> HubSettings:
    """The lifecycle part of the server settings."""
    return HubSettings(
        disconnect_policy=settings.disconnect_policy,
        grace_s=settings.disconnect_grace_s,
        retention_s=settings.retention_s,
        max_stream_bytes=settings.max_stream_bytes,
        max_concurrent=settings.max_concurrent,
        max_concurrent_per_model=settings.max_concurrent_per_model,
        timeouts=Timeouts(settings.ttft_timeout_s, settings.idle_timeout_s, settings.total_timeout_s),
        retry=RetryPolicy(settings.retries, settings.retry_backoff_s),
    )


async def open_hub(settings: Settings, shutdown: ShutdownSignal | None = None) -> StreamHub:
    """The stream hub for ``settings``, on Redis when ``redis_url`` is set, else in memory; it
    drains when ``shutdown`` is triggered."""
    backend: StreamBackend | None = None
    if settings.redis_url:
        from sluiceway.streams.redis_backend import RedisBackend

        running_ttl_s = (settings.total_timeout_s or 86400) + settings.retention_s
        backend = RedisBackend(
            settings.redis_url, retention_s=settings.retention_s, running_ttl_s=running_ttl_s
        )
    hub = StreamHub(hub_settings(settings), backend)
    await hub.aopen()
    if shutdown is not None:
        hub.drain_on(shutdown, settings.shutdown_grace_s)
    return hub


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
    try:  # (not ``aclosing``: one object less held per stream)
        first = encoder.start() + b"".join(_encode(encoder, batch) for batch in head)
        head.clear()
        if first:
            yield first
        del first  # nothing sent stays in this frame while it waits (≈ 0.5 KB a quiet stream)
        async for batch in reader:
            chunk = _encode(encoder, batch)
            del batch
            yield chunk
            del chunk
    finally:
        await reader.aclose()


def _encode(encoder: Encoder, batch: Batch | None) -> bytes:
    if batch is None:
        return encoder.heartbeat()
    try:
        if len(batch) == 1:  # a reader that keeps up: one event a batch, no generator to join
            seq, event = batch[0]
            return encoder.encode(seq, event)
        return b"".join([encoder.encode(seq, event) for seq, event in batch])
    except (TypeError, UnicodeError):  # a text no encoder can write: sent repaired, not dropped
        return b"".join([encoder.encode(seq, repaired_event(event)) for seq, event in batch])


def repaired_event(event: Event) -> Event:
    """``event`` with its text (or error message) repaired as :func:`repaired_text` repairs it."""
    if isinstance(event, TextDelta):
        return TextDelta(repaired_text(event.text))
    if isinstance(event, ErrorEvent):
        return replace(event, message=repaired_text(event.message))
    return event


async def collect(reader: AsyncIterator[Batch | None]) -> Batch:
    """Read a whole stream (for non-streaming answers)."""
    events: Batch = []
    async for batch in reader:
        if batch:
            events.extend(batch)
    return events
