"""API keys: parsing and hashing, the bind refusal, and 401 in every protocol and on the WebSocket."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from starlette.types import Message, Receive, Scope, Send
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from sluiceway.cli.main import main
from sluiceway.server.auth import (
    ApiKey,
    AuthMiddleware,
    KeyRing,
    bind_refusal,
    hash_key,
    is_loopback,
    is_rebindable_host,
    parse_api_keys,
    presented_key,
)
from sluiceway.server.settings import ConfigError, load_settings
from tests.live import LiveServer, live_server, make_settings

KEY = "sk-test-" + "a" * 24
OTHER = "sk-test-" + "b" * 24
ECHO_ONLY = "sk-test-" + "c" * 24
WRONG = "sk-test-" + "z" * 24
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def srv() -> Iterator[LiveServer]:
    keys = [KEY, {"key": OTHER, "name": "other"}, {"key": ECHO_ONLY, "name": "echo-only", "models": ["echo"]}]
    settings = make_settings(api_keys=keys, cors_origins=[ORIGIN])
    with live_server(settings) as live:
        yield live


# --- keys from configuration ---------------------------------------------------------------------


def test_plain_keys_are_kept_only_as_sha256_digests() -> None:
    (key,) = parse_api_keys([KEY])
    assert key.digest == hashlib.sha256(KEY.encode()).digest()
    assert KEY not in repr(key) and key.digest.hex() not in repr(key)


def test_a_table_gives_name_limits_and_models() -> None:
    (key,) = parse_api_keys(
        [
            {
                "key": KEY,
                "name": "alice",
                "rpm": 5,
                "max_concurrent": 2,
                "tokens_per_day": 100,
                "models": ["echo"],
            }
        ]
    )
    assert (key.name, key.rpm, key.max_concurrent, key.tokens_per_day) == ("alice", 5, 2, 100)
    assert key.allows("echo") and not key.allows("local")


@pytest.mark.parametrize(
    "raw",
    [
        [{"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        ["sha256:" + hashlib.sha256(KEY.encode()).hexdigest()],
        f" {KEY} , {OTHER} ",
    ],
)
def test_hashed_and_comma_separated_forms(raw: object) -> None:
    assert KeyRing(parse_api_keys(raw)).find(KEY) is not None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["short"], "api_keys[0].key: must be at least 16"),
        ([{"key_sha256": "abc"}], "api_keys[0].key_sha256: must be 64 hex digits"),
        ([{"key": KEY, "rpm": 0}], "api_keys[0].rpm: must be a positive integer"),
        ([{"key": KEY, "rpm": True}], "api_keys[0].rpm: must be a positive integer"),
        ([{"key": KEY, "models": "echo"}], "api_keys[0].models: must be a list"),
        ([{"key": KEY, "colour": "red"}], "api_keys[0]: unknown field(s) colour"),
        ([{"name": "x"}], "api_keys[0]: give exactly one of 'key' or 'key_sha256'"),
        ([KEY, KEY], "the same key is configured twice"),
        ([{"key": KEY, "name": "a"}, {"key": OTHER, "name": "a"}], "two keys have the same name"),
        ({"key": KEY}, "must be a list"),
    ],
)
def test_bad_keys_are_refused_naming_the_entry(raw: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_api_keys(raw)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("rpm = true", "got True"),
        ("rpm = -5", "got -5"),
        ("max_concurrent = 2.5", "got 2.5"),
        ("tokens_per_day = 1e6", "got 1000000.0"),
        ('max_concurrent = "4"', "got '4'"),
        ("tokens_per_day = 0", "got 0"),
    ],
)
def test_limits_in_a_keys_table_must_be_whole_numbers_of_at_least_one(
    tmp_path: Path, line: str, shown: str
) -> None:
    config = tmp_path / "sluiceway.toml"
    config.write_text(f'[[api_keys]]\nkey = "{KEY}"\n{line}\n')
    field = line.partition(" =")[0]
    with pytest.raises(ConfigError) as info:
        load_settings(config, env={})
    rule = "must be a positive integer (leave it out for no limit)"
    assert str(info.value) == f"config api_keys: api_keys[0].{field}: {rule}, {shown}"


def test_keys_from_toml_tables_and_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "sluiceway.toml"
    config.write_text(f'[[api_keys]]\nkey = "{KEY}"\nname = "alice"\nrpm = 10\n')
    assert [k.name for k in load_settings(config, env={}).api_keys] == ["alice"]
    from_env = load_settings(config, env={"SLUICEWAY_API_KEYS": f"{OTHER},{WRONG}"}).api_keys
    assert KeyRing(from_env).find(OTHER) is not None and KeyRing(from_env).find(KEY) is None
    with pytest.raises(ConfigError, match=r"SLUICEWAY_API_KEYS: api_keys\[0\].key"):
        load_settings(None, env={"SLUICEWAY_API_KEYS": "too-short"})


def test_find_checks_every_key_and_rejects_near_misses() -> None:
    ring = KeyRing(parse_api_keys([KEY, OTHER]))
    assert ring.find(OTHER) is not None and ring.find(OTHER).name == "key2"  # type: ignore[union-attr]
    assert ring.find(KEY[:-1] + "b") is None
    assert ring.find("") is None and ring.find(None) is None
    assert hash_key(KEY) == ring.keys[0].digest


def test_presented_key_reads_bearer_then_x_api_key() -> None:
    assert presented_key(httpx.Headers({"authorization": f"Bearer {KEY}"})) == KEY  # type: ignore[arg-type]
    assert presented_key(httpx.Headers({"x-api-key": KEY})) == KEY  # type: ignore[arg-type]
    assert presented_key(httpx.Headers({"authorization": f"Basic {KEY}"})) is None  # type: ignore[arg-type]


# --- refusing to listen publicly without keys -----------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False)]
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_bind_refusal() -> None:
    key = ApiKey("k", hash_key(KEY))
    assert bind_refusal("127.0.0.1", (), False) is None
    assert bind_refusal("0.0.0.0", (key,), False) is None
    assert bind_refusal("0.0.0.0", (), True) is None
    assert "refusing to listen on 0.0.0.0 without API keys" in (bind_refusal("0.0.0.0", (), False) or "")


def test_serve_refuses_a_public_host_without_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("SLUICEWAY_API_KEYS", "SLUICEWAY_CONFIG", "SLUICEWAY_INSECURE_NO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert main(["serve", "--host", "0.0.0.0", "--port", "9"]) == 2
    finally:  # serve configures logging for a real run; leave the test run's as it was
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "--insecure-no-auth" in capsys.readouterr().err


# --- 401 in each protocol's own shape ------------------------------------------------------------

SEED = ("/chat/stream", {"message": "hi"})
OPENAI = ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
ANTHROPIC = ("/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
AISDK = ("/api/chat", {"messages": [{"id": "1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]})


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Bearer {WRONG}"}, {"x-api-key": WRONG}])
@pytest.mark.parametrize(
    ("route", "check"),
    [
        (SEED, lambda b: b["error"]["code"] == "unauthorized"),
        (AISDK, lambda b: b["error"]["code"] == "unauthorized"),
        (OPENAI, lambda b: b["error"]["code"] == "invalid_api_key" and b["error"]["type"]),
        (ANTHROPIC, lambda b: b["type"] == "error" and b["error"]["type"] == "authentication_error"),
    ],
)
def test_missing_or_wrong_key_is_401_in_the_protocols_shape(
    srv: LiveServer, route: tuple[str, dict[str, object]], check: object, headers: dict[str, str]
) -> None:
    path, body = route
    r = httpx.post(srv.url + path, json=body, headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert check(r.json())  # type: ignore[operator]
    message = json.dumps(r.json())
    assert ("invalid API key" if headers else "missing API key") in message
    assert WRONG not in message


@pytest.mark.parametrize("route", [SEED, OPENAI, ANTHROPIC, AISDK])
@pytest.mark.parametrize("header", ["Authorization", "x-api-key"])
def test_a_good_key_in_either_header_is_let_in(
    srv: LiveServer, route: tuple[str, dict[str, object]], header: str
) -> None:
    value = f"Bearer {KEY}" if header == "Authorization" else KEY
    r = httpx.post(srv.url + route[0], json=route[1], headers={header: value}, timeout=10)
    assert r.status_code == 200, r.text


def test_the_model_list_needs_a_key_and_health_does_not(srv: LiveServer) -> None:
    assert httpx.get(srv.url + "/v1/models").status_code == 401
    assert httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(srv.url + "/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/echo"])
def test_the_model_list_answers_401_in_the_shape_of_its_caller(srv: LiveServer, path: str) -> None:
    anthropic_caller = httpx.get(
        srv.url + path, headers={"anthropic-version": "2023-06-01", "x-api-key": WRONG}
    )
    assert anthropic_caller.status_code == 401 and anthropic_caller.headers["www-authenticate"] == "Bearer"
    body = anthropic_caller.json()
    assert body == {"type": "error", "error": {"type": "authentication_error", "message": "invalid API key"}}
    openai_caller = httpx.get(srv.url + path).json()["error"]
    assert openai_caller["code"] == "invalid_api_key" and "missing API key" in openai_caller["message"]


def test_the_openai_sdk_sees_an_authentication_error(srv: LiveServer) -> None:
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=WRONG, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "invalid_api_key"
    good = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)
    answer = good.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "hi"


def test_the_anthropic_sdk_sees_an_authentication_error(srv: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=srv.url, api_key=WRONG, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.create(model="echo", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    good = anthropic.Anthropic(base_url=srv.url, api_key=KEY, max_retries=0)
    answer = good.messages.create(model="echo", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert answer.content[0].text == "hi"  # type: ignore[union-attr]


def test_a_key_limited_to_some_models_gets_403_for_others(srv: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {ECHO_ONLY}"}
    r = httpx.post(srv.url + "/v1/chat/completions", json={**OPENAI[1], "model": "local"}, headers=headers)
    assert r.status_code == 403
    assert r.json()["error"]["message"] == "this API key may not use model 'local'"
    r = httpx.post(srv.url + "/v1/messages", json={**ANTHROPIC[1], "model": "local"}, headers=headers)
    assert (r.status_code, r.json()["error"]["type"]) == (403, "permission_error")
    assert httpx.post(srv.url + "/chat/stream", json=SEED[1], headers=headers).status_code == 200
    listed = httpx.get(srv.url + "/v1/models", headers=headers).json()["data"]
    assert [m["id"] for m in listed] == ["echo"]
    everything = httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert len(everything["data"]) > 1


# --- WebSocket -----------------------------------------------------------------------------------


def ws_url(srv: LiveServer) -> str:
    return srv.url.replace("http://", "ws://") + "/ws/chat"


def answer(ws: ClientConnection, message: str = "hello there") -> str:
    ws.send(json.dumps({"message": message}))
    text = ""
    while True:
        frame = json.loads(ws.recv(timeout=10))
        if frame["type"] == "chunk":
            text += frame["text"]
        elif frame["type"] != "start":
            assert frame["type"] == "done", frame
            return text


def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=10)
    return info.value.rcvd.code if info.value.rcvd else None


def test_websocket_first_message_auth(srv: LiveServer) -> None:
    with connect(ws_url(srv)) as ws:
        ws.send(json.dumps({"type": "auth", "key": KEY}))
        assert answer(ws) == "hello there"
        assert answer(ws, "again") == "again"


def test_websocket_without_a_key_is_closed_4401(srv: LiveServer) -> None:
    with connect(ws_url(srv)) as ws:
        ws.send(json.dumps({"message": "hi"}))
        assert closed_with(ws) == 4401


def test_websocket_with_a_wrong_key_message_is_closed_4401(srv: LiveServer) -> None:
    with connect(ws_url(srv)) as ws:
        ws.send(json.dumps({"type": "auth", "key": WRONG}))
        assert closed_with(ws) == 4401


def test_websocket_key_as_subprotocol(srv: LiveServer) -> None:
    with connect(ws_url(srv), subprotocols=["sluiceway", f"sluiceway.key.{KEY}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "sluiceway"
        assert answer(ws) == "hello there"


def test_websocket_key_as_header(srv: LiveServer) -> None:
    with connect(ws_url(srv), additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert answer(ws) == "hello there"


@pytest.mark.parametrize(
    "options",
    [
        {"subprotocols": ["sluiceway", f"sluiceway.key.{WRONG}"]},
        {"additional_headers": {"Authorization": f"Bearer {WRONG}"}},
    ],
)
def test_websocket_with_a_wrong_key_in_the_handshake_gets_401(
    srv: LiveServer, options: dict[str, object]
) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(srv), **options).close()  # type: ignore[arg-type]
    assert info.value.response.status_code == 401
    assert WRONG.encode() not in info.value.response.body


@pytest.mark.parametrize(("origin", "allowed"), [(ORIGIN, True), ("https://evil.example", False)])
def test_websocket_origin_must_be_same_origin_or_configured(
    srv: LiveServer, origin: str, allowed: bool
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    if not allowed:
        with pytest.raises(InvalidStatus) as info:
            connect(ws_url(srv), origin=origin, additional_headers=headers).close()  # type: ignore[arg-type]
        assert info.value.response.status_code == 403
        return
    with connect(ws_url(srv), origin=origin, additional_headers=headers) as ws:  # type: ignore[arg-type]
        assert answer(ws) == "hello there"
    same = srv.url  # the page's own origin
    with connect(ws_url(srv), origin=same, additional_headers=headers) as ws:  # type: ignore[arg-type]
        assert answer(ws) == "hello there"


async def test_websocket_that_never_authenticates_is_closed_after_the_timeout() -> None:
    """Raw ASGI: a socket that sends nothing is closed 4401 and its route sees a disconnect."""
    seen: list[Message] = []

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        seen.append(await receive())
        await send({"type": "websocket.send", "text": "dropped"})

    app = AuthMiddleware(route, KeyRing(parse_api_keys([KEY])), auth_timeout_s=0.05)
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    inbox.put_nowait({"type": "websocket.connect"})
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws/chat", "headers": [], "subprotocols": []}
    await asyncio.wait_for(app(scope, inbox.get, send), 5)
    assert seen == [{"type": "websocket.disconnect", "code": 4401}]
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert sent[1]["code"] == 4401


# --- browsers: cross-site requests and DNS rebinding, keys or not -----------------------------------


def raw_handshake(srv: LiveServer, host: str) -> bytes:
    """The status line and headers a WebSocket handshake with this ``Host`` gets (websockets sets its own)."""
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"GET /ws/chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        return sock.recv(4096)


@pytest.fixture(scope="module")
def keyless() -> Iterator[LiveServer]:
    with live_server(make_settings()) as live:
        yield live


def test_a_cross_site_post_is_refused_even_without_keys(keyless: LiveServer) -> None:
    body = {"message": "spend your budget"}
    r = httpx.post(keyless.url + "/chat/stream", json=body, headers={"Origin": "https://evil.example"})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    assert "origin not allowed" in r.json()["error"]["message"]
    same = httpx.post(keyless.url + "/chat/stream", json=body, headers={"Origin": keyless.url})
    assert same.status_code == 200
    assert httpx.post(keyless.url + "/chat/stream", json=body).status_code == 200  # not a browser


def test_a_keyless_loopback_server_answers_only_to_loopback_host_names(keyless: LiveServer) -> None:
    port = keyless.url.rsplit(":", 1)[1]
    rebound = {"Host": f"evil.example:{port}"}  # a page whose domain now resolves to 127.0.0.1
    r = httpx.get(keyless.url + "/v1/models", headers=rebound)
    assert r.status_code == 403 and "answers only to localhost" in r.json()["error"]["message"]
    assert raw_handshake(keyless, rebound["Host"]).startswith(b"HTTP/1.1 403 ")
    assert raw_handshake(keyless, f"127.0.0.1:{port}").startswith(b"HTTP/1.1 101 ")
    hosts = (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "localhost", "testserver", "198.51.100.7")
    for host in hosts:
        assert httpx.get(keyless.url + "/v1/models", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    ("host", "rebindable"),
    [
        ("evil.example", True),
        ("evil.example:8000", True),
        ("EVIL.example.", True),
        ("localhost:8000", False),
        ("app.localhost", False),
        ("127.0.0.1:8000", False),
        ("[::1]:8000", False),
        ("testserver", False),
        (None, False),
    ],
)
def test_is_rebindable_host(host: str | None, rebindable: bool) -> None:
    assert is_rebindable_host(host) is rebindable


def test_with_keys_any_host_name_is_served(srv: LiveServer) -> None:
    r = httpx.get(srv.url + "/v1/models", headers={"Host": "chat.example.com", **{"x-api-key": KEY}})
    assert r.status_code == 200
