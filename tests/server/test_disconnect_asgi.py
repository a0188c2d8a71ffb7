"""Tier (a): the raw ASGI app with hand-written receive/send proves disconnect stops generation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sluiceway.events import Finish
from sluiceway.providers.base import ModelConfig
from sluiceway.server.app import create_app
from sluiceway.server.state import AppState
from tests.live import make_settings


async def test_http_disconnect_cancels_upstream() -> None:
    settings = make_settings(
        models={"slow": ModelConfig("slow", "echo", options={"delay_ms": 20})}, disconnect_grace_s=0
    )
    app = create_app(settings)
    body = json.dumps({"message": " ".join(["w"] * 500), "model": "slow"}).encode()
    gone = asyncio.Event()
    sent: list[dict[str, Any]] = []
    first_chunk = asyncio.Event()
    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_chunk.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/chat/stream",
        "raw_path": b"/chat/stream",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "root_path": "",
        "app": app,
    }
    async with app.router.lifespan_context(app):
        state: AppState = app.state.sluiceway
        call = asyncio.create_task(app(scope, receive, send))
        await asyncio.wait_for(first_chunk.wait(), 5)
        stream_id = dict(sent[0]["headers"])[b"x-stream-id"].decode()
        stream = state.hub.get(stream_id)
        assert stream is not None and not stream.finished
        gone.set()
        await asyncio.wait_for(call, 5)
        assert stream.task is not None
        await asyncio.wait_for(asyncio.shield(stream.task), 5)
        final = stream.log.events[-1]
        assert isinstance(final, Finish) and final.reason == "cancelled"
        assert stream.meter.deltas < 100
        assert state.hub.active == 0
