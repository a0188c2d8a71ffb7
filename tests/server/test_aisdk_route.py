"""``POST /api/chat`` over real HTTP: the UI-message stream, its errors, and cancellation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.live import LiveServer
from tests.server.protocol_support import LONG, assert_cancelled_early, protocol_server, wait_finish

URL = "/api/chat"


@pytest.fixture(scope="module")
def srv() -> Iterator[LiveServer]:
    with protocol_server() as live:
        yield live


def transport_body(text: str, **extra: Any) -> dict[str, Any]:
    """What ai's DefaultChatTransport posts for a first message (with ``body`` extras)."""
    return {
        "id": "chat-1",
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}],
        "trigger": "submit-message",
        **extra,
    }


def chunks(raw: str) -> tuple[list[dict[str, Any]], str]:
    data = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    return [json.loads(d) for d in data[:-1]], data[-1]


def test_ui_message_stream(srv: LiveServer) -> None:
    with httpx.stream("POST", srv.url + URL, json=transport_body("Hello there, world")) as r:
        raw = r.read().decode()
    assert r.status_code == 200
    assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert r.headers["content-type"].startswith("text/event-stream")
    parts, last = chunks(raw)
    assert last == "[DONE]"
    assert parts[0] == {"type": "start", "messageId": f"msg-{r.headers['x-stream-id']}"}
    assert [p["type"] for p in parts[1:3]] == ["start-step", "text-start"]
    assert [p["type"] for p in parts[-3:]] == ["text-end", "finish-step", "finish"]
    assert "".join(p["delta"] for p in parts if p["type"] == "text-delta") == "Hello there, world"
    assert parts[-1]["finishReason"] == "stop"
    assert parts[-1]["messageMetadata"] == {"model": "echo", "usage": {"inputTokens": 3, "outputTokens": 3}}


def test_model_and_limits_come_from_body_extras(srv: LiveServer) -> None:
    body = transport_body("a b c", model="echo-slow", max_tokens=1, temperature=0.1)
    parts, _ = chunks(httpx.post(srv.url + URL, json=body).text)
    assert "".join(p["delta"] for p in parts if p["type"] == "text-delta") == "a "
    assert parts[-1]["finishReason"] == "length"
    assert parts[-1]["messageMetadata"]["model"] == "echo-slow"


def test_conversation_history_is_sent_to_the_model(srv: LiveServer) -> None:
    body = transport_body("second")
    body["messages"] = [
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "first"}]},
        {
            "id": "a1",
            "role": "assistant",
            "parts": [{"type": "step-start"}, {"type": "text", "text": "first"}],
        },
        *body["messages"],
    ]
    parts, _ = chunks(httpx.post(srv.url + URL, json=body).text)
    assert "".join(p["delta"] for p in parts if p["type"] == "text-delta") == "second"
    assert parts[-1]["messageMetadata"]["usage"]["inputTokens"] == 3


def test_mid_stream_failure_is_an_error_part(srv: LiveServer) -> None:
    parts, last = chunks(httpx.post(srv.url + URL, json=transport_body("a b c d e", model="echo-fail")).text)
    assert last == "[DONE]"
    errors = [p for p in parts if p["type"] == "error"]
    assert errors == [{"type": "error", "errorText": "echo failed after 3 tokens (as configured)"}]
    assert "finish" not in [p["type"] for p in parts]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (transport_body("x", model="nope"), 404, "unknown_model"),
        ({"id": "c", "messages": []}, 400, "invalid_request"),
    ],
)
def test_errors_before_first_byte_are_json(
    srv: LiveServer, body: dict[str, Any], status: int, code: str
) -> None:
    r = httpx.post(srv.url + URL, json=body)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


def test_reconnect_has_nothing_to_resume(srv: LiveServer) -> None:
    assert httpx.get(srv.url + URL + "/chat-1/stream").status_code == 204


def test_disconnect_cancels_generation(srv: LiveServer) -> None:
    with httpx.stream("POST", srv.url + URL, json=transport_body(LONG, model="echo-slow")) as r:
        stream_id = r.headers["x-stream-id"]
        next(r.iter_raw())
    assert_cancelled_early(wait_finish(srv, stream_id, within=5))
