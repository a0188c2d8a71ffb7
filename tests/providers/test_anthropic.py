"""The ``anthropic`` provider, through the real SDK, against the local wire-exact Anthropic upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from sluiceway.errors import (
    RateLimitedError,
    SluicewayError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from sluiceway.events import Event, Finish, TextDelta, Usage
from sluiceway.providers.anthropic import DEFAULT_MAX_TOKENS, create
from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.requests import ChatRequest, Message, make_request
from sluiceway.testing import AnthropicUpstream, Script, UpstreamLog
from tests.providers.conftest import API_KEY, KEY_ENV, Served


def config(url: str, max_tokens_cap: int | None = None, **options: Any) -> ModelConfig:
    return ModelConfig(
        "claude",
        "anthropic",
        model="mock-claude",
        base_url=url,
        api_key_env=KEY_ENV,
        max_tokens_cap=max_tokens_cap,
        options=options,
    )


@pytest.fixture
async def provider(anthropic_served: Served[AnthropicUpstream]) -> AsyncIterator[Provider]:
    provider = create(config(anthropic_served.url))
    yield provider
    await provider.aclose()


def ask(text: str = "hello there world", **limits: Any) -> ChatRequest:
    return make_request([Message("system", "be brief"), Message("user", text)], "claude", **limits)


async def collect(provider: Provider, request: ChatRequest | None = None) -> list[Event]:
    return [event async for event in provider.stream(request or ask())]


async def failure(provider: Provider, request: ChatRequest | None = None) -> SluicewayError:
    with pytest.raises(SluicewayError) as info:
        await collect(provider, request)
    return info.value


async def test_streams_early_usage_text_final_usage_and_finish(
    provider: Provider, anthropic_upstream: AnthropicUpstream
) -> None:
    assert await collect(provider) == [
        Usage(input_tokens=5, output_tokens=0),
        TextDelta("hello "),
        TextDelta("there "),
        TextDelta("world"),
        Usage(input_tokens=5, output_tokens=3),
        Finish("stop"),
    ]


async def test_system_goes_to_its_own_parameter_and_sampling_is_not_sent(
    provider: Provider, anthropic_upstream: AnthropicUpstream
) -> None:
    history = [
        Message("system", "one"),
        Message("user", "hi"),
        Message("assistant", "yo"),
        Message("system", "two"),
    ]
    request = make_request([*history, Message("user", "a b")], "claude", temperature=0.3, stop=["END"])
    await collect(provider, request)
    [seen] = anthropic_upstream.log.requests
    assert seen.path == "/v1/messages"
    assert seen.api_key == API_KEY
    assert seen.headers["anthropic-version"]
    assert seen.body == {
        "model": "mock-claude",
        "system": "one\n\ntwo",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "a b"},
        ],
        "max_tokens": DEFAULT_MAX_TOKENS,
        "stop_sequences": ["END"],
        "stream": True,
    }


async def test_max_tokens_comes_from_the_request_or_the_models_cap(
    anthropic_served: Served[AnthropicUpstream], anthropic_upstream: AnthropicUpstream
) -> None:
    provider = create(config(anthropic_served.url, max_tokens_cap=64))
    await collect(provider)
    await collect(provider, ask(max_tokens=9))
    await provider.aclose()
    assert [r.body["max_tokens"] for r in anthropic_upstream.log.requests] == [64, 9]


async def test_max_tokens_stop_finishes_with_length(
    provider: Provider, anthropic_upstream: AnthropicUpstream
) -> None:
    events = await collect(provider, ask("one two three four", max_tokens=2))
    assert events[1:] == [TextDelta("one "), TextDelta("two "), Usage(6, 2), Finish("length")]


async def test_stop_sequence_finishes_with_stop_and_the_matched_sequence(
    provider: Provider, anthropic_upstream: AnthropicUpstream
) -> None:
    events = await collect(provider, ask("one two END three", stop=["x", "END"]))
    assert events[1:] == [
        TextDelta("one "),
        TextDelta("two "),
        Usage(6, 2),
        Finish("stop", stop_sequence="END"),
    ]


@pytest.mark.parametrize(
    ("upstream_reason", "reason"), [("refusal", "content_filter"), ("pause_turn", "stop")]
)
async def test_other_stop_reasons_map_to_stop_but_a_refusal_says_so(
    provider: Provider, anthropic_upstream: AnthropicUpstream, upstream_reason: str, reason: str
) -> None:
    anthropic_upstream.script = Script(finish_reason=upstream_reason)
    assert (await collect(provider))[-1] == Finish(reason)  # type: ignore[arg-type]


async def test_unset_key_variable_fails_before_calling_upstream(
    anthropic_served: Served[AnthropicUpstream],
    anthropic_upstream: AnthropicUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV)
    provider = create(config(anthropic_served.url))
    error = await failure(provider)
    await provider.aclose()
    assert isinstance(error, UpstreamAuthError)
    assert KEY_ENV in error.message
    assert anthropic_upstream.log.requests == []


@pytest.mark.parametrize(
    ("script", "kind", "retry_after"),
    [
        (Script(fail_status=429, retry_after="7"), RateLimitedError, 7.0),
        (Script(fail_status=429, retry_after_ms="250"), RateLimitedError, 0.25),
        (Script(fail_status=401), UpstreamAuthError, None),
        (Script(fail_status=403), UpstreamAuthError, None),
        (Script(fail_status=500), UpstreamError, None),
        (Script(fail_status=503), UpstreamError, None),
        (Script(fail_status=529, retry_after="1"), UpstreamError, 1.0),
    ],
)
async def test_http_errors_map_to_the_error_tree(
    provider: Provider,
    anthropic_upstream: AnthropicUpstream,
    script: Script,
    kind: type,
    retry_after: float | None,
) -> None:
    anthropic_upstream.script = script
    error = await failure(provider)
    assert type(error) is kind
    assert error.retry_after == retry_after
    assert f"HTTP {script.fail_status}" in error.message
    assert isinstance(error.__cause__, anthropic.APIStatusError)
    assert API_KEY not in str(error)


async def test_a_wrong_key_is_refused_and_never_echoed(
    provider: Provider, anthropic_upstream: AnthropicUpstream
) -> None:
    anthropic_upstream.script = Script(api_key="sk-ant-the-right-one")
    error = await failure(provider)
    assert isinstance(error, UpstreamAuthError)
    assert (
        error.message == "model 'claude': upstream answered HTTP 401: Incorrect API key provided: [redacted]."
    )


async def test_connection_refused_is_upstream_unavailable(refused_url: str) -> None:
    provider = create(config(refused_url))
    error = await failure(provider)
    await provider.aclose()
    assert isinstance(error, UpstreamUnavailableError)


@pytest.mark.parametrize("hang", ["before_headers", "before_first_token"])
async def test_a_silent_upstream_times_out(
    anthropic_served: Served[AnthropicUpstream], anthropic_upstream: AnthropicUpstream, hang: Any
) -> None:
    anthropic_upstream.script = Script(hang=hang)
    provider = create(config(anthropic_served.url, timeout_s=0.3))
    error = await failure(provider)
    await provider.aclose()
    assert isinstance(error, UpstreamTimeoutError)


async def test_error_event_mid_stream_raises_upstream_error_after_the_text(
    provider: Provider, anthropic_upstream: AnthropicUpstream
) -> None:
    anthropic_upstream.script = Script(fail_after=1, fail_message=f"Overloaded ({API_KEY})")
    events: list[Event] = []
    with pytest.raises(UpstreamError) as info:
        async for event in provider.stream(ask()):
            events.append(event)
    assert events == [Usage(5, 0), TextDelta("hello ")]
    assert info.value.message == "model 'claude': upstream failed mid-stream: Overloaded ([redacted])"


async def disconnected(log: UpstreamLog) -> bool:
    return await log.await_for(lambda log: len(log.disconnects) == 1 and log.active == 0)


async def test_closing_the_stream_disconnects_the_upstream(
    provider: Provider, anthropic_upstream: AnthropicUpstream
) -> None:
    anthropic_upstream.script = Script(tokens=1000, delay_ms=20)
    events = provider.stream(ask())
    assert await anext(events) == Usage(5, 0)
    assert await anext(events) == TextDelta("hello ")
    await events.aclose()  # type: ignore[attr-defined]
    assert await disconnected(anthropic_upstream.log)
    assert anthropic_upstream.log.disconnects[0].tokens_sent < 100
    assert anthropic_upstream.log.completed == 0


async def test_cancelling_the_consumer_disconnects_the_upstream(
    provider: Provider, anthropic_upstream: AnthropicUpstream
) -> None:
    anthropic_upstream.script = Script(tokens=1000, delay_ms=20)
    first = asyncio.Event()

    async def consume() -> None:
        async for event in provider.stream(ask()):
            if isinstance(event, TextDelta):
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await disconnected(anthropic_upstream.log)
