"""``GET /ws/chat``: many chat turns over one WebSocket (see :mod:`sluiceway.wire.websocket`).

How a socket works: the socket's own task only receives frames. A turn starts a generation in the
stream hub and a relay task that reads the stream and sends its frames; so a ``cancel`` frame is
read while the answer is still being sent, and calls ``Stream.cancel``, after which the relay
sends the ``done`` (``finish_reason: "cancelled"``) that the log ends with. When the socket closes,
the relay task is cancelled; closing its reader detaches it from the stream, and the hub cancels
the generation as its disconnect policy says, exactly as for an HTTP stream.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect

from sluiceway.errors import InvalidRequestError, SluicewayError
from sluiceway.server.auth import check_websocket
from sluiceway.server.relay import repaired_event, start_stream
from sluiceway.server.routes._protocol import resolve
from sluiceway.server.state import AppState
from sluiceway.streams.hub import Stream
from sluiceway.wire.websocket import Cancel, Turn, WebSocketEncoder, error_frame, parse_frame

router = APIRouter()


def install(app: FastAPI) -> None:
    """Serve this protocol on ``app``."""
    app.include_router(router)


@router.websocket("/ws/chat")
async def chat_socket(ws: WebSocket) -> None:
    """Accept the socket and serve turns until the client closes it."""
    await ws.accept()
    await ChatSocket(ws, ws.app.state.sluiceway).serve()


class ChatSocket:
    """One client's socket: at most one running turn at a time."""

    def __init__(self, ws: WebSocket, state: AppState) -> None:
        self.ws = ws
        self.state = state
        self.stream: Stream | None = None
        self.relay: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    async def serve(self) -> None:
        """Receive frames until the socket closes; then stop the running turn's relay."""
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    await self.send(error_frame(InvalidRequestError("send JSON in text frames").to_event()))
                    continue
                await self.on_frame(text)
        except WebSocketDisconnect:
            return
        finally:
            if self.relay is not None:
                self.relay.cancel()
                await asyncio.gather(self.relay, return_exceptions=True)

    async def on_frame(self, text: str) -> None:
        """Start a turn or cancel the running one; answer a bad frame with an error frame."""
        try:
            frame = parse_frame(text)
        except InvalidRequestError as exc:
            await self.send(error_frame(exc.to_event()))
            return
        match frame:
            case Cancel():
                if self.stream is not None:
                    self.stream.cancel("stop")
            case Turn():
                await self.start_turn(frame)

    async def start_turn(self, turn: Turn) -> None:
        """Start generating, unless a turn is still running (which gets an error frame)."""
        if self.relay is not None and not self.relay.done():
            message = 'a turn is still running: wait for its "done", or send {"type": "cancel"} first'
            await self.send(error_frame(InvalidRequestError(message).to_event()))
            return
        try:
            check_websocket(self.ws)  # the auth layer already closed unauthenticated sockets
            request = resolve(self.state, turn.request)
            stream = start_stream(self.state, request, protocol="websocket")
        except SluicewayError as exc:  # e.g. overloaded: with its retry_after, like the HTTP 429
            await self.send(error_frame(exc.to_event()))
            return
        self.stream = stream
        self.relay = asyncio.create_task(self._relay(stream, request.model))

    async def _relay(self, stream: Stream, model: str) -> None:
        encoder = WebSocketEncoder(stream.stream_id, model)
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await self.send(encoder.start())
            async with contextlib.aclosing(stream.read()) as reader:
                async for batch in reader:
                    for _, event in batch or ():
                        try:
                            frame = encoder.encode(event)
                        except (TypeError, UnicodeError):  # a lone surrogate: sent repaired
                            frame = encoder.encode(repaired_event(event))
                        if frame is not None:
                            await self.send(frame)

    async def send(self, frame: str) -> None:
        """Send one text frame (the relay and the receiver may both send)."""
        async with self._send_lock:
            await self.ws.send_text(frame)
