"""Client and AsyncClient against a real server: exact text, errors by class, resume, cancel.

Every test runs twice, through the blocking and the asyncio client (see ``drivers.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sluiceway.client import ConnectionFailedError
from sluiceway.errors import (
    AuthenticationError,
    InvalidRequestError,
    RateLimitedError,
    UnknownModelError,
    UpstreamError,
)
from sluiceway.events import Finish, TextDelta, Usage
from sluiceway.providers.echo import split_words
from tests.client.drivers import DRIVERS, Driver
from tests.client.dropper import dropping_proxy
from tests.live import LiveServer, free_port, live_server, make_settings

pytestmark = pytest.mark.parametrize("kind", ["sync", "async"])
LONG = " ".join(f"word{i}" for i in range(12))


def driver(kind: str, url: str, **client: Any) -> Driver:
    return DRIVERS[kind](url, **client)


def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize(
    "message",
    ["Hello there", "  spaced   out\ttabs\nand lines  ", "ünïcödé ✓ 🙂 漢字", "x"],
)
def test_text_equals_the_echo_input_exactly(kind: str, live: LiveServer, message: str) -> None:
    out = driver(kind, live.url).collect(message, model="echo")
    assert out.error is None
    deltas = [e for e in out.events if isinstance(e, TextDelta)]
    assert "".join(d.text for d in deltas) == message == out.result.text
    assert out.events[len(deltas) :] == [out.result.usage, out.result.finish]
    assert isinstance(out.events[-2], Usage) and isinstance(out.events[-1], Finish)
    assert out.result.finish_reason == "stop"
    assert out.result.output_tokens == len(deltas) == len(split_words(message))
    assert out.result.ttft_ms is not None and out.result.ttft_ms >= 0
    assert out.stream_id and out.result.resumes == 0


def test_text_stream_and_chat(kind: str, live: LiveServer) -> None:
    d = driver(kind, live.url)
    assert d.texts("one two three", model="echo-slow") == ["one ", "two ", "three"]
    result = d.chat("four five", model="echo-slow")
    assert result.text == "four five" and result.finish_reason == "stop"
    assert result.tokens_per_s is not None and result.tokens_per_s > 0
    assert result.finish is not None and result.finish.ttft_ms is not None


def test_max_tokens_ends_with_length(kind: str, live: LiveServer) -> None:
    result = driver(kind, live.url).chat("a b c d e", model="echo", max_tokens=2)
    assert result.text == "a b " and result.finish_reason == "length"


def test_unknown_model_raises_unknown_model_error(kind: str, live: LiveServer) -> None:
    out = driver(kind, live.url).collect("hi", model="no-such-model")
    assert isinstance(out.error, UnknownModelError) and out.error.code == "unknown_model"
    assert out.events == []


def test_invalid_request_raises_invalid_request_error(kind: str, live: LiveServer) -> None:
    out = driver(kind, live.url).collect("hi", model="echo", max_tokens=0)
    assert isinstance(out.error, InvalidRequestError) and "max_tokens" in out.error.message


def test_failure_before_text_is_rate_limited_with_retry_after(kind: str, live: LiveServer) -> None:
    out = driver(kind, live.url).collect("a b c", model="echo-limited")
    assert isinstance(out.error, RateLimitedError) and out.error.code == "rate_limited"
    assert out.error.retry_after is not None and out.error.retry_after >= 1


def test_failure_mid_stream_raises_after_the_text_so_far(kind: str, live: LiveServer) -> None:
    out = driver(kind, live.url).collect("a b c d e f", model="echo-fail")
    assert isinstance(out.error, UpstreamError) and out.error.code == "upstream_error"
    assert [e.text for e in out.events if isinstance(e, TextDelta)] == ["a ", "b ", "c "]
    assert out.result.text == "a b c " and out.result.finish_reason == "error"


def test_cancel_after_the_finish_keeps_the_finish_reason(kind: str, live: LiveServer) -> None:
    out, _ = driver(kind, live.url).cancel_after(10, "a b", model="echo")
    assert out.result.finish_reason == "stop"


def test_nothing_listening_raises_connection_failed(kind: str) -> None:
    out = driver(kind, f"http://127.0.0.1:{free_port()}").collect("hi")
    assert isinstance(out.error, ConnectionFailedError)


def test_resume_across_a_forced_connection_drop_yields_the_exact_text(kind: str, live: LiveServer) -> None:
    port = httpx.URL(live.url).port
    assert port is not None
    with dropping_proxy(port, after=3) as proxy:
        out = driver(kind, proxy.url).collect(LONG, model="echo-slow")
    assert out.error is None, out.error
    assert proxy.resets == 1 and proxy.connections == 2
    assert out.result.resumes == 1
    deltas = [e.text for e in out.events if isinstance(e, TextDelta)]
    assert "".join(deltas) == LONG == out.result.text
    assert len(deltas) == len(split_words(LONG))
    assert out.result.finish_reason == "stop"


def test_resume_gives_up_after_max_resumes(kind: str, live: LiveServer) -> None:
    port = httpx.URL(live.url).port
    assert port is not None
    with dropping_proxy(port, after=3, later="reset") as proxy:
        out = driver(kind, proxy.url, max_resumes=2).collect(LONG, model="echo-slow")
    assert isinstance(out.error, ConnectionFailedError), out.error
    assert "2 resume attempts failed" in out.error.message
    assert proxy.connections == 3  # the request and two resumes
    assert out.result.text == "".join(split_words(LONG)[:3])


def test_explicit_resume_reads_a_stream_from_any_event(kind: str, live: LiveServer) -> None:
    d = driver(kind, live.url)
    first = d.collect("alpha beta gamma delta", model="echo")
    assert first.stream_id is not None
    # seq 1 is the early Usage, 2.. the texts: after seq 3 come "gamma " and "delta".
    again = d.resume(first.stream_id, 3)
    assert again.error is None and again.result.text == "gamma delta"
    assert again.result.finish_reason == "stop"


def test_cancel_stops_the_generation_on_the_server(kind: str, live: LiveServer) -> None:
    message = " ".join(f"w{i}" for i in range(200))  # 10 s at 50 ms a word
    out, confirmed = driver(kind, live.url).cancel_after(2, message, model="echo-slow")
    stream_id = out.stream_id
    assert [type(e) for e in out.events] == [TextDelta, TextDelta]
    assert confirmed and stream_id is not None
    assert out.result.finish_reason == "cancelled" and out.result.finish is None  # no server Finish read
    stream = live.call(live.state.hub.get, stream_id)
    assert stream is not None
    assert wait_until(lambda: stream.finished)
    assert stream.cancelled_by == "stop"
    assert wait_until(lambda: httpx.get(f"{live.url}/healthz").json()["active_streams"] == 0)


def test_api_key_is_sent_as_a_bearer_token(kind: str) -> None:
    key = "sk-client-0123456789abcdef"
    with live_server(make_settings(api_keys=[key])) as server:
        refused = driver(kind, server.url).collect("hi")
        allowed = driver(kind, server.url, api_key=key).collect("hi")
    assert isinstance(refused.error, AuthenticationError) and refused.error.code == "unauthorized"
    assert allowed.error is None and allowed.result.text == "hi"
