"""``openai``: any OpenAI-compatible Chat Completions server, through the official ``openai`` SDK.

How it works: one ``AsyncOpenAI`` client per configured model (retries off: the relay decides about
retries and fallbacks), over the SDK's aiohttp transport (``DefaultAioHttpClient``: about a third less
CPU per relayed token than its default httpx2 one, docs/benchmarks.md). ``stream`` sends the request
as ``chat.completions.with_streaming_response.create(stream=True)`` would (see :meth:`_send`): the SDK
builds it, authenticates, sends it and raises the HTTP errors. Once the response is open, only the
aiohttp response under it is kept (the SDK's own objects go, ≈ 10 KB a stream) and released in a
``finally``, so when the relay cancels the task or closes the generator the connection closes and
the upstream sees the disconnect and stops generating. The chunks are read as raw SSE bytes and
parsed by the sans-IO :class:`_ChunkParser` (:class:`~sluiceway.wire.sse.SSEDecoder`, then
``orjson.loads``), because building the SDK's pydantic ``ChatCompletionChunk`` for every token cost
about 80% of the relay's CPU (docs/benchmarks.md).
SDK failures are translated once, in :meth:`OpenAIProvider.stream`, by
:mod:`sluiceway.providers._sdk_errors`.

Options (``[models.NAME.options]``): ``timeout_s`` for the HTTP client (by default it has no read
timeout: the generation's own ``ttft``/``idle``/``total`` timeouts bound a stalled upstream, and the
transport re-arms no timer for every chunk it reads; connecting still times out after 5 s);
``stream_usage = false`` for compatible servers that reject ``stream_options`` (usage is then simply
not reported).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable
from functools import partial
from typing import cast

import aiohttp
import httpx2
import openai
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from openai import AsyncStream
from openai._base_client import make_request_options
from openai._constants import RAW_RESPONSE_HEADER
from openai._response import AsyncAPIResponse
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
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "content_filter": "content_filter"}
_Response = AsyncAPIResponse[AsyncStream[ChatCompletionChunk]]
_STREAM_OPTIONS = make_request_options(
    extra_headers={RAW_RESPONSE_HEADER: "stream"}, security={"bearer_auth": True}
)
"""What ``with_streaming_response`` adds: the raw, unread response; the bearer key."""
_NO_READ_TIMEOUT = httpx2.Timeout(None, connect=5.0)
"""The client's timeouts without ``timeout_s``: the SDK's connect timeout, no read timeout (under the
aiohttp transport a read timeout is a timer cancelled and set again for every chunk received)."""
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
            timeout=_NO_READ_TIMEOUT if timeout_s is None else timeout_s,
            http_client=openai.DefaultAioHttpClient(limits=_POOL),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if self._missing_key_env is not None:
            raise _sdk_errors.missing_key(self.name, self._missing_key_env)
        parser = _ChunkParser(self.name, self._api_key)
        try:
            response = await self._send(request)
            raw = aiohttp_response(response)
            if raw is None:
                body, close = response.iter_bytes(), response.close
            else:  # the SDK's request and response objects are not needed any more: they go now
                body, close = _read(raw.content), partial(_release, raw)
            del response, raw
            try:
                async for data in body:
                    for event in parser.feed(data):
                        yield event
                    if parser.error is not None:
                        raise parser.error
            finally:
                await close()
        except _SDK_ERRORS as exc:
            raise self._translate(exc) from exc
        for event in parser.end():
            yield event

    def _send(self, request: ChatRequest) -> Awaitable[_Response]:
        """POST the request body as built here: what ``chat.completions.with_streaming_response.create``
        sends, without its per-request walk over the parameters' ``TypedDict`` (about a tenth of a
        request's CPU, docs/benchmarks.md); the SDK still sends it, authenticates and raises. The
        body goes as JSON bytes (``orjson``, as ``content``): the SDK sends them as they are instead
        of running its own ``json.dumps``, about 25 µs less per request. They are copied once:
        ``orjson.dumps`` returns its bytes in a 4 KiB allocation whatever their length, and the
        upstream client holds them while the stream runs."""
        return post_chat_stream(self._client, memoryview(orjson.dumps(self._body(request))).tobytes())

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


def post_chat_stream(client: openai.AsyncOpenAI, body: bytes) -> Awaitable[_Response]:
    """POST ``body`` (Chat Completions JSON) to ``/chat/completions`` through ``client`` as
    ``with_streaming_response.create`` would: the raw, unread streaming response, or the SDK's
    status error. Also how ``benchmarks/http_floor.py --sdk`` sends, so that floor is this path."""
    return cast(
        "Awaitable[_Response]",
        client.post(
            "/chat/completions",
            content=body,
            cast_to=ChatCompletion,
            options=_STREAM_OPTIONS,
            stream=True,
            stream_cls=AsyncStream[ChatCompletionChunk],
        ),
    )


class _ChunkParser:
    """Events from the response body's bytes (sans-IO): SSE data lines, each an ``orjson``-parsed
    chunk, up to ``[DONE]`` (bytes after it are ignored; they are still read, so the connection
    is reused). The finish chunk comes before the usage chunk, so both are held and emitted by
    :meth:`end`, after the last delta. An in-band error, or a chunk that is not JSON shaped as a
    chunk, ends the stream: the deltas before it are returned and the error is left in :attr:`error`
    to raise after them. Nothing of a chunk is kept between reads."""

    __slots__ = ("_decoder", "_done", "_finish_reason", "_model", "_secret", "_usage", "error")

    def __init__(self, model: str, secret: str | None) -> None:
        self._model = model
        self._secret = secret
        self._decoder = SSEDecoder()
        self._done = False
        self._finish_reason: str | None = None
        self._usage: Usage | None = None
        self.error: SluicewayError | None = None

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self._done:
            return events
        for line in self._decoder.feed_data(data):
            if line.startswith("[DONE]"):
                self._done = True
                break
            try:
                chunk = orjson.loads(line)
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    self.error = _sdk_errors.from_stream_error(
                        chunk["error"], model=self._model, secret=self._secret
                    )
                    self._done = True
                    break
                counts = chunk.get("usage")
                if counts:
                    self._usage = Usage(
                        int(counts.get("prompt_tokens") or 0), int(counts.get("completion_tokens") or 0)
                    )
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if type(content) is not str:
                            raise TypeError("the delta's content is not a string")
                        events.append(TextDelta(content))
                    self._finish_reason = choice.get("finish_reason") or self._finish_reason
            except (ValueError, TypeError, AttributeError):  # not JSON, or not shaped as a chunk
                self.error = UpstreamError(
                    f"model {self._model!r}: the upstream sent a malformed stream chunk"
                )
                self._done = True
                break
        return events

    def end(self) -> list[Event]:
        """The usage and the finish, once the body has ended."""
        if self._finish_reason is None:
            raise UpstreamError(f"model {self._model!r}: upstream ended the stream without a finish reason")
        finish = Finish(_FINISH.get(self._finish_reason, "stop"))
        return [finish] if self._usage is None else [self._usage, finish]


def aiohttp_response(response: _Response) -> aiohttp.ClientResponse | None:
    """The aiohttp response under the SDK's, when its body can be read from it directly: under the
    SDK's aiohttp transport and uncompressed. Read so, it is the same bytes as
    ``response.iter_bytes()`` without its five layers of wrapping generators per read (about a
    sixth of the relay's CPU per token at 20 ms cadence, docs/benchmarks.md), and the SDK's own
    request and response objects (≈ 10 KB a stream, with their copies of the options and headers)
    need not be held while the stream runs. Its ``request_info`` keeps the URL and method, not the
    request's headers (the SDK sends a dozen and a half, the API key among them)."""
    http = response.http_response
    stream = getattr(http.stream, "_stream", http.stream)  # httpx2's BoundAsyncStream holds the transport's
    raw = getattr(stream, "_aiohttp_response", None)
    if (
        not isinstance(raw, aiohttp.ClientResponse)
        or not isinstance(raw.content, aiohttp.StreamReader)
        or http.headers.get("content-encoding", "identity") != "identity"
    ):
        return None
    info = raw._request_info  # with the request's headers: ≈ 4 KB a stream, the API key among them
    raw._request_info = aiohttp.RequestInfo(info.url, info.method, _NO_HEADERS, info.real_url)
    return raw


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


async def _read(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """An aiohttp response body as it arrives; aiohttp's errors are raised as the SDK's transport
    would raise them (``httpx2`` read errors), so they are translated as any other."""
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


async def _release(raw: aiohttp.ClientResponse) -> None:
    """What the SDK's transport does when its response is closed (``ClientResponse.__aexit__``):
    the connection goes back to the pool when the body was read to its end, else it is closed,
    which tells the upstream to stop."""
    raw.release()
    await raw.wait_for_close()


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
