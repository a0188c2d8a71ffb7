"""``POST /v1/messages`` over real HTTP: the event sequence, the errors, and cancellation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluiceway.wire.sse import ServerSentEvent, SSEDecoder
from tests.live import LiveServer
from tests.server.protocol_support import (
    LONG,
    assert_cancelled_early,
    protocol_server,
    raw_request,
    wait_active,
    wait_finish,
    wait_idle,
)

URL = "/v1/messages"
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "unused"}


@pytest.fixture(scope="module")
def srv() -> Iterator[LiveServer]:
    with protocol_server() as live:
        yield live


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "echo", "max_tokens": 100, "messages": [{"role": "user", "content": text}], **extra}


def events(raw: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return decoder.feed(raw) + decoder.flush()


def test_stream_event_sequence(srv: LiveServer) -> None:
    body = ask("Hello there, world", system="Be brief.", stream=True)
    with httpx.stream("POST", srv.url + URL, json=body, headers=HEADERS) as r:
        raw = r.read()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    seen = events(raw)
    names = [e.event for e in seen]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    data = [json.loads(e.data) for e in seen]
    assert all(d["type"] == e.event for d, e in zip(data, seen, strict=True))
    message = data[0]["message"]
    assert message["id"] == f"msg_{r.headers['x-stream-id']}"
    assert (message["role"], message["model"], message["content"]) == ("assistant", "echo", [])
    assert message["usage"] == {"input_tokens": 5, "output_tokens": 0}  # system 2 words + user 3
    assert "".join(d["delta"]["text"] for d in data[3:-3]) == "Hello there, world"
    assert data[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert data[-2]["usage"] == {"input_tokens": 5, "output_tokens": 3}


def test_a_slow_first_word_still_starts_with_message_start() -> None:
    """A keep-alive due before the first word sends the head, never a ``ping`` before it."""
    with protocol_server(heartbeat_s=0.01) as live:
        body = ask("a b c", system="Be brief.", stream=True) | {"model": "echo-slow"}
        seen = events(httpx.post(live.url + URL, json=body, headers=HEADERS).content)
    names = [e.event for e in seen]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names.count("message_start") == 1 and names.count("content_block_start") == 1
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    final = json.loads(seen[-2].data)
    assert final["usage"] == {"input_tokens": 5, "output_tokens": 3}


def test_a_stop_sequence_is_reported_as_such(srv: LiveServer) -> None:
    body = ask("one two END three", stop_sequences=["zzz", "END"])
    message = httpx.post(srv.url + URL, json=body, headers=HEADERS).json()
    assert message["content"] == [{"type": "text", "text": "one two "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    raw = httpx.post(srv.url + URL, json=body | {"stream": True}, headers=HEADERS).content
    delta = json.loads(next(e.data for e in events(raw) if e.event == "message_delta"))
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_stream_max_tokens_stop_reason(srv: LiveServer) -> None:
    raw = httpx.post(srv.url + URL, json=ask("a b c d", max_tokens=2, stream=True), headers=HEADERS).content
    delta = json.loads(next(e.data for e in events(raw) if e.event == "message_delta"))
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["output_tokens"] == 2


def test_non_stream_message(srv: LiveServer) -> None:
    r = httpx.post(srv.url + URL, json=ask("one two three", max_tokens=2), headers=HEADERS)
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant" and body["model"] == "echo"
    assert body["content"] == [{"type": "text", "text": "one two "}]
    assert (body["stop_reason"], body["stop_sequence"]) == ("max_tokens", None)
    assert body["usage"] == {"input_tokens": 3, "output_tokens": 2}


@pytest.mark.parametrize(
    ("body", "status", "type_"),
    [
        (ask("x") | {"model": "nope"}, 404, "not_found_error"),
        ({"model": "echo", "messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request_error"),
        (ask("x", temperature=5), 400, "invalid_request_error"),
        (ask("x", stream=True) | {"model": "nope"}, 404, "not_found_error"),
        (ask("x", tools=[{"name": "f", "input_schema": {"type": "object"}}]), 400, "invalid_request_error"),
    ],
)
def test_errors_before_first_byte_are_anthropic_shaped(
    srv: LiveServer, body: dict[str, Any], status: int, type_: str
) -> None:
    r = httpx.post(srv.url + URL, json=body, headers=HEADERS)
    assert r.status_code == status
    payload = r.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == type_ and payload["error"]["message"]


def test_tools_are_refused_naming_the_field_and_an_empty_list_is_not(srv: LiveServer) -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    r = httpx.post(srv.url + URL, json=ask("x", tools=tools, tool_choice={"type": "any"}), headers=HEADERS)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "tools: sluiceway does not call tools; tools must be empty"
    r = httpx.post(srv.url + URL, json=ask("x", tools=[], tool_choice={"type": "auto"}), headers=HEADERS)
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "x"


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/messages/count_tokens"), ("GET", "/v1/messages/x")]
)
def test_an_unknown_path_is_anthropics_not_found_error(srv: LiveServer, method: str, path: str) -> None:
    r = httpx.request(method, srv.url + path, json=ask("x"), headers=HEADERS)
    assert r.status_code == 404
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error"


def test_invalid_json_is_an_anthropic_400(srv: LiveServer) -> None:
    r = httpx.post(srv.url + URL, content=b"[", headers={**HEADERS, "content-type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": r.json()["error"]["message"]},
    }


def test_mid_stream_failure_is_an_error_event(srv: LiveServer) -> None:
    body = ask("a b c d e", stream=True) | {"model": "echo-fail"}
    seen = events(httpx.post(srv.url + URL, json=body, headers=HEADERS).content)
    assert seen[-1].event == "error"
    assert json.loads(seen[-1].data) == {
        "type": "error",
        "error": {"type": "api_error", "message": "echo failed after 3 tokens (as configured)"},
    }
    assert "message_stop" not in [e.event for e in seen]


def test_non_stream_failure_is_an_http_error(srv: LiveServer) -> None:
    r = httpx.post(srv.url + URL, json=ask("a b c d e") | {"model": "echo-fail"}, headers=HEADERS)
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "api_error"


def test_stream_disconnect_cancels_generation(srv: LiveServer) -> None:
    body = ask(LONG, stream=True, max_tokens=1000) | {"model": "echo-slow"}
    with httpx.stream("POST", srv.url + URL, json=body, headers=HEADERS) as r:
        stream_id = r.headers["x-stream-id"]
        next(r.iter_raw())
    assert_cancelled_early(wait_finish(srv, stream_id, within=5))


def test_non_stream_disconnect_cancels_generation(srv: LiveServer) -> None:
    wait_idle(srv)
    sock = raw_request(srv, URL, json.dumps(ask(LONG, max_tokens=1000) | {"model": "echo-slow"}).encode())
    wait_active(srv)
    sock.close()
    wait_idle(srv, within=5)
