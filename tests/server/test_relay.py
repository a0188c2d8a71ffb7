"""The relay: event ids, settings to hub settings, fallback chains, and how the first byte is chosen."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from types import SimpleNamespace

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from sluiceway.errors import InvalidRequestError
from sluiceway.providers.base import ModelConfig
from sluiceway.requests import ChatRequest, Message
from sluiceway.server.app import create_app
from sluiceway.server.relay import _fallbacks, hub_settings, parse_event_id, stream_response
from sluiceway.wire.seed import SeedEncoder
from tests.live import live_server, make_settings
from tests.streams.providers import Script, registry_with


@pytest.mark.parametrize(
    ("value", "expected"),
    [("abc:7", ("abc", 7)), (" abc:0 ", ("abc", 0)), ("a:b:12", ("a:b", 12))],
)
def test_an_event_id_is_a_stream_and_a_seq(value: str, expected: tuple[str, int]) -> None:
    assert parse_event_id(value) == expected


@pytest.mark.parametrize("value", ["", "abc", ":7", "abc:", "abc:-1", "abc:1.5", "abc:٣"])
def test_anything_else_is_an_invalid_request(value: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_event_id(value)


def test_an_event_id_of_another_stream_is_refused() -> None:
    assert parse_event_id("abc:3", "abc") == ("abc", 3)
    with pytest.raises(InvalidRequestError, match="another stream"):
        parse_event_id("abc:3", "xyz")


def test_hub_settings_come_from_the_server_settings() -> None:
    hub = hub_settings(
        make_settings(
            disconnect_policy="finish",
            disconnect_grace_s=2,
            retention_s=30,
            ttft_timeout_s=5,
            idle_timeout_s=6,
            total_timeout_s=7,
            retries=4,
            retry_backoff_s=0.25,
            max_concurrent=9,
            max_concurrent_per_model=3,
            max_stream_bytes=1000,
        )
    )
    assert (hub.disconnect_policy, hub.grace_s, hub.retention_s) == ("finish", 2, 30)
    assert (hub.timeouts.first_token_s, hub.timeouts.idle_s, hub.timeouts.total_s) == (5, 6, 7)
    assert (hub.retry.retries, hub.retry.backoff_s) == (4, 0.25)
    assert (hub.max_concurrent, hub.max_concurrent_per_model, hub.max_stream_bytes) == (9, 3, 1000)


def test_the_fallback_chain_skips_the_model_itself_and_models_not_loaded() -> None:
    models = {
        "main": ModelConfig("main", "echo", fallbacks=("main", "broken", "capped")),
        "broken": ModelConfig("broken", "no-such-provider"),
        "capped": ModelConfig("capped", "echo", max_tokens_cap=3),
    }
    settings = make_settings(models=models)
    app = create_app(settings)
    with live_server(app=app) as srv:
        request = ChatRequest((Message("user", "hi"),), "main", max_tokens=10)
        chain = _fallbacks(srv.state, request, models["main"].fallbacks)
    assert [(r.model, r.max_tokens) for r, _ in chain] == [("capped", 3)]


@pytest.fixture
def script() -> Script:
    return Script()


def test_an_error_before_any_text_is_json_but_in_band_on_resume(script: Script) -> None:
    script.plays["down"] = [[("fail", "upstream_auth")]]
    settings = make_settings(models={"down": ModelConfig("down", "scripted")})
    with live_server(app=create_app(settings, registry_with(script=script))) as srv:
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "x", "model": "down"})
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_auth"
        stream_id = r.headers["x-stream-id"]
        resumed = httpx.get(f"{srv.url}/chat/stream/{stream_id}?after=0")
        assert resumed.status_code == 502  # after=0 is a replay: still no byte of text, still JSON
        resumed = httpx.get(f"{srv.url}/chat/stream/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:1"})
        assert resumed.status_code == 200 and '"code":"upstream_auth"' in resumed.text


def test_while_waiting_for_the_first_token_the_stream_opens_with_pings(script: Script) -> None:
    script.plays["thinker"] = [[("sleep", 0.4), ("text", "done")]]
    settings = make_settings(models={"thinker": ModelConfig("thinker", "scripted")}, heartbeat_s=0.05)
    with live_server(app=create_app(settings, registry_with(script=script))) as srv:
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "x", "model": "thinker"}, timeout=10)
    assert r.status_code == 200 and r.text.startswith(": ping\n\n")
    assert r.text.index('"text":"done"') > r.text.index(": ping")


async def test_an_exception_before_the_first_event_is_a_json_error_in_the_routes_shape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Unreadable:
        stream_id = "s-unreadable"

        async def read(self, after: int = 0, idle: float | None = None) -> AsyncGenerator[None, None]:
            raise RuntimeError("the log is gone")
            yield

    app = create_app(make_settings())
    state = SimpleNamespace(settings=SimpleNamespace(heartbeat_s=0))

    async def broken(http: Request) -> Response:
        return stream_response(http, state, Unreadable(), lambda s: SeedEncoder(s.stream_id))  # type: ignore[arg-type]

    app.router.add_route("/v1/chat/completions/broken", broken, methods=["POST"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        r = await client.post("/v1/chat/completions/broken")
    assert (r.status_code, r.headers["x-stream-id"]) == (500, "s-unreadable")
    assert r.json()["error"]["message"] == "internal server error"  # OpenAI's shape, no detail
    assert "the log is gone" not in r.text and "the log is gone" in caplog.text


def test_a_lone_surrogate_from_a_provider_is_sent_repaired_and_the_stream_still_ends(script: Script) -> None:
    script.plays["odd"] = [[("text", "a "), ("text", "b \ud83d c"), ("text", " d")]]  # half an emoji
    settings = make_settings(models={"odd": ModelConfig("odd", "scripted")})
    with live_server(app=create_app(settings, registry_with(script=script))) as srv:
        r = httpx.post(f"{srv.url}/chat/stream", json={"message": "x", "model": "odd"}, timeout=10)
        chat = httpx.post(
            f"{srv.url}/v1/chat/completions",
            json={"model": "odd", "stream": True, "messages": [{"role": "user", "content": "x"}]},
            timeout=10,
        )
        whole = httpx.post(
            f"{srv.url}/v1/messages",
            json={"model": "odd", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]},
            timeout=10,
        )
    assert whole.json()["content"][0]["text"] == "a b \ufffd c d"
    assert r.status_code == 200 and '"text":"b \ufffd c"' in r.text and r.text.endswith("data: [DONE]\n\n")
    assert '"content":"b \ufffd c"' in chat.text and chat.text.endswith("data: [DONE]\n\n")
