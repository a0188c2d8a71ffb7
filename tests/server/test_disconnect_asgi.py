"""Tier (a): the raw ASGI app with hand-written receive/send proves disconnect stops generation."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from fastapi import FastAPI

from sluiceway.events import Finish
from sluiceway.providers.base import ModelConfig
from sluiceway.server.app import create_app
from sluiceway.server.state import AppState
from sluiceway.streams.hub import Stream
from tests.live import make_settings


class Client:
    """One ``POST /chat/stream`` through the raw app: the client leaves when :attr:`gone` is set."""

    def __init__(self, app: FastAPI, body: dict[str, Any]) -> None:
        self.app = app
        self.body = json.dumps(body).encode()
        self.gone = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self.first_chunk = asyncio.Event()
        self.listened_to = asyncio.Event()  # the app waits for the client to leave
        self.request_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self.request_sent:
            self.request_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        self.listened_to.set()
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.first_chunk.set()

    def start(self) -> asyncio.Task[None]:
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
            "app": self.app,
        }
        return asyncio.create_task(self.app(scope, self.receive, self.send))


async def _ended(stream: Stream) -> Finish:
    assert stream.task is not None
    await asyncio.wait_for(asyncio.shield(stream.task), 5)
    final = stream.log.events[-1]
    assert isinstance(final, Finish)
    return final


async def test_http_disconnect_cancels_upstream(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sluiceway")
    settings = make_settings(
        models={"slow": ModelConfig("slow", "echo", options={"delay_ms": 20})}, disconnect_grace_s=0.2
    )
    app = create_app(settings)
    client = Client(app, {"message": " ".join(["w"] * 500), "model": "slow"})
    async with app.router.lifespan_context(app):
        state: AppState = app.state.sluiceway
        call = client.start()
        await asyncio.wait_for(client.first_chunk.wait(), 5)
        stream_id = dict(client.sent[0]["headers"])[b"x-stream-id"].decode()
        stream = state.hub.get(stream_id)
        assert stream is not None and not stream.finished
        client.gone.set()
        await asyncio.wait_for(call, 5)
        assert (await _ended(stream)).reason == "cancelled"
        assert stream.meter.deltas < 100
        assert state.hub.active == 0
    # the request's line is written when its client leaves; the tokens made in the grace period after
    # that are in the generation's own line, written once it ends
    request = next(r.request for r in caplog.records if r.name == "sluiceway.requests")  # type: ignore[attr-defined]
    ended = [r.generation for r in caplog.records if hasattr(r, "generation")]  # type: ignore[attr-defined]
    assert ended == [
        {
            "stream_id": stream_id,
            "model": "slow",
            "outcome": "cancelled",
            "cancelled_by": "disconnect",
            "input_tokens": stream.meter.usage_so_far().input_tokens,
            "output_tokens": stream.meter.deltas,
        }
    ]
    assert request["stream_id"] == stream_id and request["tokens"] < stream.meter.deltas


async def test_a_client_gone_before_the_first_token_cancels_it_without_waiting_for_a_heartbeat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(
        models={"slow": ModelConfig("slow", "echo", options={"delay_ms": 3000})},
        disconnect_grace_s=0,
        heartbeat_s=30,
    )
    caplog.set_level(logging.INFO, logger="sluiceway.requests")
    app = create_app(settings)
    client = Client(app, {"message": "one two", "model": "slow"})
    async with app.router.lifespan_context(app):
        state: AppState = app.state.sluiceway
        call = client.start()
        await asyncio.wait_for(client.listened_to.wait(), 5)
        assert state.hub.active == 1
        stream = next(iter(state.hub._streams.values()))
        assert isinstance(stream, Stream)
        client.gone.set()
        await asyncio.wait_for(call, 1)  # well before the first word (3 s) and the first ping (30 s)
        assert (await _ended(stream)).reason == "cancelled"
        assert stream.meter.deltas == 0 and client.sent == []  # nothing was sent: nobody to send it to
        assert state.hub.active == 0
    lines = [r.request for r in caplog.records if r.name == "sluiceway.requests"]  # type: ignore[attr-defined]
    assert [(line["status"], line["stream_id"]) for line in lines] == [(499, stream.stream_id)]
