"""A streaming ASGI response that always closes its body, even when the client goes away.

Starlette's ``StreamingResponse`` abandons its iterator when the client disconnects, leaving the
``finally`` blocks behind it (detaching the reader, cancelling upstream) to the garbage collector.
Here one task sends the body while another listens for ``http.disconnect``; whichever ends first
stops the other, and the body's ``aclose()`` runs in every case. A library under the body may
swallow a ``CancelledError`` (redis-py 8 on Python 3.11 sometimes does), so the sender is
cancelled again until it has stopped, or a gone client would keep a reader attached.

How the body skips the middleware: every ASGI layer between the server and a route (ours in
:mod:`sluiceway.server.middleware` and :mod:`sluiceway.server.request_log`, Starlette's error and
exception layers, CORS) looks only at ``http.response.start``; each still wraps ``send``, which costs
a coroutine per layer for every body message, i.e. per token. So the start goes through the layers
and the body messages go straight to the server's own ``send``, which :class:`SluicewayApp` leaves in
the scope under :data:`SERVER_SEND` (without it, e.g. under a test's bare ASGI call, through the
layers). A layer that needs the body messages (compression, say) must not be added in front of
these responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from functools import partial

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

SERVER_SEND = "sluiceway.server_send"
"""Scope key of the ASGI server's ``send``, under every middleware's wrapper."""


class SluicewayApp(FastAPI):
    """FastAPI, keeping the server's ``send`` in the scope for :class:`EventStreamResponse` bodies."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope[SERVER_SEND] = send
        try:
            await super().__call__(scope, receive, send)
        finally:
            del scope[SERVER_SEND]  # uvicorn's send is bound to the request that holds this scope: no cycle


class EventStreamResponse(Response):
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        first_done = asyncio.get_running_loop().create_future()  # not asyncio.wait: ≈ 1 KB less a stream
        settle = partial(_settle, first_done)
        sender = asyncio.create_task(self._send_body(send, scope.get(SERVER_SEND, send)))
        sender.add_done_callback(settle)
        listener = asyncio.create_task(_wait_disconnect(receive))
        listener.add_done_callback(settle)
        try:
            await first_done
        finally:
            await asyncio.gather(_stop(sender), _stop(listener))
            await self.chunks.aclose()

    async def _send_body(self, send: Send, send_body: Send) -> None:
        """The start through ``send`` (every layer sees it), the body through ``send_body``."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.chunks:
                if chunk:
                    await send_body({"type": "http.response.body", "body": chunk, "more_body": True})
            await send_body({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return


def _settle(first_done: asyncio.Future[None], _: asyncio.Task[None]) -> None:
    if not first_done.done():
        first_done.set_result(None)


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` until it is done (a swallowed cancel is repeated every 50 ms)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if not task.cancelled():
        task.exception()  # retrieved, as gather(return_exceptions=True) did: a gone client is no error


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
