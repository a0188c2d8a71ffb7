"""``openai``: any OpenAI-compatible Chat Completions server, through the official ``openai`` SDK.

How it works: one ``AsyncOpenAI`` client per configured model (retries off: the relay decides about
retries and fallbacks), over the SDK's aiohttp transport (``DefaultAioHttpClient``: about a third less
CPU per relayed token than its default httpx2 one, docs/benchmarks.md). ``stream`` opens the request
as ``chat.completions.with_streaming_response.create(stream=True)`` would (see :meth:`_open`) inside
``async with``, so when the relay cancels the task or closes the generator, the SDK closes the HTTP
response and the upstream sees the disconnect and stops generating. The SDK sends the request
and raises the HTTP errors; the chunks themselves are read as raw SSE bytes (sans-IO
:class:`~sluiceway.wire.sse.SSEDecoder`, then ``orjson.loads``), because building the SDK's pydantic
``ChatCompletionChunk`` for every token cost about 80% of the relay's CPU (docs/benchmarks.md).
The finish chunk comes before the usage chunk, so both are held and emitted after the last delta.
SDK failures are translated once, in :meth:`OpenAIProvider.stream`, by
:mod:`sluiceway.providers._sdk_errors`.

Options (``[models.NAME.options]``): ``timeout_s`` for the HTTP client; ``stream_usage = false`` for
compatible servers that reject ``stream_options`` (usage is then simply not reported).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

import aiohttp
import httpx2
import openai
import orjson
from openai import AsyncStream
from openai._base_client import make_request_options
from openai._constants import RAW_RESPONSE_HEADER
from openai._response import AsyncAPIResponse, AsyncResponseContextManager
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from sluiceway.errors import SluicewayError, UpstreamError
from sluiceway.events import Event, Finish, FinishReason, TextDelta, Usage
from sluiceway.providers import _sdk_errors
from sluiceway.providers.base import ModelConfig, Provider
from sluiceway.requests import ChatRequest, Message
from sluiceway.wire.sse import SSEDecoder

KEYLESS_PLACEHOLDER = "sk-no-key-required"
"""Sent when a model has no ``api_key_env`` (Ollama, vLLM and llama.cpp servers ignore it)."""

_SDK_ERRORS: tuple[type[Exception], ...] = (openai.APIError, *_sdk_errors.TRANSPORT_ERRORS)
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}
_Response = AsyncAPIResponse[AsyncStream[ChatCompletionChunk]]
_STREAM_OPTIONS = make_request_options(
    extra_headers={RAW_RESPONSE_HEADER: "stream"}, security={"bearer_auth": True}
)
"""What ``with_streaming_response`` adds: the raw, unread response; the bearer key."""
_POOL = httpx2.Limits(max_connections=0, keepalive_expiry=5.0)
"""The upstream connection pool: no cap on connections (the SDK's 1000 would queue the 1001st
concurrent stream of a model for a connection; the hub's ``max_concurrent`` is the gateway's cap),
and every idle one kept for 5 s. Under the aiohttp transport only these two fields count, and
``max_connections=0`` is aiohttp's "no limit"; it keeps all idle connections (no keep-alive count)."""


