"""Responses that finish above the middleware, and a streaming response that always closes its body.

How a response leaves the middleware behind: every ASGI layer between the server and a route (ours
in :mod:`sluiceway.server.middleware` and :mod:`sluiceway.server.request_log`, Starlette's error and
exception layers, the router, CORS) looks only at ``http.response.start``. Yet each would stay
suspended for as long as the response takes (a coroutine and a ``send`` wrapper per layer, ≈ 9 KB a
request), and each wrapper would cost a coroutine per body message, i.e. per token. So a
:class:`DeferredResponse` called through the layers only leaves itself, with the layers' ``send``,
in the request's :class:`Deferred` (in the scope under :data:`DEFERRED`) and returns: the layers
unwind, and :class:`SluicewayApp`, at the top, calls :meth:`DeferredResponse.finish`, which sends the
start through the layers' ``send`` (each still adds its headers, notes the status; the wrappers are
let go right after) and the body straight to the server's, or first chooses another response to
finish in its place (a streaming route's answer waits for the stream's first word, then becomes the
stream, or an error). A layer that must act when the response is over (the request log) adds
a callback to :attr:`Deferred.after` instead. Without a ``Deferred`` (an app other than
:class:`SluicewayApp`) the response finishes in place, through the layers. A layer that needs the
body messages (compression, say) must not be added in front of these responses, nor one that must
see the start before its own call returns.

Starlette's ``StreamingResponse`` abandons its iterator when the client disconnects, leaving the
``finally`` blocks behind it (detaching the reader, cancelling upstream) to the garbage collector.
:class:`EventStreamResponse` sends its body from the request's task while a second task listens for
``http.disconnect``; whichever ends first stops the other, and the body's ``aclose()`` runs in every
case. A library under the body may swallow a ``CancelledError`` (redis-py 8 on Python 3.11
sometimes does), so the sending is cancelled again until it has stopped, or a gone client would
keep a reader attached. What a response awaits before its start (a stream's first word) is awaited
through :func:`unless_gone`, which listens the same way and hands its listener on to the body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from sluiceway._tasks import stop_task

T = TypeVar("T")

DEFERRED = "sluiceway.deferred"
"""Scope key of the request's :class:`Deferred`, set by :class:`SluicewayApp`."""

CLIENT_LEFT = "sluiceway.client_left"
"""Scope key set to the stream id when a streaming answer's client left before its start was sent
(nothing was sent: the request log writes 499 and names the stream)."""


class Deferred:
    """One HTTP request's response left to finish once every layer has returned, and what runs after."""

    __slots__ = ("after", "response", "send")

    def __init__(self) -> None:
        self.response: DeferredResponse | None = None
        self.send: Send | None = None
        self.after: list[Callable[[], None]] = []

    def take_send(self) -> Send:
        """The layers' ``send``, once: what sends the start takes it, and the layers' wrappers go then."""
        send, self.send = self.send, None
        assert send is not None, "the start was sent already"
        return send


class SluicewayApp(FastAPI):
    """FastAPI, finishing :class:`DeferredResponse` above its middleware (see the module)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        deferred = scope[DEFERRED] = Deferred()
        try:
            await super().__call__(scope, receive, send)
            response, deferred.response = deferred.response, None
            if response is not None:
                scope.pop("fastapi_middleware_astack", None)  # FastAPI's, exited with its layer (≈ 0.7 KB)
            while response is not None:
                response = await response.finish(scope, receive, deferred, send)
        finally:
            del scope[DEFERRED]
            deferred.send = None
            if deferred.response is not None:  # a layer failed after the route returned
                await deferred.response.abandon()
            for after in deferred.after:
                after()


class DeferredResponse(Response):
    """A response that, under :class:`SluicewayApp`, finishes once the layers have returned."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deferred: Deferred | None = scope.get(DEFERRED)
        if deferred is not None and deferred.response is None:
            deferred.response, deferred.send = self, send
            return
        here = Deferred()  # no SluicewayApp above: finish in place, through the layers
        here.send = send
        response: DeferredResponse | None = self
        while response is not None:
            response = await response.finish(scope, receive, here, send)

    async def finish(
        self, scope: Scope, receive: Receive, deferred: Deferred, server_send: Send
    ) -> DeferredResponse | None:
        """Send the response, its start through ``deferred.take_send()`` (the layers' ``send``) and its
        body through ``server_send``; or return the response to finish in its place."""
        raise NotImplementedError

    async def abandon(self) -> None:
        """The response will never be sent (a layer failed after the route returned): let go of it."""


