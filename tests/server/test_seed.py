"""POST /chat/stream: wire format over real uvicorn, errors before the first byte, disconnect."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from sluiceway.providers.base import ModelConfig
from sluiceway.wire.sse import SSEDecoder
from tests.live import live_server, make_settings

STATUS = {
    "invalid_request": 400,
    "unknown_model": 404,
    "rate_limited": 429,
    "upstream_auth": 502,
    "upstream_unavailable": 503,
    "upstream_timeout": 504,
    "upstream_error": 502,
    "overloaded": 429,
    "internal": 500,
}


def failing(code: str) -> ModelConfig:
    return ModelConfig(f"fail-{code}", "echo", options={"fail_after": 0, "fail_code": code})


@pytest.fixture(scope="module")
def srv():  # type: ignore[no-untyped-def]
    models = {m.name: m for m in map(failing, STATUS)}
    models["slow"] = ModelConfig("slow", "echo", options={"delay_ms": 50})
    models["late-fail"] = ModelConfig("late-fail", "echo", options={"fail_after": 2})
    with live_server(make_settings(models=models, disconnect_grace_s=0)) as live:
        yield live


def post(srv, body: object) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{srv.url}/chat/stream", json=body, timeout=10)


def events(body: bytes) -> list[str]:
    return [e.data for e in SSEDecoder().feed(body)]


def test_stream_format_and_headers(srv) -> None:  # type: ignore[no-untyped-def]
    r = post(srv, {"messages": [{"role": "user", "content": "Say hello world"}]})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    sid = r.headers["x-stream-id"]
    datas = events(r.content)
    assert datas[-1] == "[DONE]"
    parsed = [json.loads(d) for d in datas[:-1]]
    assert "".join(p["text"] for p in parsed if p["type"] == "chunk") == "Say hello world"
    done = parsed[-1]
    assert done["type"] == "done" and done["finish_reason"] == "stop"
    assert done["usage"] == {"input_tokens": 3, "output_tokens": 3}
    assert done["ttft_ms"] >= 0
    ids = [line for line in r.text.splitlines() if line.startswith("id: ")]
    seqs = [int(line.rsplit(":", 1)[1]) for line in ids]
    assert all(line.startswith(f"id: {sid}:") for line in ids) and seqs == sorted(set(seqs))


def test_max_tokens_gives_length(srv) -> None:  # type: ignore[no-untyped-def]
    r = post(srv, {"message": "a b c d", "max_tokens": 2})
    done = json.loads(events(r.content)[-2])
    assert done["finish_reason"] == "length" and done["usage"]["output_tokens"] == 2


@pytest.mark.parametrize(("code", "status"), sorted(STATUS.items()))
def test_error_before_first_byte_is_json(srv, code: str, status: int) -> None:  # type: ignore[no-untyped-def]
    r = post(srv, {"message": "hi", "model": f"fail-{code}"})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == code
    if status in (429, 503):
        assert int(r.headers["retry-after"]) >= 1
    else:
        assert "retry-after" not in r.headers


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"message": "x", "model": "ghost"}, 404, "unknown_model"),
        ({}, 400, "invalid_request"),
        ({"messages": []}, 400, "invalid_request"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_request"),
        ({"message": 5}, 400, "invalid_request"),
        ({"message": "x", "max_tokens": 0}, 400, "invalid_request"),
        ({"message": "x", "temperature": 9}, 400, "invalid_request"),
        ([1, 2], 400, "invalid_request"),
    ],
)
def test_bad_input_is_4xx(srv, body: object, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    r = post(srv, body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)


def test_bad_json_is_400(srv) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{srv.url}/chat/stream", content=b"{bad", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


def test_error_after_first_byte_is_in_band(srv) -> None:  # type: ignore[no-untyped-def]
    r = post(srv, {"message": "a b c d", "model": "late-fail"})
    assert r.status_code == 200
    datas = events(r.content)
    err = json.loads(datas[-2])
    assert err["type"] == "error" and err["code"] == "upstream_error" and datas[-1] == "[DONE]"
    assert "".join(json.loads(d).get("text", "") for d in datas[:-2]) == "a b "


def test_disconnect_cancels_generation(srv) -> None:  # type: ignore[no-untyped-def]
    words = " ".join(f"w{i}" for i in range(200))
    with httpx.stream("POST", f"{srv.url}/chat/stream", json={"message": words, "model": "slow"}) as r:
        sid = r.headers["x-stream-id"]
        for line in r.iter_lines():
            if line.startswith("data:"):
                break
    stream = srv.state.hub.get(sid)
    assert stream is not None
    deadline = time.monotonic() + 5
    while not stream.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.finished
    final = stream.log.events[-1]
    assert final.reason == "cancelled"
    assert stream.meter.deltas < 20  # 200 words at 50 ms each would take 10 s


def test_healthz_and_models(srv) -> None:  # type: ignore[no-untyped-def]
    health = httpx.get(f"{srv.url}/healthz").json()
    assert health["status"] == "ok" and "echo" in health["models"]
    models = httpx.get(f"{srv.url}/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == "echo"
    assert {m["object"] for m in models["data"]} == {"model"}
