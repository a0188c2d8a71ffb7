"""The ``openai`` provider, through the real SDK, against the local wire-exact OpenAI upstream."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
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
from sluiceway.providers import openai as openai_provider
from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.providers.openai import KEYLESS_PLACEHOLDER, _ChunkParser, aiohttp_response, create
from sluiceway.requests import ChatRequest, Message, make_request
from sluiceway.testing import OpenAIUpstream, Script, UpstreamLog
from tests.providers.conftest import API_KEY, KEY_ENV, Served


def config(url: str, **options: Any) -> ModelConfig:
    return ModelConfig(
        "gpt", "openai", model="mock-model", base_url=f"{url}/v1", api_key_env=KEY_ENV, options=options
    )


@pytest.fixture
async def provider(openai_served: Served[OpenAIUpstream]) -> AsyncIterator[Provider]:
    provider = create(config(openai_served.url))
    yield provider
    await provider.aclose()


def ask(text: str = "hello there world", **limits: Any) -> ChatRequest:
    return make_request([Message("system", "be brief"), Message("user", text)], "gpt", **limits)


async def collect(provider: Provider, request: ChatRequest | None = None) -> list[Event]:
    return [event async for event in provider.stream(request or ask())]


async def failure(provider: Provider, request: ChatRequest | None = None) -> SluicewayError:
    with pytest.raises(SluicewayError) as info:
        await collect(provider, request)
    return info.value


async def test_streams_exact_text_then_usage_then_finish(
    provider: Provider, openai_upstream: OpenAIUpstream
) -> None:
    assert await collect(provider) == [
        TextDelta("hello "),
        TextDelta("there "),
        TextDelta("world"),
        Usage(input_tokens=5, output_tokens=3),
        Finish("stop"),
    ]


async def test_sends_model_messages_limits_and_key(
    provider: Provider, openai_upstream: OpenAIUpstream
) -> None:
    await collect(provider, ask("a b c", max_tokens=7, temperature=0.5, stop=["END"]))
    [seen] = openai_upstream.log.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert seen.headers["content-type"] == "application/json"  # the body goes as bytes (``content``)
    assert seen.body == {
        "model": "mock-model",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b c"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 7,
        "temperature": 0.5,
        "stop": ["END"],
    }


async def test_max_tokens_cut_finishes_with_length(
    provider: Provider, openai_upstream: OpenAIUpstream
) -> None:
    events = await collect(provider, ask("one two three four", max_tokens=2))
    assert events == [TextDelta("one "), TextDelta("two "), Usage(6, 2), Finish("length")]


@pytest.mark.parametrize(
    ("upstream_reason", "reason"), [("content_filter", "content_filter"), ("tool_calls", "stop")]
)
async def test_other_finish_reasons_map_to_stop_but_a_filtered_answer_says_so(
    provider: Provider, openai_upstream: OpenAIUpstream, upstream_reason: str, reason: str
) -> None:
    openai_upstream.script = Script(finish_reason=upstream_reason)
    assert (await collect(provider))[-1] == Finish(reason)  # type: ignore[arg-type]


async def test_servers_without_stream_options_just_lose_usage(
    openai_served: Served[OpenAIUpstream], openai_upstream: OpenAIUpstream
) -> None:
    provider = create(config(openai_served.url, stream_usage=False))
    events = await collect(provider)
    await provider.aclose()
    assert "stream_options" not in openai_upstream.log.requests[0].body
    assert not any(isinstance(e, Usage) for e in events)
    assert events[-1] == Finish("stop")


async def test_keyless_local_servers_get_a_placeholder(
    openai_served: Served[OpenAIUpstream], openai_upstream: OpenAIUpstream
) -> None:
    provider = create(ModelConfig("local", "openai", model="m", base_url=f"{openai_served.url}/v1"))
    await collect(provider)
    await provider.aclose()
    assert openai_upstream.log.requests[0].api_key == KEYLESS_PLACEHOLDER


async def test_unset_key_variable_fails_before_calling_upstream(
    openai_served: Served[OpenAIUpstream], openai_upstream: OpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    provider = create(config(openai_served.url))
    error = await failure(provider)
    await provider.aclose()
    assert isinstance(error, UpstreamAuthError)
    assert KEY_ENV in error.message
    assert openai_upstream.log.requests == []


@pytest.mark.parametrize(
    ("script", "kind", "retry_after"),
    [
        (Script(fail_status=429, retry_after="7"), RateLimitedError, 7.0),
        (Script(fail_status=429, retry_after_ms="1500", retry_after="2"), RateLimitedError, 1.5),
        (Script(fail_status=429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"), RateLimitedError, 0.0),
        (Script(fail_status=429), RateLimitedError, None),
        (Script(fail_status=401), UpstreamAuthError, None),
        (Script(fail_status=403), UpstreamAuthError, None),
        (Script(fail_status=400), UpstreamError, None),
        (Script(fail_status=500), UpstreamError, None),
        (Script(fail_status=503, retry_after="3"), UpstreamError, 3.0),
    ],
)
async def test_http_errors_map_to_the_error_tree(
    provider: Provider, openai_upstream: OpenAIUpstream, script: Script, kind: type, retry_after: float | None
) -> None:
    openai_upstream.script = script
    error = await failure(provider)
    assert type(error) is kind
    assert error.retry_after == retry_after
    assert f"HTTP {script.fail_status}" in error.message
    assert isinstance(error.__cause__, openai.APIStatusError)
    assert API_KEY not in str(error)


async def test_an_echoed_key_is_redacted(provider: Provider, openai_upstream: OpenAIUpstream) -> None:
    openai_upstream.script = Script(fail_status=401)  # the upstream's message quotes the key in full
    error = await failure(provider)
    assert error.message == "model 'gpt': upstream answered HTTP 401: Incorrect API key provided: [redacted]."


async def test_connection_refused_is_upstream_unavailable(refused_url: str) -> None:
    provider = create(config(refused_url))
    error = await failure(provider)
    await provider.aclose()
    assert isinstance(error, UpstreamUnavailableError)
    assert refused_url not in error.message


@pytest.mark.parametrize("hang", ["before_headers", "before_first_token"])
async def test_a_silent_upstream_times_out(
    openai_served: Served[OpenAIUpstream], openai_upstream: OpenAIUpstream, hang: Any
) -> None:
    openai_upstream.script = Script(hang=hang)
    provider = create(config(openai_served.url, timeout_s=0.3))
    error = await failure(provider)
    await provider.aclose()
    assert isinstance(error, UpstreamTimeoutError)


async def test_error_event_mid_stream_raises_upstream_error_after_the_text(
    provider: Provider, openai_upstream: OpenAIUpstream
) -> None:
    openai_upstream.script = Script(fail_after=2, fail_message=f"model crashed (key {API_KEY})")
    events: list[Event] = []
    with pytest.raises(UpstreamError) as info:
        async for event in provider.stream(ask()):
            events.append(event)
    assert events == [TextDelta("hello "), TextDelta("there ")]
    assert info.value.message == "model 'gpt': upstream failed mid-stream: model crashed (key [redacted])"


async def disconnected(log: UpstreamLog) -> bool:
    return await log.await_for(lambda log: len(log.disconnects) == 1 and log.active == 0)


async def test_closing_the_stream_disconnects_the_upstream(
    provider: Provider, openai_upstream: OpenAIUpstream
) -> None:
    openai_upstream.script = Script(tokens=1000, delay_ms=20)
    events = provider.stream(ask())
    assert await anext(events) == TextDelta("hello ")
    assert await anext(events) == TextDelta("there ")
    await events.aclose()  # type: ignore[attr-defined]
    assert await disconnected(openai_upstream.log)
    assert openai_upstream.log.disconnects[0].tokens_sent < 100
    assert openai_upstream.log.completed == 0


async def test_cancelling_the_consumer_disconnects_the_upstream(
    provider: Provider, openai_upstream: OpenAIUpstream
) -> None:
    openai_upstream.script = Script(tokens=1000, delay_ms=20)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(ask()):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await disconnected(openai_upstream.log)


async def test_the_body_is_read_from_aiohttp_not_through_the_sdk_wrappers(
    provider: Provider, openai_upstream: OpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def not_this_way(*_: Any, **__: Any) -> AsyncIterator[bytes]:
        raise AssertionError("iter_bytes was used")
        yield b""

    monkeypatch.setattr(openai._response.AsyncAPIResponse, "iter_bytes", not_this_way)
    events = await collect(provider)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "hello there world"


async def test_the_sdk_objects_are_let_go_once_the_response_is_open(
    provider: Provider, openai_upstream: OpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    openai_upstream.script = Script(tokens=1000, delay_ms=20)
    held: list[weakref.ref[object]] = []
    raws: list[Any] = []
    pick = openai_provider.aiohttp_response

    def noting(response: Any) -> Any:
        held.extend([weakref.ref(response), weakref.ref(response.http_response.request)])
        raws.append(pick(response))
        return raws[-1]

    monkeypatch.setattr(openai_provider, "aiohttp_response", noting)
    events = provider.stream(ask())
    assert isinstance(await anext(events), TextDelta)
    gc.collect()
    assert len(held) == 2 and all(ref() is None for ref in held)
    info = raws[0].request_info  # kept by aiohttp's response: its URL and method, not the headers
    assert (info.method, info.url.path, len(info.headers)) == ("POST", "/v1/chat/completions", 0)
    await events.aclose()
    assert await disconnected(openai_upstream.log)


@pytest.mark.parametrize(
    ("stream", "headers"),
    [(object(), {}), (None, {"content-encoding": "gzip"})],
    ids=["another-transport", "compressed"],
)
def test_other_bodies_go_through_the_sdk(stream: object, headers: dict[str, str]) -> None:
    class Http:
        def __init__(self) -> None:
            self.headers = headers
            self.stream = stream if stream is not None else _AiohttpLike()

    class Response:
        http_response = Http()

    assert aiohttp_response(Response()) is None  # type: ignore[arg-type]


class _AiohttpLike:
    def __init__(self) -> None:
        import aiohttp

        self._aiohttp_response = aiohttp.ClientResponse.__new__(aiohttp.ClientResponse)
        self._aiohttp_response.content = aiohttp.StreamReader.__new__(aiohttp.StreamReader)


def chunk(**fields: Any) -> bytes:
    return b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", **fields}) + b"\n\n"


def delta(text: str) -> bytes:
    return chunk(choices=[{"index": 0, "delta": {"content": text}, "finish_reason": None}])


FINISH = chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "length"}])
USAGE = chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})


@pytest.mark.parametrize(
    ("reads", "events"),
    [
        ([delta("a") + delta("b")], [TextDelta("a"), TextDelta("b")]),
        ([delta("a")[:9], delta("a")[9:] + delta("")], [TextDelta("a")]),
        ([delta("a") + FINISH + USAGE + b"data: [DONE]\n\n"], [TextDelta("a")]),
        ([b"data: [DONE]\n\n", delta("late")], []),
        ([b": comment\n\n", b"data: 1\n\n", delta("x")], [TextDelta("x")]),
    ],
    ids=["two-in-one-read", "split-across-reads", "finish-usage-done", "after-done-ignored", "not-chunks"],
)
def test_chunk_parser_events(reads: list[bytes], events: list[Event]) -> None:
    parser = _ChunkParser("gpt", None)
    assert [event for data in reads for event in parser.feed(data)] == events


def test_chunk_parser_ends_with_usage_then_finish() -> None:
    parser = _ChunkParser("gpt", None)
    parser.feed(delta("a") + FINISH + USAGE)
    assert parser.end() == [Usage(3, 2), Finish("length")]
    no_usage = _ChunkParser("gpt", None)
    no_usage.feed(chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    assert no_usage.end() == [Finish("stop")]


def test_chunk_parser_needs_a_finish_reason() -> None:
    parser = _ChunkParser("gpt", None)
    parser.feed(delta("a"))
    with pytest.raises(UpstreamError, match="without a finish reason"):
        parser.end()


def test_chunk_parser_raises_an_in_band_error_without_the_key() -> None:
    parser = _ChunkParser("gpt", "sk-secret-key-123456")
    error = chunk(error={"message": "bad key sk-secret-key-123456", "type": "server_error"})
    assert parser.feed(delta("a") + error + delta("b")) == [TextDelta("a")]
    assert parser.error is not None and "sk-secret-key-123456" not in str(parser.error)
    assert parser.feed(delta("c")) == []


def test_no_read_timeout_unless_configured() -> None:
    plain = create(config("http://127.0.0.1:9"))
    timed = create(config("http://127.0.0.1:9", timeout_s=0.3))
    timeout = plain._client.timeout  # type: ignore[attr-defined]
    assert timeout.read is None and timeout.connect == 5.0  # no timer re-armed per chunk read
    assert timed._client.timeout == 0.3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "bad",
    [
        b"data: {not json\n\n",
        b'data: {"choices": "x"}\n\n',
        b'data: {"choices": [{"delta": {"content": 7}}]}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": "many"}}\n\n',
    ],
    ids=["not-json", "choices-not-a-list", "content-not-text", "usage-not-a-number"],
)
def test_chunk_parser_ends_on_a_malformed_chunk_after_the_text_before_it(bad: bytes) -> None:
    parser = _ChunkParser("gpt", None)
    assert parser.feed(delta("a") + bad + delta("b")) == [TextDelta("a")]
    assert isinstance(parser.error, UpstreamError) and "malformed" in str(parser.error)
