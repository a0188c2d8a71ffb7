"""Per-key quotas (rpm, concurrent streams, tokens per day) and per-request input limits."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from sluiceway.errors import InvalidRequestError, PermissionDeniedError, RateLimitedError
from sluiceway.events import Usage
from sluiceway.providers.base import ModelConfig
from sluiceway.requests import ChatRequest, Message
from sluiceway.server.auth import ApiKey, hash_key
from sluiceway.server.limits import (
    DAY_S,
    InputNames,
    KeyLimits,
    admit,
    cap_max_tokens,
    check_input,
)
from tests.live import LiveServer, live_server, make_settings

DAY_START = 20_000 * DAY_S  # midnight UTC of some day
RPM_KEY = "sk-limits-rpm-" + "r" * 16
SLOW_KEY = "sk-limits-one-" + "o" * 16
DAY_KEY = "sk-limits-day-" + "d" * 16
FREE_KEY = "sk-limits-free-" + "f" * 16
SLOW = ModelConfig("echo-slow", "echo", options={"delay_ms": 50})
CAPPED = ModelConfig("echo-capped", "echo", max_tokens_cap=2)


class Clock:
    """Wall time that moves only when a test says so."""

    def __init__(self, now: float = DAY_START + 3600) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(text: str = "one two three", model: str = "echo", max_tokens: int | None = None) -> ChatRequest:
    return ChatRequest((Message("user", text),), model, max_tokens=max_tokens)


def key(**limits: object) -> ApiKey:
    return ApiKey("k", hash_key("x" * 16), **limits)  # type: ignore[arg-type]


# --- the counters, with a clock the test moves -------------------------------------------------


def test_rpm_is_a_sliding_minute() -> None:
    clock, k = Clock(), key(rpm=2)
    limits = KeyLimits(clock)
    limits.admit(k, request())
    clock.now += 20
    limits.admit(k, request())
    with pytest.raises(RateLimitedError) as info:
        limits.admit(k, request())
    assert info.value.retry_after == pytest.approx(40)
    assert "started 2 streams in the last minute" in info.value.message
    clock.now += 40
    limits.admit(k, request())


def test_concurrency_slot_returns_when_the_lease_is_released() -> None:
    limits, k = KeyLimits(Clock()), key(max_concurrent=1)
    _, lease = limits.admit(k, request())
    with pytest.raises(RateLimitedError) as info:
        limits.admit(k, request())
    assert info.value.retry_after == 1.0
    lease.release(Usage(1, 1))
    lease.release(Usage(1, 1))  # twice is once
    assert limits.usage(k).running == 0
    limits.admit(k, request())


def test_tokens_per_day_reset_at_utc_midnight_and_cap_max_tokens() -> None:
    clock, k = Clock(), key(tokens_per_day=10)
    limits = KeyLimits(clock)
    capped, lease = limits.admit(k, request(max_tokens=50))
    assert capped.max_tokens == 10
    lease.release(Usage(4, 3))
    capped, lease = limits.admit(k, request())
    assert capped.max_tokens == 3
    lease.release(Usage(2, 3))
    with pytest.raises(RateLimitedError) as info:
        limits.admit(k, request())
    assert info.value.retry_after == pytest.approx(DAY_S - 3600)
    clock.now = DAY_START + DAY_S
    assert limits.admit(k, request())[0].max_tokens == 10


def test_models_outside_the_keys_list_are_forbidden() -> None:
    limits = KeyLimits(Clock())
    with pytest.raises(PermissionDeniedError, match="may not use model 'local'"):
        limits.admit(key(models=frozenset({"echo"})), request(model="local"))
    assert limits.admit(None, request(model="local"))[0].model == "local"


SYSTEM_APART = InputNames(message="messages.{i}.content", system="system")


@pytest.mark.parametrize(
    ("messages", "names", "refused"),
    [
        ([("system", "s"), ("user", "a"), ("user", "b")], SYSTEM_APART, None),  # system is no message
        ([("system", "s"), ("user", "a"), ("user", "b")], InputNames(), "messages: 3 messages; the limit"),
        ([("user", "a")] * 3, SYSTEM_APART, "messages: 3 messages; the limit is 2"),
        ([("system", "s"), ("user", "a")] * 2, SYSTEM_APART, "messages: 3 messages; the limit is 2"),
        ([("system", "s" * 6), ("user", "a")], SYSTEM_APART, "system: 6 characters; the limit is 5"),
        ([("system", "s"), ("user", "abcdef")], SYSTEM_APART, "messages.0.content: 6 characters; the limit"),
        ([("user", "a"), ("user", "abcdef")], SYSTEM_APART, "messages.1.content: 6 characters; the limit"),
        ([("system", "s" * 6), ("user", "a")], InputNames(), r"messages\[0\].content: 6 characters"),
    ],
)
def test_input_limits_name_the_fields_as_the_protocol_does(
    messages: list[tuple[str, str]], names: InputNames, refused: str | None
) -> None:
    conversation = ChatRequest(tuple(Message(role, text) for role, text in messages), "echo")  # type: ignore[arg-type]
    if refused is None:
        check_input(conversation, 2, 5, names)
        return
    with pytest.raises(InvalidRequestError, match=refused):
        check_input(conversation, 2, 5, names)


def test_admit_names_the_fields_as_it_is_told() -> None:
    settings = make_settings(max_messages=1)
    limits, config = KeyLimits(Clock()), ModelConfig("echo", "echo")
    two = ChatRequest((Message("system", "s"), Message("user", "a")), "echo")
    admit(settings, limits, None, config, two, SYSTEM_APART)
    with pytest.raises(InvalidRequestError, match="messages: 2 messages; the limit is 1"):
        admit(settings, limits, None, config, two)


def test_input_limits_name_what_is_wrong() -> None:
    with pytest.raises(InvalidRequestError, match="messages: 3 messages; the limit is 2"):
        check_input(ChatRequest((Message("user", "a"),) * 3, "echo"), 2, 100)
    with pytest.raises(InvalidRequestError, match=r"messages\[1\].content: 6 characters; the limit is 5"):
        check_input(ChatRequest((Message("user", "a"), Message("user", "abcdef")), "echo"), 5, 5)
    assert cap_max_tokens(request(max_tokens=9), 4).max_tokens == 4
    assert cap_max_tokens(request(), 4).max_tokens == 4
    assert cap_max_tokens(request(max_tokens=3), 4).max_tokens == 3


# --- over real HTTP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv() -> Iterator[LiveServer]:
    keys = [
        {"key": RPM_KEY, "name": "rpm", "rpm": 2},
        {"key": SLOW_KEY, "name": "one", "max_concurrent": 1},
        {"key": DAY_KEY, "name": "day", "tokens_per_day": 6},
        {"key": FREE_KEY, "name": "free"},
    ]
    settings = make_settings(
        api_keys=keys,
        models={"echo-slow": SLOW, "echo-capped": CAPPED},
        max_messages=3,
        max_message_chars=2000,
        disconnect_grace_s=0,
    )
    with live_server(settings) as live:
        yield live


@pytest.fixture
def clock(srv: LiveServer) -> Clock:
    """Fresh counters on the server, on a clock the test moves."""
    clock = Clock()
    srv.state.limits = KeyLimits(clock)
    return clock


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


OPENAI_BODY = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}]}


def test_rpm_limit_is_429_with_retry_after_and_recovers(srv: LiveServer, clock: Clock) -> None:
    url = srv.url + "/v1/chat/completions"
    for _ in range(2):
        assert httpx.post(url, json=OPENAI_BODY, headers=auth(RPM_KEY)).status_code == 200
    r = httpx.post(url, json=OPENAI_BODY, headers=auth(RPM_KEY))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "60"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert "the limit is 2" in r.json()["error"]["message"]
    anthropic_body = {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(srv.url + "/v1/messages", json=anthropic_body, headers=auth(RPM_KEY))
    assert (r.status_code, r.json()["error"]["type"]) == (429, "rate_limit_error")
    clock.now += 60
    assert httpx.post(url, json=OPENAI_BODY, headers=auth(RPM_KEY)).status_code == 200


def test_concurrent_streams_limit_is_429_and_recovers_when_the_stream_ends(
    srv: LiveServer, clock: Clock
) -> None:
    slow = {"model": "echo-slow", "message": " ".join(["word"] * 200)}
    with httpx.stream("POST", srv.url + "/chat/stream", json=slow, headers=auth(SLOW_KEY)) as first:
        assert first.status_code == 200
        second = httpx.post(srv.url + "/chat/stream", json={"message": "hi"}, headers=auth(SLOW_KEY))
        assert second.status_code == 429
        assert second.headers["retry-after"] == "1"
        assert second.json()["error"]["code"] == "rate_limited"
        assert "already runs 1 streams; the limit is 1" in second.json()["error"]["message"]
    # the client left: the generation is cancelled (grace 0) and the slot comes back
    deadline = time.monotonic() + 10
    while True:
        r = httpx.post(srv.url + "/chat/stream", json={"message": "hi"}, headers=auth(SLOW_KEY))
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text


def test_tokens_per_day_is_429_until_midnight(srv: LiveServer, clock: Clock) -> None:
    url = srv.url + "/v1/chat/completions"
    r = httpx.post(url, json={**OPENAI_BODY, "max_tokens": 100}, headers=auth(DAY_KEY))
    assert r.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    deadline = time.monotonic() + 5  # the tokens are counted when the generation's task ends
    while (r := httpx.post(url, json=OPENAI_BODY, headers=auth(DAY_KEY))).status_code == 200:
        assert time.monotonic() < deadline
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) == DAY_S - 3600
    assert "used its 6 tokens for today" in r.json()["error"]["message"]
    clock.now = DAY_START + DAY_S
    assert httpx.post(url, json=OPENAI_BODY, headers=auth(DAY_KEY)).status_code == 200


def test_quota_errors_reach_a_websocket_as_error_frames(srv: LiveServer, clock: Clock) -> None:
    url = srv.url.replace("http://", "ws://") + "/ws/chat"
    with connect(url, additional_headers=auth(RPM_KEY)) as ws:
        codes = []
        for _ in range(3):
            ws.send(json.dumps({"message": "hi"}))
            while (frame := json.loads(ws.recv(timeout=10)))["type"] not in ("done", "error"):
                pass
            codes.append(frame.get("code", frame["type"]))
    assert codes == ["done", "done", "rate_limited"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [{"role": "user", "content": "x"}] * 4}, "messages: 4 messages; the limit is 3"),
        ({"messages": [{"role": "user", "content": "x" * 2001}]}, "messages[0].content: 2001 characters"),
    ],
)
def test_input_limits_are_400_in_the_protocols_shape(
    srv: LiveServer, body: dict[str, object], message: str
) -> None:
    r = httpx.post(srv.url + "/v1/chat/completions", json=body, headers=auth(FREE_KEY))
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert message in r.json()["error"]["message"]
    r = httpx.post(srv.url + "/chat/stream", json=body, headers=auth(FREE_KEY))
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")


ANTHROPIC_USER = {"role": "user", "content": "x"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"system": "s", "messages": [ANTHROPIC_USER] * 3}, None),
        ({"system": "s", "messages": [ANTHROPIC_USER] * 4}, "messages: 4 messages; the limit is 3"),
        ({"messages": [{"role": "user", "content": "x" * 2001}]}, "messages.0.content: 2001 characters"),
        (
            {"system": "s", "messages": [ANTHROPIC_USER, {"role": "user", "content": "x" * 2001}]},
            "messages.1.content: 2001 characters",
        ),
        ({"system": "s" * 2001, "messages": [ANTHROPIC_USER]}, "system: 2001 characters; the limit is 2000"),
    ],
)
def test_anthropic_input_limits_use_anthropics_names_and_do_not_count_system(
    srv: LiveServer, body: dict[str, object], message: str | None
) -> None:
    r = httpx.post(srv.url + "/v1/messages", json={"max_tokens": 5, **body}, headers=auth(FREE_KEY))
    if message is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert message in r.json()["error"]["message"]


def test_max_tokens_is_capped_per_model_on_every_protocol(srv: LiveServer) -> None:
    text = "one two three four five"
    r = httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": "echo-capped", "max_tokens": 100, "messages": [{"role": "user", "content": text}]},
        headers=auth(FREE_KEY),
    )
    assert r.json()["choices"][0]["message"]["content"] == "one two "
    assert r.json()["choices"][0]["finish_reason"] == "length"
    r = httpx.post(
        srv.url + "/v1/messages",
        json={"model": "echo-capped", "max_tokens": 100, "messages": [{"role": "user", "content": text}]},
        headers=auth(FREE_KEY),
    )
    assert r.json()["content"][0]["text"] == "one two "


# --- bad input: a 4xx in the protocol's shape, saying what was wrong ------------------------------

USER = {"role": "user", "content": "hi"}


def dumped(**body: object) -> bytes:
    return json.dumps(body).encode()


BAD_INPUT = [
    ("/chat/stream", b'{"message": "\xff\xfe"}', "must be JSON (str is not valid UTF-8"),
    ("/chat/stream", b'{"messages": "hi"}', "messages"),
    ("/chat/stream", b'{"messages": [{"role": "wizard", "content": "hi"}]}', "role"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\xff"}]}', "JSON"),
    ("/v1/chat/completions", b'{"messages": "hi"}', "messages: must be a non-empty array"),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    (
        "/v1/chat/completions",
        dumped(messages=[USER], frob=1),
        "unknown field(s): 'frob'",
    ),
    ("/v1/chat/completions", dumped(messages=[USER], max_tokens="9"), "max_tokens"),
    ("/v1/messages", b'{"max_tokens": 5, "messages": [{"role": "user", "content": "\xff"}]}', "JSON"),
    ("/v1/messages", dumped(max_tokens=5, messages=[USER], frob=1), "'frob'"),
    ("/v1/messages", dumped(messages=[USER]), "max_tokens: Field required"),
    (
        "/v1/messages",
        dumped(max_tokens=5, messages=[{**USER, "role": "system"}]),
        "role",
    ),
    ("/api/chat", b'{"messages": [{"role": "user", "parts": [{"type": "text", "text": 5}]}]}', "text"),
    ("/api/chat", b"[1, 2]", "JSON object"),
    # what json.loads lets through and no encoder can write back, or cannot parse without recursing
    *[(path, b'{"message": "a \\ud800 b"}', "must be JSON (") for path in ("/chat/stream", "/conversations")],
    *[
        (path, b'{"max_tokens": 5, "messages": [{"role": "user", "content": "a \\ud800"}]}', "JSON")
        for path in ("/v1/chat/completions", "/v1/messages", "/api/chat")
    ],
    *[
        (path, b"[" * 3000 + b"]" * 3000, "JSON")
        for path in ("/chat/stream", "/v1/chat/completions", "/v1/messages")
    ],
    ("/v1/chat/completions", dumped(messages=[USER], max_tokens=2**64), "max_tokens"),
]


@pytest.mark.parametrize(("path", "body", "message"), BAD_INPUT)
def test_bad_input_is_400_saying_what_was_wrong(
    srv: LiveServer, path: str, body: bytes, message: str
) -> None:
    headers = {**auth(FREE_KEY), "content-type": "application/json"}
    r = httpx.post(srv.url + path, content=body, headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"]
    if path == "/v1/messages":
        assert r.json()["type"] == "error" and error["type"] == "invalid_request_error"
    elif path == "/v1/chat/completions":
        assert error["type"] == "invalid_request_error"
    else:
        assert error["code"] == "invalid_request"


def test_a_start_the_hub_refused_gives_back_the_slot_and_the_minute() -> None:
    clock, k = Clock(), key(rpm=1, max_concurrent=1)
    limits = KeyLimits(clock)
    _, lease = limits.admit(k, request())
    lease.cancel()
    assert limits.usage(k).running == 0 and not limits.usage(k).starts
    limits.admit(k, request())


def test_a_start_the_server_refused_does_not_use_up_the_keys_quota() -> None:
    """Server-wide overload is refused after the key was admitted: the key's minute is not spent."""
    keys = [{"key": RPM_KEY, "rpm": 1}, FREE_KEY]
    settings = make_settings(api_keys=keys, models={"echo-slow": SLOW}, max_concurrent=1)
    slow = {"model": "echo-slow", "message": " ".join(["word"] * 200)}
    with (
        live_server(settings) as live,
        httpx.stream("POST", live.url + "/chat/stream", json=slow, headers=auth(FREE_KEY)) as busy,
    ):
        assert busy.status_code == 200
        refused = httpx.post(live.url + "/chat/stream", json={"message": "hi"}, headers=auth(RPM_KEY))
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "overloaded")
        assert live.call(lambda: len(live.state.limits.usage(live.state.settings.api_keys[0]).starts)) == 0