class OpenAIProvider:
    """Streams chat completions from one OpenAI-compatible endpoint and model."""

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout_s: float | None = None,
        stream_usage: bool = True,
        missing_key_env: str | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.stream_usage = stream_usage
        self._api_key = api_key
        self._missing_key_env = missing_key_env
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or KEYLESS_PLACEHOLDER,
            max_retries=0,
            timeout=openai.NOT_GIVEN if timeout_s is None else timeout_s,
            http_client=openai.DefaultAioHttpClient(limits=_POOL),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if self._missing_key_env is not None:
            raise _sdk_errors.missing_key(self.name, self._missing_key_env)
        finish_reason: str | None = None
        usage: Usage | None = None
        try:
            async with self._open(request) as response:
                async for chunk in self._chunks(response):
                    counts = chunk.get("usage")
                    if counts:
                        usage = Usage(counts.get("prompt_tokens") or 0, counts.get("completion_tokens") or 0)
                    for choice in chunk.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            yield TextDelta(content)
                        finish_reason = choice.get("finish_reason") or finish_reason
        except _SDK_ERRORS as exc:
            raise self._translate(exc) from exc
        if finish_reason is None:
            raise UpstreamError(f"model {self.name!r}: upstream ended the stream without a finish reason")
        if usage is not None:
            yield usage
        yield Finish(_FINISH.get(finish_reason, "stop"))

    async def _chunks(self, response: _Response) -> AsyncIterator[dict[str, Any]]:
        """The stream's JSON chunks up to ``[DONE]`` (the rest is read, so the connection is reused)."""
        decoder = SSEDecoder()
        done = False
        async for raw in _body(response):
            if done:
                continue
            for data in decoder.feed_data(raw):
                if data.startswith("[DONE]"):
                    done = True
                    break
                chunk = orjson.loads(data)
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise _sdk_errors.from_stream_error(chunk["error"], model=self.name, secret=self._api_key)
                if isinstance(chunk, dict):
                    yield chunk

    def _open(self, request: ChatRequest) -> AsyncResponseContextManager[_Response]:
        """POST the request body as built here: what ``chat.completions.with_streaming_response.create``
        sends, without its per-request walk over the parameters' ``TypedDict`` (about a tenth of a
        request's CPU, docs/benchmarks.md); the SDK still sends it, authenticates and raises. The
        body goes as JSON bytes (``orjson``, as ``content``): the SDK sends them as they are instead
        of running its own ``json.dumps``, about 25 µs less per request."""
        response = self._client.post(
            "/chat/completions",
            content=orjson.dumps(self._body(request)),
            cast_to=ChatCompletion,
            options=_STREAM_OPTIONS,
            stream=True,
            stream_cls=AsyncStream[ChatCompletionChunk],
        )
        return AsyncResponseContextManager(cast("Awaitable[_Response]", response))

    def _body(self, request: ChatRequest) -> dict[str, object]:
        body: dict[str, object] = {
            "messages": [_message(m) for m in request.messages],
            "model": self.model,
            "stream": True,
        }
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def _translate(self, exc: Exception) -> SluicewayError:
        if isinstance(exc, openai.APITimeoutError) and _sdk_errors.is_timeout(exc):
            return _sdk_errors.timed_out(self.name)
        if isinstance(exc, openai.APIConnectionError):
            return _sdk_errors.unreachable(self.name)
        if isinstance(exc, openai.APIStatusError):
            return _sdk_errors.from_status(
                exc.status_code, exc.response.headers, exc.body, model=self.name, secret=self._api_key
            )
        if isinstance(exc, openai.APIError):
            return _sdk_errors.from_stream_error(exc.body, model=self.name, secret=self._api_key)
        return _sdk_errors.from_transport(exc, model=self.name)

    async def aclose(self) -> None:
        await self._client.close()


async def _body(response: _Response) -> AsyncIterator[bytes]:
    """The response body as it arrives.

    Under the SDK's aiohttp transport an uncompressed body is read from the aiohttp response
    itself: the same bytes as ``response.iter_bytes()`` without its five layers of wrapping
    generators per read (about a sixth of the relay's CPU per token at 20 ms cadence,
    docs/benchmarks.md). aiohttp's errors are raised as the transport would raise them (``httpx2``
    read errors), so they are translated as before. Anything else goes through ``iter_bytes()``.
    """
    http = response.http_response
    stream = getattr(http.stream, "_stream", http.stream)  # httpx2's BoundAsyncStream holds the transport's
    raw = getattr(stream, "_aiohttp_response", None)
    content = getattr(raw, "content", None)
    if (
        not isinstance(content, aiohttp.StreamReader)
        or http.headers.get("content-encoding", "identity") != "identity"
    ):
        async for chunk in response.iter_bytes():
            yield chunk
        return
    while True:
        try:
            chunk = await content.readany()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx2.ReadTimeout(str(exc) or "timed out reading the upstream") from exc
        except aiohttp.ClientError as exc:
            raise httpx2.ReadError(str(exc) or type(exc).__name__) from exc
        if not chunk:
            return
        yield chunk


def _message(message: Message) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


def create(config: ModelConfig) -> Provider:
    """Factory for ``provider = "openai"``.

    ``model`` is the upstream model id (defaults to the configured name); ``base_url`` points at any
    compatible server (``http://127.0.0.1:11434/v1`` for Ollama); ``api_key_env`` names the variable
    holding the key (leave it out for keyless local servers).
    """
    env = config.api_key_env
    api_key = os.environ.get(env) if env else None
    timeout_s = config.options.get("timeout_s")
    return OpenAIProvider(
        config.name,
        config.model or config.name,
        base_url=config.base_url,
        api_key=api_key,
        timeout_s=None if timeout_s is None else float(timeout_s),
        stream_usage=bool(config.options.get("stream_usage", True)),
        missing_key_env=env if env and not api_key else None,
    )
