"""EventStreamResponse under SluicewayApp: the start passes the layers, the body streams above them."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import AsyncGenerator

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from sluiceway.server.request_log import RequestLogMiddleware
from sluiceway.server.responses import EventStreamResponse, SluicewayApp


class Layer:
    """A pure ASGI layer noting whether its inner call has returned, and the headers it saw; its
    ``send`` wrapper is watched by ``wrapper`` (a weak reference)."""

    def __init__(self, app: ASGIApp, fail_after: bool = False) -> None:
        self.app = app
        self.fail_after = fail_after
        self.returned = False
        self.started_with: list[tuple[bytes, bytes]] = []
        self.wrapper: weakref.ref[object] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def noting(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                self.started_with = list(message["headers"])  # type: ignore[call-overload]
                message["headers"].append((b"x-layer", b"1"))  # type: ignore[attr-defined]
            await send(message)

        self.wrapper = weakref.ref(noting)
        await self.app(scope, receive, noting)
        self.returned = True
        if self.fail_after:
            raise RuntimeError("a layer failed after the response started")


def build(app: FastAPI, *, fail_after: bool = False, pause_s: float = 0) -> tuple[Layer, list[object]]:
    """``app`` serving ``GET /s``, its innermost layer, and what the body sees (at each chunk: had
    the layer returned? is its ``send`` wrapper still held?), then ``"closed"``; each body generator
    is appended to ``bodies``."""
    seen: list[object] = []

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            for word in (b"one ", b"two"):
                gc.collect()
                seen.append((layer.returned, layer.wrapper is not None and layer.wrapper() is not None))
                await asyncio.sleep(pause_s)
                yield word
        finally:
            seen.append("closed")

    @app.get("/s")
    async def stream() -> EventStreamResponse:
        bodies.append(body())
        return EventStreamResponse(bodies[-1], media_type="text/plain", headers={"X-Stream-Id": "s1"})

    layer = Layer(app.router, fail_after=fail_after)
    app.router = layer  # type: ignore[assignment]  # innermost, right around the routes
    app.middleware_stack = None
    return layer, seen


bodies: list[AsyncGenerator[bytes, None]] = []


async def get(app: FastAPI) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.get("/s")


async def test_the_layers_have_returned_before_the_body_streams() -> None:
    app = SluicewayApp()
    layer, seen = build(app)
    r = await get(app)
    assert (r.status_code, r.text, r.headers["x-layer"], r.headers["x-stream-id"]) == (
        200,
        "one two",
        "1",
        "s1",
    )
    assert (b"x-stream-id", b"s1") in layer.started_with  # the start went through the layer
    assert seen == [(True, False), (True, False), "closed"]  # the wrappers went once the start was sent


async def test_under_another_app_the_body_streams_through_the_layers() -> None:
    app = FastAPI()
    layer, seen = build(app)
    r = await get(app)
    assert (r.text, r.headers["x-layer"]) == ("one two", "1")
    assert seen == [(False, True), (False, True), "closed"]
    assert layer.returned


async def test_a_layer_failing_after_the_route_returned_closes_the_body_unsent() -> None:
    app = SluicewayApp()
    _, seen = build(app, fail_after=True)
    with pytest.raises(RuntimeError, match="a layer failed"):
        await get(app)
    assert seen == [] and bodies[-1].ag_frame is None  # never started, and closed: it never will be


async def test_the_request_line_is_logged_once_the_body_has_streamed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = SluicewayApp()
    _, seen = build(app, pause_s=0.1)
    app.add_middleware(RequestLogMiddleware)
    with caplog.at_level(logging.INFO, logger="sluiceway.requests"):
        r = await get(app)
    assert r.text == "one two" and seen[-1] == "closed"
    [record] = [rec for rec in caplog.records if rec.name == "sluiceway.requests"]
    fields = record.request  # type: ignore[attr-defined]
    assert (fields["status"], fields["stream_id"], fields["path"]) == (200, "s1", "/s")
    assert fields["duration_ms"] >= 200  # both pauses: logged after the body, not at the start


async def test_a_client_leaving_stops_a_body_that_swallows_the_first_cancel() -> None:
    swallowed: list[str] = []
    leave = asyncio.Event()

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield b"one"
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed.append("once")  # as redis-py sometimes does
            await asyncio.sleep(10)
            yield b"never"
        finally:
            swallowed.append("closed")

    sent: list[bytes] = []

    async def receive() -> dict[str, object]:
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message.get("body"):
            sent.append(message["body"])  # type: ignore[arg-type]
            leave.set()

    response = EventStreamResponse(body(), media_type="text/plain")
    task = asyncio.current_task()
    assert task is not None
    await asyncio.wait_for(response({"type": "http"}, receive, send), 1)  # type: ignore[arg-type]
    assert (sent, swallowed, task.cancelling()) == ([b"one"], ["once", "closed"], 0)


async def test_a_cancel_from_outside_still_cancels_the_sending_task() -> None:
    async def body() -> AsyncGenerator[bytes, None]:
        yield b"one"
        await asyncio.sleep(10)
        yield b"never"

    async def receive() -> dict[str, object]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        pass

    response = EventStreamResponse(body(), media_type="text/plain")
    sending = asyncio.create_task(response({"type": "http"}, receive, send))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert response.chunks.ag_frame is None  # closed
