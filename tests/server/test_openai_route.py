"""``POST /v1/chat/completions`` over real HTTP: the bytes, the errors, and cancellation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluiceway.events import TextDelta
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

URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def srv() -> Iterator[LiveServer]:
    with protocol_server() as live:
        yield live


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}


def sse_data(body: str) -> list[str]:
    return [line[6:] for line in body.split("\n") if line.startswith("data: ")]


def test_stream_chunks_role_finish_usage_done(srv: LiveServer) -> None:
    body = ask("Hello there, world", stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", srv.url + URL, json=body) as r:
        raw = r.read().decode()
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-accel-buffering"] == "no"
    data = sse_data(raw)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"] == f"chatcmpl-{r.headers['x-stream-id']}"
    choice_chunks = [c for c in chunks if c["choices"]]
    assert choice_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in choice_chunks[1:])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in choice_chunks)
    assert text == "Hello there, world"
    assert [c["choices"][0]["finish_reason"] for c in choice_chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in choice_chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_stream_without_include_usage_sends_no_usage_chunk(srv: LiveServer) -> None:
    raw = httpx.post(srv.url + URL, json=ask("a b", stream=True)).text
    assert '"usage"' not in raw and raw.endswith("data: [DONE]\n\n")


def test_non_stream_completion(srv: LiveServer) -> None:
    r = httpx.post(srv.url + URL, json=ask("one two three", max_completion_tokens=2))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "echo"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "one two ", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_default_model_when_none_named(srv: LiveServer) -> None:
    r = httpx.post(srv.url + URL, json={"messages": [{"role": "user", "content": "x"}]})
    assert r.json()["model"] == "echo"


def test_max_tokens_limits_the_stream(srv: LiveServer) -> None:
    raw = httpx.post(srv.url + URL, json=ask("a b c d", stream=True, max_tokens=1)).text
    chunks = [json.loads(d) for d in sse_data(raw)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "a "
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("body", "status", "type_", "code"),
    [
        (ask("x") | {"model": "nope"}, 404, "invalid_request_error", "model_not_found"),
        ({"model": "echo"}, 400, "invalid_request_error", "invalid_request"),
        (ask("x", temperature=3), 400, "invalid_request_error", "invalid_request"),
        (ask("x", stream=True) | {"model": "nope"}, 404, "invalid_request_error", "model_not_found"),
        (ask("x", n=2), 400, "invalid_request_error", "invalid_request"),
        (ask("x", stream=True, logprobs=True), 400, "invalid_request_error", "invalid_request"),
        ({"model": "echo", "messages": [{"role": "user"}]}, 400, "invalid_request_error", "invalid_request"),
    ],
)
def test_errors_before_first_byte_are_openai_shaped(
    srv: LiveServer, body: dict[str, Any], status: int, type_: str, code: str
) -> None:
    r = httpx.post(srv.url + URL, json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (type_, code, None)
    assert error["message"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"n": 2}, "n: sluiceway answers with one choice; n must be 1"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
            "tools: sluiceway does not call tools; tools must be empty",
        ),
        ({"logprobs": True}, "logprobs: sluiceway does not return log probabilities; logprobs must be false"),
        ({"response_format": {"type": "json_object"}}, "response_format: sluiceway answers with free text"),
        ({"n": "abc", "tools": "x", "logprobs": "y"}, "n: must be an integer"),
    ],
)
def test_unserved_features_are_a_400_naming_the_field(
    srv: LiveServer, extra: dict[str, Any], message: str
) -> None:
    r = httpx.post(srv.url + URL, json=ask("x", **extra))
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith(message)


def test_what_clients_send_by_default_is_served(srv: LiveServer) -> None:
    defaults = {
        "n": 1,
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "logprobs": False,
        "top_logprobs": None,
        "response_format": {"type": "text"},
        "functions": [],
        "modalities": ["text"],
        "audio": None,
    }
    r = httpx.post(srv.url + URL, json=ask("x y", **defaults))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "x y"


def test_invalid_json_is_an_openai_400(srv: LiveServer) -> None:
    r = httpx.post(srv.url + URL, content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_models_path_errors_are_openai_shaped(srv: LiveServer) -> None:
    r = httpx.post(srv.url + "/v1/models")
    assert r.status_code == 405
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_mid_stream_failure_is_an_error_event(srv: LiveServer) -> None:
    raw = httpx.post(srv.url + URL, json=ask("a b c d e", stream=True) | {"model": "echo-fail"}).text
    data = sse_data(raw)
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])["error"]
    assert error["code"] == "upstream_error" and error["type"] == "server_error"
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in data[:-2])
    assert text == "a b c "


def test_non_stream_failure_is_an_http_error(srv: LiveServer) -> None:
    r = httpx.post(srv.url + URL, json=ask("a b c d e") | {"model": "echo-fail"})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    assert r.headers["x-stream-id"]  # which stream failed: in the request log and for the client


def test_stream_disconnect_cancels_generation(srv: LiveServer) -> None:
    with httpx.stream("POST", srv.url + URL, json=ask(LONG, stream=True) | {"model": "echo-slow"}) as r:
        stream_id = r.headers["x-stream-id"]
        next(r.iter_raw())
    events = wait_finish(srv, stream_id, within=5)
    assert_cancelled_early(events)
    assert any(isinstance(e, TextDelta) for e in events)


def test_non_stream_disconnect_cancels_generation(srv: LiveServer) -> None:
    wait_idle(srv)
    sock = raw_request(srv, URL, json.dumps(ask(LONG) | {"model": "echo-slow"}).encode())
    wait_active(srv)
    sock.close()
    wait_idle(srv, within=5)
