"""Shared by the client-protocol tests: the test models and waiting for a stream's end."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sluiceway.events import Event, Finish, TextDelta
from sluiceway.providers.base import ModelConfig
from sluiceway.server.relay import collect
from tests.live import LiveServer, live_server, make_settings

MODELS = {
    "echo-slow": ModelConfig("echo-slow", "echo", options={"delay_ms": 50}),
    "echo-fail": ModelConfig("echo-fail", "echo", options={"fail_after": 3, "fail_code": "upstream_error"}),
}
LONG = " ".join(f"w{i}" for i in range(400))
"""400 words: echo-slow needs 20 s for them, so a test that sees them end early saw a cancel."""


@contextmanager
def protocol_server(**overrides: Any) -> Iterator[LiveServer]:
    """A live server with echo (default), echo-slow and echo-fail; a disconnect cancels at once."""
    overrides.setdefault("disconnect_grace_s", 0)
    with live_server(make_settings(models=MODELS, **overrides)) as srv:
        yield srv


def finished_events(srv: LiveServer, stream_id: str) -> list[Event] | None:
    """All events of ``stream_id`` once it has finished, else ``None`` (read on the server's loop)."""

    async def read() -> list[Event] | None:
        stream = srv.state.hub.get(stream_id)
        if stream is None or not stream.finished:
            return None
        return [event for _, event in await collect(stream.log.read())]

    assert srv.loop is not None
    return asyncio.run_coroutine_threadsafe(read(), srv.loop).result(5)


def wait_finish(srv: LiveServer, stream_id: str, within: float = 10.0) -> list[Event]:
    """Poll until the stream has logged its ``Finish``; return all its events."""
    deadline = time.monotonic() + within
    while True:
        events = finished_events(srv, stream_id)
        if events is not None:
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"stream {stream_id} did not finish within {within} s")
        time.sleep(0.02)


def wait_idle(srv: LiveServer, within: float = 10.0) -> None:
    """Poll until no generation runs on the server."""
    deadline = time.monotonic() + within
    while srv.call(lambda: srv.state.hub.active) > 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"generations still running after {within} s")
        time.sleep(0.02)


def wait_active(srv: LiveServer, within: float = 10.0) -> None:
    """Poll until a generation runs on the server."""
    deadline = time.monotonic() + within
    while srv.call(lambda: srv.state.hub.active) == 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"no generation started within {within} s")
        time.sleep(0.02)


def raw_request(srv: LiveServer, path: str, body: bytes, headers: str = "") -> socket.socket:
    """Send one HTTP/1.1 POST on a plain socket (the test closes it to disconnect)."""
    host, port = srv.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def assert_cancelled_early(events: list[Event]) -> None:
    """The stream ended as cancelled, long before echo-slow would have sent all of :data:`LONG`."""
    assert isinstance(events[-1], Finish)
    assert events[-1].reason == "cancelled"
    assert sum(1 for e in events if isinstance(e, TextDelta)) < 200
