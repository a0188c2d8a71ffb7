"""``/ws/chat``: frames that start no turn, and turns refused before they start."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.live import LiveServer
from tests.server.protocol_support import LONG, protocol_server


@pytest.fixture(scope="module")
def srv() -> Iterator[LiveServer]:
    with protocol_server() as live:
        yield live


@pytest.fixture
def ws(srv: LiveServer) -> Iterator[ClientConnection]:
    with connect(srv.url.replace("http://", "ws://") + "/ws/chat") as conn:
        yield conn


def receive(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return frame


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("hello", "JSON"),
        ('{"type": "resume"}', "unknown frame type"),
        ('{"message": "x", "model": "nope"}', "unknown model"),
        ('{"message": "x", "temperature": 9}', "temperature"),
        ("{}", "give 'message'"),
        ('{"message": 5}', "message: must be a string"),
        ('{"message": "a \\ud800"}', "JSON"),  # a lone surrogate: nothing could encode it back
        ("[" * 3000 + "]" * 3000, "JSON"),
    ],
)
def test_bad_frames_get_an_error_and_the_socket_stays_open(
    ws: ClientConnection, frame: str, message: str
) -> None:
    ws.send(frame)
    error = receive(ws)
    assert error["type"] == "error" and message in error["message"]
    assert error["code"] == ("unknown_model" if "model" in message else "invalid_request")
    ws.send(json.dumps({"message": "fine"}))
    assert [receive(ws)["type"] for _ in range(3)] == ["start", "chunk", "done"]


def test_binary_frames_are_refused(ws: ClientConnection) -> None:
    ws.send(b'{"message": "x"}')
    assert receive(ws) == {"type": "error", "code": "invalid_request", "message": "send JSON in text frames"}


def test_a_turn_while_one_runs_is_refused_and_the_running_one_goes_on(ws: ClientConnection) -> None:
    ws.send(json.dumps({"message": "a b c d e f", "model": "echo-slow"}))
    assert receive(ws)["type"] == "start"
    ws.send(json.dumps({"message": "too soon"}))
    frames = [receive(ws)]
    while frames[-1]["type"] != "done":
        frames.append(receive(ws))
    refused = [f for f in frames if f["type"] == "error"]
    assert len(refused) == 1 and "still running" in refused[0]["message"]
    assert "".join(f["text"] for f in frames if f["type"] == "chunk") == "a b c d e f"


def test_cancel_without_a_turn_is_ignored(ws: ClientConnection) -> None:
    ws.send(json.dumps({"type": "cancel"}))
    ws.send(json.dumps({"message": "x"}))
    assert receive(ws)["type"] == "start"


def test_cancel_after_the_turn_ended_changes_nothing(ws: ClientConnection) -> None:
    ws.send(json.dumps({"message": "x"}))
    while receive(ws)["type"] != "done":
        pass
    ws.send(json.dumps({"type": "cancel"}))
    ws.send(json.dumps({"message": LONG[:20], "max_tokens": 2}))
    frames = [receive(ws) for _ in range(4)]
    assert [f["type"] for f in frames] == ["start", "chunk", "chunk", "done"]
    assert frames[-1]["finish_reason"] == "length"


def test_a_turn_over_the_limits_says_when_to_retry_as_the_http_429_does() -> None:
    with protocol_server(max_concurrent=1) as srv:
        url = srv.url.replace("http://", "ws://") + "/ws/chat"
        with connect(url) as busy, connect(url) as refused:
            busy.send(json.dumps({"message": LONG, "model": "echo-slow"}))
            assert receive(busy)["type"] == "start"
            refused.send(json.dumps({"message": "x"}))
            frame = receive(refused)
            http = httpx.post(f"{srv.url}/chat/stream", json={"message": "x"})
    assert http.status_code == 429 and http.headers["retry-after"] == "1"
    assert frame["type"] == "error" and frame["code"] == "overloaded"
    assert frame["retryable"] is True and frame["retry_after"] == 1.0
