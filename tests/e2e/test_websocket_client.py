"""The ``websockets`` client against ``/ws/chat`` on a live server: turns, cancel, close, failures."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.live import LiveServer
from tests.server.protocol_support import LONG, assert_cancelled_early, protocol_server, wait_finish

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def srv() -> Iterator[LiveServer]:
    with protocol_server() as live:
        yield live


def ws_url(srv: LiveServer) -> str:
    return srv.url.replace("http://", "ws://") + "/ws/chat"


def receive(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return frame


def turn(ws: ClientConnection, **body: Any) -> list[dict[str, Any]]:
    """Send one turn; return its frames up to and including ``done`` or ``error``."""
    ws.send(json.dumps(body))
    frames = [receive(ws)]
    while frames[-1]["type"] not in ("done", "error"):
        frames.append(receive(ws))
    return frames


def text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "chunk")


def test_two_turns_a_cancel_and_a_third_turn(srv: LiveServer) -> None:
    with connect(ws_url(srv)) as ws:
        first = turn(ws, message="Hello there, world")
        assert first[0] == {"type": "start", "stream_id": first[0]["stream_id"], "model": "echo"}
        assert text(first) == "Hello there, world"
        assert first[-1]["type"] == "done" and first[-1]["finish_reason"] == "stop"
        assert first[-1]["usage"] == {"input_tokens": 3, "output_tokens": 3}

        second = turn(
            ws,
            messages=[
                {"role": "user", "content": "Hello there, world"},
                {"role": "assistant", "content": "Hello there, world"},
                {"role": "user", "content": "again and again"},
            ],
            model="echo",
            max_tokens=2,
            temperature=0.5,
        )
        assert text(second) == "again and "
        assert second[-1]["finish_reason"] == "length"
        assert second[-1]["usage"] == {"input_tokens": 9, "output_tokens": 2}

        ws.send(json.dumps({"message": LONG, "model": "echo-slow"}))
        start = receive(ws)
        assert start["type"] == "start" and start["model"] == "echo-slow"
        assert receive(ws)["type"] == "chunk"
        ws.send(json.dumps({"type": "cancel"}))
        frames = [receive(ws)]
        while frames[-1]["type"] == "chunk":
            frames.append(receive(ws))
        assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "cancelled"
        assert len(frames) < 200
        assert_cancelled_early(wait_finish(srv, start["stream_id"]))

        third = turn(ws, message="still here")
        assert text(third) == "still here" and third[-1]["finish_reason"] == "stop"


def test_closing_the_socket_cancels_the_generation(srv: LiveServer) -> None:
    with connect(ws_url(srv)) as ws:
        ws.send(json.dumps({"message": LONG, "model": "echo-slow"}))
        stream_id = receive(ws)["stream_id"]
        assert receive(ws)["type"] == "chunk"
    assert_cancelled_early(wait_finish(srv, stream_id, within=5))


def test_mid_stream_failure_is_an_error_frame_and_the_socket_stays_open(srv: LiveServer) -> None:
    with connect(ws_url(srv)) as ws:
        frames = turn(ws, message="a b c d e", model="echo-fail")
        assert text(frames) == "a b c "
        assert frames[-1] == {
            "type": "error",
            "code": "upstream_error",
            "message": "echo failed after 3 tokens (as configured)",
            "retryable": True,
        }
        assert text(turn(ws, message="ok")) == "ok"


@pytest.mark.local
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_local_model_turn(srv: LiveServer) -> None:
    with connect(ws_url(srv)) as ws:
        frames = turn(ws, message="Say hello.", model="local", max_tokens=8)
    assert text(frames).strip()
    assert frames[-1]["type"] == "done" and frames[-1]["usage"]["output_tokens"] > 0