class EventStreamResponse(DeferredResponse):
    """Send ``chunks`` one by one with ``status_code`` and ``headers``; close them when done or gone."""

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        *,
        media_type: str,
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self.listener: asyncio.Task[None] | None = None
        """A task already waiting for ``http.disconnect`` (:func:`unless_gone`'s), to go on with."""

    async def finish(
        self, scope: Scope, receive: Receive, deferred: Deferred, server_send: Send
    ) -> DeferredResponse | None:
        start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        self.raw_headers = []  # sent: the layers add theirs to this list (≈ 0.5 KB a stream)
        send = deferred.take_send()
        try:
            await send(start)
        except BaseException as exc:
            await self.abandon()
            if isinstance(exc, OSError):  # the client is gone
                return None
            raise
        del send, start  # the layers' send wrappers go now; the body goes to the server's
        await self.stream(receive, server_send)
        return None

    async def abandon(self) -> None:
        if self.listener is not None:
            await stop_task(self.listener)
            self.listener = None
        await self.chunks.aclose()

    async def stream(self, receive: Receive, send: Send) -> None:
        """Send the body until it ends or the client leaves (the start is sent); close it.

        The body is sent from the calling task; a listener task waits for ``http.disconnect`` and,
        if the client goes first, cancels the sending (see :class:`_Watch`). (The sending is not a
        coroutine of its own: a frame less held by every open stream.)"""
        listener, self.listener = self.listener or _listen(receive), None
        watch = _Watch.current(listener)
        try:
            async for chunk in self.chunks:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                del chunk  # not held while the next is awaited
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client is gone
            pass
        except asyncio.CancelledError:
            if not watch.forget_cancels():
                raise
        finally:
            watch.watching = False
            await stop_task(listener)
            await self.chunks.aclose()


class _Watch:
    """Stops what ``task`` awaits (a body being sent, a stream's first word) when its client leaves:
    the task is cancelled, and cancelled again every 50 ms while it is still watched (a library
    under the body may swallow a cancel). Those cancels are the watch's own: :meth:`forget_cancels`
    takes them back."""

    __slots__ = ("cancels", "task", "watching")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.watching = True
        self.cancels = 0

    @classmethod
    def current(cls, listener: asyncio.Task[None]) -> _Watch:
        """A watch over the calling task, set off when ``listener`` ends (the client left)."""
        task = asyncio.current_task()
        assert task is not None
        watch = cls(task)
        listener.add_done_callback(watch.gone)
        return watch

    def gone(self, _: object = None) -> None:
        if self.watching:
            self.cancels += 1
            self.task.cancel()
            asyncio.get_running_loop().call_later(0.05, self.gone)

    def forget_cancels(self) -> bool:
        """Take this watch's cancels back; true if no other cancel of the task remains."""
        if not self.cancels:
            return False
        for _ in range(self.cancels):
            self.task.uncancel()
        return self.task.cancelling() == 0


async def unless_gone(receive: Receive, work: Awaitable[T]) -> tuple[T, asyncio.Task[None]] | None:
    """``work``'s result, awaited in this task while a listener task waits for the client's
    ``http.disconnect``; ``None`` if the client left first (``work`` is cancelled then, see
    :class:`_Watch`). The listener comes back still listening, for the response to go on with (an
    :class:`EventStreamResponse`'s :attr:`~EventStreamResponse.listener`) or to stop: ``receive()``
    is awaited by one task at a time."""
    listener = _listen(receive)
    watch = _Watch.current(listener)
    try:
        result = await work
    except asyncio.CancelledError:
        watch.watching = False
        if watch.forget_cancels():
            return None
        await stop_task(listener)
        raise
    except BaseException:
        watch.watching = False
        await stop_task(listener)
        raise
    watch.watching = False
    listener.remove_done_callback(watch.gone)
    if watch.cancels:  # the client left as ``work`` returned: take the cancel still to come back
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        if not watch.forget_cancels():
            raise asyncio.CancelledError
    return result, listener


def _listen(receive: Receive) -> asyncio.Task[None]:
    """A task that ends when the client leaves (``http.disconnect``)."""
    return asyncio.create_task(_wait_disconnect(receive))


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
